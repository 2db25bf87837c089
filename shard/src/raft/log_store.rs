//! A group's Raft log behind openraft's storage-v2 `RaftLogStorage`: an in-memory cache of the
//! recent entries in front of the core's shared log file (`core_log.rs`, issue 15 item 1, D38).
//!
//! Group commit: `append` caches the entries, queues them to the core's log thread and returns;
//! the thread writes whatever every group of the core queued meanwhile and runs ONE fdatasync
//! covering them all. openraft 0.9.25 awaits every append's `LogFlushed` callback inline
//! (`RaftCore::append_to_log`) before it replicates or appends again (D8). A follower's appends
//! are reported once durable (its answer counts in the commit quorum); the leader's own entries
//! of its term are reported at once (D50), so it replicates while it syncs and its next blocks
//! join the sync in progress; `wait_durable` (before apply) and `durable_log_id` (the commit
//! index followers are told, and the committed id saved) keep every use of an entry behind its
//! sync. `save_vote`,
//! `truncate` and `purge` go through the same queue (keeping their order relative to appends) and
//! return once durable; `save_committed` rides along with the next durable write.
//!
//! Reads: the most recent entries (at most `LOG_CACHE_ENTRIES_MAX`, and every entry not yet
//! durable) are served from memory; older ones are read back from the segment files on the
//! calling thread (only lagging followers and re-apply after a restart need them).

use crate::codec::{decode, encode};
use crate::constants::LOG_CACHE_ENTRIES_MAX;
use crate::error::ShardError;
use crate::metrics::CodecKind;
use crate::raft::core_log::{AppendDone, CoreLog, SyncBy};
use crate::raft::log_writer::LogFailure;
use crate::raft::type_config::{Entry, LogId, StorageError, TypeConfig, Vote};
use futures::channel::oneshot;
use futures::future::{FutureExt, Shared};
use ledger_core::types::{GroupId, LogPayload};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, EntryPayload, LogState, RaftLogReader, StorageIOError};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// rkyv mirrors of openraft's vote, log id and membership types (openraft's serde feature is off).
pub mod records {
    use crate::raft::type_config::{LogId, StoredMembership, Vote};
    use openraft::{BasicNode, CommittedLeaderId, LeaderId, Membership};
    use rkyv::{Archive, Deserialize, Serialize};
    use std::collections::{BTreeMap, BTreeSet};

    #[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
    pub struct LogIdRecord {
        pub term: u64,
        pub node_id: u64,
        pub index: u64,
    }

    impl From<&LogId> for LogIdRecord {
        fn from(id: &LogId) -> Self {
            LogIdRecord { term: id.leader_id.term, node_id: id.leader_id.node_id, index: id.index }
        }
    }

    impl From<LogIdRecord> for LogId {
        fn from(r: LogIdRecord) -> Self {
            // openraft's default (not `single-term-leader`) committed leader id is (term, node id).
            LogId::new(CommittedLeaderId::new(r.term, r.node_id), r.index)
        }
    }

    #[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
    pub struct VoteRecord {
        pub term: u64,
        pub node_id: u64,
        pub committed: bool,
    }

    impl From<&Vote> for VoteRecord {
        fn from(v: &Vote) -> Self {
            VoteRecord { term: v.leader_id.term, node_id: v.leader_id.node_id, committed: v.committed }
        }
    }

    impl From<VoteRecord> for Vote {
        fn from(r: VoteRecord) -> Self {
            Vote { leader_id: LeaderId { term: r.term, node_id: r.node_id }, committed: r.committed }
        }
    }

    #[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
    pub struct MembershipRecord {
        /// Joint configs (one set of voters each), in order.
        pub configs: Vec<Vec<u64>>,
        /// Every node with its address (voters and learners).
        pub nodes: Vec<(u64, String)>,
    }

    impl From<&Membership<u64, BasicNode>> for MembershipRecord {
        fn from(m: &Membership<u64, BasicNode>) -> Self {
            MembershipRecord {
                configs: m.get_joint_config().iter().map(|c| c.iter().copied().collect()).collect(),
                nodes: m.nodes().map(|(id, n)| (*id, n.addr.clone())).collect(),
            }
        }
    }

    impl From<MembershipRecord> for Membership<u64, BasicNode> {
        fn from(r: MembershipRecord) -> Self {
            let configs: Vec<BTreeSet<u64>> =
                r.configs.into_iter().map(|c| c.into_iter().collect()).collect();
            let nodes: BTreeMap<u64, BasicNode> =
                r.nodes.into_iter().map(|(id, addr)| (id, BasicNode { addr })).collect();
            Membership::new(configs, nodes)
        }
    }

    #[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
    pub struct StoredMembershipRecord {
        pub log_id: Option<LogIdRecord>,
        pub membership: MembershipRecord,
    }

    impl From<&StoredMembership> for StoredMembershipRecord {
        fn from(m: &StoredMembership) -> Self {
            StoredMembershipRecord {
                log_id: m.log_id().as_ref().map(LogIdRecord::from),
                membership: m.membership().into(),
            }
        }
    }

