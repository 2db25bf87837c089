//! openraft's state machine for a group: applies committed entries to the in-memory
//! `GroupData` (SPEC §8.4), which it owns as the only writer and shares with the service layer on
//! the same core.
//!
//! Apply is deterministic and does no I/O: it changes memory, appends the block to the archive's
//! in-memory buffer and records the touched rows in `GroupData.dirty`; the checkpointer makes that
//! durable later (checkpoint.rs). Per entry:
//! * blank: only the applied log id moves; membership: recorded;
//! * `Admin(CreateScope)`: the scope's genesis (term and index of this entry), if it does not
//!   exist yet (idempotent); `Admin(SetScopeStatus)`: sets the status (idempotent);
//! * `Block`: must extend the group chain (height + 1, previous group hash); each vault entry of a
//!   Healthy scope is committed from the leader's speculative delta when that delta's block hash
//!   equals the entry's header hash, otherwise replayed and verified; a replay whose roots differ
//!   marks that scope Diverged and skips it (the others continue). Non-Healthy scopes are skipped.
//!   Every entry is archived either way.
//!
//! Snapshots are the group's SPEC §9.4 files (storage/snapshot.rs, docs/decisions.md D31):
//! `build_snapshot` cuts the applied state on the core and writes the file on a blocking thread
//! (after a durable checkpoint, so the log purge that follows never passes durable state);
//! `get_current_snapshot` reads the newest file, so it works after a restart; `install_snapshot`
//! takes a snapshot verified before anything changes (checksums, roots, chain commitments), keeps
//! it as a file, replaces the state, checkpoints it and starts the archive back-fill
//! (peer/backfill.rs). A group without a snapshot directory (storage tests) keeps the same format
//! in memory.

use crate::config::ShardConfig;
use crate::error::ShardError;
use crate::metrics::CodecKind;
use crate::peer::pool::PeerPool;
use crate::raft::type_config::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use crate::round::group_data::GroupData;
use crate::storage::checkpoint::{AppliedRecord, Checkpointer, ScopeRows};
use crate::storage::snapshot::{
    add_to_catalog, create_with_bytes, encode_file_timed, raft_meta, verify_received, write_file,
    CatalogEntry, SnapshotCut, VerifiedSnapshot,
};
use ledger_core::hash::{block_hash, group_hash};
use ledger_core::state::{BlockContext, ScopeDelta, ScopeState};
use ledger_core::types::*;
use openraft::storage::{RaftStateMachine, Snapshot as RaftSnapshot};
use openraft::{AnyError, EntryPayload, RaftSnapshotBuilder, StorageIOError};
use rkyv::{Archive, Deserialize, Serialize};
use std::cell::RefCell;
use std::io::Cursor;
use std::rc::Rc;
use std::sync::Arc;

/// What applying one log entry did (the `R` of the type config, returned by `client_write`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyResult {
    Blank,
    Membership,
    /// `created` is false when the scope already existed (replayed or duplicate command).
    ScopeCreated {
        scope: ScopeKey,
        created: bool,
    },
    /// `found` is false when the scope does not exist.
    ScopeStatusSet {
        scope: ScopeKey,
        found: bool,
    },
    Block {
        group_height: u64,
        /// Scopes committed from the leader's speculative delta without recomputation.
        speculative: Vec<ScopeKey>,
        /// Scopes replayed and verified.
        replayed: Vec<ScopeKey>,
        /// Those of `replayed` replayed before the apply, their trees on the tree thread (D86).
        replayed_ahead: Vec<ScopeKey>,
        /// Scopes whose recomputed roots did not match: now Diverged, entry not applied.
        diverged: Vec<ScopeKey>,
        /// Scopes not applied because they are unknown or not Healthy.
        skipped: Vec<ScopeKey>,
    },
}

pub(crate) fn scope_key(namespace_id: i64, vault_id: i64) -> ScopeKey {
    ScopeKey { namespace_id: NamespaceId(namespace_id), vault_id: VaultId(vault_id) }
}

/// Applies one admin command.
fn apply_admin(data: &mut GroupData, cmd: AdminCommand, log_id: &LogId) -> ApplyResult {
    match cmd {
        AdminCommand::CreateScope { namespace_id, vault_id, retention_policy, timestamp, leader_id } => {
            let scope = scope_key(namespace_id, vault_id);
            if data.scopes.contains_key(&scope) {
                return ApplyResult::ScopeCreated { scope, created: false };
            }
            let ctx = BlockContext {
                timestamp,
                leader_id,
                term: log_id.leader_id.term,
                committed_index: log_id.index,
            };
            data.scopes.insert(scope, ScopeState::genesis(scope, retention_policy, &ctx));
            data.dirty.scopes.insert(scope);
            ApplyResult::ScopeCreated { scope, created: true }
        }
        AdminCommand::SetScopeStatus { namespace_id, vault_id, status } => {
            let scope = scope_key(namespace_id, vault_id);
            let Some(state) = data.scopes.get_mut(&scope) else {
                return ApplyResult::ScopeStatusSet { scope, found: false };
            };
            state.set_status(status);
            data.dirty.scopes.insert(scope);
            ApplyResult::ScopeStatusSet { scope, found: true }
        }
    }
}

