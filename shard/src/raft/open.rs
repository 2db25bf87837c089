//! Opening one Raft group on its owning core (SPEC §9.6): its directory and redb files, the
//! applied state recovered from the checkpoint, openraft started with this node as the single
//! voter, and the periodic checkpoint. It assembles the storage layer, the state machine and the
//! network, so it sits above them; what "open" waits for is what a multi-node join will change.

use crate::config::ShardConfig;
use crate::constants::{
    BLOCKS_DB_CACHE_BYTES, CHECKPOINT_INTERVAL_MS, LEADER_WAIT_MS_MAX, RAFT_PAYLOAD_ENTRIES_MAX,
    STATE_DB_CACHE_BYTES,
};
use crate::db::{open_db, rename_db};
use crate::error::ShardError;
use crate::peer::pool::PeerPool;
use crate::raft::core_log::CoreLog;
use crate::raft::log_store::{LogStats, LogStore};
use crate::raft::network::PeerNetworkFactory;
use crate::raft::state_machine::{load_snapshot_state, SnapshotEnv, StateMachine};
use crate::raft::type_config::{LedgerRaft, LogId, StoredMembership};
use crate::round::group_data::GroupData;
use crate::round::tree_worker::TreeWorker;
use crate::storage::archive::Archive;
use crate::storage::checkpoint::{load_state, retry_open, AppliedRecord, Checkpointer, LoadedState};
use crate::storage::dir_sync::{create_dir_durable, fsync_dir};
use crate::storage::log_files::LogDir;
use crate::storage::sim_disk::SimDisk;
use crate::storage::snapshot::{restore_newest, CatalogEntry, SnapshotCatalog};
use ledger_core::state::ScopeState;
use ledger_core::types::*;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// Knobs of `open_group_with` (tests shorten or disable the periodic checkpoint).
#[derive(Debug, Clone)]
pub struct GroupOptions {
    /// `None`: no periodic checkpoint (only `OpenGroup::checkpoint` and `OpenGroup::close` write one).
    pub checkpoint_interval: Option<Duration>,
    /// The core's peer connections (`None`: a pool of the group's own, for tests of one node).
    pub peers: Option<Rc<PeerPool>>,
    /// The core that owns the group: its log lives in that core's log (`log/core-NN`).
    pub core: u16,
}

impl Default for GroupOptions {
    fn default() -> Self {
        GroupOptions {
            checkpoint_interval: Some(Duration::from_millis(CHECKPOINT_INTERVAL_MS)),
            peers: None,
            core: 0,
        }
    }
}

/// A Raft group as opening it leaves it: the openraft handle, its applied state and the files
/// behind them (checkpointer, log statistics, directory). The block builder that serves it is
/// `round::group::Group`, made from this one's handles (`Shard::open_group`).
pub struct OpenGroup {
    pub id: GroupId,
    pub raft: LedgerRaft,
    pub data: Rc<RefCell<GroupData>>,
    pub checkpointer: Rc<Checkpointer>,
    pub log_stats: Arc<LogStats>,
    pub dir: PathBuf,
    stop_checkpoints: Option<futures::channel::oneshot::Sender<()>>,
}

impl OpenGroup {
    /// Durable checkpoint now (e.g. before a snapshot or on request).
    pub async fn checkpoint(&self) -> Result<bool, ShardError> {
        self.checkpointer.checkpoint().await
    }

    /// Clean shutdown: stop Raft, stop the periodic checkpoint, write a final durable checkpoint
    /// (SPEC §9.6: a clean shutdown leaves nothing to replay).
    pub async fn close(mut self) -> Result<(), ShardError> {
        // Checkpoint even if openraft failed to stop cleanly: applied state is still valid.
        let stopped = self.raft.shutdown().await.map_err(|e| ShardError::raft("shutdown", e));
        if let Some(stop) = self.stop_checkpoints.take() {
            let _ = stop.send(());
        }
        self.checkpointer.checkpoint_merging(true).await?;
        stopped
    }
}

/// `{data_dir}/log/core-NN`: the Raft log shared by the groups of core `core` (D38).
pub fn core_log_dir(config: &ShardConfig, core: u16) -> LogDir {
    LogDir::new(config.data_dir.join("log").join(format!("core-{core:02}")), config.sim_disk.as_ref())
}

