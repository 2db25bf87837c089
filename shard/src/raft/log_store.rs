//! A group's Raft log in `raft.redb` (SPEC §9.1–9.2): table `log` (u64 index → encoded entry) and
//! table `meta` (`vote`, `committed`, `last_purged`), behind openraft's storage-v2
//! `RaftLogStorage`.
//!
//! Group commit (STACK.md "redb 4.6: what a commit costs"): `append` puts the entries in the
//! in-memory cache, queues them to the group's log I/O thread and returns. The thread drains
//! everything queued (up to `LOG_WRITER_BATCH_MAX` commands), writes it in ONE redb write
//! transaction with `Durability::Immediate` and only then completes each `LogFlushed` callback, so
//! nothing is acknowledged before its fsync. `save_vote`, `truncate` and `purge` go through the same
//! queue (keeping their order relative to appends) and return once durable. `save_committed` is
//! queued without waiting: it rides along with the next durable commit (alone, it commits with
//! `Durability::None`), since losing it only means re-applying a little more after a crash.
//!
//! What grouping buys with openraft 0.9.25: its RaftCore awaits every append's flush callback
//! inline (`RaftCore::append_to_log`) and runs engine commands after each client write, so one
//! group never has two appends in flight; measured: pipelined client writes to one group cost one
//! fsync each. The fold still merges `save_committed` and vote writes, and would merge appends of
//! a future openraft that pipelines them; throughput per group comes from putting many
//! transactions in one block (SPEC §8.2–8.3). Sharing one flusher (one txn, one fsync) across the
//! groups of a core would need one log file per core instead of SPEC §9.1's `raft.redb` per group.
//!
//! A dedicated thread per group rather than glommio's `spawn_blocking`: the executor never blocks
//! on a commit either way, the thread is a natural place to fold queued commands into one
//! transaction, and the store stays runtime-agnostic, so openraft's storage test suite (which runs
//! on a tokio runtime) can exercise the exact production code.
//!
//! Reads: the most recent entries (at most `LOG_CACHE_ENTRIES_MAX`, and every entry not yet
//! durable) are served from memory; older ones are read from redb on the calling thread (a
//! read transaction: MVCC, never waits for the writer; only lagging followers and re-apply after a
//! restart need them).

use crate::codec::{decode, encode};
use crate::constants::{
    LOG_CACHE_ENTRIES_MAX, LOG_WRITER_BATCH_MAX, LOG_WRITER_QUEUE_MAX, RAFT_DB_CACHE_BYTES,
};
use crate::error::ShardError;
use crate::raft::type_config::{Entry, LogId, StorageError, TypeConfig, Vote};
use futures::channel::oneshot;
use ledger_core::types::LogPayload;
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, EntryPayload, LogState, RaftLogReader, StorageIOError};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const META_VOTE: &str = "vote";
const META_COMMITTED: &str = "committed";
const META_LAST_PURGED: &str = "last_purged";

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

use records::{LogIdRecord, MembershipRecord, VoteRecord};

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
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let log_id: LogId = LogIdRecord { term: u64_at(1), node_id: u64_at(9), index: u64_at(17) }.into();
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

/// Completion of an append (openraft's `LogFlushed`, boxed so tests can observe it too).
type AppendDone = Box<dyn FnOnce(Result<(), std::io::Error>) + Send>;

enum WriteCmd {
    Append { seq: u64, entries: Vec<(u64, Vec<u8>)>, done: AppendDone },
    Truncate { from: u64, done: oneshot::Sender<Result<(), String>> },
    Purge { upto: u64, record: Vec<u8>, done: oneshot::Sender<Result<(), String>> },
    SaveVote { record: Vec<u8>, done: oneshot::Sender<Result<(), String>> },
    SaveCommitted { record: Vec<u8> },
}

impl WriteCmd {
    fn needs_fsync(&self) -> bool {
        !matches!(self, WriteCmd::SaveCommitted { .. })
    }
}

