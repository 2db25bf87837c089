//! The applied, in-memory state of one Raft group on its owning core, shared (`Rc<RefCell<_>>`,
//! same core only) between the openraft state machine, which is its only writer, and the group's
//! request handlers, which read it. CONTRACT between the storage layer (raft/state_machine.rs,
//! storage/archive.rs, storage/checkpoint.rs) and the service layer (round/group.rs,
//! read/reads.rs, admin/requests.rs).

use crate::error::GroupFault;
use crate::raft::type_config::{LogId, StoredMembership};
use crate::storage::checkpoint::{encode_entity, row_key};
use crate::storage::row_journal::EntityChanges;
use ledger_core::state::{ScopeDelta, ScopeState};
use ledger_core::types::*;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

/// The leader's dry-run result for the block it proposed (SPEC §8.2). The state machine commits
/// these deltas instead of recomputing when it applies the entry with the same `group_height`
/// and every delta's `block_hash` equals the hash of the entry's header. Otherwise (follower, or
/// anything unexpected) it replays the entry and verifies the roots itself.
pub struct SpeculativeBlock {
    pub group_height: u64,
    /// `group_hash` of the proposed block: the next proposal's `previous_group_hash`.
    pub group_hash: Hash,
    pub deltas: Vec<(ScopeKey, ScopeDelta)>,
}

pub struct GroupData {
    pub group_id: GroupId,
    /// Every scope hosted by this group, including deleted ones (status says so).
    pub scopes: BTreeMap<ScopeKey, ScopeState>,
    /// Height and hash of the last applied group block (SPEC §7.1); 0 / ZERO_HASH before any.
    pub group_height: u64,
    pub last_group_hash: Hash,
    /// Log index of the last applied entry (0 before any).
    pub applied_index: u64,
    /// The leader's proposed but not yet applied blocks, oldest first with consecutive group
    /// heights: pushed by the block builder when it proposes, popped by apply (pipelined blocks,
    /// docs/decisions.md D7).
    pub speculative: std::collections::VecDeque<SpeculativeBlock>,
    /// Block archive (SPEC §9.3): recent blocks not yet flushed plus the blocks.redb reader.
    pub archive: crate::storage::archive::Archive,
    /// Log id of the last applied entry (`applied_index` is its index) and the membership last
    /// applied: what openraft's `applied_state()` reports. Storage layer only writes these.
    pub applied_log_id: Option<LogId>,
    pub membership: StoredMembership,
    /// Rows changed since the last durable checkpoint (storage layer bookkeeping).
    pub dirty: DirtyRows,
    /// Log id covered by the last durable checkpoint of `state.redb` (None before the first).
    /// The Raft log must never be purged past it.
    pub durable_log_id: Option<LogId>,
    /// Called by apply, on this core, for every scope block it applied (SPEC §8.4 step 4, §8.8),
    /// on leader and followers alike, in apply order. It runs while apply holds `GroupData`
    /// mutably borrowed: it must not borrow `GroupData` (push to watcher channels and return).
    pub on_block_applied: Option<BlockHook>,
    /// Recent per-scope history for historical and verified reads (history.rs); apply records
    /// every scope block in it just before committing the block.
    pub history: crate::read::history::History,
    /// This node's snapshot files of the group (SPEC §9.4; snapshot.rs), loaded at open.
    pub snapshots: crate::storage::snapshot::SnapshotCatalog,
    /// The group's state-tree thread (tree_worker.rs): the block builder computes its trees there
    /// and the history drops old versions there. Inline unless the group was opened to serve.
    pub trees: crate::round::tree_worker::TreeWorker,
    /// Set when applying an entry broke an invariant of the group as a whole (a bug or a
    /// corrupt log entry): from then on nothing more is applied or checkpointed, the group's
    /// requests are answered `Unavailable`, and the node's other groups carry on (SPEC §2 goal 3).
    pub fault: Option<GroupFault>,
    /// A snapshot the peer service received and verified off the core, waiting for openraft to
    /// install it (`StateMachine::install_snapshot` takes it when the id matches).
    pub received_snapshot: Option<crate::storage::snapshot::VerifiedSnapshot>,
    /// When this replica last heard from the group's leader (the `stale` flag, SPEC §8.6).
    pub contact: std::rc::Rc<crate::raft::contact::LeaderContact>,
}