/// Applies one group block (SPEC §8.4).
fn apply_block(
    data: &mut GroupData,
    gb: Arc<GroupBlock>,
    prepared: Vec<(ScopeKey, ScopeDelta)>,
) -> ApplyResult {
    assert!(gb.group_height == data.group_height + 1, "group block out of order");
    assert!(gb.previous_group_hash == data.last_group_hash, "group block does not extend the chain");
    assert!(gb.group_id == data.group_id.0, "group block of another group");

    let mut deltas = BlockDeltas { speculative: take_speculative(data, &gb), ahead: prepared };
    let ctx = BlockContext::of_group_block(&gb);
    let mut outcome = BlockOutcome::default();
    let mut announcements = Vec::new();
    for entry in &gb.vault_entries {
        apply_vault_entry(data, &gb, entry, &ctx, &mut deltas, &mut outcome, &mut announcements);
    }
    if let Some(hook) = &data.on_block_applied {
        for announcement in &announcements {
            hook(announcement);
        }
    }
    let group_height = gb.group_height;
    data.last_group_hash = group_hash(&gb);
    data.group_height = group_height;
    data.archive.append(gb);
    let BlockOutcome { used, replayed, replayed_ahead, diverged, skipped } = outcome;
    ApplyResult::Block { group_height, speculative: used, replayed, replayed_ahead, diverged, skipped }
}

/// The deltas a block's scopes may commit without replaying it: the leader's speculative ones of
/// its own proposal, and a replica's own replay with its trees built off the executor (D86).
struct BlockDeltas {
    speculative: Vec<(ScopeKey, ScopeDelta)>,
    ahead: Vec<(ScopeKey, ScopeDelta)>,
}

/// The scopes of one block by what applying them came to (`ApplyResult::Block`'s lists).
#[derive(Default)]
struct BlockOutcome {
    used: Vec<ScopeKey>,
    replayed: Vec<ScopeKey>,
    replayed_ahead: Vec<ScopeKey>,
    diverged: Vec<ScopeKey>,
    skipped: Vec<ScopeKey>,
}

/// The leader's speculative deltas for `gb`, if it is the block the leader proposed at this height.
fn take_speculative(data: &mut GroupData, gb: &GroupBlock) -> Vec<(ScopeKey, ScopeDelta)> {
    // The leader's pipelined proposals are applied in order; anything older than this block is
    // stale (a failed proposal), and a block that is not the one proposed at this height means
    // every later proposal was built on the wrong state: drop them all and replay.
    while data.speculative.front().is_some_and(|s| s.group_height < gb.group_height) {
        data.speculative.pop_front();
    }
    match data.speculative.front() {
        Some(s) if s.group_height == gb.group_height && s.group_hash == group_hash(gb) => {
            data.speculative.pop_front().map(|s| s.deltas).unwrap_or_default()
        }
        Some(_) => {
            data.speculative.clear();
            Vec::new()
        }
        None => Vec::new(),
    }
}

/// Applies one vault entry of `gb` to its scope, unless the scope is unknown or not Healthy
/// (skipped), and records the outcome; a divergence or a failed apply marks the scope Diverged.
fn apply_vault_entry(
    data: &mut GroupData,
    gb: &GroupBlock,
    entry: &VaultEntry,
    ctx: &BlockContext,
    deltas: &mut BlockDeltas,
    outcome: &mut BlockOutcome,
    announcements: &mut Vec<BlockAnnouncement>,
) {
    let key = scope_key(entry.namespace_id, entry.vault_id);
    let Some(scope) = data.scopes.get_mut(&key) else {
        crate::event!(error, "apply_unknown_scope", group = gb.group_id, scope = %key);
        outcome.skipped.push(key);
        return;
    };
    if scope.meta.health != VaultHealth::Healthy {
        outcome.skipped.push(key);
        return;
    }
    let expected_hash = block_hash(&gb.header_of(entry));
    let (dirty, history) = (&mut data.dirty, &mut data.history);
    let applied = crate::isolation::catch(|| {
        let deltas = [&mut deltas.speculative, &mut deltas.ahead];
        apply_scope_entry(scope, entry, ctx, expected_hash, deltas, dirty, history)
    });
    let health = match applied {
        Ok(Ok((source, announcement))) => {
            match source {
                DeltaSource::Proposed => outcome.used.push(key),
                DeltaSource::ReplayedAhead => {
                    outcome.replayed.push(key);
                    outcome.replayed_ahead.push(key);
                }
                DeltaSource::Replayed => outcome.replayed.push(key),
            }
            if data.on_block_applied.is_some() {
                announcements.push(announcement);
            }
            return;
        }
        Ok(Err(div)) => {
            crate::ops::vault_repair::on_divergence(
                GroupId(gb.group_id),
                key,
                &div.expected,
                &div.computed,
                div.at_height,
            );
            VaultHealth::Diverged { expected: div.expected, computed: div.computed, at_height: div.at_height }
        }
        Err(reason) => {
            // The scope may be half-committed: it stops here, Diverged with no computed
            // root, and waits for recovery (SPEC §9.8–§9.9); the group's other scopes go on.
            crate::event!(
                error,
                "scope_apply_failed",
                group = gb.group_id,
                scope = %key,
                height = entry.vault_height,
                reason = ?reason
            );
            VaultHealth::Diverged {
                expected: entry.state_root,
                computed: ZERO_HASH,
                at_height: entry.vault_height,
            }
        }
    };
    scope.meta.health = health;
    data.dirty.scopes.insert(key);
    outcome.diverged.push(key);
}

