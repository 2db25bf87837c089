//! Snapshot files of a group (SPEC §9.4): format, writing, loading with verification, the
//! per-group catalog, and `CreateSnapshot` (SPEC §5.3 item 27).
//!
//! File layout (`groups/gNNNNN/snapshots/{group_height:09}.snap`):
//! ```text
//! 0   magic "LSNP"
//! 4   version u32 LE (= 1)
//! 8   header length u32 LE
//! 12  blake3(header bytes), 32 bytes
//! 44  header: rkyv `SnapshotHeader` (group position, membership, per-scope summary with the §7.8
//!     chain commitment, and `body_checksum` = blake3(body))
//! ..  body: rkyv `SnapshotRecord` (every scope's rows, metas and client states + the applied record)
//! ```
//! The header has its own checksum so the catalog and integrity checks can read it without
//! trusting (or even reading) the body. Loading for use verifies both checksums and recomputes
//! every Healthy scope's state root from its rows; a file failing any check is skipped for an
//! older one (SPEC §9.4) and reported by integrity checks as `snapshot_corruption`.
//!
//! Building: on the core, the group's applied state is cloned at one point (a consistent cut,
//! O(rows) memory copies, no hashing) and a durable checkpoint flushes every archived block up to
//! that point; then, on a blocking thread, the body is encoded, the chain commitments are computed
//! from `blocks.redb` headers, and the file is written to `{data_dir}/tmp/`, fsync'd, renamed into
//! `snapshots/` and the directory fsync'd. The newest `snapshots_keep` files are kept.
//!
//! The same file is openraft's snapshot (state_machine.rs, docs/decisions.md D31): `build_snapshot`
//! returns it (`create_with_bytes`), `get_current_snapshot` reads the newest one, and a follower
//! checks a received one with `verify_received` before installing it and keeping it here.

use crate::codec::{decode, encode};
use crate::config::ShardConfig;
use crate::constants::SNAPSHOT_HEADER_BYTES_MAX;
use crate::error::ShardError;
use crate::metrics::CodecKind;
use crate::raft::log_store::records::{LogIdRecord, StoredMembershipRecord};
use crate::raft::state_machine::SnapshotRecord;
use crate::raft::type_config::{LogId, SnapshotMeta, StoredMembership};
use crate::round::group_data::GroupData;
use crate::storage::archive_scan::ArchiveScan;
use crate::storage::checkpoint::{AppliedRecord, Checkpointer, ScopeRows};
use crate::storage::dir_sync::{create_dir_durable, fsync_dir};
use crate::storage::sim_disk::SimDisk;
use ledger_core::hash::{block_hash, chain_commitment, ChainCommitment};
use ledger_core::state::ScopeState;
use ledger_core::types::*;
use rkyv::{Archive as RkyvArchive, Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

pub const SNAPSHOT_MAGIC: &[u8; 4] = b"LSNP";
pub const SNAPSHOT_FILE_VERSION: u32 = 1;
/// magic ‖ version ‖ header length ‖ header checksum.
const PREAMBLE_LEN: usize = 4 + 4 + 4 + 32;
const SNAPSHOT_EXT: &str = "snap";

/// One scope's summary in a snapshot header (SPEC §9.4).
#[derive(RkyvArchive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SnapshotScope {
    pub scope_id: i64,
    pub namespace_id: i64,
    pub vault_id: i64,
    pub vault_height: u64,
    pub state_root: Hash,
    pub key_count: u64,
    /// `block_hash` of the scope's header at `vault_height` (lets the next snapshot fill in its
    /// `previous_snapshot_hash` without the archive).
    pub block_hash: Hash,
    /// SPEC §7.8 over headers `F..=vault_height`; `None` when no block was added since the
    /// previous snapshot (F > vault_height).
    pub chain_commitment: Option<ChainCommitment>,
    pub genesis_hash: Hash,
    pub previous_snapshot_height: Option<u64>,
    /// `block_hash` of the scope's header at `previous_snapshot_height`.
    pub previous_snapshot_hash: Option<Hash>,
}

impl SnapshotScope {
    pub fn key(&self) -> ScopeKey {
        ScopeKey { namespace_id: NamespaceId(self.namespace_id), vault_id: VaultId(self.vault_id) }
    }
}

/// The header of a snapshot file.
#[derive(RkyvArchive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SnapshotHeader {
    pub group_id: u32,
    pub group_height: u64,
    pub last_log_id: Option<LogIdRecord>,
    pub membership: StoredMembershipRecord,
    pub scopes: Vec<SnapshotScope>,
    pub body_checksum: Hash,
}

impl SnapshotHeader {
    pub fn scope(&self, key: ScopeKey) -> Option<&SnapshotScope> {
        self.scopes.iter().find(|s| s.scope_id == key.scope_id())
    }
}

fn corrupt(detail: impl Into<String>) -> ShardError {
    ShardError::Corrupt { what: "snapshot", detail: detail.into() }
}

/// The whole file for `header` (its `body_checksum` is filled in here) and `body`.
pub fn encode_file(header: SnapshotHeader, body: &SnapshotRecord) -> (SnapshotHeader, Vec<u8>) {
    let (header, bytes, _) = encode_file_timed(header, body);
    (header, bytes)
}