/// Body of the group's log I/O thread: fold queued commands into one transaction each round.
fn writer_loop(
    db: Arc<Database>,
    rx: flume::Receiver<WriteCmd>,
    flushed_seq: Arc<AtomicU64>,
    stats: Arc<LogStats>,
) {
    // After a failed commit nothing is written any more: the group must be restarted (openraft
    // treats the failed callback as a fatal storage error).
    let mut failed: Option<String> = None;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < LOG_WRITER_BATCH_MAX {
            match rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
        let result = match &failed {
            Some(e) => Err(e.clone()),
            None => {
                let started = std::time::Instant::now();
                let r =
                    write_batch(&db, &batch).map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)));
                stats.record(started.elapsed(), batch.iter().filter(|c| c.needs_fsync()).count() > 0);
                r
            }
        };
        if let Err(e) = &result {
            failed = Some(e.clone());
        }
        // Publish durability before telling anyone, so a caller woken by `done` that reads the
        // cache already sees these entries as evictable.
        let max_seq = batch
            .iter()
            .filter_map(|cmd| match cmd {
                WriteCmd::Append { seq, .. } => Some(*seq),
                _ => None,
            })
            .max();
        if let (Some(seq), Ok(())) = (max_seq, &result) {
            flushed_seq.store(seq, Ordering::Release);
        }
        for cmd in batch {
            match cmd {
                WriteCmd::Append { done, .. } => {
                    done(result.clone().map_err(std::io::Error::other));
                }
                WriteCmd::Truncate { done, .. }
                | WriteCmd::Purge { done, .. }
                | WriteCmd::SaveVote { done, .. } => {
                    let _ = done.send(result.clone());
                }
                WriteCmd::SaveCommitted { .. } => {}
            }
        }
    }
}

fn write_batch(db: &Database, batch: &[WriteCmd]) -> Result<(), ShardError> {
    let mut txn = db.begin_write().map_err(|e| ShardError::redb("raft.redb begin_write", e))?;
    let durability =
        if batch.iter().any(WriteCmd::needs_fsync) { Durability::Immediate } else { Durability::None };
    txn.set_durability(durability).map_err(|e| ShardError::redb("raft.redb set_durability", e))?;
    {
        let mut log = txn.open_table(LOG).map_err(|e| ShardError::redb("raft.redb open log", e))?;
        let mut meta = txn.open_table(META).map_err(|e| ShardError::redb("raft.redb open meta", e))?;
        for cmd in batch {
            match cmd {
                WriteCmd::Append { entries, .. } => {
                    for (index, bytes) in entries {
                        log.insert(*index, bytes.as_slice())
                            .map_err(|e| ShardError::redb("raft.redb append", e))?;
                    }
                }
                WriteCmd::Truncate { from, .. } => {
                    log.retain_in(*from.., |_, _| false)
                        .map_err(|e| ShardError::redb("raft.redb truncate", e))?;
                }
                WriteCmd::Purge { upto, record, .. } => {
                    log.retain_in(..=*upto, |_, _| false)
                        .map_err(|e| ShardError::redb("raft.redb purge", e))?;
                    meta.insert(META_LAST_PURGED, record.as_slice())
                        .map_err(|e| ShardError::redb("raft.redb purge", e))?;
                }
                WriteCmd::SaveVote { record, .. } => {
                    meta.insert(META_VOTE, record.as_slice())
                        .map_err(|e| ShardError::redb("raft.redb vote", e))?;
                }
                WriteCmd::SaveCommitted { record } => {
                    meta.insert(META_COMMITTED, record.as_slice())
                        .map_err(|e| ShardError::redb("raft.redb committed", e))?;
                }
            }
        }
    }
    txn.commit().map_err(|e| ShardError::redb("raft.redb commit", e))
}

/// Counters of the log I/O thread, readable from any thread (metrics and tests).
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
    fn record(&self, took: std::time::Duration, durable: bool) {
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
    path: PathBuf,
    db: Arc<Database>,
    /// Cached entries by index with the sequence number of the append that queued them. For every
    /// index at or above the first cached one, the cache holds exactly the entries of the log.
    cache: BTreeMap<u64, (u64, Entry)>,
    last_log_id: Option<LogId>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    next_seq: u64,
    /// Highest append sequence number known durable (written by the I/O thread).
    flushed_seq: Arc<AtomicU64>,
    writer: flume::Sender<WriteCmd>,
    /// The state machine's last durable checkpoint, when one is attached: purges never pass it.
    purge_limit: Option<Rc<Cell<Option<LogId>>>>,
    /// Fault-injection points (tests only arm them).
    faults: Arc<crate::faults::Faults>,
}

