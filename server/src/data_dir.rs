//! The node's data directory (SPEC §9.1, §9.6 steps 1–3): the exclusive `.lock`, the persisted
//! Snowflake `node_id`, the `tmp/` staging area and `node.redb` (placement, cluster plan, and the
//! event log's table), which stays open as long as the directory: redb allows one handle per file
//! in a process, and the event log shares it.

use ledger_core::types::{CoreId, GroupId};
use ledger_shard::storage::dir_sync::{create_dir_durable, fsync_dir};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Milliseconds of 2024-01-01T00:00:00Z, the Snowflake epoch (SPEC §10.1).
const SNOWFLAKE_EPOCH_MS: u64 = 1_704_067_200_000;
const PLACEMENT: TableDefinition<u32, u16> = TableDefinition::new("placement");
/// The agreed bootstrap plan of a cluster member (`plan` → JSON of [`StoredPlan`]).
const CLUSTER: TableDefinition<&str, &str> = TableDefinition::new("cluster");

/// `ClusterPlan` as stored in `node.redb`.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StoredPlan {
    pub members: Vec<(u64, String)>,
    pub initializer: u64,
    /// SPEC §10.5; missing in a plan stored before D90 (0: every member in every data group).
    #[serde(default)]
    pub replication_factor: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("data directory locked: {0} is held by another process")]
    Locked(PathBuf),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("node_id file {0} is corrupt")]
    BadNodeId(PathBuf),
    #[error("node.redb: {0}")]
    Db(String),
}

/// An opened data directory; the lock is held until this is dropped.
pub struct DataDir {
    pub root: PathBuf,
    pub node_id: u64,
    node_db: Arc<Database>,
    _lock: File,
}

impl DataDir {
    /// Creates the layout if needed, takes the lock, loads or creates the node id, clears `tmp/`.
    pub fn open(root: &Path) -> Result<DataDir, DataDirError> {
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| DataDirError::Io { what, path, source }
        };
        // Directories, `node_id` and `node.redb` are made durable by an fsync of the directory
        // holding each new entry: a power loss must not take back what the node acted on.
        create_dir_durable(root).map_err(io("cannot create", root))?;
        let lock_path = root.join(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io("cannot open", &lock_path))?;
        // SAFETY: flock on a file descriptor we own; no memory is shared with the kernel.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(DataDirError::Locked(lock_path));
        }
        let groups = root.join("groups");
        create_dir_durable(&groups).map_err(io("cannot create", &groups))?;
        let tmp = root.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io("cannot clear", &tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io("cannot create", &tmp))?;
        let node_id = load_or_create_node_id(&root.join("node_id"))?;
        let node_db = Arc::new(open_node_db(root)?);
        Ok(DataDir { root: root.to_path_buf(), node_id, node_db, _lock: lock })
    }

    /// `node.redb`, shared with the event log (`ledger_shard::events`).
    pub fn node_db(&self) -> Arc<Database> {
        self.node_db.clone()
    }

    /// Reads the recorded group → core placement (empty on a fresh node).
    pub fn load_placement(&self) -> Result<BTreeMap<GroupId, CoreId>, DataDirError> {
        let db = &self.node_db;
        let txn = db.begin_read().map_err(db_err)?;
        let mut placement = BTreeMap::new();
        let table = match txn.open_table(PLACEMENT) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(placement),
            Err(e) => return Err(db_err(e)),
        };
        for row in table.iter().map_err(db_err)? {
            let (group, core) = row.map_err(db_err)?;
            placement.insert(GroupId(group.value()), CoreId(core.value()));
        }
        Ok(placement)
    }

    /// Records the placement durably (SPEC §10.5: stable across restarts).
    pub fn store_placement(&self, placement: &BTreeMap<GroupId, CoreId>) -> Result<(), DataDirError> {
        let db = &self.node_db;
        let txn = db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(PLACEMENT).map_err(db_err)?;
            for (group, core) in placement {
                table.insert(group.0, core.0).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }

    /// The cluster plan recorded at bootstrap (`None`: a single node, or a fresh one).
    pub fn load_plan(&self) -> Result<Option<StoredPlan>, DataDirError> {
        let db = &self.node_db;
        let txn = db.begin_read().map_err(db_err)?;
        let table = match txn.open_table(CLUSTER) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err(e)),
        };
        let Some(json) = table.get("plan").map_err(db_err)? else { return Ok(None) };
        serde_json::from_str(json.value())
            .map(Some)
            .map_err(|e| DataDirError::Db(format!("cluster plan: {e}")))
    }

    /// Records the plan together with the placement it led to, in one durable transaction, so a
    /// node with groups always knows its cluster.
    pub fn store_plan(
        &self,
        plan: &StoredPlan,
        placement: &BTreeMap<GroupId, CoreId>,
    ) -> Result<(), DataDirError> {
        let json = serde_json::to_string(plan).map_err(|e| DataDirError::Db(format!("cluster plan: {e}")))?;
        let db = &self.node_db;
        let txn = db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(CLUSTER).map_err(db_err)?;
            table.insert("plan", json.as_str()).map_err(db_err)?;
            let mut table = txn.open_table(PLACEMENT).map_err(db_err)?;
            for (group, core) in placement {
                table.insert(group.0, core.0).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }
}