/// [`encode_file`], also returning the time the rkyv encoding of body and header took
/// (`serialization_encode_seconds{kind="snapshot"}`; checksums and copies not included).
pub fn encode_file_timed(
    mut header: SnapshotHeader,
    body: &SnapshotRecord,
) -> (SnapshotHeader, Vec<u8>, Duration) {
    let started = Instant::now();
    let body = encode(body);
    let mut took = started.elapsed();
    header.body_checksum = *blake3::hash(&body).as_bytes();
    let started = Instant::now();
    let header_bytes = encode(&header);
    took += started.elapsed();
    let mut out = Vec::with_capacity(PREAMBLE_LEN + header_bytes.len() + body.len());
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&SNAPSHOT_FILE_VERSION.to_le_bytes());
    // A header is a few hundred bytes per scope; u32 covers any realistic group.
    out.extend_from_slice(&u32::try_from(header_bytes.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(blake3::hash(&header_bytes).as_bytes());
    out.extend_from_slice(&header_bytes);
    out.extend_from_slice(&body);
    (header, out, took)
}

/// How long decoding a snapshot file took, and its size, measured where it was decoded (often a
/// blocking thread) for the core to record (`serialization_decode_seconds{kind="snapshot"}`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Decoded {
    pub bytes: usize,
    pub took: Duration,
}

/// Parses the preamble and header (header checksum checked); returns the header and the body
/// slice (NOT yet checked).
fn split_file(bytes: &[u8]) -> Result<(SnapshotHeader, &[u8]), ShardError> {
    if bytes.len() < PREAMBLE_LEN || &bytes[0..4] != SNAPSHOT_MAGIC {
        return Err(corrupt("bad magic"));
    }
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[4..8]);
    if u32::from_le_bytes(word) != SNAPSHOT_FILE_VERSION {
        return Err(corrupt(format!("unknown version {}", u32::from_le_bytes(word))));
    }
    word.copy_from_slice(&bytes[8..12]);
    let header_len = u32::from_le_bytes(word) as usize;
    if header_len > SNAPSHOT_HEADER_BYTES_MAX || PREAMBLE_LEN + header_len > bytes.len() {
        return Err(corrupt(format!("header length {header_len} out of bounds")));
    }
    let header_bytes = &bytes[PREAMBLE_LEN..PREAMBLE_LEN + header_len];
    if blake3::hash(header_bytes).as_bytes() != &bytes[12..44] {
        return Err(corrupt("header checksum mismatch"));
    }
    let header = decode::<SnapshotHeader>("snapshot header", header_bytes)?;
    Ok((header, &bytes[PREAMBLE_LEN + header_len..]))
}

/// Header only (header checksum checked; the body is not read past the header).
pub fn read_header(path: &Path) -> Result<SnapshotHeader, ShardError> {
    use std::io::Read;
    let io = |source| ShardError::Io { path: path.to_path_buf(), source };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut preamble = [0u8; PREAMBLE_LEN];
    file.read_exact(&mut preamble).map_err(io)?;
    let mut word = [0u8; 4];
    word.copy_from_slice(&preamble[8..12]);
    let header_len = (u32::from_le_bytes(word) as usize).min(SNAPSHOT_HEADER_BYTES_MAX);
    let mut bytes = preamble.to_vec();
    bytes.resize(PREAMBLE_LEN + header_len, 0);
    file.read_exact(&mut bytes[PREAMBLE_LEN..]).map_err(io)?;
    split_file(&bytes).map(|(header, _)| header)
}

/// Checks both checksums and decodes header and body.
pub fn decode_file(bytes: &[u8]) -> Result<(SnapshotHeader, SnapshotRecord), ShardError> {
    decode_file_timed(bytes).map(|(header, record, _)| (header, record))
}

/// [`decode_file`], also returning how long the decoding took (the preamble and header with its
/// checksum, and the body's validation and decoding; the body checksum not included).
pub fn decode_file_timed(bytes: &[u8]) -> Result<(SnapshotHeader, SnapshotRecord, Decoded), ShardError> {
    let started = Instant::now();
    let (header, body) = split_file(bytes)?;
    let mut took = started.elapsed();
    if blake3::hash(body).as_bytes() != &header.body_checksum {
        return Err(corrupt("body checksum mismatch"));
    }
    let started = Instant::now();
    let record = decode::<SnapshotRecord>("snapshot body", body)?;
    took += started.elapsed();
    if record.group_id != header.group_id || record.applied.group_height != header.group_height {
        return Err(corrupt("header and body describe different group positions"));
    }
    Ok((header, record, Decoded { bytes: bytes.len(), took }))
}