    impl From<StoredMembershipRecord> for StoredMembership {
        fn from(r: StoredMembershipRecord) -> Self {
            StoredMembership::new(r.log_id.map(LogId::from), r.membership.into())
        }
    }
}

use records::{LogIdRecord, MembershipRecord};

const KIND_BLANK: u8 = 0;
const KIND_NORMAL: u8 = 1;
const KIND_MEMBERSHIP: u8 = 2;
/// kind u8 ‖ term u64 LE ‖ leader node id u64 LE ‖ index u64 LE ‖ rkyv payload.
const ENTRY_HEADER_LEN: usize = 25;

/// Stored form of a log entry: a fixed header then the rkyv payload, so the payload is serialized
/// straight from the entry without building an owned mirror (no deep clone of the block).
pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    let (kind, body) = match &entry.payload {
        EntryPayload::Blank => (KIND_BLANK, Vec::new()),
        EntryPayload::Normal(payload) => (KIND_NORMAL, encode(payload)),
        EntryPayload::Membership(m) => (KIND_MEMBERSHIP, encode(&MembershipRecord::from(m))),
    };
    let mut out = Vec::with_capacity(ENTRY_HEADER_LEN + body.len());
    out.push(kind);
    out.extend_from_slice(&entry.log_id.leader_id.term.to_le_bytes());
    out.extend_from_slice(&entry.log_id.leader_id.node_id.to_le_bytes());
    out.extend_from_slice(&entry.log_id.index.to_le_bytes());
    out.extend_from_slice(&body);
    out
}

pub fn decode_entry(bytes: &[u8]) -> Result<Entry, ShardError> {
    let corrupt = |detail: String| ShardError::Corrupt { what: "log entry", detail };
    if bytes.len() < ENTRY_HEADER_LEN {
        return Err(corrupt(format!("{} bytes", bytes.len())));
    }
    let log_id = stored_log_id(bytes).ok_or_else(|| corrupt(format!("{} bytes", bytes.len())))?;
    let body = &bytes[ENTRY_HEADER_LEN..];
    let payload = match bytes[0] {
        KIND_BLANK => EntryPayload::Blank,
        KIND_NORMAL => EntryPayload::Normal(decode::<LogPayload>("log payload", body)?),
        KIND_MEMBERSHIP => {
            EntryPayload::Membership(decode::<MembershipRecord>("log membership", body)?.into())
        }
        other => return Err(corrupt(format!("kind {other}"))),
    };
    Ok(Entry { log_id, payload })
}

/// The log id in a stored entry's header (`None`: too short to be an entry).
pub fn stored_log_id(bytes: &[u8]) -> Option<LogId> {
    log_id_from_le(bytes.get(1..)?)
}

/// A log id stored as term, leader node id and index, each u64 little-endian (the entry header's
/// form, also used by the core log's purge and committed records).
pub fn log_id_from_le(bytes: &[u8]) -> Option<LogId> {
    let u64_at = |at: usize| bytes.get(at..at + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes);
    Some(LogIdRecord { term: u64_at(0)?, node_id: u64_at(8)?, index: u64_at(16)? }.into())
}

/// Counters of the core's log thread, readable from any thread (metrics and tests).
#[derive(Debug, Default)]
pub struct LogStats {
    /// Write transactions committed with fsync.
    pub durable_commits: AtomicU64,
    /// Total time spent in those commits, µs.
    pub durable_commit_us: AtomicU64,
    /// Largest single durable commit, µs.
    pub durable_commit_us_max: AtomicU64,
}

impl LogStats {
    pub(crate) fn record(&self, took: std::time::Duration, durable: bool) {
        if !durable {
            return;
        }
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.durable_commits.fetch_add(1, Ordering::Relaxed);
        self.durable_commit_us.fetch_add(us, Ordering::Relaxed);
        self.durable_commit_us_max.fetch_max(us, Ordering::Relaxed);
    }
}

struct LogCore {
    group: GroupId,
    log: Rc<CoreLog>,
    /// Cached entries by index with the core log's write sequence number of the append that
    /// queued them. For every index at or above the first cached one, the cache holds exactly the
    /// entries of the log.
    cache: BTreeMap<u64, (u64, Entry)>,
    last_log_id: Option<LogId>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    /// The state machine's last durable checkpoint, when one is attached: purges never pass it.
    purge_limit: Option<Rc<Cell<Option<LogId>>>>,
    /// Fault-injection points (tests only arm them).
    faults: Arc<crate::faults::Faults>,
    /// The last membership entry appended was a joint config (the test crash point only).
    last_membership_joint: bool,
    /// This node's id once the group runs under Raft: its own entries appended as the leader of
    /// the current term are reported to openraft before they are durable (D50). `None` (storage
    /// tests): every append is reported once durable.
    node_id: Option<u64>,
    /// Completions of the appends not yet seen durable, oldest first: the core log's write
    /// sequence number and the outcome, shared by everything waiting for it (D50).
    pending: VecDeque<(u64, AppendOutcome)>,
    /// Whether the group's membership names a voter other than this node (kept by
    /// `open.rs::follow_server_changes`; until it is known, assumed): the leader's own entries
    /// are then synced on the log thread while it replicates them (D50, D60).
    replicated: bool,
}