/// `{data_dir}/groups/gNNNNN` (SPEC §9.1).
pub fn group_dir(config: &ShardConfig, group: GroupId) -> PathBuf {
    config.data_dir.join("groups").join(format!("g{:05}", group.0))
}

/// Opens (creating on first use) a Raft group and returns it once this node leads it and has
/// re-applied the whole committed log (SPEC §9.6): creates the group directory, attaches to the core's
/// Raft log (`core_log.rs`), opens `state.redb` and `blocks.redb`, loads every scope from `state.redb` and hard-checks each
/// recomputed state root against its `ScopeMeta` and its archived header (mismatch ⇒ the scope is
/// Diverged, not the node), starts openraft, initializes a never-initialized group with this node
/// as its single voter (address = `advertise_addr`), waits for leadership and for apply to reach the
/// end of the log, and starts the periodic checkpoint. Single-node only for now: waiting for
/// leadership is what a multi-node join will change. Must be called inside the owning glommio
/// executor (openraft's timers and the checkpointer's blocking I/O live there).
pub async fn open_group_with(
    config: &ShardConfig,
    group: GroupId,
    options: GroupOptions,
) -> Result<OpenGroup, ShardError> {
    let (min_log_index, members) = match open_attempt(config, group, options.clone(), true).await? {
        Opened::Ready(group) => return Ok(*group),
        Opened::NeedsSnapshot { min_log_index, members } => (min_log_index, members),
    };
    // D83: every file of the first attempt is closed by now (its locals dropped).
    let pool = options.peers.clone().unwrap_or_else(|| PeerPool::new(config));
    let snapshots = group_dir(config, group).join("snapshots");
    if let Err(e) =
        crate::raft::snapshot_fetch::fetch(config, &pool, &members, group, min_log_index, &snapshots).await
    {
        return Err(ShardError::Corrupt {
            what: "group state",
            detail: format!(
                "state.redb is lost or unusable and no snapshot here covers the purged log (index {min_log_index}); \
                 fetching one from another member failed: {e}"
            ),
        });
    }
    match open_attempt(config, group, options, false).await? {
        Opened::Ready(group) => Ok(*group),
        Opened::NeedsSnapshot { .. } => Err(ShardError::Corrupt {
            what: "group state",
            detail: "the snapshot fetched from a peer does not cover the purged log".into(),
        }),
    }
}

/// What one attempt to open a group came to.
enum Opened {
    Ready(Box<OpenGroup>),
    /// The group's state must come from a snapshot, and none here covers its purged log: a
    /// member's file whose last log index is at least `min_log_index` is needed (D83).
    NeedsSnapshot {
        min_log_index: u64,
        members: Vec<(u64, String)>,
    },
}

async fn open_attempt(
    config: &ShardConfig,
    group: GroupId,
    options: GroupOptions,
    may_fetch: bool,
) -> Result<Opened, ShardError> {
    let dir = group_dir(config, group);
    let dir_io = |source| ShardError::Io { path: dir.clone(), source };
    // A release of this copy (D92) that a crash cut short is finished before anything opens.
    crate::maintenance::release::finish_pending(config, group, options.core)
        .await
        .map_err(|e| dir_io(std::io::Error::other(e)))?;
    // `groups/gNNNNN` and the files created in it below must survive a power loss.
    create_dir_durable(&dir).map_err(dir_io)?;
    let sim = config.sim_disk.as_ref();

    let blocks_db =
        Arc::new(retry_open(|| open_db(&dir.join("blocks.redb"), BLOCKS_DB_CACHE_BYTES, sim)).await?);
    let log_store = open_group_log(config, group, options.core, &dir).await?;
    let catalog = scan_snapshots(&dir).await?;
    let (state_db, loaded, restored) =
        open_state(&dir, group, &catalog, log_store.last_purged().is_some(), sim).await?;
    fsync_dir(&dir).map_err(dir_io)?;

    let mut data = new_group_data(config, group, Archive::open(blocks_db)?, catalog, loaded.applied);
    install_scopes(&mut data, loaded.scopes, group)?;
    let restoring = restored.is_some();
    if let Some((applied, scopes)) = restored {
        // SPEC §9.6 step 4: the newest valid snapshot replaces the unusable state; openraft
        // re-applies the log after its cut, which the log still holds (purges never pass the
        // snapshot openraft last built or installed, SPEC §8.5).
        load_snapshot_state(&mut data, &applied, scopes);
    }
    if let Some(needs) = check_state_against_log(config, &data, &log_store, may_fetch, group)? {
        return Ok(needs);
    }
    let data = Rc::new(RefCell::new(data));
    let checkpointer = Rc::new(
        Checkpointer::new(data.clone(), state_db, loaded.journal_rows, config.journal_merge_rows_min)
            .with_faults(config.faults.clone()),
    );
    if restoring {
        // The restored state becomes durable at once (a full rewrite of the new state.redb).
        checkpointer.checkpoint().await?;
    }
    log_store.set_purge_limit(checkpointer.durable());
    let log_stats = log_store.stats();
    let raft = start_raft(config, group, &options, &data, &checkpointer, &log_store).await?;

    initialize_if_new(config, group, &raft).await?;
    if config.cluster.is_some() {
        // A member of a cluster serves as soon as its group runs: leadership comes and goes,
        // and the block builder waits for it (round/group.rs). An archive left with gaps by a
        // snapshot install before a restart is back-filled from the other members.
        if let Some(peers) = &options.peers {
            crate::peer::backfill::spawn(data.clone(), peers.clone());
        }
        return Ok(running(group, raft, data, checkpointer, log_stats, dir, options.checkpoint_interval));
    }
    wait_until_led(&raft, &data, config.node_id, group).await?;

    Ok(running(group, raft, data, checkpointer, log_stats, dir, options.checkpoint_interval))
}