/// Rebuilds the scopes of a decoded snapshot and HARD CHECKS each Healthy scope: its recomputed
/// root must equal both its stored meta root and the header's summary (SPEC §9.4 loading).
pub fn verify_scopes(header: &SnapshotHeader, record: SnapshotRecord) -> Result<Vec<ScopeState>, ShardError> {
    let mut out = Vec::with_capacity(record.scopes.len());
    for rows in record.scopes {
        let id = rows.meta.key.scope_id();
        let summary =
            header.scope(rows.meta.key).ok_or_else(|| corrupt(format!("scope {id} not in header")))?;
        let healthy = rows.meta.health == VaultHealth::Healthy;
        let scope = rows.into_scope();
        if healthy {
            let computed = scope.computed_root();
            if computed != summary.state_root || scope.meta.state_root != summary.state_root {
                return Err(corrupt(format!("scope {id}: rows do not reproduce the state root")));
            }
            if scope.meta.height != summary.vault_height {
                return Err(corrupt(format!("scope {id}: height differs from the header")));
            }
        }
        out.push(scope);
    }
    Ok(out)
}

/// Reads and fully verifies a snapshot file (checksums and every Healthy scope's root).
pub fn load_verified(path: &Path) -> Result<(SnapshotHeader, Vec<ScopeState>), ShardError> {
    let bytes = std::fs::read(path).map_err(|source| ShardError::Io { path: path.to_path_buf(), source })?;
    let (header, record) = decode_file(&bytes)?;
    let scopes = verify_scopes(&header, record)?;
    Ok((header, scopes))
}

/// One scope out of a snapshot file, fully verified (`None` if the snapshot does not hold it).
pub fn load_scope(path: &Path, key: ScopeKey) -> Result<Option<ScopeState>, ShardError> {
    let (_, scopes) = load_verified(path)?;
    Ok(scopes.into_iter().find(|s| s.meta.key == key))
}

/// A snapshot file whose checksums verified.
#[derive(Debug, Clone)]
pub struct CatalogEntry {
    pub path: PathBuf,
    pub header: SnapshotHeader,
}

/// A snapshot file that failed verification; `header` is set when only the body is bad.
#[derive(Debug, Clone)]
pub struct CorruptSnapshot {
    pub path: PathBuf,
    pub header: Option<SnapshotHeader>,
    pub reason: String,
}

/// What `SnapshotCatalog::scan` found in a snapshot directory.
pub struct ScannedSnapshots {
    pub entries: Vec<CatalogEntry>,
    pub corrupt: Vec<CorruptSnapshot>,
}

/// The snapshots of one group on this node (shared through `GroupData`).
pub struct SnapshotCatalog {
    /// `groups/gNNNNN/snapshots`; empty for memory-only groups (storage tests).
    pub dir: PathBuf,
    /// Verified snapshots, oldest first.
    pub entries: Vec<CatalogEntry>,
    /// Files that failed verification (reported by integrity checks, never used).
    pub corrupt: Vec<CorruptSnapshot>,
    /// One snapshot build, retention pass or integrity check at a time per group.
    pub lock: Rc<futures::lock::Mutex<()>>,
    /// When the last snapshot was taken (or the group opened).
    pub last_at: Cell<Instant>,
    /// Per scope id: bodies below this vault height were already compacted (SPEC §9.5).
    pub compacted_below: RefCell<std::collections::BTreeMap<i64, u64>>,
    /// Set when the group closes; stops its maintenance task.
    pub stopped: Rc<Cell<bool>>,
    /// An archive back-fill (peer/backfill.rs) is running for the group.
    pub backfilling: Rc<Cell<bool>>,
}

impl SnapshotCatalog {
    pub fn empty(dir: PathBuf) -> Self {
        SnapshotCatalog {
            dir,
            entries: Vec::new(),
            corrupt: Vec::new(),
            lock: Rc::new(futures::lock::Mutex::new(())),
            last_at: Cell::new(Instant::now()),
            compacted_below: RefCell::new(Default::default()),
            stopped: Rc::new(Cell::new(false)),
            backfilling: Rc::new(Cell::new(false)),
        }
    }

    /// The catalog of `dir` from its `scan`.
    pub fn with_files(dir: PathBuf, scan: ScannedSnapshots) -> Self {
        SnapshotCatalog { entries: scan.entries, corrupt: scan.corrupt, ..SnapshotCatalog::empty(dir) }
    }

    /// Scans `dir` (blocking: run it off the executor): every `*.snap` file, oldest first, with
    /// both checksums verified. Scope roots are verified when a snapshot is used.
    pub fn scan(dir: &Path) -> Result<ScannedSnapshots, ShardError> {
        let mut catalog = ScannedSnapshots { entries: Vec::new(), corrupt: Vec::new() };
        for path in snapshot_files(dir)? {
            let checked = std::fs::read(&path)
                .map_err(|source| ShardError::Io { path: path.clone(), source })
                .and_then(|bytes| decode_file(&bytes).map(|(header, _)| header));
            match checked {
                Ok(header) => catalog.entries.push(CatalogEntry { path, header }),
                Err(e) => {
                    crate::event!(warn, "snapshot_corrupt", path = %path.display(), error = %e);
                    let header = read_header(&path).ok();
                    catalog.corrupt.push(CorruptSnapshot { path, header, reason: e.to_string() });
                }
            }
        }
        Ok(catalog)
    }

    pub fn newest(&self) -> Option<&CatalogEntry> {
        self.entries.last()
    }