/// The outcome of one append (`Err`: the write failed), for every task that waits for it.
type AppendOutcome = Shared<oneshot::Receiver<Result<(), LogFailure>>>;

impl Drop for LogCore {
    fn drop(&mut self) {
        self.log.detach(self.group);
    }
}

impl LogCore {
    /// The last entry that is durable with every entry before it. The cache holds every entry
    /// not yet durable, and write sequence numbers grow with the index, so only the cached tail
    /// written after the last sync is not.
    fn durable_log_id(&self) -> Option<LogId> {
        let flushed = self.log.flushed_seq();
        let first_unsynced = self.cache.iter().rev().take_while(|(_, (seq, _))| *seq > flushed).last();
        match first_unsynced {
            Some((index, _)) => index.checked_sub(1).and_then(|i| self.log_id_at(i)).or(self.last_purged),
            None => self.last_log_id,
        }
    }

    /// Whether `entries` are this node's own, appended as the leader of the current term: the
    /// vote is committed and names this node, and every entry carries that leader id. Only the
    /// leader of a term makes entries of that term, so a follower's append never qualifies.
    fn appends_own_entries(&self, entries: &[Entry]) -> bool {
        let (Some(node_id), Some(vote)) = (self.node_id, self.vote) else { return false };
        vote.committed
            && vote.leader_id.node_id == node_id
            && !entries.is_empty()
            && entries.iter().all(|e| e.log_id.leader_id == vote.leader_id)
    }

    /// Drops the completions of appends already durable: what is left is at most the appends
    /// written since the last sync (and a failed one), so the queue stays short on a node that
    /// appends without applying (a follower waiting for commits).
    fn settle_pending(&mut self) {
        let flushed = self.log.flushed_seq();
        while self.pending.front().is_some_and(|(seq, _)| *seq <= flushed) {
            self.pending.pop_front();
        }
    }

    fn evict(&mut self) {
        let flushed = self.log.flushed_seq();
        while self.cache.len() > LOG_CACHE_ENTRIES_MAX {
            match self.cache.first_key_value() {
                Some((_, (seq, _))) if *seq <= flushed => {
                    self.cache.pop_first();
                }
                _ => break,
            }
        }
    }

    fn read(&self, lo: Bound<u64>, hi: Bound<u64>) -> Result<Vec<Entry>, ShardError> {
        let first_cached = self.cache.first_key_value().map(|(k, _)| *k).unwrap_or(u64::MAX);
        let below_cache = match lo {
            Bound::Included(l) => l < first_cached,
            Bound::Excluded(l) => l.saturating_add(1) < first_cached,
            Bound::Unbounded => true,
        };
        let mut out = Vec::new();
        if below_cache {
            let file_hi = match hi {
                Bound::Included(h) if h < first_cached => Bound::Included(h),
                Bound::Excluded(h) if h <= first_cached => Bound::Excluded(h),
                _ => Bound::Excluded(first_cached),
            };
            out = self.log.read(self.group, lo, file_hi)?;
        }
        out.extend(self.cache.range((lo, hi)).map(|(_, (_, e))| e.clone()));
        Ok(out)
    }

    fn log_id_at(&self, index: u64) -> Option<LogId> {
        if let Some((_, e)) = self.cache.get(&index) {
            return Some(e.log_id);
        }
        if self.last_purged.is_some_and(|p| p.index == index) {
            return self.last_purged;
        }
        self.log.log_id_at(self.group, index)
    }
}

/// The group's `RaftLogStorage` (also its `RaftLogReader`; `get_log_reader` returns a clone that
/// shares the cache, same core only).
#[derive(Clone)]
pub struct LogStore {
    core: Rc<RefCell<LogCore>>,
    stats: Arc<LogStats>,
}

fn io_error(e: &ShardError) -> AnyError {
    AnyError::new(e)
}

impl LogStore {
    /// Opens `group`'s log in the core's shared log. Fails with `ShardError::LogAttached` while a
    /// store of the same group is still open (a closing incarnation: retry).
    pub fn open(log: Rc<CoreLog>, group: GroupId) -> Result<LogStore, ShardError> {
        let state = log.attach(group).ok_or(ShardError::LogAttached { group: group.0 })??;
        let stats = log.stats();
        let core = LogCore {
            group,
            log,
            cache: BTreeMap::new(),
            last_log_id: state.last_log_id,
            last_purged: state.last_purged,
            vote: state.vote,
            committed: state.committed,
            purge_limit: None,
            faults: Arc::default(),
            last_membership_joint: false,
            node_id: None,
            pending: VecDeque::new(),
            replicated: true,
        };
        Ok(LogStore { core: Rc::new(RefCell::new(core)), stats })
    }