/// The group's view of its core's Raft log (`core_log.rs`), with the test fault switch set.
/// Refuses a group directory that still holds a log of the older per-group format (D38).
async fn open_group_log(
    config: &ShardConfig,
    group: GroupId,
    core: u16,
    dir: &std::path::Path,
) -> Result<LogStore, ShardError> {
    let core_log = CoreLog::shared(core_log_dir(config, core))?;
    let log_store = retry_open(|| LogStore::open(core_log.clone(), group)).await?;
    if log_store.last_log_id().is_none() && dir.join("raft.redb").exists() {
        // An older version kept each group's log in its own `raft.redb` (D38): refuse rather
        // than start this group over from an empty log.
        return Err(ShardError::Corrupt {
            what: "group log",
            detail: format!(
                "{} holds this group's log in the format of an older version; this version keeps it in {}",
                dir.join("raft.redb").display(),
                core_log.dir().path().display()
            ),
        });
    }
    log_store.set_faults(config.faults.clone());
    Ok(log_store)
}

/// The group's snapshot files (`snapshots/`), scanned off the executor.
async fn scan_snapshots(dir: &std::path::Path) -> Result<SnapshotCatalog, ShardError> {
    let dir = dir.join("snapshots");
    let scan_dir = dir.clone();
    let scan = glommio::executor().spawn_blocking(move || SnapshotCatalog::scan(&scan_dir)).await?;
    Ok(SnapshotCatalog::with_files(dir, scan))
}

/// The group's in-memory state before its scopes are installed: the archive, the tree thread,
/// the snapshot catalog and how far the checkpoint had applied (`applied`, if any).
fn new_group_data(
    config: &ShardConfig,
    group: GroupId,
    archive: Archive,
    catalog: SnapshotCatalog,
    applied: Option<AppliedRecord>,
) -> GroupData {
    let mut data = GroupData::new(group, archive);
    data.trees = TreeWorker::start(
        &format!("tree-g{}", group.0),
        config.helper_hooks,
        config.tree_thread_min_leaves,
        config.tree_thread_min_changes,
    );
    data.history.release_through(data.trees.clone());
    data.snapshots = catalog;
    if let Some(applied) = applied {
        data.applied_log_id = applied.log_id.map(LogId::from);
        data.applied_index = data.applied_log_id.map(|l| l.index).unwrap_or(0);
        data.group_height = applied.group_height;
        data.last_group_hash = applied.last_group_hash;
        data.membership = StoredMembership::from(applied.membership);
        data.durable_log_id = data.applied_log_id;
    }
    data
}