fn open_node_db(root: &Path) -> Result<Database, DataDirError> {
    let path = root.join("node.redb");
    let created = !path.exists();
    let db = Database::create(&path).map_err(db_err)?;
    if created {
        fsync_dir(root).map_err(|source| DataDirError::Io {
            what: "cannot sync",
            path: root.to_path_buf(),
            source,
        })?;
    }
    Ok(db)
}

fn db_err(e: impl std::fmt::Display) -> DataDirError {
    DataDirError::Db(e.to_string())
}

fn load_or_create_node_id(path: &Path) -> Result<u64, DataDirError> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse().map_err(|_| DataDirError::BadNodeId(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = new_snowflake();
            let io = |source| DataDirError::Io { what: "cannot write", path: path.to_path_buf(), source };
            let staging = path.with_extension("new");
            let mut file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&staging)
                .map_err(io)?;
            writeln!(file, "{id}").map_err(io)?;
            file.sync_all().map_err(io)?;
            std::fs::rename(&staging, path).map_err(io)?;
            if let Some(dir) = path.parent() {
                fsync_dir(dir).map_err(io)?;
            }
            Ok(id)
        }
        Err(source) => Err(DataDirError::Io { what: "cannot read", path: path.to_path_buf(), source }),
    }
}

/// 42 bits of milliseconds since the Snowflake epoch ‖ 22 random bits (SPEC §10.1).
fn new_snowflake() -> u64 {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(SNOWFLAKE_EPOCH_MS);
    let since = now_ms.saturating_sub(SNOWFLAKE_EPOCH_MS) & ((1 << 42) - 1);
    (since << 22) | (rand::random::<u32>() as u64 & ((1 << 22) - 1))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The node id survives reopening, a second opener is refused while the lock is held, and
    /// the placement round-trips through node.redb.
    #[test]
    fn t01_lock_node_id_and_placement() {
        let root = std::env::temp_dir().join(format!("ledger-datadir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let first = DataDir::open(&root).unwrap();
        let id = first.node_id;
        assert!(matches!(DataDir::open(&root), Err(DataDirError::Locked(_))));
        let placement: BTreeMap<_, _> = [(GroupId(0), CoreId(0)), (GroupId(1), CoreId(1))].into();
        first.store_placement(&placement).unwrap();
        drop(first);
        let again = DataDir::open(&root).unwrap();
        assert_eq!(again.node_id, id);
        assert_eq!(again.load_placement().unwrap(), placement);
        let _ = std::fs::remove_dir_all(&root);
    }
}