impl LogCore {
    fn evict(&mut self) {
        let flushed = self.flushed_seq.load(Ordering::Acquire);
        while self.cache.len() > LOG_CACHE_ENTRIES_MAX {
            match self.cache.first_key_value() {
                Some((_, (seq, _))) if *seq <= flushed => {
                    self.cache.pop_first();
                }
                _ => break,
            }
        }
    }

    fn read_db(&self, lo: Bound<u64>, hi: Bound<u64>) -> Result<Vec<Entry>, ShardError> {
        let txn = self.db.begin_read().map_err(|e| ShardError::redb("raft.redb begin_read", e))?;
        let table = txn.open_table(LOG).map_err(|e| ShardError::redb("raft.redb open log", e))?;
        let mut out = Vec::new();
        for row in table.range::<u64>((lo, hi)).map_err(|e| ShardError::redb("raft.redb range", e))? {
            let (_, v) = row.map_err(|e| ShardError::redb("raft.redb range", e))?;
            out.push(decode_entry(v.value())?);
        }
        Ok(out)
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
            let db_hi = match hi {
                Bound::Included(h) if h < first_cached => Bound::Included(h),
                Bound::Excluded(h) if h <= first_cached => Bound::Excluded(h),
                _ => Bound::Excluded(first_cached),
            };
            out = self.read_db(lo, db_hi)?;
        }
        out.extend(self.cache.range((lo, hi)).map(|(_, (_, e))| e.clone()));
        Ok(out)
    }

    fn log_id_at(&self, index: u64) -> Result<Option<LogId>, ShardError> {
        if let Some((_, e)) = self.cache.get(&index) {
            return Ok(Some(e.log_id));
        }
        if self.last_purged.is_some_and(|p| p.index == index) {
            return Ok(self.last_purged);
        }
        Ok(self.read_db(Bound::Included(index), Bound::Included(index))?.first().map(|e| e.log_id))
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
    /// Opens (creating if needed) `path` and starts the group's log I/O thread, which stops once
    /// the store and every reader clone are dropped (then the file is released).
    pub fn open(
        path: &Path,
        sim: Option<&Arc<crate::storage::sim_disk::SimDisk>>,
    ) -> Result<LogStore, ShardError> {
        let db = Arc::new(crate::db::open_db(path, RAFT_DB_CACHE_BYTES, sim)?);
        let (vote, committed, last_purged, last_in_log) = {
            let txn = db.begin_write().map_err(|e| ShardError::redb("raft.redb begin_write", e))?;
            {
                txn.open_table(LOG).map_err(|e| ShardError::redb("raft.redb create log", e))?;
                txn.open_table(META).map_err(|e| ShardError::redb("raft.redb create meta", e))?;
            }
            txn.commit().map_err(|e| ShardError::redb("raft.redb create tables", e))?;
            let txn = db.begin_read().map_err(|e| ShardError::redb("raft.redb begin_read", e))?;
            let meta = txn.open_table(META).map_err(|e| ShardError::redb("raft.redb open meta", e))?;
            let get = |key: &str| -> Result<Option<Vec<u8>>, ShardError> {
                Ok(meta
                    .get(key)
                    .map_err(|e| ShardError::redb("raft.redb meta get", e))?
                    .map(|v| v.value().to_vec()))
            };
            let vote = get(META_VOTE)?.map(|b| decode::<VoteRecord>("vote", &b)).transpose()?.map(Vote::from);
            let committed = get(META_COMMITTED)?
                .map(|b| decode::<LogIdRecord>("committed", &b))
                .transpose()?
                .map(LogId::from);
            let purged = get(META_LAST_PURGED)?
                .map(|b| decode::<LogIdRecord>("last_purged", &b))
                .transpose()?
                .map(LogId::from);
            let log = txn.open_table(LOG).map_err(|e| ShardError::redb("raft.redb open log", e))?;
            let last = log.last().map_err(|e| ShardError::redb("raft.redb last", e))?;
            let last = last.map(|(_, v)| decode_entry(v.value()).map(|e| e.log_id)).transpose()?;
            (vote, committed, purged, last)
        };
        let (writer, rx) = flume::bounded(LOG_WRITER_QUEUE_MAX);
        let flushed_seq = Arc::new(AtomicU64::new(0));
        let stats = Arc::new(LogStats::default());
        let thread_db = db.clone();
        let thread_flushed = flushed_seq.clone();
        let thread_stats = stats.clone();
        crate::helper_threads::spawn_helper("raft-log-io", move || {
            writer_loop(thread_db, rx, thread_flushed, thread_stats)
        })
        .map_err(|source| ShardError::Io { path: path.to_path_buf(), source })?;
        let core = LogCore {
            path: path.to_path_buf(),
            db,
            cache: BTreeMap::new(),
            last_log_id: last_in_log.or(last_purged),
            last_purged,
            vote,
            committed,
            next_seq: 1,
            flushed_seq,
            writer,
            purge_limit: None,
            faults: Arc::default(),
        };
        Ok(LogStore { core: Rc::new(RefCell::new(core)), stats })
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
    /// Caches `entries`, queues them to the I/O thread and returns; `done` runs on the I/O thread
    /// once they are durable (or the write failed).
    pub(crate) async fn append_then<I>(&mut self, entries: I, done: AppendDone) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry>,
    {
        let (writer, cmd) = {
            let mut core = self.core.borrow_mut();
            let seq = core.next_seq;
            core.next_seq += 1;
            let mut encoded = Vec::new();
            let mut carries_block = false;
            for entry in entries {
                carries_block |= matches!(entry.payload, EntryPayload::Normal(LogPayload::Block(_)));
                encoded.push((entry.log_id.index, encode_entry(&entry)));
                core.last_log_id = Some(entry.log_id);
                core.cache.insert(entry.log_id.index, (seq, entry));
            }
            core.evict();
            if let Some(fault) = carries_block.then(|| core.faults.take_block_append()).flatten() {
                // Never written: the completion reports the injected error instead.
                fault.fail(move |e| done(Err(e)));
                return Ok(());
            }
            (core.writer.clone(), WriteCmd::Append { seq, entries: encoded, done })
        };
        writer
            .send_async(cmd)
            .await
            .map_err(|_| StorageIOError::write_logs(AnyError::error("raft log I/O thread stopped")).into())
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
        let record = encode(&VoteRecord::from(vote));
        let (writer, path) = {
            let mut core = self.core.borrow_mut();
            core.vote = Some(*vote);
            (core.writer.clone(), core.path.clone())
        };
        send_and_wait(writer, path, move |done| WriteCmd::SaveVote { record, done })
            .await
            .map_err(|e| StorageIOError::write_vote(io_error(&e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.core.borrow().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let Some(committed) = committed else { return Ok(()) };
        let record = encode(&LogIdRecord::from(&committed));
        let writer = {
            let mut core = self.core.borrow_mut();
            core.committed = Some(committed);
            core.writer.clone()
        };
        writer
            .send_async(WriteCmd::SaveCommitted { record })
            .await
            .map_err(|_| StorageIOError::write(AnyError::error("raft log I/O thread stopped")).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.core.borrow().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry>,
    {
        self.append_then(entries, Box::new(move |r| callback.log_io_completed(r))).await
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let from = log_id.index;
        let (writer, path) = {
            let mut core = self.core.borrow_mut();
            let _ = core.cache.split_off(&from);
            let prev = match from.checked_sub(1) {
                Some(i) => core.log_id_at(i).map_err(|e| StorageIOError::write_logs(io_error(&e)))?,
                None => None,
            };
            core.last_log_id = prev.or(core.last_purged);
            (core.writer.clone(), core.path.clone())
        };
        send_and_wait(writer, path, move |done| WriteCmd::Truncate { from, done })
            .await
            .map_err(|e| StorageIOError::write_logs(io_error(&e)).into())
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
        let record = encode(&LogIdRecord::from(&log_id));
        let (writer, path) = {
            let mut core = self.core.borrow_mut();
            let kept = core.cache.split_off(&(upto.saturating_add(1)));
            core.cache = kept;
            core.last_purged = Some(log_id);
            if core.last_log_id.is_none_or(|l| l.index < upto) {
                core.last_log_id = Some(log_id);
            }
            (core.writer.clone(), core.path.clone())
        };
        send_and_wait(writer, path, move |done| WriteCmd::Purge { upto, record, done })
            .await
            .map_err(|e| StorageIOError::write_logs(io_error(&e)).into())
    }
}

async fn send_and_wait(
    writer: flume::Sender<WriteCmd>,
    path: PathBuf,
    make: impl FnOnce(oneshot::Sender<Result<(), String>>) -> WriteCmd,
) -> Result<(), ShardError> {
    let (tx, rx) = oneshot::channel();
    let closed = || ShardError::StorageClosed { what: path.display().to_string() };
    writer.send_async(make(tx)).await.map_err(|_| closed())?;
    match rx.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(detail)) => Err(ShardError::WriteFailed { what: path.display().to_string(), detail }),
        Err(_) => Err(closed()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::raft::state_machine::StateMachine;
    use crate::round::group_data::GroupData;
    use crate::storage::archive::Archive;
    use ledger_core::types::GroupId;
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::CommittedLeaderId;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
            let dir = tempfile::tempdir().unwrap();
            let store = LogStore::open(&dir.path().join("raft.redb"), None).unwrap();
            let data = Rc::new(RefCell::new(GroupData::new(GroupId(0), Archive::in_memory())));
            Ok((dir, store, StateMachine::new(data, None)))
        }
    }

    /// Proves the redb log store and the state machine honour openraft's storage contract by
    /// running openraft's own storage-v2 suite against them (on its tokio runtime: the store does
    /// not depend on glommio; the state machine runs without a checkpointer).
    #[test]
    fn t01_openraft_storage_suite() {
        Suite::test_all(Builder).unwrap();
    }

    fn blank(term: u64, index: u64) -> Entry {
        Entry { log_id: LogId::new(CommittedLeaderId::new(term, 1), index), payload: EntryPayload::Blank }
    }

    /// Proves group commit: many appends queued back to back are folded into far fewer durable
    /// transactions than appends, every callback completes only after its commit, and the
    /// entries and vote survive a reopen (they were fsync'd, not just cached).
    #[test]
    fn t02_group_commit_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        futures::executor::block_on(async {
            let mut store = LogStore::open(&path, None).unwrap();
            store.save_vote(&Vote::new(3, 1)).await.unwrap();
            let appends = 2000u64;
            let mut waiters = Vec::new();
            let started = std::time::Instant::now();
            for i in 1..=appends {
                let (tx, rx) = oneshot::channel();
                let done: AppendDone = Box::new(move |r| {
                    let _ = tx.send(r);
                });
                store.append_then([blank(3, i)], done).await.unwrap();
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
        // Reopen: the writer thread has released the file once the store is dropped.
        let reopened = loop {
            match LogStore::open(&path, None) {
                Ok(s) => break s,
                Err(e) if e.is_already_open() => std::thread::sleep(std::time::Duration::from_millis(5)),
                Err(e) => panic!("{e}"),
            }
        };
        futures::executor::block_on(async {
            let mut store = reopened;
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
    }

    /// Proves the purge limit: with nothing durable no entry is purged, and a purge past the
    /// durable checkpoint stops at it (the entries after it stay readable for re-apply).
    #[test]
    fn t03_purge_never_passes_durable_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        futures::executor::block_on(async {
            let mut store = LogStore::open(&dir.path().join("raft.redb"), None).unwrap();
            let limit = Rc::new(Cell::new(None));
            store.set_purge_limit(limit.clone());
            for i in 1..=20 {
                let (tx, rx) = oneshot::channel();
                let done: AppendDone = Box::new(move |r| {
                    let _ = tx.send(r);
                });
                store.append_then([blank(1, i)], done).await.unwrap();
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