/// Where a committed scope delta came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeltaSource {
    /// The leader's speculative delta of its own proposal.
    Proposed,
    /// This replica's replay made before the apply (D86).
    ReplayedAhead,
    /// Replayed here, in the apply.
    Replayed,
}

/// Commits one scope's vault entry: a delta computed before (`deltas`: the leader's speculative
/// ones, then this replica's replays ahead) when it is this entry's block on this scope as it is
/// now, else a replay checked against the entry's roots. Returns where the delta came from and
/// the block's announcement.
fn apply_scope_entry(
    scope: &mut ScopeState,
    entry: &VaultEntry,
    ctx: &BlockContext,
    expected_hash: Hash,
    deltas: [&mut Vec<(ScopeKey, ScopeDelta)>; 2],
    dirty: &mut crate::round::group_data::DirtyRows,
    history: &mut crate::read::history::History,
) -> Result<(DeltaSource, BlockAnnouncement), ledger_core::state::Divergence> {
    let key = scope.meta.key;
    let fits = |(k, d): &(ScopeKey, ScopeDelta)| {
        *k == key
            && d.block_hash == expected_hash
            && d.header.height == scope.meta.height + 1
            && d.header.previous_hash == scope.meta.last_block_hash
    };
    let [proposed, ahead] = deltas;
    let found = match proposed.iter().position(fits) {
        Some(i) => Some((DeltaSource::Proposed, proposed.swap_remove(i).1)),
        None => ahead.iter().position(fits).map(|i| (DeltaSource::ReplayedAhead, ahead.swap_remove(i).1)),
    };
    let (source, delta) = match found {
        Some(found) => found,
        None => (DeltaSource::Replayed, scope.replay_entry(entry, ctx)?),
    };
    assert!(delta.block_hash == expected_hash, "committed delta is not the entry's block");
    let announcement = BlockAnnouncement {
        namespace_id: entry.namespace_id,
        vault_id: entry.vault_id,
        height: delta.header.height,
        block_hash: delta.block_hash,
        state_root: delta.header.state_root,
        timestamp: delta.header.timestamp,
    };
    dirty.record_delta(key, &delta);
    history.commit(scope, delta);
    assert!(scope.meta.height == entry.vault_height, "scope height after commit");
    Ok((source, announcement))
}

/// Applies one entry to `data` (deterministic, memory only).
pub fn apply_entry(data: &mut GroupData, entry: Entry) -> ApplyResult {
    apply_prepared(data, entry, Vec::new())
}

/// [`apply_entry`] with deltas replayed ahead for it (`tree_replay::prepare`, D86).
fn apply_prepared(data: &mut GroupData, entry: Entry, prepared: Vec<(ScopeKey, ScopeDelta)>) -> ApplyResult {
    assert!(Some(entry.log_id) > data.applied_log_id, "log entry applied out of order");
    let log_id = entry.log_id;
    let result = match entry.payload {
        EntryPayload::Blank => ApplyResult::Blank,
        EntryPayload::Membership(m) => {
            data.membership = StoredMembership::new(Some(log_id), m);
            ApplyResult::Membership
        }
        EntryPayload::Normal(LogPayload::Admin(cmd)) => apply_admin(data, cmd, &log_id),
        EntryPayload::Normal(LogPayload::Block(gb)) => apply_block(data, gb, prepared),
    };
    data.applied_log_id = Some(log_id);
    data.applied_index = log_id.index;
    data.dirty.applied = true;
    result
}

/// Body of a snapshot file (storage/snapshot.rs): the whole applied state of the group.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub group_id: u32,
    pub applied: AppliedRecord,
    pub scopes: Vec<ScopeRows>,
}

/// The last built or installed snapshot of a memory-only group (storage tests).
#[derive(Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    bytes: Rc<Vec<u8>>,
}

fn write_err(e: &ShardError) -> StorageError {
    StorageIOError::write_state_machine(AnyError::new(e)).into()
}

fn snapshot_err(meta: Option<&SnapshotMeta>, e: &ShardError) -> StorageError {
    StorageIOError::write_snapshot(meta.map(|m| m.signature()), AnyError::new(e)).into()
}

/// What a group with files needs for its snapshots: where they go and the peers that back-fill
/// the archive after an install.
pub struct SnapshotEnv {
    pub config: Arc<ShardConfig>,
    pub peers: Option<Rc<PeerPool>>,
}