/// Starts openraft for the group over its log store and state machine, with the peer network,
/// and keeps the log store told whether the group has other voters (D50).
async fn start_raft(
    config: &ShardConfig,
    group: GroupId,
    options: &GroupOptions,
    data: &Rc<RefCell<GroupData>>,
    checkpointer: &Rc<Checkpointer>,
    log_store: &LogStore,
) -> Result<LedgerRaft, ShardError> {
    let pool = options.peers.clone().unwrap_or_else(|| PeerPool::new(config));
    let contact = data.borrow().contact.clone();
    let env = SnapshotEnv { config: Arc::new(config.clone()), peers: options.peers.clone() };
    log_store.set_node_id(config.node_id);
    if !sole_voter(data, log_store, config.node_id).await
        && log_store.forget_leadership(config.node_id).await?
    {
        crate::event!(
            info,
            "leadership_not_resumed",
            group = group.0,
            "led this group when it stopped; leads again only by a new election (D89)"
        );
    }
    let sm = StateMachine::new(data.clone(), Some(checkpointer.clone()))
        .with_files(env)
        .applying_durable_from(log_store.clone());

    let raft_config = raft_config(config, group)?;
    let network = PeerNetworkFactory::new(
        group,
        pool,
        log_store.clone(),
        std::time::Duration::from_millis(config.raft_heartbeat_ms),
        contact,
    );
    let raft = LedgerRaft::new(config.node_id, Arc::new(raft_config), network, log_store.clone(), sm)
        .await
        .map_err(|e| ShardError::raft("start", e))?;
    follow_server_changes(group, &raft, log_store.replicated_setter());
    Ok(raft)
}

/// Whether this node is the group's only voter in the applied membership and in every membership
/// entry of its log after it: then no follower can hold an entry this node lost, and openraft may
/// resume a leadership it saved (D89; a single node starts without an election).
async fn sole_voter(data: &Rc<RefCell<GroupData>>, log_store: &LogStore, node_id: u64) -> bool {
    let (applied_membership_alone, applied) = {
        let data = data.borrow();
        let alone = data.membership.membership().voter_ids().all(|id| id == node_id);
        (alone, data.applied_log_id)
    };
    if !applied_membership_alone {
        return false;
    }
    // Nothing applied yet: from index 0, openraft's initial membership entry. A snapshot
    // installed meanwhile may have purged the log past the checkpoint.
    let first = applied.map_or(0, |a| a.index + 1).max(log_store.last_purged().map_or(0, |p| p.index + 1));
    let Some(last) = log_store.last_log_id().map(|l| l.index).filter(|last| *last >= first) else {
        return true;
    };
    let mut reader = log_store.clone();
    let after = match openraft::storage::RaftLogReader::try_get_log_entries(&mut reader, first..=last).await {
        Ok(entries) => entries,
        Err(e) => {
            // Not knowing is not being alone: the node then starts as a follower.
            crate::event!(warn, "membership_unknown", error = %e, "could not read the log past the checkpoint");
            return false;
        }
    };
    after.iter().all(|entry| match &entry.payload {
        openraft::EntryPayload::Membership(m) => m.voter_ids().all(|id| id == node_id),
        _ => true,
    })
}

/// Installs the checkpointed scopes in `data`; a healthy scope whose state root differs from its
/// archived tip header's is marked Diverged (SPEC §9.6 step 5).
fn install_scopes(
    data: &mut GroupData,
    scopes: Vec<crate::storage::checkpoint::ScopeRows>,
    group: GroupId,
) -> Result<(), ShardError> {
    for rows in scopes {
        let mut scope = rows.into_scope();
        if scope.meta.health == VaultHealth::Healthy && scope.meta.height > 0 {
            let archived = data.archive.get_header(scope.meta.key, scope.meta.height)?;
            let archived_root = archived.as_ref().map(|h| h.state_root);
            if archived_root != Some(scope.meta.state_root) {
                crate::event!(
                    error,
                    "state_root_divergence",
                    source = "archive_check",
                    group = %group,
                    scope = %scope.meta.key,
                    height = scope.meta.height,
                    "the checkpointed state root differs from the archived block's"
                );
                scope.meta.health = VaultHealth::Diverged {
                    expected: scope.meta.state_root,
                    computed: archived_root.unwrap_or(ZERO_HASH),
                    at_height: scope.meta.height,
                };
            }
        }
        if scope.meta.health != VaultHealth::Healthy {
            data.dirty.scopes.insert(scope.meta.key);
        }
        data.scopes.insert(scope.meta.key, scope);
    }
    Ok(())
}