    /// Lets this node's own entries, appended as leader, be reported to openraft before they are
    /// durable (D50): the leader then replicates while it syncs, and a group's next appends join
    /// the sync in progress. Durability is still awaited before anything is applied
    /// ([`Self::wait_durable`], the state machine) and before a follower learns an entry is
    /// committed ([`Self::durable_log_id`], the network).
    pub fn set_node_id(&self, node_id: u64) {
        self.core.borrow_mut().node_id = Some(node_id);
    }

    /// Before openraft starts: a saved vote that is committed and names this node is saved again
    /// uncommitted (same term, same node), so the node starts as a follower and leads again only
    /// by winning an election in a new term (D89). openraft 0.9 would resume leadership at once
    /// (`Engine::startup`), in the same term; since this node reports its own entries before they
    /// are durable (D50), its log may have lost entries of that term its followers keep, and it
    /// would then write other entries at those indexes in that term, which the followers take for
    /// the ones they hold (Raft's log matching broken; the chain check stops their groups).
    /// Returns whether it did.
    pub async fn forget_leadership(&self, node_id: u64) -> Result<bool, ShardError> {
        let saved = self.core.borrow().vote;
        let Some(vote) = saved.filter(|v| v.committed && v.leader_id.node_id == node_id) else {
            return Ok(false);
        };
        let mut store = self.clone();
        RaftLogStorage::save_vote(&mut store, &Vote::new(vote.leader_id.term, node_id))
            .await
            .map_err(|e| ShardError::raft("forget the saved leadership", e))?;
        Ok(true)
    }

    /// Tells the store, through the returned setter, whether the group has a voter other than
    /// this node (D60). The setter holds the store weakly, so a task that keeps it does not keep
    /// the group's log attached after the group closes (D56).
    pub fn replicated_setter(&self) -> impl Fn(bool) + 'static {
        let core = Rc::downgrade(&self.core);
        move |replicated| {
            if let Some(core) = core.upgrade() {
                core.borrow_mut().replicated = replicated;
            }
        }
    }

    /// The last entry that is durable here, with every entry before it.
    pub fn durable_log_id(&self) -> Option<LogId> {
        self.core.borrow().durable_log_id()
    }

    /// How errors name this group's log: the core log's directory.
    fn log_name(&self) -> String {
        format!("raft log {}", self.core.borrow().log.dir().path().display())
    }

    /// Waits until the entry at `index` and every entry before it are durable here; `Err` if a
    /// write failed (the group must then stop: openraft was told it was appended).
    pub async fn wait_durable(&self, index: u64) -> Result<(), ShardError> {
        loop {
            let next = {
                let mut core = self.core.borrow_mut();
                core.settle_pending();
                if core.durable_log_id().is_some_and(|d| d.index >= index) {
                    return Ok(());
                }
                if let Some(source) = core.log.failure() {
                    let what = format!("raft log {}", core.log.dir().path().display());
                    return Err(ShardError::WriteFailed { what, source });
                }
                core.pending.front().cloned()
            };
            // Nothing pending: everything appended is durable, so `index` was never appended
            // (openraft applies only what it appended); there is nothing to wait for.
            let Some((seq, outcome)) = next else { return Ok(()) };
            match outcome.await {
                Ok(Ok(())) => {
                    let mut core = self.core.borrow_mut();
                    if core.pending.front().is_some_and(|(s, _)| *s == seq) {
                        core.pending.pop_front();
                    }
                }
                Ok(Err(source)) => return Err(ShardError::WriteFailed { what: self.log_name(), source }),
                // The core log closed before the write completed.
                Err(oneshot::Canceled) => return Err(ShardError::StorageClosed { what: self.log_name() }),
            }
        }
    }

    /// Attaches the node's fault-injection points (faults.rs).
    pub fn set_faults(&self, faults: Arc<crate::faults::Faults>) {
        self.core.borrow_mut().faults = faults;
    }

    /// Never purge past `limit` (the last durable state checkpoint; `None` = nothing durable
    /// yet, so nothing may be purged): after a crash openraft re-applies from that checkpoint,
    /// so the log must still hold every later entry (SPEC §8.5).
    pub fn set_purge_limit(&self, limit: Rc<Cell<Option<LogId>>>) {
        self.core.borrow_mut().purge_limit = Some(limit);
    }

    /// The core log's write counters (shared by the core's groups).
    pub fn stats(&self) -> Arc<LogStats> {
        self.stats.clone()
    }

    /// The committed log id last saved by openraft (for recovery checks).
    pub fn committed(&self) -> Option<LogId> {
        self.core.borrow().committed
    }

    pub fn last_log_id(&self) -> Option<LogId> {
        self.core.borrow().last_log_id
    }

    /// The last purged log id (`None`: the log still starts at index 1).
    pub fn last_purged(&self) -> Option<LogId> {
        self.core.borrow().last_purged
    }

    /// Entries currently held in memory.
    pub fn cached_entries(&self) -> usize {
        self.core.borrow().cache.len()
    }
}