/// Replaces the group's applied state with a verified snapshot's (install, SPEC §9.6 step 4
/// restore). Blocks archived below the cut stay; the archive's gaps are back-filled from peers.
pub fn load_snapshot_state(data: &mut GroupData, applied: &AppliedRecord, scopes: Vec<ScopeState>) {
    let old: Vec<ScopeKey> = data.scopes.keys().copied().collect();
    for key in old {
        data.history.forget(key);
    }
    data.scopes = scopes.into_iter().map(|scope| (scope.meta.key, scope)).collect();
    data.group_height = applied.group_height;
    data.last_group_hash = applied.last_group_hash;
    data.applied_log_id = applied.log_id.map(LogId::from);
    data.applied_index = data.applied_log_id.map(|l| l.index).unwrap_or(0);
    data.membership = StoredMembership::from(applied.membership.clone());
    data.speculative.clear();
    data.dirty = Default::default();
    data.dirty.full_rewrite = true;
    data.dirty.applied = true;
}

/// The group's `RaftStateMachine`.
pub struct StateMachine {
    data: Rc<RefCell<GroupData>>,
    /// `None` in storage tests that run without a glommio executor (no durable checkpoints).
    checkpointer: Option<Rc<Checkpointer>>,
    /// `None`: snapshots stay in memory (storage tests); otherwise they are the group's files.
    env: Option<Rc<SnapshotEnv>>,
    current: Rc<RefCell<Option<StoredSnapshot>>>,
    /// The group's log, when its leader reports its own appends before they are durable (D50):
    /// an entry is applied only once durable here.
    log: Option<crate::raft::log_store::LogStore>,
}

impl StateMachine {
    pub fn new(data: Rc<RefCell<GroupData>>, checkpointer: Option<Rc<Checkpointer>>) -> Self {
        StateMachine { data, checkpointer, env: None, current: Rc::new(RefCell::new(None)), log: None }
    }

    /// Applies each entry only once it is durable in `log` (D50).
    pub fn applying_durable_from(mut self, log: crate::raft::log_store::LogStore) -> Self {
        self.log = Some(log);
        self
    }

    /// Snapshots become the group's SPEC §9.4 files (needs a checkpointer and a glommio executor).
    pub fn with_files(mut self, env: SnapshotEnv) -> Self {
        self.env = Some(Rc::new(env));
        self
    }

    pub fn data(&self) -> Rc<RefCell<GroupData>> {
        self.data.clone()
    }

    /// The file mode's pieces, when this group keeps its snapshots in files.
    fn files(&self) -> Option<(Rc<SnapshotEnv>, Rc<Checkpointer>)> {
        files_of(&self.data, &self.env, &self.checkpointer)
    }

    async fn install_verified(
        &mut self,
        meta: &SnapshotMeta,
        verified: VerifiedSnapshot,
    ) -> Result<(), StorageError> {
        let Some((env, checkpointer)) = self.files() else {
            load_snapshot_state(&mut self.data.borrow_mut(), &verified.applied, verified.scopes);
            if let Some(checkpointer) = &self.checkpointer {
                checkpointer.checkpoint().await.map_err(|e| write_err(&e))?;
            }
            let bytes = Rc::new(verified.bytes);
            *self.current.borrow_mut() = Some(StoredSnapshot { meta: meta.clone(), bytes });
            return Ok(());
        };
        // The file first (durable), then memory, then the durable checkpoint of the new state:
        // a crash in between restarts from the old checkpoint or from this file (open.rs).
        let (dir, group_id) = {
            let data = self.data.borrow();
            (data.snapshots.dir.clone(), data.group_id.0)
        };
        let tmp_dir = env.config.data_dir.join("tmp");
        let keep = env.config.snapshots_keep;
        let sim = env.config.sim_disk.clone();
        let VerifiedSnapshot { header, applied, scopes, bytes, .. } = verified;
        let group_height = header.group_height;
        let path = glommio::executor()
            .spawn_blocking(move || {
                write_file(&dir, &tmp_dir, group_id, group_height, &bytes, keep, sim.as_deref())
            })
            .await
            .map_err(|e| snapshot_err(Some(meta), &e))?;
        load_snapshot_state(&mut self.data.borrow_mut(), &applied, scopes);
        checkpointer.checkpoint().await.map_err(|e| write_err(&e))?;
        add_to_catalog(&mut self.data.borrow_mut().snapshots, CatalogEntry { path, header });
        crate::event!(
            info,
            "snapshot_installed",
            group = %group_id,
            group_height,
            last_log_index = meta.last_log_id.map(|l| l.index).unwrap_or(0)
        );
        if let Some(peers) = &env.peers {
            crate::peer::backfill::spawn(self.data.clone(), peers.clone());
        }
        Ok(())
    }
}

fn files_of(
    data: &Rc<RefCell<GroupData>>,
    env: &Option<Rc<SnapshotEnv>>,
    checkpointer: &Option<Rc<Checkpointer>>,
) -> Option<(Rc<SnapshotEnv>, Rc<Checkpointer>)> {
    let (env, checkpointer) = (env.as_ref()?, checkpointer.as_ref()?);
    if data.borrow().snapshots.dir.as_os_str().is_empty() {
        return None;
    }
    Some((env.clone(), checkpointer.clone()))
}