/// The loaded state must fit the log: not behind what the log purged (a cluster member then
/// fetches a snapshot from another: `Some(NeedsSnapshot)`) and not ahead of its last entry.
fn check_state_against_log(
    config: &ShardConfig,
    data: &GroupData,
    log_store: &LogStore,
    may_fetch: bool,
    group: GroupId,
) -> Result<Option<Opened>, ShardError> {
    // A checkpointed state is never behind the purged log (purges stop at the durable
    // checkpoint); a restored one, or none at all, may be. In a cluster another member's
    // snapshot covers it (D83).
    if let Some(purged) = log_store.last_purged() {
        if Some(purged.index) > data.applied_log_id.map(|l| l.index) {
            if may_fetch && config.cluster.is_some() {
                let mut members: BTreeMap<u64, String> =
                    config.cluster.iter().flat_map(|plan| plan.members.clone()).collect();
                members.extend(data.membership.membership().nodes().map(|(id, n)| (*id, n.addr.clone())));
                members.remove(&config.node_id);
                crate::event!(
                    warn,
                    "snapshot_needed_from_peer",
                    group = %group,
                    applied = data.applied_index,
                    purged = purged.index
                );
                return Ok(Some(Opened::NeedsSnapshot {
                    min_log_index: purged.index,
                    members: members.into_iter().collect(),
                }));
            }
            return Err(ShardError::Corrupt {
                what: "group state",
                detail: format!(
                    "state.redb is lost or unusable and the newest valid snapshot here (log index {}) is older than the purged log ({}){}",
                    data.applied_index,
                    purged.index,
                    if config.cluster.is_some() { "; no other member served one that covers it" } else { "" }
                ),
            });
        }
    }
    // The log is durable before anything is applied and never purged past the durable
    // checkpoint, so a checkpoint ahead of the log means a lost or foreign log file, unless a
    // snapshot installed just before a crash covers it (openraft then purges up to it).
    let log_last = log_store.last_log_id().map(|l| l.index).unwrap_or(0);
    let covered = data
        .snapshots
        .entries
        .iter()
        .any(|e| e.header.last_log_id.is_some_and(|l| l.index >= data.applied_index));
    if data.applied_index > log_last && !covered {
        return Err(ShardError::Corrupt {
            what: "group state",
            detail: format!(
                "state.redb applied index {} is ahead of the raft log's last index {log_last}",
                data.applied_index
            ),
        });
    }
    Ok(None)
}

/// openraft's settings for `group`.
fn raft_config(config: &ShardConfig, group: GroupId) -> Result<openraft::Config, ShardError> {
    openraft::Config {
        cluster_name: format!("ledger-g{:05}", group.0),
        heartbeat_interval: config.raft_heartbeat_ms,
        election_timeout_min: config.raft_election_min_ms,
        election_timeout_max: config.raft_election_max_ms,
        max_payload_entries: RAFT_PAYLOAD_ENTRIES_MAX,
        // openraft's snapshot is the SPEC §9.4 file (state_machine.rs, D31): one after
        // `raft_snapshot_logs` entries, then the log is purged behind it, keeping `raft_log_keep`
        // entries for lagging followers (and never past the durable checkpoint, log_store.rs).
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.raft_snapshot_logs),
        max_in_snapshot_log_to_keep: config.raft_log_keep,
        // A large snapshot streams in 1 MiB chunks and is verified before it is installed.
        install_snapshot_timeout: 10_000,
        // In a cluster the core ticks every group's heartbeat at once (shard.rs
        // `heartbeat_loop`), so the heartbeats of all its groups to one node leave in one frame.
        enable_heartbeat: config.cluster.is_none(),
        // In a cluster a voter starts an election only after a pre-vote (raft/election.rs, D93).
        enable_elect: config.cluster.is_none(),
        ..Default::default()
    }
    .validate()
    .map_err(|e| ShardError::raft("config", e))
}