    /// The newest verified snapshot's summary of `key`.
    pub fn newest_scope(&self, key: ScopeKey) -> Option<(&CatalogEntry, &SnapshotScope)> {
        self.entries.iter().rev().find_map(|e| e.header.scope(key).map(|s| (e, s)))
    }

    /// Stops the group's maintenance task (the group is closing).
    pub fn stop(&self) {
        self.stopped.set(true);
    }
}

/// `*.snap` files of `dir`, oldest (lowest group height) first; none if `dir` does not exist.
fn snapshot_files(dir: &Path) -> Result<Vec<PathBuf>, ShardError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ShardError::Io { path: dir.to_path_buf(), source }),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == SNAPSHOT_EXT))
        .collect();
    // Names are zero-padded group heights: lexical order is height order.
    files.sort();
    Ok(files)
}

/// `snapshots/{group_height:09}.snap`.
pub fn snapshot_path(dir: &Path, group_height: u64) -> PathBuf {
    dir.join(format!("{group_height:09}.{SNAPSHOT_EXT}"))
}

/// The consistent cut a snapshot is built from.
pub struct SnapshotCut {
    pub group_id: u32,
    pub applied: AppliedRecord,
    pub scopes: Vec<ScopeState>,
    /// The previous snapshot's header (for chain commitments and back links).
    pub previous: Option<SnapshotHeader>,
}

impl SnapshotCut {
    /// Clones the applied state (on the core).
    pub fn take(data: &GroupData) -> Self {
        SnapshotCut {
            group_id: data.group_id.0,
            applied: AppliedRecord::of(data),
            scopes: data.scopes.values().cloned().collect(),
            previous: data.snapshots.newest().map(|e| e.header.clone()),
        }
    }

    /// Header summaries and body; `header_at(scope, height)` supplies the archived headers
    /// (heights ≥ 1) the chain commitments fold. Blocking when that reads the archive.
    pub fn build(
        self,
        mut header_at: impl FnMut(ScopeKey, u64) -> Result<BlockHeader, ShardError>,
    ) -> Result<(SnapshotHeader, SnapshotRecord), ShardError> {
        let mut summaries = Vec::with_capacity(self.scopes.len());
        for scope in &self.scopes {
            let meta = &scope.meta;
            let previous = self.previous.as_ref().and_then(|p| p.scope(meta.key));
            let from = previous.map(|p| p.vault_height + 1).unwrap_or(0);
            let commitment = if from > meta.height {
                None
            } else {
                let mut headers = Vec::new();
                if from == 0 {
                    headers.push(meta.genesis.clone());
                }
                for height in from.max(1)..=meta.height {
                    headers.push(header_at(meta.key, height)?);
                }
                chain_commitment(&headers)
            };
            summaries.push(SnapshotScope {
                scope_id: meta.key.scope_id(),
                namespace_id: meta.key.namespace_id.0,
                vault_id: meta.key.vault_id.0,
                vault_height: meta.height,
                state_root: meta.state_root,
                key_count: scope.key_count(),
                block_hash: meta.last_block_hash,
                chain_commitment: commitment,
                genesis_hash: block_hash(&meta.genesis),
                previous_snapshot_height: previous.map(|p| p.vault_height),
                previous_snapshot_hash: previous.map(|p| p.block_hash),
            });
        }
        let header = SnapshotHeader {
            group_id: self.group_id,
            group_height: self.applied.group_height,
            last_log_id: self.applied.log_id,
            membership: self.applied.membership.clone(),
            scopes: summaries,
            body_checksum: ZERO_HASH,
        };
        let body = SnapshotRecord {
            group_id: self.group_id,
            applied: self.applied,
            scopes: self.scopes.iter().map(ScopeRows::of).collect(),
        };
        Ok((header, body))
    }
}

/// Writes `bytes` as `dir/{group_height}.snap` through `tmp_dir` (write, fsync, rename, fsync
/// the directory), then deletes all but the newest `keep` snapshot files. Blocking. `sim`: the
/// simulated disk of a power-loss test, told which renames reached a synced directory.
pub fn write_file(
    dir: &Path,
    tmp_dir: &Path,
    group_id: u32,
    group_height: u64,
    bytes: &[u8],
    keep: usize,
    sim: Option<&SimDisk>,
) -> Result<PathBuf, ShardError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ShardError::Io { path, source }
    };
    // `snapshots/` must outlive a power loss once a file in it is relied on (the log is purged
    // behind it); `tmp/` need not, its files are copied nowhere else.
    create_dir_durable(dir).map_err(io(dir))?;
    std::fs::create_dir_all(tmp_dir).map_err(io(tmp_dir))?;
    let tmp = tmp_dir.join(format!("g{group_id:05}-{group_height:09}.{SNAPSHOT_EXT}.tmp"));
    let target = snapshot_path(dir, group_height);
    let placed = std::fs::File::create(&tmp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .map_err(io(&tmp))
        .and_then(|()| std::fs::rename(&tmp, &target).map_err(io(&target)));
    if let Err(e) = placed {
        // A failure that repeats (a full disk, a snapshot directory on another file system)
        // must not leave a snapshot-sized file behind each time.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Some(sim) = sim {
        sim.plain_file_renamed(&target);
    }
    fsync_dir(dir).map_err(io(dir))?;
    if let Some(sim) = sim {
        sim.dir_synced(dir);
        if !sim.deletes_persist() {
            return Ok(target);
        }
    }
    prune(dir, keep)?;
    Ok(target)
}