impl LogStore {
    /// openraft's append: `report` tells openraft the entries are appended. This node's own
    /// entries as the leader of the current term are reported at once (D50): openraft may go on
    /// (replicate them, take the next append) while the core log syncs them, and nothing is
    /// applied, nor does any follower learn them committed, before they are durable here. Any
    /// other append (a follower's) is reported once durable, since its answer to the leader
    /// counts it in the commit quorum.
    pub(crate) async fn append_for_raft<I>(
        &mut self,
        entries: I,
        report: AppendDone,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry>,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let (own, replicated) = {
            let core = self.core.borrow();
            (core.appends_own_entries(&entries), core.replicated)
        };
        if own {
            // A leader with other voters sends the entries to them during its sync, so the
            // executor must not block on it; a lone leader has nothing else to do (D60).
            let by = if replicated { SyncBy::Thread } else { SyncBy::IdleWriter };
            self.append_then(entries, by, Box::new(|_| {})).await?;
            report(Ok(()));
            return Ok(());
        }
        // A follower answers only after the sync: nothing of its own waits meanwhile (D60).
        self.append_then(entries, SyncBy::IdleWriter, report).await
    }

    /// Caches `entries`, queues them to the core's log thread and returns; `done` runs on that
    /// thread once they are durable (or the write failed).
    pub(crate) async fn append_then<I>(
        &mut self,
        entries: I,
        sync_by: SyncBy,
        done: AppendDone,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry>,
    {
        let mut core = self.core.borrow_mut();
        let entries: Vec<Entry> = entries.into_iter().collect();
        if let Err(e) = continues_log(core.last_log_id, &entries) {
            return Err(StorageIOError::write_logs(io_error(&e)).into());
        }
        // Everything that waits for durability (`wait_durable`) learns the outcome from here.
        let (outcome_tx, outcome_rx) = oneshot::channel::<Result<(), LogFailure>>();
        let done: AppendDone = Box::new(move |r: Result<(), std::io::Error>| {
            let r = r.map_err(Arc::new);
            let _ = outcome_tx.send(r.clone());
            done(r.map_err(|e| std::io::Error::new(e.kind(), e)));
        });
        let outcome = outcome_rx.shared();
        let mut encoded = Vec::new();
        let mut carries_block = false;
        let mut cached = Vec::new();
        for entry in entries {
            if let EntryPayload::Membership(m) = &entry.payload {
                // The test crash point (D68), before anything of this append is written.
                let joint = m.get_joint_config().len() > 1;
                if !joint
                    && core.last_membership_joint
                    && core.appends_own_entries(std::slice::from_ref(&entry))
                {
                    core.faults.crash_before_final_config();
                }
                core.last_membership_joint = joint;
            }
            carries_block |= matches!(entry.payload, EntryPayload::Normal(LogPayload::Block(_)));
            // Timed here, on the core: the log thread only writes the bytes.
            let started = std::time::Instant::now();
            let bytes = encode_entry(&entry);
            let took = started.elapsed();
            crate::metrics::with(|m| m.codec(CodecKind::Log, true, bytes.len(), took));
            encoded.push((entry.log_id, bytes));
            cached.push(entry);
        }
        if let Some(fault) = carries_block.then(|| core.faults.take_block_append()).flatten() {
            // Never written: the completion reports the injected error instead.
            for entry in cached {
                core.last_log_id = Some(entry.log_id);
                core.cache.insert(entry.log_id.index, (u64::MAX, entry));
            }
            fault.fail(move |e| done(Err(e)));
            core.pending.push_back((u64::MAX, outcome));
            return Ok(());
        }
        let seq = core
            .log
            .append(core.group, &encoded, sync_by, done)
            .map_err(|e| StorageIOError::write_logs(io_error(&e)))?;
        for entry in cached {
            core.last_log_id = Some(entry.log_id);
            core.cache.insert(entry.log_id.index, (seq, entry));
        }
        core.settle_pending();
        core.pending.push_back((seq, outcome));
        core.evict();
        Ok(())
    }
}

/// openraft's contract for an append (`RaftLogStorage::append`): the entries of one append are
/// consecutive. The first may start past the last entry kept: after a follower installs a
/// snapshot, openraft appends from the snapshot's last entry on before it purges the older log
/// (cluster t05 met it; the core log reads by index from the newest record of each). A hole inside an
/// append would leave the log unreadable by index, so such an append is refused (openraft then
/// stops the group) before anything is cached or written.
fn continues_log(last: Option<LogId>, entries: &[Entry]) -> Result<(), ShardError> {
    let mut next = last.map(|id| id.index + 1);
    for (i, entry) in entries.iter().enumerate() {
        let index = entry.log_id.index;
        let hole = match next {
            None => false,
            // The first entry: at or below the next (an overwrite) or past it (after a snapshot).
            Some(_) if i == 0 => false,
            Some(next) => index != next,
        };
        if hole {
            return Err(ShardError::Corrupt {
                what: "raft log append",
                detail: format!("entry {index} appended where entry {:?} comes next", next),
            });
        }
        next = Some(index + 1);
    }
    Ok(())
}

/// `id`, or the durable id when that is lower (`None`: nothing durable yet).
pub fn clamp_to_durable(id: LogId, durable: Option<LogId>) -> Option<LogId> {
    match durable {
        Some(d) if d.index < id.index => Some(d),
        Some(_) => Some(id),
        None => None,
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let mut core = self.core.borrow_mut();
        // Entries that became durable since the last append can go now: after a burst of appends
        // the next read (apply's) brings the cache back under its bound.
        core.evict();
        core.read(range.start_bound().cloned(), range.end_bound().cloned())
            .map_err(|e| StorageIOError::read_logs(io_error(&e)).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let core = self.core.borrow();
        Ok(LogState {
            last_purged_log_id: core.last_purged,
            last_log_id: core.last_log_id.or(core.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let (log, group) = {
            let mut core = self.core.borrow_mut();
            core.vote = Some(*vote);
            (core.log.clone(), core.group)
        };
        log.save_vote(group, vote).await.map_err(|e| StorageIOError::write_vote(io_error(&e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.core.borrow().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let Some(committed) = committed else { return Ok(()) };
        let mut core = self.core.borrow_mut();
        // A leader's entry can be committed before it is durable here (D50); a committed id
        // past the durable log would name an entry a restart may not find. Saving less only
        // means re-applying a little more after a restart.
        let Some(committed) = clamp_to_durable(committed, core.durable_log_id()) else { return Ok(()) };
        core.committed = Some(committed);
        core.log.save_committed(core.group, committed).map_err(|e| StorageIOError::write(io_error(&e)).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.core.borrow().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry>,
    {
        self.append_for_raft(entries, Box::new(move |r| callback.log_io_completed(r))).await
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let from = log_id.index;
        let (log, group) = {
            let mut core = self.core.borrow_mut();
            let _ = core.cache.split_off(&from);
            let prev = from.checked_sub(1).and_then(|i| core.log_id_at(i));
            core.last_log_id = prev.or(core.last_purged);
            (core.log.clone(), core.group)
        };
        log.truncate(group, from).await.map_err(|e| StorageIOError::write_logs(io_error(&e)).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let limit = self.core.borrow().purge_limit.as_ref().map(|l| l.get());
        let log_id = match limit {
            None => log_id,
            Some(Some(durable)) if durable.index < log_id.index => durable,
            Some(Some(_)) => log_id,
            // Nothing durable yet: keep the whole log. Purging is an optimization; openraft never
            // reads below what it asked to purge, so keeping more is safe.
            Some(None) => return Ok(()),
        };
        let upto = log_id.index;
        let (log, group) = {
            let mut core = self.core.borrow_mut();
            let kept = core.cache.split_off(&(upto.saturating_add(1)));
            core.cache = kept;
            core.last_purged = Some(log_id);
            if core.last_log_id.is_none_or(|l| l.index < upto) {
                core.last_log_id = Some(log_id);
            }
            (core.log.clone(), core.group)
        };
        log.purge(group, log_id).await.map_err(|e| StorageIOError::write_logs(io_error(&e)).into())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::raft::state_machine::StateMachine;
    use crate::round::group_data::GroupData;
    use crate::storage::archive::Archive;
    use futures::channel::oneshot;
    use ledger_core::types::GroupId;
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::CommittedLeaderId;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
            let dir = tempfile::tempdir().unwrap();
            let store = LogStore::open(open_log(dir.path()), GroupId(0)).unwrap();
            let data = Rc::new(RefCell::new(GroupData::new(GroupId(0), Archive::in_memory())));
            Ok((dir, store, StateMachine::new(data, None)))
        }
    }

    fn open_log(dir: &std::path::Path) -> Rc<CoreLog> {
        Rc::new(CoreLog::open(crate::storage::log_files::LogDir::Real(dir.join("log"))).unwrap())
    }

    /// Proves the log store and the state machine honour openraft's storage contract by
    /// running openraft's own storage-v2 suite against them (on its tokio runtime: the store does
    /// not depend on glommio; the state machine runs without a checkpointer).
    #[test]
    fn t01_openraft_storage_suite() {
        Suite::test_all(Builder).unwrap();
    }

    fn blank(term: u64, index: u64) -> Entry {
        entry_of(term, 1, index)
    }

    fn entry_of(term: u64, node: u64, index: u64) -> Entry {
        Entry { log_id: LogId::new(CommittedLeaderId::new(term, node), index), payload: EntryPayload::Blank }
    }

    /// D50: the leader's own entries of its term are reported to openraft before they are
    /// durable, and `wait_durable` then waits for them; a committed id is never saved past the
    /// durable log; anyone else's entries, or any entry while this node is not the committed
    /// leader, are reported only once durable.
    #[test]
    fn t04_own_entries_are_reported_at_once_and_waited_for_before_apply() {
        use std::sync::atomic::AtomicBool;
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(open_log(dir.path()), GroupId(0)).unwrap();
        futures::executor::block_on(async {
            let report = |flag: &Arc<AtomicBool>| -> AppendDone {
                let flag = flag.clone();
                Box::new(move |r: Result<(), std::io::Error>| {
                    r.unwrap();
                    flag.store(true, Ordering::SeqCst);
                })
            };
            // No node id (storage tests): never early, whatever the vote.
            store.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
            assert!(!store.core.borrow().appends_own_entries(&[entry_of(1, 1, 1)]));
            store.set_node_id(1);
            {
                let core = store.core.borrow();
                assert!(core.appends_own_entries(&[entry_of(1, 1, 1), entry_of(1, 1, 2)]));
                assert!(!core.appends_own_entries(&[]));
                // An entry of an earlier term of this node (re-replicated to it as a follower).
                assert!(!core.appends_own_entries(&[entry_of(0, 1, 1)]));
                assert!(!core.appends_own_entries(&[entry_of(1, 2, 1)]));
            }

            let reported = Arc::new(AtomicBool::new(false));
            store.append_for_raft([entry_of(1, 1, 1)], report(&reported)).await.unwrap();
            assert!(reported.load(Ordering::SeqCst), "an own entry is reported at once");
            store.save_committed(Some(entry_of(1, 1, 1).log_id)).await.unwrap();
            let saved = store.read_committed().await.unwrap();
            let durable = store.durable_log_id();
            assert!(
                saved.map(|c| c.index) <= durable.map(|d| d.index),
                "committed {saved:?} saved past the durable log {durable:?}"
            );
            store.wait_durable(1).await.unwrap();
            assert_eq!(store.durable_log_id().map(|d| d.index), Some(1));

            // A vote for another node: this node is a follower, its appends are reported once
            // durable (the callback runs on the log thread after the sync).
            store.save_vote(&Vote::new_committed(2, 2)).await.unwrap();
            let (tx, rx) = oneshot::channel();
            let flag = Arc::new(AtomicBool::new(false));
            let done = report(&flag);
            store
                .append_for_raft(
                    [entry_of(2, 2, 2)],
                    Box::new(move |r| {
                        done(r);
                        let _ = tx.send(());
                    }),
                )
                .await
                .unwrap();
            rx.await.unwrap();
            assert!(flag.load(Ordering::SeqCst));
            assert_eq!(store.durable_log_id().map(|d| d.index), Some(2));
            store.wait_durable(2).await.unwrap();
        });
        assert_eq!(
            clamp_to_durable(entry_of(1, 1, 5).log_id, Some(entry_of(1, 1, 3).log_id)).map(|l| l.index),
            Some(3)
        );
        assert_eq!(
            clamp_to_durable(entry_of(1, 1, 2).log_id, Some(entry_of(1, 1, 3).log_id)).map(|l| l.index),
            Some(2)
        );
        assert_eq!(clamp_to_durable(entry_of(1, 1, 2).log_id, None), None);
    }

    /// Proves an append that would leave a hole in the log is refused, within its entries or after
    /// the last entry kept, while a continuation, a first append anywhere and an append over kept
    /// entries (openraft truncates first; its suite does not) pass.
    #[test]
    fn t05_an_append_that_leaves_a_hole_is_refused() {
        let last = Some(entry_of(1, 1, 4).log_id);
        let ok = |last, entries: &[Entry]| continues_log(last, entries).is_ok();
        assert!(ok(last, &[entry_of(1, 1, 5), entry_of(1, 1, 6)]));
        assert!(ok(None, &[entry_of(1, 1, 9), entry_of(1, 1, 10)]));
        assert!(ok(last, &[entry_of(1, 1, 3)]), "over kept entries");
        assert!(ok(last, &[]));
        assert!(ok(last, &[entry_of(1, 1, 160)]), "after a snapshot past the log");
        assert!(!ok(last, &[entry_of(1, 1, 5), entry_of(1, 1, 7)]), "a hole inside the append");
        assert!(!ok(None, &[entry_of(1, 1, 2), entry_of(1, 1, 2)]), "an index twice");
    }

    /// D89: a committed vote for this node is saved again uncommitted before openraft starts
    /// (so it does not resume leadership in the same term), durably; any other vote is left.
    #[test]
    fn t06_a_saved_leadership_is_forgotten_before_start() {
        let dir = tempfile::tempdir().unwrap();
        let log = open_log(dir.path());
        futures::executor::block_on(async {
            let mut store = LogStore::open(log.clone(), GroupId(0)).unwrap();
            assert!(!store.forget_leadership(1).await.unwrap(), "no vote yet");
            store.save_vote(&Vote::new_committed(3, 2)).await.unwrap();
            assert!(!store.forget_leadership(1).await.unwrap(), "another node's leadership");
            assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new_committed(3, 2)));
            store.save_vote(&Vote::new(4, 1)).await.unwrap();
            assert!(!store.forget_leadership(1).await.unwrap(), "a vote not granted by a quorum");
            store.save_vote(&Vote::new_committed(5, 1)).await.unwrap();
            assert!(store.forget_leadership(1).await.unwrap());
            assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(5, 1)));
            assert!(!store.core.borrow().appends_own_entries(&[entry_of(5, 1, 1)]));
        });
        drop(log);
        let mut store = LogStore::open(open_log(dir.path()), GroupId(0)).unwrap();
        let vote = futures::executor::block_on(store.read_vote()).unwrap();
        assert_eq!(vote, Some(Vote::new(5, 1)), "the uncommitted vote was saved durably");
    }

    /// Proves group commit: many appends queued back to back are folded into far fewer fsyncs
    /// than appends, every callback completes only after its sync, and the entries and vote
    /// survive a reopen (they were fsync'd, not just cached).
    #[test]
    fn t02_group_commit_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        futures::executor::block_on(async {
            let mut store = LogStore::open(open_log(dir.path()), GroupId(7)).unwrap();
            store.save_vote(&Vote::new(3, 1)).await.unwrap();
            let appends = 2000u64;
            let mut waiters = Vec::new();
            let started = std::time::Instant::now();
            for i in 1..=appends {
                let (tx, rx) = oneshot::channel();
                let done: AppendDone = Box::new(move |r| {
                    let _ = tx.send(r);
                });
                store.append_then([blank(3, i)], SyncBy::IdleWriter, done).await.unwrap();
                waiters.push(rx);
            }
            for rx in waiters {
                rx.await.unwrap().unwrap();
            }
            let took = started.elapsed();
            let stats = store.stats();
            let commits = stats.durable_commits.load(Ordering::Relaxed);
            let commit_us = stats.durable_commit_us.load(Ordering::Relaxed);
            eprintln!(
                "group commit: {appends} appends in {commits} fsync'd txns, {:.0} appends/s, mean commit {} us, max {} us",
                appends as f64 / took.as_secs_f64(),
                commit_us / commits.max(1),
                stats.durable_commit_us_max.load(Ordering::Relaxed)
            );
            assert!(commits < appends, "appends were not grouped");
            assert!(commits >= 2, "vote and appends were committed");
            assert_eq!(store.last_log_id().unwrap().index, appends);
            let all = store.try_get_log_entries(1..=appends).await.unwrap();
            // Everything is durable, so the read evicted the cache down to its bound.
            assert!(store.cached_entries() <= LOG_CACHE_ENTRIES_MAX);
            assert_eq!(all.len() as u64, appends);
            assert!(all.iter().enumerate().all(|(i, e)| e.log_id.index == i as u64 + 1));
        });
        // Reopen: a fresh replay of the segment files.
        futures::executor::block_on(async {
            let mut store = LogStore::open(open_log(dir.path()), GroupId(7)).unwrap();
            assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
            let state = store.get_log_state().await.unwrap();
            assert_eq!(state.last_log_id.unwrap().index, 2000);
            let some = store.try_get_log_entries(1990..2001).await.unwrap();
            assert_eq!(some.len(), 11);
            store.truncate(LogId::new(CommittedLeaderId::new(3, 1), 1500)).await.unwrap();
            store.purge(LogId::new(CommittedLeaderId::new(3, 1), 100)).await.unwrap();
            let state = store.get_log_state().await.unwrap();
            assert_eq!(state.last_log_id.unwrap().index, 1499);
            assert_eq!(state.last_purged_log_id.unwrap().index, 100);
            assert_eq!(store.try_get_log_entries(0..2001).await.unwrap().len(), 1399);
        });
        // And again: the truncate and the purge were durable too.
        futures::executor::block_on(async {
            let mut store = LogStore::open(open_log(dir.path()), GroupId(7)).unwrap();
            let state = store.get_log_state().await.unwrap();
            assert_eq!(state.last_log_id.unwrap().index, 1499);
            assert_eq!(state.last_purged_log_id.unwrap().index, 100);
            let all = store.try_get_log_entries(0..2001).await.unwrap();
            assert_eq!(all.len(), 1399);
            assert_eq!(all[0].log_id.index, 101);
        });
    }

    /// Proves the purge limit: with nothing durable no entry is purged, and a purge past the
    /// durable checkpoint stops at it (the entries after it stay readable for re-apply).
    #[test]
    fn t03_purge_never_passes_durable_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        futures::executor::block_on(async {
            let mut store = LogStore::open(open_log(dir.path()), GroupId(1)).unwrap();
            let limit = Rc::new(Cell::new(None));
            store.set_purge_limit(limit.clone());
            for i in 1..=20 {
                let (tx, rx) = oneshot::channel();
                let done: AppendDone = Box::new(move |r| {
                    let _ = tx.send(r);
                });
                store.append_then([blank(1, i)], SyncBy::IdleWriter, done).await.unwrap();
                rx.await.unwrap().unwrap();
            }
            store.purge(LogId::new(CommittedLeaderId::new(1, 1), 10)).await.unwrap();
            assert_eq!(store.get_log_state().await.unwrap().last_purged_log_id, None);
            limit.set(Some(LogId::new(CommittedLeaderId::new(1, 1), 5)));
            store.purge(LogId::new(CommittedLeaderId::new(1, 1), 10)).await.unwrap();
            assert_eq!(store.get_log_state().await.unwrap().last_purged_log_id.unwrap().index, 5);
            assert_eq!(store.try_get_log_entries(0..=20).await.unwrap().len(), 15);
        });
    }
}