/// A new group's first membership (SPEC §10.2): a single node's own, or on the member that
/// initializes it every member; the other members wait to be brought in.
async fn initialize_if_new(
    config: &ShardConfig,
    group: GroupId,
    raft: &LedgerRaft,
) -> Result<(), ShardError> {
    if !raft.is_initialized().await.map_err(|e| ShardError::raft("is_initialized", e))? {
        let members: Option<BTreeMap<u64, openraft::BasicNode>> = match &config.cluster {
            None => Some(BTreeMap::from([(
                config.node_id,
                openraft::BasicNode { addr: config.advertise_addr.clone() },
            )])),
            // SPEC §10.2: one member initializes with the group's voters (`initializer_of`);
            // the others are brought in by its leader. A data group's voters are
            // `replication_factor` of the members (SPEC §10.5, `members_of`).
            // `_system` starts with at most five voters (SPEC §10.4); its leader adds the
            // other members as learners (admin/system_voters.rs).
            // A copy this node released (D92) is of a group that exists already.
            Some(plan)
                if plan.initializer_of(group) == config.node_id
                    && !crate::maintenance::release::was_released(&group_dir(config, group)) =>
            {
                Some(
                    plan.members_of(group)
                        .into_iter()
                        .take(if group.0 == 0 {
                            crate::admin::system_voters::SYSTEM_VOTERS_MAX
                        } else {
                            usize::MAX
                        })
                        .map(|(id, addr)| (id, openraft::BasicNode { addr }))
                        .collect(),
                )
            }
            Some(_) => None,
        };
        if let Some(members) = members {
            raft.initialize(members).await.map_err(|e| ShardError::raft("initialize", e))?;
        }
    }
    Ok(())
}

/// A single node's group: this node leads, and its own first entry of the term is applied, so
/// everything committed before has been re-applied (SPEC §8.2 step 1's precondition).
async fn wait_until_led(
    raft: &LedgerRaft,
    data: &Rc<RefCell<GroupData>>,
    node_id: u64,
    group: GroupId,
) -> Result<(), ShardError> {
    let wait = Some(Duration::from_millis(LEADER_WAIT_MS_MAX));
    // Leader, and the leader's own first entry of its term applied: everything committed before
    // it has been re-applied (SPEC §8.2 step 1's precondition holds on return).
    let led = raft
        .wait(wait)
        .metrics(
            |m| {
                m.current_leader == Some(node_id)
                    && m.last_applied.is_some_and(|a| a.leader_id.term == m.current_term)
                    && m.last_applied.map(|a| a.index) == m.last_log_index
            },
            "single-voter group elects this node and applies its log",
        )
        .await;
    if let Err(e) = led {
        // Stop openraft's tasks so the group's files are released for a later attempt.
        let _ = raft.shutdown().await;
        if let Some(fault) = data.borrow().fault.clone() {
            return Err(ShardError::GroupFailed { group: group.0, fault });
        }
        return Err(ShardError::raft("wait for leadership and apply", e));
    }
    Ok(())
}

/// The opened group, its periodic checkpoint started.
fn running(
    id: GroupId,
    raft: LedgerRaft,
    data: Rc<RefCell<GroupData>>,
    checkpointer: Rc<Checkpointer>,
    log_stats: Arc<LogStats>,
    dir: PathBuf,
    checkpoint_interval: Option<Duration>,
) -> Opened {
    let (stop_tx, stop_rx) = futures::channel::oneshot::channel();
    if let Some(interval) = checkpoint_interval {
        glommio::spawn_local(checkpointer.clone().run(interval, stop_rx)).detach();
    }
    let group = OpenGroup { id, raft, data, checkpointer, log_stats, dir, stop_checkpoints: Some(stop_tx) };
    Opened::Ready(Box::new(group))
}