/// Deletes all but the newest `keep` snapshot files of `dir`; returns the deleted paths.
pub fn prune(dir: &Path, keep: usize) -> Result<Vec<PathBuf>, ShardError> {
    let files = snapshot_files(dir)?;
    let excess = files.len().saturating_sub(keep.max(1));
    let mut deleted = Vec::new();
    for path in files.into_iter().take(excess) {
        std::fs::remove_file(&path).map_err(|source| ShardError::Io { path: path.clone(), source })?;
        deleted.push(path);
    }
    Ok(deleted)
}

/// Takes a snapshot of the group now (SPEC §9.4): consistent cut on the core, durable checkpoint,
/// file built and written on a blocking thread; returns the new catalog entry (the newest one
/// unchanged if nothing was applied since it). Must run inside the owning executor.
pub async fn create(
    data: &Rc<RefCell<GroupData>>,
    checkpointer: &Rc<Checkpointer>,
    config: &ShardConfig,
) -> Result<CatalogEntry, ShardError> {
    create_with_bytes(data, checkpointer, config).await.map(|(entry, _)| entry)
}

/// [`create`], also returning the file's bytes when it wrote a new file (`None`: the newest file
/// already was at the applied log id; read it from `entry.path`). openraft's `build_snapshot`
/// hands these bytes on as its snapshot (state_machine.rs, D31).
pub async fn create_with_bytes(
    data: &Rc<RefCell<GroupData>>,
    checkpointer: &Rc<Checkpointer>,
    config: &ShardConfig,
) -> Result<(CatalogEntry, Option<Vec<u8>>), ShardError> {
    let lock = data.borrow().snapshots.lock.clone();
    let _one_at_a_time = lock.lock().await;
    let started = std::time::Instant::now();
    let (cut, dir, blocks_db) = {
        let data = data.borrow();
        if let Some(newest) = data.snapshots.newest() {
            if newest.header.group_height == data.group_height
                && newest.header.last_log_id == data.applied_log_id.as_ref().map(LogIdRecord::from)
            {
                return Ok((newest.clone(), None));
            }
        }
        (SnapshotCut::take(&data), data.snapshots.dir.clone(), data.archive.db().cloned())
    };
    if dir.as_os_str().is_empty() {
        return Err(corrupt("group has no snapshot directory"));
    }
    // Every block up to the cut becomes durable in blocks.redb (the chain commitments read them)
    // and state.redb covers at least the cut (log purges may rely on it).
    checkpointer.checkpoint().await?;
    let tmp_dir = config.data_dir.join("tmp");
    let keep = config.snapshots_keep;
    let sim = config.sim_disk.clone();
    let group_id = cut.group_id;
    let group_height = cut.applied.group_height;
    if config.faults.take_snapshot_failure(group_id) {
        let source = std::io::Error::other("injected fault: snapshot write failed");
        return Err(ShardError::Io { path: snapshot_path(&dir, group_height), source });
    }
    let (written, bytes, encoded_in) = glommio::executor()
        .spawn_blocking(move || -> Result<(CatalogEntry, Vec<u8>, Duration), ShardError> {
            let scan = blocks_db.as_deref().map(ArchiveScan::begin).transpose()?;
            let (header, body) = cut.build(|key, height| {
                let scan = scan.as_ref().ok_or_else(|| corrupt("no archive to read headers from"))?;
                scan.header(key, height)?
                    .map(|located| located.header)
                    .map_err(|fault| corrupt(format!("{key} header {height} unreadable: {fault}")))
            })?;
            let (header, bytes, encoded_in) = encode_file_timed(header, &body);
            let path = write_file(&dir, &tmp_dir, group_id, group_height, &bytes, keep, sim.as_deref())?;
            Ok((CatalogEntry { path, header }, bytes, encoded_in))
        })
        .await?;
    crate::metrics::with(|m| {
        m.snapshot_created(group_id, bytes.len() as u64, started.elapsed());
        m.codec(CodecKind::Snapshot, true, bytes.len(), encoded_in);
    });
    add_to_catalog(&mut data.borrow_mut().snapshots, written.clone());
    crate::event!(
        info,
        "snapshot_created",
        group = %group_id,
        group_height,
        path = %written.path.display()
    );
    Ok((written, Some(bytes)))
}

/// Records a file just written into `catalog` (replacing one of the same path) and forgets the
/// files `prune` deleted.
pub fn add_to_catalog(catalog: &mut SnapshotCatalog, written: CatalogEntry) {
    catalog.entries.retain(|e| e.path != written.path);
    catalog.entries.push(written);
    catalog.entries.sort_by_key(|e| (e.header.group_height, e.header.last_log_id.map(|l| l.index)));
    catalog.entries.retain(|e| e.path.exists());
    catalog.corrupt.retain(|c| c.path.exists());
    catalog.last_at.set(Instant::now());
}