/// Reads a snapshot file off the executor.
async fn read_file(path: std::path::PathBuf) -> Result<Vec<u8>, ShardError> {
    glommio::executor()
        .spawn_blocking(move || std::fs::read(&path).map_err(|source| ShardError::Io { path, source }))
        .await
}

/// Builds a group's snapshots: the SPEC §9.4 file (storage/snapshot.rs), or, for a memory-only
/// group, the same format in memory.
pub struct SnapshotBuilder {
    data: Rc<RefCell<GroupData>>,
    checkpointer: Option<Rc<Checkpointer>>,
    env: Option<Rc<SnapshotEnv>>,
    current: Rc<RefCell<Option<StoredSnapshot>>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        if let Some((env, checkpointer)) = files_of(&self.data, &self.env, &self.checkpointer) {
            // The cut is taken at one point on the core (apply goes on meanwhile); encoding,
            // commitments and the fsync'd file run on a blocking thread; an unchanged group
            // reuses its newest file.
            let (entry, bytes) = create_with_bytes(&self.data, &checkpointer, &env.config)
                .await
                .map_err(|e| snapshot_err(None, &e))?;
            let bytes = match bytes {
                Some(bytes) => bytes,
                None => read_file(entry.path.clone()).await.map_err(|e| snapshot_err(None, &e))?,
            };
            return Ok(RaftSnapshot {
                meta: raft_meta(&entry.header),
                snapshot: Box::new(Cursor::new(bytes)),
            });
        }
        let (header, bytes) = {
            let data = self.data.borrow();
            let cut = SnapshotCut::take(&data);
            let built = cut.build(|key, height| {
                data.archive.get_header(key, height)?.ok_or_else(|| ShardError::Corrupt {
                    what: "archive",
                    detail: format!("{key} lacks {height}"),
                })
            });
            let (header, body) = built.map_err(|e| snapshot_err(None, &e))?;
            let (header, bytes, encoded_in) = encode_file_timed(header, &body);
            crate::metrics::with(|m| m.codec(CodecKind::Snapshot, true, bytes.len(), encoded_in));
            (header, bytes)
        };
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.checkpoint().await.map_err(|e| write_err(&e))?;
        }
        let meta = raft_meta(&header);
        let bytes = Rc::new(bytes);
        *self.current.borrow_mut() = Some(StoredSnapshot { meta: meta.clone(), bytes: bytes.clone() });
        Ok(RaftSnapshot { meta, snapshot: Box::new(Cursor::new(bytes.as_ref().clone())) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let data = self.data.borrow();
        Ok((data.applied_log_id, data.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResult>, StorageError>
    where
        I: IntoIterator<Item = Entry>,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if let (Some(log), Some(last)) = (&self.log, entries.last()) {
            // A leader's own entries may be committed before its own sync ends (D50); applying
            // (and so answering the client, checkpointing) waits for it.
            if let Err(e) = log.wait_durable(last.log_id.index).await {
                return Err(StorageIOError::write_logs(AnyError::new(&e)).into());
            }
        }
        let group = self.data.borrow().group_id.0;
        let mut results = Vec::new();
        for entry in entries {
            let prepared = match &entry.payload {
                EntryPayload::Normal(LogPayload::Block(gb)) => {
                    crate::raft::tree_replay::prepare(&self.data, gb).await
                }
                _ => Vec::new(),
            };
            let mut data = self.data.borrow_mut();
            if let Some(fault) = &data.fault {
                let fault = ShardError::GroupFailed { group, fault: fault.clone() };
                return Err(write_err(&fault));
            }
            let at_index = entry.log_id.index;
            match crate::isolation::catch(|| apply_prepared(&mut data, entry, prepared)) {
                Ok(result) => results.push(result),
                Err(reason) => {
                    // An invariant of the whole group broke (chain order, a corrupt entry): its
                    // memory may be half-applied, so it applies and checkpoints nothing more.
                    // openraft stops this group on the error; the node's other groups go on.
                    crate::event!(error, "group_apply_failed", group = %group, index = at_index, reason = ?reason);
                    let fault = crate::error::GroupFault { at_index, reason };
                    data.fault = Some(fault.clone());
                    return Err(write_err(&ShardError::GroupFailed { group, fault }));
                }
            }
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            data: self.data.clone(),
            checkpointer: self.checkpointer.clone(),
            env: self.env.clone(),
            current: self.current.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    /// Installs a snapshot. One that the peer service already verified off the core
    /// (`peer/serve.rs`, parked in `GroupData.received_snapshot` under its id) is used as is;
    /// anything else is verified here first, and a bad one is refused with nothing changed.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let started = std::time::Instant::now();
        let parked = {
            let mut data = self.data.borrow_mut();
            match data.received_snapshot.take() {
                Some(v) if v.snapshot_id == meta.snapshot_id => Some(v),
                _ => None,
            }
        };
        let verified = match parked {
            Some(verified) => verified,
            None => {
                let bytes = snapshot.into_inner();
                let group_id = self.data.borrow().group_id.0;
                let checked = match self.files() {
                    Some(_) => {
                        let db = self.data.borrow().archive.db().cloned();
                        let meta = meta.clone();
                        glommio::executor()
                            .spawn_blocking(move || verify_received(bytes, group_id, &meta, db.as_deref()))
                            .await
                    }
                    None => {
                        let db = self.data.borrow().archive.db().cloned();
                        verify_received(bytes, group_id, meta, db.as_deref())
                    }
                };
                checked.map_err(|e| {
                    crate::event!(warn, "snapshot_refused", group = %group_id, error = %e);
                    StorageError::from(StorageIOError::read_snapshot(
                        Some(meta.signature()),
                        AnyError::new(&e),
                    ))
                })?
            }
        };
        let decoded = verified.decoded;
        self.install_verified(meta, verified).await?;
        // A snapshot verified by the peer service (parked) was decoded there, off the core; its
        // restore time here starts at the install.
        let group = self.data.borrow().group_id.0;
        crate::metrics::with(|m| {
            m.codec(CodecKind::Snapshot, false, decoded.bytes, decoded.took);
            m.snapshot_restored(group, started.elapsed());
        });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        if self.files().is_some() {
            // The newest readable file (a build may have pruned an older one meanwhile).
            let entries: Vec<CatalogEntry> = self.data.borrow().snapshots.entries.clone();
            for entry in entries.iter().rev() {
                match read_file(entry.path.clone()).await {
                    Ok(bytes) => {
                        return Ok(Some(RaftSnapshot {
                            meta: raft_meta(&entry.header),
                            snapshot: Box::new(Cursor::new(bytes)),
                        }))
                    }
                    Err(e) => {
                        crate::event!(warn, "snapshot_unreadable", path = %entry.path.display(), error = %e)
                    }
                }
            }
            return Ok(None);
        }
        Ok(self.current.borrow().as_ref().map(|s| RaftSnapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.bytes.as_ref().clone())),
        }))
    }
}