/// Follows the group's server metrics (leader, vote, membership: they change rarely, unlike the
/// full metrics, which change with every block) from a task that ends when the group's Raft
/// stops (its metrics sender is dropped). It records `leader_changed` each time the group has a
/// leader other than the last one recorded (a new node, or the same node in a new term), and
/// tells the log store whether any other node votes (D60).
fn follow_server_changes(group: GroupId, raft: &LedgerRaft, set_replicated: impl Fn(bool) + 'static) {
    let mut metrics = raft.server_metrics();
    glommio::spawn_local(async move {
        let mut recorded: Option<(u64, u64)> = None;
        loop {
            let (leader, term, me, replicated) = {
                let m = metrics.borrow_and_update();
                let replicated = m.membership_config.membership().voter_ids().any(|id| id != m.id);
                (m.current_leader, m.vote.leader_id.term, m.id, replicated)
            };
            set_replicated(replicated);
            if let Some(leader) = leader.filter(|l| recorded != Some((*l, term))) {
                recorded = Some((leader, term));
                crate::event!(info, "leader_changed", group = %group, leader, term, local = leader == me);
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    })
    .detach();
}

/// [`restore_newest`] on a blocking thread, recorded as a snapshot restore of `group` (read,
/// decode and verify of the file; `snapshot_restore_seconds`) and a snapshot decode.
async fn restore_timed(
    group: GroupId,
    entries: Vec<CatalogEntry>,
) -> Option<(CatalogEntry, AppliedRecord, Vec<ScopeState>)> {
    let started = std::time::Instant::now();
    let restored = glommio::executor().spawn_blocking(move || restore_newest(&entries)).await;
    let (entry, applied, scopes, decoded) = restored?;
    crate::metrics::with(|m| {
        m.codec(crate::metrics::CodecKind::Snapshot, false, decoded.bytes, decoded.took);
        m.snapshot_restored(group.0, started.elapsed());
    });
    Some((entry, applied, scopes))
}

/// Opens `state.redb` and loads it; when it is unusable (fails to open or to load, or is empty
/// although the log was purged, so the log alone cannot rebuild it), moves it aside, starts a
/// fresh one and returns the newest valid snapshot to restore from (SPEC §9.6 step 4).
async fn open_state(
    dir: &std::path::Path,
    group: GroupId,
    catalog: &SnapshotCatalog,
    log_purged: bool,
    sim: Option<&Arc<SimDisk>>,
) -> Result<(Arc<redb::Database>, LoadedState, Option<(AppliedRecord, Vec<ScopeState>)>), ShardError> {
    let path = dir.join("state.redb");
    let attempt = match retry_open(|| open_db(&path, STATE_DB_CACHE_BYTES, sim)).await {
        Ok(db) => {
            let db = Arc::new(db);
            let reader = db.clone();
            match glommio::executor().spawn_blocking(move || load_state(&reader)).await {
                Ok(loaded) => Ok((db, loaded)),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    let reason = match attempt {
        Ok((db, loaded)) if loaded.applied.is_some() || catalog.entries.is_empty() => {
            return Ok((db, loaded, None))
        }
        Ok((db, loaded)) => {
            // Empty beside snapshot files: the state was lost (a group writes a snapshot only of
            // applied state, which its checkpoint holds first). Restore into this (empty) file,
            // whether or not the log was purged: openraft would otherwise start with a snapshot
            // ahead of its committed index, which it refuses by panicking (D73).
            let entries = catalog.entries.clone();
            let Some((entry, applied, scopes)) = restore_timed(group, entries).await else {
                return Err(ShardError::Corrupt {
                    what: "group state",
                    detail: "state.redb is empty beside snapshot files, and no snapshot file verifies".into(),
                });
            };
            crate::event!(
                warn,
                "state_restored_from_snapshot",
                group = %group,
                path = %entry.path.display(),
                group_height = applied.group_height,
                reason = if log_purged { "empty_state_with_purged_log" } else { "empty_state_beside_snapshots" }
            );
            return Ok((db, loaded, Some((applied, scopes))));
        }
        Err(e) if e.is_already_open() || catalog.entries.is_empty() => return Err(e),
        Err(e) => e,
    };
    let entries = catalog.entries.clone();
    let Some((entry, applied, scopes)) = restore_timed(group, entries).await else {
        return Err(ShardError::Corrupt {
            what: "group state",
            detail: format!("state.redb is unusable ({reason}) and no snapshot file verifies"),
        });
    };
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let aside = dir.join(format!("state.redb.unusable-{secs}"));
    rename_db(&path, &aside, sim)?;
    crate::event!(
        warn,
        "state_restored_from_snapshot",
        group = %group,
        path = %entry.path.display(),
        group_height = applied.group_height,
        moved_aside = %aside.display(),
        reason = ?reason
    );
    let db = Arc::new(open_db(&path, STATE_DB_CACHE_BYTES, sim)?);
    let reader = db.clone();
    let loaded = glommio::executor().spawn_blocking(move || load_state(&reader)).await?;
    Ok((db, loaded, Some((applied, scopes))))
}