/// openraft's view of a snapshot file: its cut (last log id and membership) and an id that is
/// the same for the same file after a restart.
pub fn raft_meta(header: &SnapshotHeader) -> SnapshotMeta {
    let last_log_id = header.last_log_id.map(LogId::from);
    let checksum: String = header.body_checksum[..6].iter().map(|b| format!("{b:02x}")).collect();
    let snapshot_id = match header.last_log_id {
        Some(l) => format!("{}-{}-{}-{checksum}", l.term, l.index, header.group_height),
        None => format!("0-0-{}-{checksum}", header.group_height),
    };
    SnapshotMeta {
        last_log_id,
        last_membership: StoredMembership::from(header.membership.clone()),
        snapshot_id,
    }
}

/// A received snapshot file that passed every check `verify_received` makes, decoded and with its
/// scopes rebuilt (off the core), ready to replace the group's state.
pub struct VerifiedSnapshot {
    pub snapshot_id: String,
    pub header: SnapshotHeader,
    pub applied: AppliedRecord,
    pub scopes: Vec<ScopeState>,
    pub bytes: Vec<u8>,
    /// How long the file took to decode (recorded by the core that installs it).
    pub decoded: Decoded,
}

impl std::fmt::Debug for VerifiedSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedSnapshot")
            .field("snapshot_id", &self.snapshot_id)
            .field("group_height", &self.header.group_height)
            .finish()
    }
}

/// Checks a snapshot received from the leader BEFORE anything of it is installed (D31):
/// * both checksums, the format, the group, and that its header states the cut openraft's `meta`
///   announces (last log id and membership);
/// * every Healthy scope's rows reproduce its state root, height and key count (`verify_scopes`);
/// * each scope's summary agrees with its meta (tip block hash, genesis hash), and its §7.8 chain
///   commitment is well formed (`to_height` = the tip, `from_height` right after the previous
///   snapshot's height or 0); a commitment starting at genesis of a scope still at height 0 is
///   recomputed; and when `blocks_db` already holds every header the commitment folds, it is
///   recomputed from them and must match.
///
/// Blocking (hashes every row; reads the archive): run it off the executor.
pub fn verify_received(
    bytes: Vec<u8>,
    group_id: u32,
    meta: &SnapshotMeta,
    blocks_db: Option<&redb::Database>,
) -> Result<VerifiedSnapshot, ShardError> {
    let (header, record, decoded) = decode_file_timed(&bytes)?;
    if header.group_id != group_id {
        return Err(corrupt(format!("snapshot of group {} sent to group {group_id}", header.group_id)));
    }
    if header.last_log_id != meta.last_log_id.as_ref().map(LogIdRecord::from) {
        return Err(corrupt("the file's last log id is not the one announced"));
    }
    if header.membership != StoredMembershipRecord::from(&meta.last_membership) {
        return Err(corrupt("the file's membership is not the one announced"));
    }
    if record.applied.log_id != header.last_log_id || record.applied.membership != header.membership {
        return Err(corrupt("header and body describe different cuts"));
    }
    if record.scopes.len() != header.scopes.len() {
        return Err(corrupt("header and body list different scopes"));
    }
    let applied = record.applied.clone();
    let scopes = verify_scopes(&header, record)?;
    let scan = blocks_db.map(ArchiveScan::begin).transpose()?;
    for scope in &scopes {
        let meta = &scope.meta;
        let id = meta.key.scope_id();
        let summary = header.scope(meta.key).ok_or_else(|| corrupt(format!("scope {id} not in header")))?;
        if summary.block_hash != meta.last_block_hash || summary.genesis_hash != block_hash(&meta.genesis) {
            return Err(corrupt(format!("scope {id}: summary hashes differ from its meta")));
        }
        let Some(c) = &summary.chain_commitment else {
            if summary.previous_snapshot_height != Some(summary.vault_height) {
                return Err(corrupt(format!("scope {id}: no chain commitment but new blocks")));
            }
            continue;
        };
        let from = summary.previous_snapshot_height.map(|h| h + 1).unwrap_or(0);
        if c.to_height != summary.vault_height || c.from_height != from {
            return Err(corrupt(format!("scope {id}: chain commitment covers the wrong heights")));
        }
        let mut headers = Vec::new();
        if from == 0 {
            headers.push(meta.genesis.clone());
        }
        let mut complete = true;
        for height in from.max(1)..=c.to_height {
            match scan.as_ref().map(|s| s.header(meta.key, height)).transpose()? {
                Some(Ok(located)) => headers.push(located.header),
                _ => {
                    complete = false;
                    break;
                }
            }
        }
        if complete && chain_commitment(&headers).as_ref() != Some(c) {
            return Err(corrupt(format!("scope {id}: chain commitment does not match the headers")));
        }
    }
    Ok(VerifiedSnapshot {
        snapshot_id: raft_meta(&header).snapshot_id,
        header,
        applied,
        scopes,
        bytes,
        decoded,
    })
}