thread_local! {
    /// Groups opened through `open_group` on this core, so that `close_group` can find their
    /// checkpointer (same thread only; a group never leaves its core).
    static OPEN_GROUPS: RefCell<std::collections::BTreeMap<GroupId, crate::raft::open::OpenGroup>> =
        const { RefCell::new(std::collections::BTreeMap::new()) };
}

/// Opens a group for the service layer: see `open::open_group_with` (recovery, leadership,
/// periodic checkpoint every `CHECKPOINT_INTERVAL_MS`). Must run inside the owning glommio
/// executor; close it with `close_group` on the same core.
pub async fn open_group(
    config: &crate::config::ShardConfig,
    group: GroupId,
    core: u16,
    peers: Rc<crate::peer::pool::PeerPool>,
) -> Result<(crate::raft::type_config::LedgerRaft, Rc<RefCell<GroupData>>), ShardError> {
    let options = crate::raft::open::GroupOptions {
        peers: Some(peers),
        core,
        checkpoint_interval: Some(std::time::Duration::from_millis(config.checkpoint_interval_ms)),
    };
    let opened = crate::raft::open::open_group_with(config, group, options).await?;
    let handles = (opened.raft.clone(), opened.data.clone());
    OPEN_GROUPS.with(|groups| groups.borrow_mut().insert(group, opened));
    Ok(handles)
}

/// The checkpointer of a group opened by `open_group` on this core (snapshots and integrity
/// checks flush the archive through it first).
pub fn checkpointer_of(group: GroupId) -> Option<Rc<Checkpointer>> {
    OPEN_GROUPS.with(|groups| groups.borrow().get(&group).map(|g| g.checkpointer.clone()))
}