/// Receives the announcement of each scope block apply commits (see `on_block_applied`).
pub type BlockHook = Rc<dyn Fn(&BlockAnnouncement)>;

/// What the next checkpoint must write. Entity rows are encoded as apply commits them (the delta's
/// rows are in cache then) and kept in apply order, a key once per block it changed in; the
/// checkpoint keeps the last row of each key off the core (`CheckpointBatch::write`). At 1 M keys
/// a set of dirty keys cost the core a cold hash-set insert per write plus, at the checkpoint, a
/// cold lookup and copy of each row (a fifth of the core's time, measured).
#[derive(Default)]
pub struct DirtyRows {
    /// `(§3.5 storage key, Some(§3.2 row bytes) | None = deleted)` in apply order; later wins.
    pub entities: EntityChanges,
    /// Relationship rows with their final state (`Some(version)` = present).
    pub relationships: BTreeMap<(ScopeKey, Relationship), Option<u64>>,
    pub clients: BTreeSet<(ScopeKey, String)>,
    /// Scopes whose `ScopeMeta` changed.
    pub scopes: BTreeSet<ScopeKey>,
    /// Anything applied since the last checkpoint (the `applied` record must be rewritten).
    pub applied: bool,
    /// Rewrite the whole state file (after a snapshot install or a failed checkpoint).
    pub full_rewrite: bool,
}

impl DirtyRows {
    /// An empty dirty set whose entity list has room for `rows` (the next second dirties about as
    /// many as the last: growing from nothing would copy the list a dozen times).
    pub fn with_room_for(rows: usize) -> DirtyRows {
        DirtyRows { entities: Vec::with_capacity(rows), ..DirtyRows::default() }
    }

    pub fn is_empty(&self) -> bool {
        !self.applied && !self.full_rewrite && self.scopes.is_empty()
    }

    /// Records every row a delta is about to change in `scope`.
    pub fn record_delta(&mut self, scope: ScopeKey, delta: &ScopeDelta) {
        for (key, row) in &delta.entities {
            self.entities.push((row_key(scope, key.as_bytes()), row.as_ref().map(encode_entity)));
        }
        for (rel, version) in &delta.relationships {
            self.relationships.insert((scope, rel.clone()), *version);
        }
        for client in delta.clients.keys() {
            self.clients.insert((scope, client.clone()));
        }
        self.scopes.insert(scope);
    }
}

impl GroupData {
    /// An empty group (nothing applied) over `archive`.
    pub fn new(group_id: GroupId, archive: crate::storage::archive::Archive) -> Self {
        GroupData {
            group_id,
            scopes: BTreeMap::new(),
            group_height: 0,
            last_group_hash: ZERO_HASH,
            applied_index: 0,
            speculative: std::collections::VecDeque::new(),
            archive,
            applied_log_id: None,
            membership: StoredMembership::default(),
            dirty: DirtyRows::default(),
            durable_log_id: None,
            on_block_applied: None,
            history: crate::read::history::History::default(),
            snapshots: crate::storage::snapshot::SnapshotCatalog::empty(std::path::PathBuf::new()),
            trees: crate::round::tree_worker::TreeWorker::inline(),
            fault: None,
            received_snapshot: None,
            contact: std::rc::Rc::default(),
        }
    }

    /// `scope`'s block at `height` (0 = genesis from its `ScopeMeta`); `None` if the scope or the
    /// block is unknown.
    pub fn get_block(&self, scope: ScopeKey, height: u64) -> Result<Option<Block>, crate::error::ShardError> {
        let Some(state) = self.scopes.get(&scope) else { return Ok(None) };
        if height > state.meta.height {
            return Ok(None);
        }
        self.archive.get_block(scope, height, &state.meta.genesis)
    }

    /// `scope`'s blocks `from..=to` (clamped to its height and to `ARCHIVE_RANGE_BLOCKS_MAX`).
    pub fn get_range(
        &self,
        scope: ScopeKey,
        from: u64,
        to: u64,
    ) -> Result<Vec<Block>, crate::error::ShardError> {
        let Some(state) = self.scopes.get(&scope) else { return Ok(Vec::new()) };
        if from > state.meta.height {
            return Ok(Vec::new());
        }
        self.archive.get_range(scope, from, to.min(state.meta.height), &state.meta.genesis)
    }
}