/// The newest snapshot file of `catalog` that loads and verifies completely (checksums and every
/// Healthy scope's root), for a group whose `state.redb` is unusable (SPEC §9.6 step 4); files
/// that fail are reported and skipped for older ones; with the decoding time of the one that
/// loaded. Blocking.
pub fn restore_newest(
    entries: &[CatalogEntry],
) -> Option<(CatalogEntry, AppliedRecord, Vec<ScopeState>, Decoded)> {
    for entry in entries.iter().rev() {
        let loaded = std::fs::read(&entry.path)
            .map_err(|source| ShardError::Io { path: entry.path.clone(), source })
            .and_then(|bytes| decode_file_timed(&bytes))
            .and_then(|(header, record, decoded)| {
                let applied = record.applied.clone();
                verify_scopes(&header, record).map(|scopes| (applied, scopes, decoded))
            });
        match loaded {
            Ok((applied, scopes, decoded)) => return Some((entry.clone(), applied, scopes, decoded)),
            Err(e) => crate::event!(warn, "snapshot_skipped", path = %entry.path.display(), error = %e),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::storage::archive::Archive;
    use ledger_core::state::{BlockContext, BlockDraft};
    use std::collections::BTreeMap;

    fn key() -> ScopeKey {
        ScopeKey { namespace_id: NamespaceId(2), vault_id: VaultId(5) }
    }

    /// A group with one scope holding `blocks` one-entity blocks, and the headers by height
    /// (genesis included).
    fn group(blocks: u64) -> (GroupData, BTreeMap<u64, BlockHeader>) {
        let ctx0 = BlockContext {
            timestamp: Timestamp { secs: 1, nanos: 0 },
            leader_id: 1,
            term: 1,
            committed_index: 1,
        };
        let mut data = GroupData::new(GroupId(3), Archive::in_memory());
        let mut scope = ScopeState::genesis(key(), RetentionPolicy::default(), &ctx0);
        let mut headers = BTreeMap::from([(0, scope.meta.genesis.clone())]);
        for b in 1..=blocks {
            let ctx = BlockContext { committed_index: b + 1, ..ctx0 };
            let mut draft = BlockDraft::new(&scope);
            draft
                .try_apply(Transaction {
                    id: [b as u8; 16],
                    client_id: "c".into(),
                    sequence: b,
                    operations: vec![Operation::SetEntity {
                        key: format!("k{b}"),
                        value: vec![b as u8],
                        expires_at: None,
                        condition: None,
                    }],
                    timestamp: ctx.timestamp,
                    actor: "t".into(),
                })
                .unwrap();
            let (_, delta) = draft.finish(&ctx);
            headers.insert(b, delta.header.clone());
            scope.commit(delta);
        }
        data.group_height = blocks;
        data.scopes.insert(key(), scope);
        (data, headers)
    }

    fn file_of(data: &GroupData, headers: &BTreeMap<u64, BlockHeader>) -> (SnapshotHeader, Vec<u8>) {
        let (header, body) = SnapshotCut::take(data).build(|_, h| Ok(headers[&h].clone())).unwrap();
        encode_file(header, &body)
    }

    /// Proves the file format round-trips: header and body decode, both checksums hold, the
    /// scope is rebuilt with the same root, height, key count and client state.
    #[test]
    fn t01_file_round_trip() {
        let (data, headers) = group(6);
        let (header, bytes) = file_of(&data, &headers);
        let (decoded, record) = decode_file(&bytes).unwrap();
        assert_eq!(decoded, header);
        let scopes = verify_scopes(&decoded, record).unwrap();
        let original = &data.scopes[&key()];
        assert_eq!(scopes[0].meta, original.meta);
        assert_eq!(scopes[0].computed_root(), original.meta.state_root);
        assert_eq!(scopes[0].key_count(), 6);
        assert_eq!(scopes[0].client_state("c").last_committed_seq, 6);
        let summary = decoded.scope(key()).unwrap();
        assert_eq!(summary.vault_height, 6);
        assert_eq!(summary.previous_snapshot_height, None);
        let all: Vec<_> = headers.values().cloned().collect();
        assert_eq!(summary.chain_commitment, chain_commitment(&all));
        assert_eq!(summary.chain_commitment.unwrap().from_height, 0);
        assert_eq!(summary.genesis_hash, block_hash(&original.meta.genesis));
    }

    /// Proves a flipped byte anywhere is rejected: in the body (body checksum), in the header
    /// (header checksum), in the magic; and that `read_header` alone ignores body damage.
    #[test]
    fn t02_checksum_corruption_rejected() {
        let (data, headers) = group(3);
        let (header, bytes) = file_of(&data, &headers);
        let mut body_flip = bytes.clone();
        let last = body_flip.len() - 3;
        body_flip[last] ^= 0x40;
        let err = decode_file(&body_flip).unwrap_err().to_string();
        assert!(err.contains("body checksum"), "{err}");
        let mut header_flip = bytes.clone();
        header_flip[PREAMBLE_LEN + 5] ^= 0x01;
        assert!(decode_file(&header_flip).unwrap_err().to_string().contains("header checksum"));
        let mut magic = bytes.clone();
        magic[0] = b'X';
        assert!(decode_file(&magic).is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("000000003.snap");
        std::fs::write(&path, &body_flip).unwrap();
        assert_eq!(read_header(&path).unwrap(), header);
        assert!(load_verified(&path).is_err());
    }

    /// Proves rows that do not reproduce the recorded root are rejected even when both
    /// checksums are valid (a snapshot written from corrupted memory).
    #[test]
    fn t03_root_mismatch_rejected() {
        let (data, headers) = group(4);
        let (header, _) = file_of(&data, &headers);
        let mut rows = ScopeRows::of(&data.scopes[&key()]);
        rows.entities[0].1 = b"tampered".to_vec();
        let record = SnapshotRecord { group_id: 3, applied: AppliedRecord::of(&data), scopes: vec![rows] };
        let (_, bytes) = encode_file(header, &record);
        let (header, record) = decode_file(&bytes).unwrap();
        let err = verify_scopes(&header, record).unwrap_err().to_string();
        assert!(err.contains("do not reproduce the state root"), "{err}");
    }

    /// Proves the catalog keeps the newest `keep` files, loads them oldest first, and lists a
    /// corrupted file separately (with its header when only the body is damaged).
    #[test]
    fn t04_keep_three_and_catalog() {
        let root = tempfile::tempdir().unwrap();
        let (dir, tmp) = (root.path().join("snapshots"), root.path().join("tmp"));
        let (data, headers) = group(2);
        let (_, bytes) = file_of(&data, &headers);
        for height in [10, 20, 30, 40, 50] {
            write_file(&dir, &tmp, 3, height, &bytes, 3, None).unwrap();
        }
        let names: Vec<_> = snapshot_files(&dir).unwrap();
        assert_eq!(names, vec![snapshot_path(&dir, 30), snapshot_path(&dir, 40), snapshot_path(&dir, 50)]);
        assert!(!snapshot_path(&dir, 10).exists());
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        std::fs::write(snapshot_path(&dir, 40), bad).unwrap();
        let catalog = SnapshotCatalog::with_files(dir.clone(), SnapshotCatalog::scan(&dir).unwrap());
        let valid: Vec<_> = catalog.entries.iter().map(|e| e.path.clone()).collect();
        assert_eq!(valid, vec![snapshot_path(&dir, 30), snapshot_path(&dir, 50)]);
        assert_eq!(catalog.corrupt.len(), 1);
        assert!(catalog.corrupt[0].header.is_some());
        assert_eq!(catalog.newest().unwrap().path, snapshot_path(&dir, 50));
    }

    /// Proves a received snapshot is checked before install: a good one passes; one announced
    /// with another cut, sent to another group, with a damaged body, or whose summary's tip hash
    /// differs from its rows' meta is refused.
    #[test]
    fn t05_verify_received_refuses_bad_snapshots() {
        let (data, headers) = group(4);
        let (header, bytes) = file_of(&data, &headers);
        let meta = raft_meta(&header);
        let ok = verify_received(bytes.clone(), 3, &meta, None).unwrap();
        assert_eq!(ok.snapshot_id, meta.snapshot_id);
        assert_eq!(ok.scopes[0].meta.state_root, data.scopes[&key()].meta.state_root);
        assert!(verify_received(bytes.clone(), 4, &meta, None).is_err());
        let mut other_cut = meta.clone();
        other_cut.last_log_id = Some(LogId::from(LogIdRecord { term: 9, node_id: 1, index: 99 }));
        assert!(verify_received(bytes.clone(), 3, &other_cut, None).is_err());
        let mut damaged = bytes.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(verify_received(damaged, 3, &meta, None).is_err());
        let (mut bad_header, body) = SnapshotCut::take(&data).build(|_, h| Ok(headers[&h].clone())).unwrap();
        bad_header.scopes[0].block_hash = ZERO_HASH;
        let (bad_header, bad) = encode_file(bad_header, &body);
        let err = verify_received(bad, 3, &raft_meta(&bad_header), None).unwrap_err().to_string();
        assert!(err.contains("summary hashes"), "{err}");
    }

    /// A snapshot file that cannot be put in place (here its name is taken by a directory, as a
    /// rename across file systems or into a full disk would fail) is an error and leaves no
    /// temporary file behind: a failure that repeats must not fill the disk.
    #[test]
    fn t06_failed_write_leaves_no_temporary_file() {
        let root = tempfile::tempdir().unwrap();
        let (dir, tmp) = (root.path().join("snapshots"), root.path().join("tmp"));
        let (data, headers) = group(2);
        let (_, bytes) = file_of(&data, &headers);
        std::fs::create_dir_all(snapshot_path(&dir, 7).join("occupied")).unwrap();
        let err = write_file(&dir, &tmp, 3, 7, &bytes, 3, None).unwrap_err();
        assert!(matches!(err, ShardError::Io { .. }), "{err}");
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "a temporary file was left behind");
        write_file(&dir, &tmp, 3, 8, &bytes, 3, None).unwrap();
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    }
}