/// Clean shutdown of a group opened by `open_group`: stops openraft, then writes the final
/// durable checkpoint. Failures are reported as events (a failed final checkpoint only means
/// more re-apply at the next start).
pub async fn close_group(raft: &crate::raft::type_config::LedgerRaft, data: &Rc<RefCell<GroupData>>) {
    let id = data.borrow().group_id;
    let opened = OPEN_GROUPS.with(|groups| groups.borrow_mut().remove(&id));
    let result = match opened {
        Some(group) => group.close().await,
        None => raft.shutdown().await.map_err(|e| ShardError::raft("shutdown", e)),
    };
    if let Err(e) = result {
        crate::event!(error, "group_close_failed", group = %id, error = %e, cause = ?std::error::Error::source(&e));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::storage::archive::Archive;
    use ledger_core::state::BlockDraft;
    use openraft::CommittedLeaderId;

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    fn entry(index: u64, payload: LogPayload) -> Entry {
        Entry { log_id: log_id(index), payload: EntryPayload::Normal(payload) }
    }

    fn new_data() -> Rc<RefCell<GroupData>> {
        Rc::new(RefCell::new(GroupData::new(GroupId(3), Archive::in_memory())))
    }

    /// Applies scope creation and `blocks` one-transaction blocks (an entity and a relationship
    /// each) to `data` through `apply_entry`; returns the entries applied.
    fn fill(data: &mut GroupData, key: ScopeKey, blocks: u64) -> Vec<Entry> {
        fill_with(data, key, blocks, |b| {
            vec![
                Operation::SetEntity {
                    key: format!("k{b}"),
                    value: vec![1],
                    expires_at: None,
                    condition: None,
                },
                Operation::CreateRelationship {
                    resource: format!("doc:{b}"),
                    relation: "viewer".into(),
                    subject: "user:a#member".into(),
                },
            ]
        })
    }

    /// [`fill`] with block `b`'s operations from `ops(b)`.
    fn fill_with(
        data: &mut GroupData,
        key: ScopeKey,
        blocks: u64,
        ops: impl Fn(u64) -> Vec<Operation>,
    ) -> Vec<Entry> {
        let mut applied = Vec::new();
        let create = AdminCommand::CreateScope {
            namespace_id: key.namespace_id.0,
            vault_id: key.vault_id.0,
            retention_policy: RetentionPolicy::default(),
            timestamp: Timestamp { secs: 1, nanos: 0 },
            leader_id: 1,
        };
        let mut index = data.applied_index + 1;
        applied.push(entry(index, LogPayload::Admin(create.clone())));
        apply_entry(data, entry(index, LogPayload::Admin(create)));
        for b in 1..=blocks {
            index += 1;
            let ctx = BlockContext {
                timestamp: Timestamp { secs: 2, nanos: 0 },
                leader_id: 1,
                term: 1,
                committed_index: index,
            };
            let (ventry, _) = {
                let mut draft = BlockDraft::new(&data.scopes[&key]);
                let tx = Transaction {
                    id: [b as u8; 16],
                    client_id: "c".into(),
                    sequence: b,
                    operations: ops(b),
                    timestamp: ctx.timestamp,
                    actor: "user:t".into(),
                };
                draft.try_apply(tx).unwrap();
                draft.finish(&ctx)
            };
            let gb = GroupBlock {
                group_id: 3,
                group_height: data.group_height + 1,
                previous_group_hash: data.last_group_hash,
                vault_entries: vec![ventry],
                timestamp: ctx.timestamp,
                leader_id: 1,
                term: 1,
                committed_index: index,
            };
            let block = entry(index, LogPayload::Block(Arc::new(gb)));
            applied.push(block.clone());
            apply_entry(data, block);
        }
        applied
    }

    /// A follower whose blocks' trees go to a tree thread (D86): an empty state machine with
    /// one that takes every update.
    fn threaded_follower() -> (Rc<RefCell<GroupData>>, StateMachine) {
        let data = new_data();
        data.borrow_mut().trees = crate::round::tree_worker::TreeWorker::start(
            "sm-test-tree",
            crate::config::HelperHooks::default(),
            0,
            1,
        );
        (data.clone(), StateMachine::new(data, None))
    }

    /// The scopes `apply` answered as committed with a delta prepared ahead (D86).
    fn prepared_scopes(results: &[ApplyResult]) -> Vec<ScopeKey> {
        results
            .iter()
            .flat_map(|r| match r {
                ApplyResult::Block { replayed_ahead, .. } => replayed_ahead.clone(),
                _ => Vec::new(),
            })
            .collect()
    }

    /// Proves D86: a follower that builds its blocks' trees on the tree thread ends exactly where
    /// one that replays inline does (same height, chain, root and rows), and it did use the
    /// deltas replayed ahead: every block's scope is reported as applied from one.
    #[test]
    fn t03_replay_with_trees_on_the_thread_matches_inline_replay() {
        futures::executor::block_on(async {
            let key = ScopeKey { namespace_id: NamespaceId(2), vault_id: VaultId(9) };
            let source = new_data();
            let entries = fill(&mut source.borrow_mut(), key, 5);
            let (target, mut follower) = threaded_follower();
            let results = follower.apply(entries).await.unwrap();
            assert_eq!(prepared_scopes(&results), vec![key; 5]);
            let (s, t) = (source.borrow(), target.borrow());
            assert_eq!(t.group_height, 5);
            assert_eq!(t.last_group_hash, s.last_group_hash);
            assert_eq!(t.applied_log_id, s.applied_log_id);
            assert_eq!(t.scopes[&key].meta, s.scopes[&key].meta);
            assert_eq!(t.scopes[&key].computed_root(), s.scopes[&key].meta.state_root);
            assert_eq!(t.scopes[&key].key_count(), s.scopes[&key].key_count());
            assert_eq!(t.scopes[&key].client_state("c").last_committed_seq, 5);
        });
    }

    /// Proves a block whose operations change fewer leaves than they number (two writes of one
    /// key) is replayed ahead too, its small tree on the executor, and ends where the inline
    /// replay does: its transactions are not run a second time in the apply.
    #[test]
    fn t05_a_block_with_few_changes_is_finished_ahead_on_the_executor() {
        futures::executor::block_on(async {
            let key = ScopeKey { namespace_id: NamespaceId(2), vault_id: VaultId(9) };
            let source = new_data();
            let set = |b: u64, v: u8| Operation::SetEntity {
                key: format!("k{b}"),
                value: vec![v],
                expires_at: None,
                condition: None,
            };
            let entries = fill_with(&mut source.borrow_mut(), key, 3, |b| vec![set(b, 1), set(b, 2)]);
            let data = new_data();
            data.borrow_mut().trees = crate::round::tree_worker::TreeWorker::start(
                "sm-test-tree",
                crate::config::HelperHooks::default(),
                0,
                2,
            );
            let mut follower = StateMachine::new(data.clone(), None);
            let results = follower.apply(entries).await.unwrap();
            assert_eq!(prepared_scopes(&results), vec![key; 3]);
            let (s, t) = (source.borrow(), data.borrow());
            assert_eq!(t.scopes[&key].meta, s.scopes[&key].meta);
            assert_eq!(t.scopes[&key].computed_root(), s.scopes[&key].meta.state_root);
        });
    }

    /// Proves a block whose state root is not what its transactions give is still caught when
    /// its tree is built on the thread: no delta is prepared for it, the ordinary replay reports
    /// the divergence, and the scope stops at the height below.
    #[test]
    fn t04_a_wrong_root_is_reported_with_trees_on_the_thread() {
        futures::executor::block_on(async {
            let key = ScopeKey { namespace_id: NamespaceId(2), vault_id: VaultId(9) };
            let mut entries = fill(&mut new_data().borrow_mut(), key, 3);
            let EntryPayload::Normal(LogPayload::Block(gb)) = &mut entries[3].payload else {
                panic!("entry 3 is the third block")
            };
            Arc::make_mut(gb).vault_entries[0].state_root = [7; 32];
            let (target, mut follower) = threaded_follower();
            let results = follower.apply(entries).await.unwrap();
            assert_eq!(prepared_scopes(&results), vec![key; 2]);
            let Some(ApplyResult::Block { diverged, .. }) = results.last() else {
                panic!("the last entry is a block")
            };
            assert_eq!(diverged, &vec![key]);
            let t = target.borrow();
            assert!(matches!(t.scopes[&key].meta.health, VaultHealth::Diverged { at_height: 3, .. }));
            assert_eq!(t.scopes[&key].meta.height, 2);
        });
    }

    /// Proves a full-state snapshot carries everything: built from a group with entities,
    /// relationships and client states, installed into an empty state machine, it reproduces
    /// every scope's rows, height and root and the applied position; a corrupted snapshot is
    /// rejected by its checksum.
    #[test]
    fn t01_snapshot_round_trip() {
        futures::executor::block_on(async {
            let key = ScopeKey { namespace_id: NamespaceId(2), vault_id: VaultId(9) };
            let source = new_data();
            fill(&mut source.borrow_mut(), key, 4);
            let mut sm = StateMachine::new(source.clone(), None);
            let snap = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
            assert_eq!(snap.meta.last_log_id, Some(log_id(5)));

            let target = new_data();
            let mut follower = StateMachine::new(target.clone(), None);
            let mut bad = snap.snapshot.get_ref().clone();
            let last = bad.len() - 1;
            bad[last] ^= 0xff;
            assert!(follower.install_snapshot(&snap.meta, Box::new(Cursor::new(bad))).await.is_err());
            follower.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();

            {
                let (s, t) = (source.borrow(), target.borrow());
                assert_eq!(t.applied_log_id, s.applied_log_id);
                assert_eq!(t.group_height, 4);
                assert_eq!(t.last_group_hash, s.last_group_hash);
                let (a, b) = (&s.scopes[&key], &t.scopes[&key]);
                assert_eq!(b.meta, a.meta);
                assert_eq!(b.computed_root(), a.meta.state_root);
                assert_eq!(b.key_count(), 8);
                assert_eq!(b.client_state("c").last_committed_seq, 4);
                assert!(t.dirty.full_rewrite);
            }
            assert_eq!(follower.get_current_snapshot().await.unwrap().unwrap().meta, snap.meta);
        });
    }

    /// Proves apply is deterministic and the announcement hook sees every applied scope block:
    /// two replicas applying the same entries end with identical roots and chain positions.
    #[test]
    fn t02_apply_deterministic_and_announces() {
        let key = ScopeKey { namespace_id: NamespaceId(2), vault_id: VaultId(9) };
        let seen = Rc::new(RefCell::new(Vec::new()));
        let a = new_data();
        let sink = seen.clone();
        a.borrow_mut().on_block_applied =
            Some(Rc::new(move |ann: &BlockAnnouncement| sink.borrow_mut().push(ann.height)));
        fill(&mut a.borrow_mut(), key, 3);
        let b = new_data();
        fill(&mut b.borrow_mut(), key, 3);
        let (a, b) = (a.borrow(), b.borrow());
        assert_eq!(a.scopes[&key].meta, b.scopes[&key].meta);
        assert_eq!(a.last_group_hash, b.last_group_hash);
        assert_eq!(*seen.borrow(), vec![1, 2, 3]);
        assert_eq!(a.archive.get_group_block(3).unwrap().unwrap().group_height, 3);
    }
}
