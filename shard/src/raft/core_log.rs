//! One durable Raft log per core (issue 15 item 1, D38): every group of a core appends to the same
//! segment files, and one write + one fdatasync on the core's log thread covers whatever every
//! group queued meanwhile. openraft 0.9 keeps one append per group in flight (D8), so this is what
//! lets a core's groups share an fsync instead of each paying its own.
//!
//! Layout: `{data_dir}/log/core-NN/{seq:016x}.log`. A segment is a sequence of records, each
//! `len u32 | kind u8 | 0 u8×3 | group u32 | tag u32 | checksum u64` followed by `len` payload
//! bytes and zero padding to 8 bytes; the checksum is blake3 over the first 16 header bytes and the
//! payload. Kinds: entries of one append, truncate, purge, vote, committed, a group's reset (its
//! replica released, D92), and a segment's opening record. Every start of the log opens a new segment and every segment begins with each group's
//! vote, committed and purged ids, so a segment that holds no live entry of any group can be
//! deleted (oldest first) without losing metadata, and nothing is ever written after a torn tail:
//! replay reads each segment up to its first invalid record.
//!
//! Reuse (D61): a deleted segment is kept as a spare (`{seq:016x}.spare`, at most
//! `LOG_SPARE_SEGMENTS_MAX`) and renamed into place as a later segment, so its blocks are already
//! written and no zeros need writing ahead of the end. Its old records are still there past the
//! new ones: every record carries its segment's `tag`, a random nonzero number drawn each time a
//! segment is started (0 in segments written before D61), and replay stops at the first record
//! whose tag is not the opening record's.
//!
//! Split of work: the executor (this type, single-threaded) decides where each record goes (segment
//! and offset), keeps every group's index of entry positions and its vote/committed/purged ids, and
//! queues the encoded bytes; the writer (`log_writer.rs`) writes what is queued contiguously,
//! syncs each file it wrote once, and only then completes the callbacks (nothing is acknowledged
//! before its fdatasync). The writer is the core's log thread, or the executor itself when a
//! synced record is due and the thread is idle (D60).

use crate::codec::{decode, encode};
use crate::constants::{
    LOG_EXECUTOR_WRITE_BYTES_MAX, LOG_RELOCATE_ENTRIES_MAX, LOG_SEGMENT_BYTES, LOG_SPARE_SEGMENTS_MAX,
    LOG_WRITER_QUEUE_MAX,
};
use crate::error::ShardError;
use crate::metrics::CodecKind;
use crate::raft::log_store::records::VoteRecord;
use crate::raft::log_store::{decode_entry, log_id_from_le, stored_log_id, LogStats};
use crate::raft::log_writer::{Done, Failure, LogFailure, LogWriter, SharedWriter, Spares, WalCmd};
use crate::raft::type_config::{Entry, LogId, Vote};
use crate::storage::log_files::{LogDir, LogFile};
use futures::channel::oneshot;
use ledger_core::types::GroupId;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};

pub use crate::raft::log_writer::AppendDone;

const HEADER_LEN: usize = 24;
const KIND_ENTRIES: u8 = 1;
const KIND_TRUNCATE: u8 = 2;
const KIND_PURGE: u8 = 3;
const KIND_VOTE: u8 = 4;
const KIND_COMMITTED: u8 = 5;
const KIND_SEGMENT: u8 = 6;
/// The group's log is forgotten: entries, vote, committed and purged ids (D92).
const KIND_RESET: u8 = 7;

/// Where an entry's stored bytes are.
#[derive(Debug, Clone, Copy)]
struct EntryLoc {
    seg: u64,
    offset: u64,
    len: u32,
    log_id: LogId,
}

/// What the log holds for one group.
#[derive(Debug, Default)]
struct GroupLog {
    entries: BTreeMap<u64, EntryLoc>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
    /// Why replay found this group's records unusable: the group fails to open (alone, SPEC §2
    /// goal 3); the other groups of the core are unaffected.
    broken: Option<String>,
}

impl GroupLog {
    fn purge(&mut self, upto: LogId) {
        let kept = self.entries.split_off(&(upto.index.saturating_add(1)));
        self.entries = kept;
        if self.last_purged.is_none_or(|p| p.index < upto.index) {
            self.last_purged = Some(upto);
        }
    }

    fn insert(&mut self, loc: EntryLoc) {
        let index = loc.log_id.index;
        if self.last_purged.is_some_and(|p| index <= p.index) {
            return;
        }
        // An entry at or below the last one replaces it and everything after (a truncate that
        // was not recorded separately); a gap means an earlier part was lost or purged behind a
        // deleted segment: the open check (first entry follows the purge point) judges it.
        let _ = self.entries.split_off(&index);
        if self.entries.last_key_value().is_some_and(|(last, _)| *last + 1 != index) {
            self.entries.clear();
        }
        self.entries.insert(index, loc);
    }
}

/// A group's state as replayed, handed to its log store when it opens.
#[derive(Debug, Clone, Default)]
pub struct GroupLogState {
    pub last_log_id: Option<LogId>,
    pub vote: Option<Vote>,
    pub committed: Option<LogId>,
    pub last_purged: Option<LogId>,
}

/// Who syncs a record that must be durable (D60).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncBy {
    /// Once the executor's ready tasks have run: the executor itself if the log thread is idle
    /// then (no hand-off to wait for), otherwise the thread.
    IdleWriter,
    /// The log thread, while the executor goes on: a leader's entries, which it replicates
    /// during the sync (D50).
    Thread,
}

/// A queued record that is not synced now rides with the next one that is (a committed id:
/// losing it only means re-applying a little more after a crash).
const UNSYNCED: Option<SyncBy> = None;

/// Entries in stored form, with their log ids.
type StoredEntries = Vec<(LogId, Vec<u8>)>;

/// A copy of a quiet group's live entries (D62): once the record holding it (write sequence
/// number `seq`) is durable, the group's index points at the copies.
struct Relocation {
    group: GroupId,
    seq: u64,
    locs: Vec<EntryLoc>,
}

/// A group's vote, committed and purged ids, as a segment header repeats them.
type GroupMeta = (GroupId, Option<Vote>, Option<LogId>, Option<LogId>);

/// One core's Raft log. Single-threaded (the core's executor); shared by its groups' log stores.
pub struct CoreLog {
    dir: LogDir,
    generation: u64,
    /// A segment is closed once it would grow past this (`LOG_SEGMENT_BYTES`; tests lower it).
    segment_bytes: u64,
    inner: RefCell<Inner>,
    stats: Arc<LogStats>,
    /// Highest write sequence number known durable (set by the writer).
    flushed_seq: Arc<AtomicU64>,
    failure: Failure,
    /// Writes what is queued: the log thread, or this executor when the thread is idle (D60).
    writer: SharedWriter,
    /// Old segments to reuse when starting one (D61).
    spares: Spares,
    /// This log itself, once it is a core's shared log on its executor (`shared`): only then may
    /// the executor write synced records itself (a log opened elsewhere leaves all to the thread).
    me: RefCell<Weak<CoreLog>>,
    /// A task that writes on the executor is spawned and has not run yet.
    write_scheduled: Cell<bool>,
    /// `READS_TAKEN` when the executor last chose who syncs.
    reads_seen: Cell<u64>,
}

struct Inner {
    groups: BTreeMap<GroupId, GroupLog>,
    /// Open segment files (reads of entries no longer cached go here).
    segments: BTreeMap<u64, Arc<dyn LogFile>>,
    active: u64,
    /// The active segment's tag, sealed into each of its records (D61).
    active_tag: u32,
    /// Write sequence numbers of the opening records of the active segment and the one before it:
    /// once the latter is durable, every record of the older segments is written (D62).
    opened_at: [u64; 2],
    /// Copies of quiet groups' entries queued and not yet durable (D62).
    relocations: Vec<Relocation>,
    next_offset: u64,
    next_seq: u64,
    queue: flume::Sender<WalCmd>,
    /// Groups whose log store is open (a group opens at most once at a time).
    attached: std::collections::BTreeSet<GroupId>,
}

thread_local! {
    /// The logs open on this thread (one core), by directory.
    static OPEN_LOGS: RefCell<HashMap<PathBuf, Weak<CoreLog>>> = RefCell::new(HashMap::new());
    /// Reads this core has taken (`note_read`), so that its logs can tell whether it serves reads.
    static READS_TAKEN: Cell<u64> = const { Cell::new(0) };
}

/// Counts a read taken by this core: a core that serves reads leaves its syncs to the log
/// thread, so that no read waits behind a sync on the executor (D60).
pub fn note_read() {
    READS_TAKEN.with(|n| n.set(n.get().wrapping_add(1)));
}

fn align8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

/// A random nonzero tag for a segment being started (D61).
fn new_tag() -> u32 {
    rand::random::<u32>().max(1)
}

fn checksum(header16: &[u8], payload: &[u8]) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(header16);
    hasher.update(payload);
    let mut out = [0u8; 8];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
    u64::from_le_bytes(out)
}

/// Encodes one record (header, payload, padding); `queue` seals it with its segment's tag.
fn encode_record(kind: u8, group: GroupId, payload: &[u8]) -> Vec<u8> {
    record_with(kind, group, payload.len(), |out| out.extend_from_slice(payload))
}

/// Encodes one record whose payload `fill` appends (`capacity`: its expected length), so a
/// payload built from parts is written once, straight into the record. Not sealed yet.
fn record_with(kind: u8, group: GroupId, capacity: usize, fill: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + align8(capacity));
    out.resize(HEADER_LEN, 0);
    fill(&mut out);
    let len = out.len() - HEADER_LEN;
    out[0..4].copy_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    out[4] = kind;
    out[8..12].copy_from_slice(&group.0.to_le_bytes());
    out.resize(HEADER_LEN + align8(len), 0);
    out
}

/// Stamps an encoded record with its segment's tag and its checksum.
fn seal_record(record: &mut [u8], tag: u32) {
    record[12..16].copy_from_slice(&tag.to_le_bytes());
    let end = (HEADER_LEN + u32_at(record, 0).unwrap_or(0) as usize).min(record.len());
    let sum = checksum(&record[..16], &record[HEADER_LEN..end]);
    record[16..24].copy_from_slice(&sum.to_le_bytes());
}

fn log_id_bytes(id: &LogId) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    out.extend_from_slice(&id.leader_id.term.to_le_bytes());
    out.extend_from_slice(&id.leader_id.node_id.to_le_bytes());
    out.extend_from_slice(&id.index.to_le_bytes());
    out
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let slice = bytes.get(at..at + 8)?;
    let mut b = [0u8; 8];
    b.copy_from_slice(slice);
    Some(u64::from_le_bytes(b))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let slice = bytes.get(at..at + 4)?;
    let mut b = [0u8; 4];
    b.copy_from_slice(slice);
    Some(u32::from_le_bytes(b))
}

/// One valid record of a segment.
struct Record<'a> {
    kind: u8,
    group: GroupId,
    /// Offset of the payload in the file.
    payload_at: u64,
    payload: &'a [u8],
}

/// Reads the records of a segment's bytes up to the first invalid one (or the first whose tag is
/// not the first record's: what a reused segment held before, D61); returns them and the offset
/// where reading stopped.
fn parse_segment(bytes: &[u8]) -> (Vec<Record<'_>>, usize) {
    let mut out = Vec::new();
    let mut at = 0usize;
    let mut segment_tag = None;
    while at + HEADER_LEN <= bytes.len() {
        let header = &bytes[at..at + HEADER_LEN];
        let (Some(len), Some(group), Some(sum)) = (u32_at(header, 0), u32_at(header, 8), u64_at(header, 16))
        else {
            break;
        };
        let kind = header[4];
        let tag = u32_at(header, 12);
        if !(KIND_ENTRIES..=KIND_RESET).contains(&kind)
            || header[5..8] != [0, 0, 0]
            || segment_tag.is_some_and(|t| Some(t) != tag)
        {
            break;
        }
        let start = at + HEADER_LEN;
        let Some(payload) = bytes.get(start..start + len as usize) else { break };
        if checksum(&header[..16], payload) != sum {
            break;
        }
        segment_tag = segment_tag.or(tag);
        out.push(Record { kind, group: GroupId(group), payload_at: start as u64, payload });
        at = start + align8(len as usize);
    }
    (out, at.min(bytes.len()))
}

/// An entries record: payload `count u32`, then per entry `len u32` and the stored entry bytes.
fn entries_record(group: GroupId, entries: &[(LogId, Vec<u8>)]) -> Vec<u8> {
    let total: usize = 4 + entries.iter().map(|(_, b)| 4 + b.len()).sum::<usize>();
    record_with(KIND_ENTRIES, group, total, |out| {
        out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for (_, bytes) in entries {
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
        }
    })
}

/// Where each entry of an entries record queued at `payload_at` of segment `seg` lies (its
/// payload is `count u32`, then per entry `len u32` and the bytes).
fn entry_locs(seg: u64, payload_at: u64, entries: &[(LogId, Vec<u8>)]) -> Vec<EntryLoc> {
    let mut at = payload_at + 4;
    entries
        .iter()
        .map(|(log_id, bytes)| {
            let len = bytes.len() as u32;
            let loc = EntryLoc { seg, offset: at + 4, len, log_id: *log_id };
            at += 4 + u64::from(len);
            loc
        })
        .collect()
}

/// Positions (relative to the payload) and log ids of an entries payload's entries.
fn entries_in(payload: &[u8]) -> Option<Vec<(usize, u32, LogId)>> {
    let count = u32_at(payload, 0)? as usize;
    let mut at = 4usize;
    let mut out = Vec::with_capacity(count.min(4096));
    for _ in 0..count {
        let len = u32_at(payload, at)?;
        at += 4;
        let bytes = payload.get(at..at + len as usize)?;
        out.push((at, len, stored_log_id(bytes)?));
        at += len as usize;
    }
    (at == payload.len()).then_some(out)
}

fn corrupt(detail: String) -> ShardError {
    ShardError::Corrupt { what: "raft log", detail }
}

fn io_err(dir: &LogDir, source: std::io::Error) -> ShardError {
    ShardError::Io { path: dir.path().to_path_buf(), source }
}

impl CoreLog {
    /// The log of `dir` open on this core, opening (replaying) it if it is not open yet, or if the
    /// open one stopped on a write error or predates a simulated power cut.
    pub fn shared(dir: LogDir) -> Result<Rc<CoreLog>, ShardError> {
        let key = dir.path().to_path_buf();
        let existing = OPEN_LOGS.with(|open| open.borrow().get(&key).and_then(Weak::upgrade));
        if let Some(log) = existing {
            if log.failure().is_none() && log.generation == dir.generation() {
                return Ok(log);
            }
        }
        let log = CoreLog::open(dir)?.on_executor();
        OPEN_LOGS.with(|open| {
            let mut open = open.borrow_mut();
            open.retain(|_, weak| weak.strong_count() > 0);
            open.insert(key, Rc::downgrade(&log));
        });
        Ok(log)
    }

    /// Makes this the shared log of the calling executor's core: from then on the executor may
    /// write and sync records itself when the log thread is idle (D60). Must run on a glommio
    /// executor, which every later append must run on too.
    fn on_executor(self) -> Rc<CoreLog> {
        let log = Rc::new(self);
        *log.me.borrow_mut() = Rc::downgrade(&log);
        log
    }

    /// Replays every segment of `dir`, starts a new segment and the log thread.
    pub fn open(dir: LogDir) -> Result<CoreLog, ShardError> {
        CoreLog::open_with(dir, LOG_SEGMENT_BYTES)
    }

    /// `open` with segments of at most `segment_bytes` (tests make them small to rotate often).
    pub fn open_with(dir: LogDir, segment_bytes: u64) -> Result<CoreLog, ShardError> {
        dir.create().map_err(|e| io_err(&dir, e))?;
        let generation = dir.generation();
        let seqs = dir.list().map_err(|e| io_err(&dir, e))?;
        let mut replayed = replay_segments(&dir, &seqs)?;
        check_replayed_groups(&dir, &mut replayed.groups);
        let active = seqs.last().map(|s| s + 1).unwrap_or(1);
        let spares = keep_spares(&dir)?;
        let log = CoreLog::with_writer(dir, generation, segment_bytes, replayed, spares)?;
        log.start_segment(active)?;
        Ok(log)
    }

    /// Starts the log thread for `dir` and assembles the log around what replay found. No
    /// segment is active yet: the caller starts one (`start_segment`).
    fn with_writer(
        dir: LogDir,
        generation: u64,
        segment_bytes: u64,
        replayed: Replayed,
        spares: Spares,
    ) -> Result<CoreLog, ShardError> {
        let Replayed { groups, segments } = replayed;
        let (queue, rx) = flume::bounded(LOG_WRITER_QUEUE_MAX);
        let stats = Arc::new(LogStats::default());
        let flushed_seq = Arc::new(AtomicU64::new(0));
        let failure: Failure = Arc::default();
        let writer = LogWriter::new(
            dir.clone(),
            rx,
            flushed_seq.clone(),
            stats.clone(),
            failure.clone(),
            spares.clone(),
        );
        let writer = SharedWriter::start(writer).map_err(|e| io_err(&dir, e))?;
        Ok(CoreLog {
            dir,
            generation,
            segment_bytes,
            inner: RefCell::new(Inner {
                groups,
                segments,
                active: 0,
                active_tag: 0,
                opened_at: [0; 2],
                relocations: Vec::new(),
                next_offset: 0,
                next_seq: 1,
                queue,
                attached: Default::default(),
            }),
            stats,
            flushed_seq,
            failure,
            writer,
            spares,
            me: RefCell::new(Weak::new()),
            write_scheduled: Cell::new(false),
            reads_seen: Cell::new(0),
        })
    }

    /// Closes the log and waits (at most 30 s) until its thread has written what was queued and
    /// stopped, so that another instance may open the same directory at once (offline uses: a
    /// group's log moving to another core, D77). A dropped log's thread finishes on its own.
    pub fn close(self) {
        let alive = self.writer.thread_alive();
        drop(self);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while alive.strong_count() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    pub fn dir(&self) -> &LogDir {
        &self.dir
    }

    pub fn stats(&self) -> Arc<LogStats> {
        self.stats.clone()
    }

    /// Why the log thread stopped writing, if it did (the core's groups must reopen).
    pub fn failure(&self) -> Option<LogFailure> {
        self.failure.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Highest write sequence number that is durable.
    pub fn flushed_seq(&self) -> u64 {
        self.flushed_seq.load(Ordering::Acquire)
    }

    /// Marks `group`'s log store open and returns what the log holds for it; `None` if a store of
    /// the group is still open (a previous incarnation not yet dropped: retry later).
    pub fn attach(&self, group: GroupId) -> Option<Result<GroupLogState, ShardError>> {
        let mut inner = self.inner.borrow_mut();
        if let Some(why) = inner.groups.get(&group).and_then(|l| l.broken.clone()) {
            return Some(Err(corrupt(why)));
        }
        if !inner.attached.insert(group) {
            return None;
        }
        let log = inner.groups.entry(group).or_default();
        Some(Ok(GroupLogState {
            last_log_id: log.entries.last_key_value().map(|(_, l)| l.log_id).or(log.last_purged),
            vote: log.vote,
            committed: log.committed,
            last_purged: log.last_purged,
        }))
    }

    pub fn detach(&self, group: GroupId) {
        self.inner.borrow_mut().attached.remove(&group);
    }

    /// Queues one record (opening a new segment first if it would not fit) and returns its write
    /// sequence number, its segment and the offset of its payload.
    fn queue(&self, bytes: Vec<u8>, sync: Option<SyncBy>, done: Done) -> Result<(u64, u64, u64), ShardError> {
        if self.inner.borrow().next_offset > 0
            && self.inner.borrow().next_offset + bytes.len() as u64 > self.segment_bytes
        {
            let next = self.inner.borrow().active + 1;
            self.start_segment(next)?;
        }
        let mut bytes = bytes;
        let mut inner = self.inner.borrow_mut();
        seal_record(&mut bytes, inner.active_tag);
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let (seg, offset) = (inner.active, inner.next_offset);
        inner.next_offset += bytes.len() as u64;
        // A large record (a block of client-batched writes) is the thread's: its write and sync
        // take long enough that the executor has better to do meanwhile (the next pipelined
        // round), and the hand-off is small beside them (D60).
        let sync = match sync {
            Some(SyncBy::IdleWriter) if bytes.len() > LOG_EXECUTOR_WRITE_BYTES_MAX => Some(SyncBy::Thread),
            sync => sync,
        };
        let cmd = WalCmd::Write { seq, seg, offset, bytes, sync: sync.is_some(), done };
        self.push(&inner.queue, cmd)?;
        drop(inner);
        match sync {
            None => {}
            Some(SyncBy::IdleWriter) => self.write_soon(),
            Some(SyncBy::Thread) => self.writer.nudge(),
        }
        Ok((seq, seg, offset + HEADER_LEN as u64))
    }

    /// Puts `cmd` on the writer's queue. The queue is bounded so a stuck disk shows up as
    /// back-pressure, not memory growth: when it is full the executor wakes the thread and waits
    /// for room (rare: the thread drains the whole queue each time it wakes).
    fn push(&self, queue: &flume::Sender<WalCmd>, cmd: WalCmd) -> Result<(), ShardError> {
        queue.try_send(cmd).or_else(|e| match e {
            flume::TrySendError::Full(cmd) => {
                self.writer.nudge();
                queue.send(cmd).map_err(|_| self.closed())
            }
            flume::TrySendError::Disconnected(_) => Err(self.closed()),
        })
    }

    /// Has what is queued written and synced: by this executor, once the tasks ready now have
    /// run (so that what they queue shares the sync, and replies already due leave first), if
    /// the log thread is idle then; otherwise by the thread (D60).
    fn write_soon(&self) {
        if self.write_scheduled.get() {
            return;
        }
        let me = self.me.borrow().clone();
        if me.strong_count() == 0 {
            self.writer.nudge();
            return;
        }
        self.write_scheduled.set(true);
        glommio::spawn_local(async move {
            crate::yield_once::YieldOnce::default().await;
            if let Some(log) = me.upgrade() {
                log.write_scheduled.set(false);
                // Reads taken since the last choice: the core serves them, and a read that
                // arrives during a sync on the executor would wait for it.
                let reads = READS_TAKEN.with(Cell::get);
                if log.reads_seen.replace(reads) != reads {
                    log.writer.nudge();
                } else {
                    log.writer.write_here_if_idle();
                }
            }
        })
        .detach();
    }

    fn closed(&self) -> ShardError {
        ShardError::StorageClosed { what: format!("raft log {}", self.dir.path().display()) }
    }

    /// Opens segment `seg` as the active one (a spare renamed into place if one is kept, D61) and
    /// writes its header: the segment record and every group's vote, committed and purged ids.
    fn start_segment(&self, seg: u64) -> Result<(), ShardError> {
        let (file, prewritten) = self.open_segment(seg)?;
        let metas: Vec<GroupMeta> = {
            let mut inner = self.inner.borrow_mut();
            inner.segments.insert(seg, file.clone());
            inner.active = seg;
            inner.active_tag = new_tag();
            inner.next_offset = 0;
            self.push(&inner.queue, WalCmd::NewSegment { seg, file, prewritten })?;
            inner.groups.iter().map(|(g, l)| (*g, l.vote, l.committed, l.last_purged)).collect()
        };
        let mut opening = seg.to_le_bytes().to_vec();
        opening.extend_from_slice(&u64::from(prewritten > 0).to_le_bytes());
        let (opened, ..) =
            self.queue(encode_record(KIND_SEGMENT, GroupId(0), &opening), UNSYNCED, Done::Nothing)?;
        {
            let mut inner = self.inner.borrow_mut();
            inner.opened_at = [opened, inner.opened_at[0]];
        }
        for (group, vote, committed, purged) in metas {
            if let Some(vote) = vote {
                self.queue(
                    encode_record(KIND_VOTE, group, &encode(&VoteRecord::from(&vote))),
                    UNSYNCED,
                    Done::Nothing,
                )?;
            }
            if let Some(committed) = committed {
                self.queue(
                    encode_record(KIND_COMMITTED, group, &log_id_bytes(&committed)),
                    UNSYNCED,
                    Done::Nothing,
                )?;
            }
            if let Some(purged) = purged {
                self.queue(
                    encode_record(KIND_PURGE, group, &log_id_bytes(&purged)),
                    UNSYNCED,
                    Done::Nothing,
                )?;
            }
        }
        self.finish_relocations();
        self.relocate_quiet_groups(seg)?;
        self.remove_unneeded_segments()
    }

    /// Copies into the new segment `seg` the live entries of every group whose entries all lie at
    /// least a whole segment behind and are few (D62): a quiet group (one that writes too little
    /// to snapshot and purge) would otherwise keep every later segment of the core alive while its
    /// busy neighbours purge theirs. The copies carry the same log ids, so replay takes them over
    /// the originals (an entry at or below the last one replaces it). The group's index moves to
    /// the copies only once they are durable (`finish_relocations`), and the old segments go after
    /// that, once nothing else needs them.
    fn relocate_quiet_groups(&self, seg: u64) -> Result<(), ShardError> {
        let groups: Vec<GroupId> = {
            let inner = self.inner.borrow();
            // Only once every record of the segments behind the previous one is written.
            if seg < 3 || self.flushed_seq() < inner.opened_at[1] {
                return Ok(());
            }
            inner.groups.keys().copied().filter(|g| inner.relocations.iter().all(|r| r.group != *g)).collect()
        };
        for group in groups {
            // Looked up afresh for each group: a copy that does not fit starts another segment.
            let Some(entries) = self.quiet_entries(group, seg)? else { continue };
            let (seq, at_seg, payload_at) =
                self.queue(entries_record(group, &entries), UNSYNCED, Done::Nothing)?;
            let locs = entry_locs(at_seg, payload_at, &entries);
            self.inner.borrow_mut().relocations.push(Relocation { group, seq, locs });
        }
        Ok(())
    }

    /// `group`'s live entries (log ids and stored bytes), if all of them lie at least a whole
    /// segment behind `seg` (so they are written) and they are few enough to copy.
    fn quiet_entries(&self, group: GroupId, seg: u64) -> Result<Option<StoredEntries>, ShardError> {
        let inner = self.inner.borrow();
        let Some(log) = inner.groups.get(&group).filter(|log| log.broken.is_none()) else { return Ok(None) };
        // Entries lie in segments in index order (each append and each copy goes to the active
        // segment), so the last one's segment is the newest.
        let Some((_, last)) = log.entries.last_key_value() else { return Ok(None) };
        // The cheap checks first: a busy group fails them without its entries being summed.
        if last.seg + 2 > seg || log.entries.len() > LOG_RELOCATE_ENTRIES_MAX {
            return Ok(None);
        }
        let bytes: u64 = log.entries.values().map(|l| u64::from(l.len)).sum();
        if bytes > self.segment_bytes / 4 {
            return Ok(None);
        }
        let mut entries = Vec::with_capacity(log.entries.len());
        for loc in log.entries.values() {
            let stored = self.stored(&inner, group, loc)?;
            if stored_log_id(&stored) != Some(loc.log_id) {
                return Err(corrupt(format!(
                    "group {group}: entry at {:016x}+{} is not {}",
                    loc.seg, loc.offset, loc.log_id
                )));
            }
            entries.push((loc.log_id, stored));
        }
        Ok(Some(entries))
    }

    /// Points each relocated group's index at its copies once they are durable (D62); an entry
    /// truncated or replaced since the copy keeps what the index says now.
    fn finish_relocations(&self) {
        let flushed = self.flushed_seq();
        let mut inner = self.inner.borrow_mut();
        let pending = std::mem::take(&mut inner.relocations);
        for relocation in pending {
            if relocation.seq > flushed {
                inner.relocations.push(relocation);
                continue;
            }
            if let Some(log) = inner.groups.get_mut(&relocation.group) {
                for copy in relocation.locs {
                    if let Some(now) = log.entries.get_mut(&copy.log_id.index) {
                        if now.log_id == copy.log_id {
                            *now = copy;
                        }
                    }
                }
            }
        }
    }

    /// Segment `seg`'s file and how many of its bytes are written already: a kept spare renamed to
    /// `seg`, or else a new file. A spare that cannot be reused is deleted.
    fn open_segment(&self, seg: u64) -> Result<(Arc<dyn LogFile>, u64), ShardError> {
        let spare = self.spares.lock().unwrap_or_else(PoisonError::into_inner).pop();
        if let Some(spare) = spare {
            match self.dir.reuse_spare(spare, seg) {
                Ok(reused) => return Ok(reused),
                Err(e) => {
                    crate::event!(warn, "raft_log_spare_unusable", dir = %self.dir.path().display(), spare = %format_args!("{spare:016x}"), error = %e);
                    let _ = self.dir.remove_spare(spare);
                }
            }
        }
        let file = self.dir.open(seg, true).map_err(|e| io_err(&self.dir, e))?;
        Ok((file, 0))
    }

    /// Queues one append of `group` (entries in stored form, ascending and contiguous); `done`
    /// runs on the writer's thread once they are durable. Returns the write's sequence number.
    pub fn append(
        &self,
        group: GroupId,
        entries: &[(LogId, Vec<u8>)],
        sync_by: SyncBy,
        done: AppendDone,
    ) -> Result<u64, ShardError> {
        let (seq, seg, payload_at) =
            self.queue(entries_record(group, entries), Some(sync_by), Done::Append(done))?;
        let mut inner = self.inner.borrow_mut();
        let log = inner.groups.entry(group).or_default();
        for loc in entry_locs(seg, payload_at, entries) {
            log.insert(loc);
        }
        Ok(seq)
    }

    /// Deletes `group`'s entries from `from` on; returns once durable.
    pub async fn truncate(&self, group: GroupId, from: u64) -> Result<(), ShardError> {
        if let Some(log) = self.inner.borrow_mut().groups.get_mut(&group) {
            let _ = log.entries.split_off(&from);
        }
        self.queue_and_wait(KIND_TRUNCATE, group, &from.to_le_bytes()).await
    }

    /// Deletes `group`'s entries up to `upto`; returns once durable. Deletes the segments no
    /// group needs any more.
    pub async fn purge(&self, group: GroupId, upto: LogId) -> Result<(), ShardError> {
        self.inner.borrow_mut().groups.entry(group).or_default().purge(upto);
        let waiting = self.queue_and_wait(KIND_PURGE, group, &log_id_bytes(&upto));
        self.finish_relocations();
        self.remove_unneeded_segments()?;
        waiting.await
    }

    /// Forgets everything the log holds for `group` (entries, vote, committed and purged ids),
    /// durably: the group opens next as one this node never took part in. Only for a group whose
    /// store is closed (a replica released after it moved away, D92).
    pub async fn reset(&self, group: GroupId) -> Result<(), ShardError> {
        {
            let mut inner = self.inner.borrow_mut();
            if inner.attached.contains(&group) {
                return Err(ShardError::LogAttached { group: group.0 });
            }
            inner.groups.remove(&group);
            inner.relocations.retain(|r| r.group != group);
        }
        let waiting = self.queue_and_wait(KIND_RESET, group, &[]);
        self.remove_unneeded_segments()?;
        waiting.await
    }

    pub async fn save_vote(&self, group: GroupId, vote: &Vote) -> Result<(), ShardError> {
        self.inner.borrow_mut().groups.entry(group).or_default().vote = Some(*vote);
        self.queue_and_wait(KIND_VOTE, group, &encode(&VoteRecord::from(vote))).await
    }

    /// Records the committed id without waiting or forcing a sync: it rides with the next
    /// durable write (losing it only means re-applying a little more after a crash).
    pub fn save_committed(&self, group: GroupId, committed: LogId) -> Result<(), ShardError> {
        self.inner.borrow_mut().groups.entry(group).or_default().committed = Some(committed);
        self.queue(encode_record(KIND_COMMITTED, group, &log_id_bytes(&committed)), UNSYNCED, Done::Nothing)
            .map(|_| ())
    }

    fn queue_and_wait(
        &self,
        kind: u8,
        group: GroupId,
        payload: &[u8],
    ) -> impl std::future::Future<Output = Result<(), ShardError>> {
        let (tx, rx) = oneshot::channel();
        let queued =
            self.queue(encode_record(kind, group, payload), Some(SyncBy::IdleWriter), Done::Wait(tx));
        let what = format!("raft log {}", self.dir.path().display());
        async move {
            queued?;
            match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(source)) => Err(ShardError::WriteFailed { what, source }),
                Err(_) => Err(ShardError::StorageClosed { what }),
            }
        }
    }

    /// Segments before the oldest one holding a live entry of any group (never the active one).
    fn remove_unneeded_segments(&self) -> Result<(), ShardError> {
        let mut inner = self.inner.borrow_mut();
        let oldest_live = inner
            .groups
            .values()
            .filter_map(|g| g.entries.first_key_value().map(|(_, l)| l.seg))
            .min()
            .unwrap_or(inner.active)
            .min(inner.active);
        let dead: Vec<u64> = inner.segments.range(..oldest_live).map(|(s, _)| *s).collect();
        for seg in dead {
            inner.segments.remove(&seg);
            self.push(&inner.queue, WalCmd::Remove { seg })?;
        }
        Ok(())
    }

    /// `group`'s entries with index in `range` that the log holds (on this thread: reads of
    /// segment files, normally from the page cache).
    pub fn read(
        &self,
        group: GroupId,
        lo: std::ops::Bound<u64>,
        hi: std::ops::Bound<u64>,
    ) -> Result<Vec<Entry>, ShardError> {
        let inner = self.inner.borrow();
        let Some(log) = inner.groups.get(&group) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for loc in log.entries.range((lo, hi)).map(|(_, l)| *l) {
            let bytes = self.stored(&inner, group, &loc)?;
            let started = std::time::Instant::now();
            let entry = decode_entry(&bytes)?;
            let took = started.elapsed();
            crate::metrics::with(|m| m.codec(CodecKind::Log, false, bytes.len(), took));
            if entry.log_id != loc.log_id {
                return Err(corrupt(format!(
                    "group {group}: entry at {:016x}+{} is {} where {} was written",
                    loc.seg, loc.offset, entry.log_id, loc.log_id
                )));
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// The stored bytes of `group`'s entry at `loc`, read from its segment file.
    fn stored(&self, inner: &Inner, group: GroupId, loc: &EntryLoc) -> Result<Vec<u8>, ShardError> {
        let file = inner
            .segments
            .get(&loc.seg)
            .ok_or_else(|| corrupt(format!("group {group}: segment {:016x} is gone", loc.seg)))?;
        let mut bytes = vec![0u8; loc.len as usize];
        file.read_at(loc.offset, &mut bytes).map_err(|e| io_err(&self.dir, e))?;
        Ok(bytes)
    }

    /// The log id at `index`, if the log holds that entry.
    /// The id of `group`'s last entry, or of its purge point when it holds none.
    pub fn last_log_id(&self, group: GroupId) -> Option<LogId> {
        let inner = self.inner.borrow();
        let log = inner.groups.get(&group)?;
        log.entries.last_key_value().map(|(_, l)| l.log_id).or(log.last_purged)
    }

    pub fn log_id_at(&self, group: GroupId, index: u64) -> Option<LogId> {
        let inner = self.inner.borrow();
        let log = inner.groups.get(&group)?;
        log.entries.get(&index).map(|l| l.log_id).or(log.last_purged.filter(|p| p.index == index))
    }

    /// Segment files currently kept (tests and metrics).
    pub fn segment_count(&self) -> usize {
        self.inner.borrow().segments.len()
    }
}

impl Drop for CoreLog {
    fn drop(&mut self) {
        let key = self.dir.path().to_path_buf();
        let _ = OPEN_LOGS.try_with(|open| {
            if let Ok(mut open) = open.try_borrow_mut() {
                if open.get(&key).is_some_and(|w| w.strong_count() == 0) {
                    open.remove(&key);
                }
            }
        });
    }
}

/// What replaying a log's segments found: each group's log, and every segment file, kept open
/// for reads of entries no longer cached.
struct Replayed {
    groups: BTreeMap<GroupId, GroupLog>,
    segments: BTreeMap<u64, Arc<dyn LogFile>>,
}

/// Replays the segments `seqs` of `dir`, oldest first, keeping every file open. A group whose
/// records are unusable is marked broken (it alone fails to open); a written segment that does
/// not start with its own header fails the whole log.
fn replay_segments(dir: &LogDir, seqs: &[u64]) -> Result<Replayed, ShardError> {
    let mut groups: BTreeMap<GroupId, GroupLog> = BTreeMap::new();
    let mut segments: BTreeMap<u64, Arc<dyn LogFile>> = BTreeMap::new();
    for &seg in seqs {
        let (file, bytes) = read_segment(dir, seg)?;
        replay_segment(dir, seg, &bytes, &mut groups)?;
        segments.insert(seg, file);
    }
    Ok(Replayed { groups, segments })
}

/// Opens segment `seg` of `dir` and reads all of it.
fn read_segment(dir: &LogDir, seg: u64) -> Result<(Arc<dyn LogFile>, Vec<u8>), ShardError> {
    let file = dir.open(seg, false).map_err(|e| io_err(dir, e))?;
    let len = file.size().map_err(|e| io_err(dir, e))?;
    let mut bytes = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
    file.read_at(0, &mut bytes).map_err(|e| io_err(dir, e))?;
    Ok((file, bytes))
}

/// Checks that segment `seg` (its `bytes`) opens with its own header and replays its records
/// into `groups`. A segment with no record, or a reused one whose new header never reached the
/// disk, holds nothing of this log: none of it is replayed. Any other wrong start is corruption.
fn replay_segment(
    dir: &LogDir,
    seg: u64,
    bytes: &[u8],
    groups: &mut BTreeMap<GroupId, GroupLog>,
) -> Result<(), ShardError> {
    let (records, stopped) = parse_segment(bytes);
    let header = records.first().filter(|r| r.kind == KIND_SEGMENT && r.group == GroupId(0));
    let opens_right = header.is_some_and(|r| u64_at(r.payload, 0) == Some(seg));
    if !opens_right {
        // Created but never written (a crash right after the create), or a reused spare
        // whose new header never reached the disk (it still opens as the segment it was,
        // D61): nothing in it belongs here.
        if records.is_empty() || header.is_some() {
            if header.is_some() {
                crate::event!(
                    warn,
                    "raft_log_reused_segment_unwritten",
                    dir = %dir.path().display(),
                    segment = %format_args!("{seg:016x}")
                );
            }
            return Ok(());
        }
        return Err(corrupt(format!("segment {seg:016x} does not start with its own header")));
    }
    // A reused segment's old records follow its own: not a torn tail.
    let reused = header.is_some_and(|r| u64_at(r.payload, 8) == Some(1));
    if !reused && bytes[stopped..].iter().any(|b| *b != 0) {
        crate::event!(
            warn,
            "raft_log_torn_tail",
            dir = %dir.path().display(),
            segment = %format_args!("{seg:016x}"),
            offset = stopped,
            bytes_after = bytes.len() - stopped
        );
    }
    for record in records.iter().skip(1) {
        if record.kind == KIND_RESET {
            // Whatever came before, broken records included, is forgotten (D92).
            groups.remove(&record.group);
            continue;
        }
        let log = groups.entry(record.group).or_default();
        if log.broken.is_some() {
            continue;
        }
        if let Err(e) = replay_record(log, seg, record) {
            log.broken = Some(e.to_string());
        }
    }
    Ok(())
}

/// Marks a replayed group broken if its first entry does not follow its purge point (a segment
/// is missing), and reports every group that replay left unusable.
fn check_replayed_groups(dir: &LogDir, groups: &mut BTreeMap<GroupId, GroupLog>) {
    for (group, log) in groups.iter_mut() {
        // openraft's log starts at index 0 (the initial membership) unless purged.
        let expected_first = log.last_purged.map(|p| p.index + 1).unwrap_or(0);
        if let Some((first, _)) = log.entries.first_key_value() {
            if *first != expected_first && !(log.last_purged.is_none() && *first == 1) {
                log.broken.get_or_insert(format!(
                    "group {group}: the log starts at index {first}, expected {expected_first} (a segment is missing)"
                ));
            }
        }
        if let Some(why) = &log.broken {
            crate::event!(
                error,
                "raft_log_group_unusable",
                dir = %dir.path().display(),
                group = %group,
                reason = %why
            );
        }
    }
}

/// Takes the spare segments `dir` holds for reuse (D61), at most `LOG_SPARE_SEGMENTS_MAX`,
/// removing any beyond that.
fn keep_spares(dir: &LogDir) -> Result<Spares, ShardError> {
    let spares = Spares::default();
    for spare in dir.spares().map_err(|e| io_err(dir, e))? {
        let mut kept = spares.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.len() < LOG_SPARE_SEGMENTS_MAX {
            kept.push(spare);
        } else {
            dir.remove_spare(spare).map_err(|e| io_err(dir, e))?;
        }
    }
    Ok(spares)
}

fn replay_record(log: &mut GroupLog, seg: u64, record: &Record<'_>) -> Result<(), ShardError> {
    let bad = |what: &str| {
        corrupt(format!("segment {seg:016x}: malformed {what} record of group {}", record.group))
    };
    match record.kind {
        KIND_ENTRIES => {
            for (at, len, log_id) in entries_in(record.payload).ok_or_else(|| bad("entries"))? {
                log.insert(EntryLoc { seg, offset: record.payload_at + at as u64, len, log_id });
            }
        }
        KIND_TRUNCATE => {
            let from = u64_at(record.payload, 0).ok_or_else(|| bad("truncate"))?;
            let _ = log.entries.split_off(&from);
        }
        KIND_PURGE => log.purge(log_id_from_le(record.payload).ok_or_else(|| bad("purge"))?),
        KIND_VOTE => log.vote = Some(decode::<VoteRecord>("vote", record.payload)?.into()),
        KIND_COMMITTED => {
            log.committed = Some(log_id_from_le(record.payload).ok_or_else(|| bad("committed"))?)
        }
        _ => return Err(bad("unexpected")),
    }
    Ok(())
}

/// Reading and writing a stopped node's log from outside the server: tests that damage a log on
/// purpose, and inspection.
pub mod offline {
    use super::*;
    use crate::raft::log_store::encode_entry;

    /// Every entry the log at `dir` holds for `group`, in index order.
    pub fn entries(dir: LogDir, group: GroupId) -> Result<Vec<Entry>, ShardError> {
        CoreLog::open(dir)?.read(group, std::ops::Bound::Unbounded, std::ops::Bound::Unbounded)
    }

    /// Appends `entry` to `group`'s log at `dir`, durably.
    pub fn append(dir: LogDir, group: GroupId, entry: &Entry) -> Result<(), ShardError> {
        let log = CoreLog::open(dir)?;
        let (tx, rx) = std::sync::mpsc::channel();
        log.append(
            group,
            &[(entry.log_id, encode_entry(entry))],
            SyncBy::IdleWriter,
            Box::new(move |r| drop(tx.send(r))),
        )?;
        let what = format!("raft log {}", log.dir.path().display());
        match rx.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ShardError::WriteFailed { what, source: Arc::new(e) }),
            Err(_) => Err(ShardError::StorageClosed { what }),
        }
    }

    /// Appends a copy of `group`'s last block entry at the next index (its group height does
    /// not follow, so applying it breaks an invariant of the whole group): how tests make one
    /// group's log fail apply while the others stay sound. Returns the copy's log id.
    pub fn append_copy_of_last_block(dir: LogDir, group: GroupId) -> Result<LogId, ShardError> {
        let entries = entries(dir.clone(), group)?;
        let last =
            entries.last().map(|e| e.log_id).ok_or_else(|| corrupt(format!("group {group} has no log")))?;
        let block = entries
            .iter()
            .rev()
            .find(|e| {
                matches!(e.payload, openraft::EntryPayload::Normal(ledger_core::types::LogPayload::Block(_)))
            })
            .ok_or_else(|| corrupt(format!("group {group} holds no block")))?;
        let mut copy = block.clone();
        copy.log_id = LogId::new(last.leader_id, last.index + 1);
        append(dir, group, &copy)?;
        Ok(copy.log_id)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::raft::log_store::encode_entry;
    use crate::storage::sim_disk::{CutMode, SimDisk};
    use openraft::{CommittedLeaderId, EntryPayload};
    use std::ops::Bound::{Excluded, Included, Unbounded};

    fn entry(term: u64, index: u64) -> (LogId, Vec<u8>) {
        let e = Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        };
        (e.log_id, encode_entry(&e))
    }

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    /// Appends `entries` and waits until they are durable.
    async fn append_durably(log: &CoreLog, group: u32, entries: Vec<(LogId, Vec<u8>)>) {
        let (tx, rx) = oneshot::channel();
        log.append(GroupId(group), &entries, SyncBy::IdleWriter, Box::new(move |r| drop(tx.send(r))))
            .unwrap();
        rx.await.unwrap().unwrap();
    }

    fn indexes(log: &CoreLog, group: u32) -> Vec<u64> {
        log.read(GroupId(group), Unbounded, Unbounded).unwrap().iter().map(|e| e.log_id.index).collect()
    }

    /// Proves the shared fsync: appends of eight groups queued back to back are written with far
    /// fewer syncs than appends, each completes only once durable, and a reopen (a fresh replay of
    /// the files) gives every group back exactly its entries, vote, committed and purged ids.
    #[test]
    fn t01_groups_share_syncs_and_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        futures::executor::block_on(async {
            let log = CoreLog::open(LogDir::Real(path.clone())).unwrap();
            let mut waiters = Vec::new();
            for index in 1..=200u64 {
                for group in 1..=8u32 {
                    let (tx, rx) = oneshot::channel();
                    log.append(
                        GroupId(group),
                        &[entry(2, index)],
                        SyncBy::IdleWriter,
                        Box::new(move |r| drop(tx.send(r))),
                    )
                    .unwrap();
                    waiters.push(rx);
                }
            }
            for rx in waiters {
                rx.await.unwrap().unwrap();
            }
            let syncs = log.stats().durable_commits.load(Ordering::Relaxed);
            assert!(syncs < 1600 / 4, "{syncs} syncs for 1,600 appends: not shared");
            log.save_vote(GroupId(3), &Vote::new(2, 1)).await.unwrap();
            log.save_committed(GroupId(3), log_id(2, 150)).unwrap();
            log.purge(GroupId(3), log_id(2, 50)).await.unwrap();
            log.truncate(GroupId(5), 101).await.unwrap();
        });
        let log = CoreLog::open(LogDir::Real(path)).unwrap();
        for group in 1..=8u32 {
            let want: Vec<u64> = match group {
                3 => (51..=200).collect(),
                5 => (1..=100).collect(),
                _ => (1..=200).collect(),
            };
            assert_eq!(indexes(&log, group), want, "group {group}");
        }
        let three = log.attach(GroupId(3)).unwrap().unwrap();
        assert_eq!(three.vote, Some(Vote::new(2, 1)));
        assert_eq!(three.committed, Some(log_id(2, 150)));
        assert_eq!(three.last_purged, Some(log_id(2, 50)));
        assert_eq!(three.last_log_id, Some(log_id(2, 200)));
        assert!(log.attach(GroupId(3)).is_none(), "a group attaches once at a time");
        log.detach(GroupId(3));
        assert!(log.attach(GroupId(3)).is_some());
        assert_eq!(log.attach(GroupId(5)).unwrap().unwrap().last_log_id, Some(log_id(2, 100)));
        let some = log.read(GroupId(1), Included(10), Excluded(13)).unwrap();
        assert_eq!(some.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), vec![10, 11, 12]);
    }

    /// A reset group (its replica released, D92) replays as never written, in memory and from
    /// the files, while its neighbours keep theirs; it can be written again afterwards, and the
    /// segments only it kept alive are deleted.
    #[test]
    fn t11_a_reset_group_is_forgotten_and_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        futures::executor::block_on(async {
            let log = CoreLog::open_with(LogDir::Real(path.clone()), 64 * 1024).unwrap();
            for index in 1..=300u64 {
                append_durably(&log, 1, vec![entry(1, index)]).await;
                append_durably(&log, 2, vec![entry(1, index)]).await;
            }
            log.save_vote(GroupId(2), &Vote::new(1, 1)).await.unwrap();
            log.purge(GroupId(1), log_id(1, 290)).await.unwrap();
            assert!(log.attach(GroupId(2)).is_some());
            assert!(matches!(log.reset(GroupId(2)).await, Err(ShardError::LogAttached { .. })));
            log.detach(GroupId(2));
            log.reset(GroupId(2)).await.unwrap();
            assert!(indexes(&log, 2).is_empty());
            let state = log.attach(GroupId(2)).unwrap().unwrap();
            assert_eq!((state.last_log_id, state.vote, state.last_purged), (None, None, None));
            log.detach(GroupId(2));
            assert!(log.segment_count() <= 2, "{} segments kept", log.segment_count());
        });
        futures::executor::block_on(async {
            let log = CoreLog::open_with(LogDir::Real(path.clone()), 64 * 1024).unwrap();
            assert_eq!(indexes(&log, 1), (291..=300).collect::<Vec<_>>());
            assert!(indexes(&log, 2).is_empty());
            let state = log.attach(GroupId(2)).unwrap().unwrap();
            assert_eq!((state.last_log_id, state.vote, state.committed), (None, None, None));
            log.detach(GroupId(2));
            append_durably(&log, 2, vec![entry(3, 0), entry(3, 1)]).await;
        });
        let log = CoreLog::open(LogDir::Real(path)).unwrap();
        assert_eq!(indexes(&log, 2), vec![0, 1], "written again after the reset");
    }

    /// Proves torn-tail handling: a segment cut in the middle of its last record, or followed by
    /// garbage, replays up to the last whole record; the next start writes a new segment and never
    /// after the tear, and a second replay sees both.
    #[test]
    fn t02_torn_tail_is_cut_and_never_written_after() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        futures::executor::block_on(async {
            let log = CoreLog::open(LogDir::Real(path.clone())).unwrap();
            for index in 1..=10 {
                append_durably(&log, 1, vec![entry(1, index)]).await;
            }
        });
        let seg = LogDir::Real(path.clone()).segment_path(1);
        // The end of the records (zeros may follow: the thread writes them ahead).
        let len = parse_segment(&std::fs::read(&seg).unwrap()).1 as u64;
        let file = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        file.set_len(len - 20).unwrap();
        file.set_len(len + 4096).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, b"garbage that is no record", len + 100).unwrap();
        drop(file);
        futures::executor::block_on(async {
            let log = CoreLog::open(LogDir::Real(path.clone())).unwrap();
            assert_eq!(indexes(&log, 1), (1..=9).collect::<Vec<_>>());
            let state = log.attach(GroupId(1)).unwrap().unwrap();
            assert_eq!(state.last_log_id, Some(log_id(1, 9)));
            append_durably(&log, 1, vec![entry(2, 10), entry(2, 11)]).await;
        });
        let log = CoreLog::open(LogDir::Real(path.clone())).unwrap();
        assert_eq!(indexes(&log, 1), (1..=11).collect::<Vec<_>>());
        let terms: Vec<u64> = log
            .read(GroupId(1), Included(9), Unbounded)
            .unwrap()
            .iter()
            .map(|e| e.log_id.leader_id.term)
            .collect();
        assert_eq!(terms, vec![1, 2, 2]);
        assert_eq!(LogDir::Real(path).list().unwrap(), vec![1, 2, 3]);
    }

    /// Proves rotation and deletion: with small segments the log rotates, segments are deleted
    /// once every group purged past them (never while one still holds a live entry there), and a
    /// replay after deletions still has each group's metadata (from the segment headers).
    #[test]
    fn t03_segments_rotate_and_are_deleted_when_purged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        futures::executor::block_on(async {
            let log = CoreLog::open_with(LogDir::Real(path.clone()), 1024).unwrap();
            log.save_vote(GroupId(2), &Vote::new(4, 1)).await.unwrap();
            for index in 1..=300 {
                append_durably(&log, 1, vec![entry(4, index)]).await;
            }
            append_durably(&log, 2, vec![entry(4, 1)]).await;
            let many = log.segment_count();
            assert!(many > 5, "{many} segments");
            log.purge(GroupId(1), log_id(4, 290)).await.unwrap();
            // Group 2's only entry sits in the newest segment, so only the older ones go.
            let after = log.segment_count();
            assert!(after <= 2, "{after} segments left of {many}");
            log.save_committed(GroupId(1), log_id(4, 300)).unwrap();
            append_durably(&log, 1, vec![entry(4, 301)]).await;
            // Its thread may still be retiring segments: wait for it before the directory is read.
            log.close();
        });
        let files = LogDir::Real(path.clone()).list().unwrap();
        assert!(files.len() <= 2, "{files:?}");
        let log = CoreLog::open_with(LogDir::Real(path), 1024).unwrap();
        assert_eq!(indexes(&log, 1), (291..=301).collect::<Vec<_>>());
        let one = log.attach(GroupId(1)).unwrap().unwrap();
        assert_eq!(one.last_purged, Some(log_id(4, 290)));
        assert_eq!(one.committed, Some(log_id(4, 300)));
        assert_eq!(log.attach(GroupId(2)).unwrap().unwrap().vote, Some(Vote::new(4, 1)));
        assert_eq!(indexes(&log, 2), vec![1]);
    }

    /// Proves durability under a simulated power cut: every append acknowledged before the cut
    /// is replayed after it, in both cut modes and at every sync of the first 40; what was not
    /// acknowledged may or may not be there, but the log is always a contiguous prefix.
    ///
    /// Both writers are cut: the log thread alone (a log outside an executor) and the executor
    /// writing while the thread is idle (D60).
    #[test]
    fn t04_acknowledged_appends_survive_a_power_cut() {
        let executor = glommio::LocalExecutorBuilder::default().make().unwrap();
        for on_executor in [false, true] {
            for mode in [CutMode::DropUnsynced, CutMode::TornWriteback] {
                for nth in 1..=40u64 {
                    let disk = SimDisk::new(nth, mode);
                    let dir = LogDir::Sim(disk.clone(), PathBuf::from("/sim/log"));
                    disk.arm(crate::storage::sim_disk::CutPlan { file: Some(".log".into()), nth });
                    let run = append_until_cut(dir.clone(), disk.clone(), on_executor);
                    let acked =
                        if on_executor { executor.run(run) } else { futures::executor::block_on(run) };
                    check_after_cut(&disk, mode, nth, acked);
                }
            }
        }
    }

    /// Proves a failed log write keeps its cause: once the disk fails, the waiting write and every
    /// later one (the log writes nothing after a failure) get `WriteFailed` whose source is the disk's own error, and the log reports it.
    #[test]
    fn t11_a_failed_write_keeps_the_disks_error_as_its_source() {
        let disk = SimDisk::new(1, CutMode::DropUnsynced);
        let log = CoreLog::open_with(LogDir::Sim(disk.clone(), PathBuf::from("/sim/log")), 2048).unwrap();
        let vote = Vote::new(1, 1);
        futures::executor::block_on(log.save_vote(GroupId(1), &vote)).unwrap();
        // After a power cut and restore, the log's handles are dead: every write fails.
        disk.cut_now();
        disk.restore().unwrap();
        for _ in 0..2 {
            let err = futures::executor::block_on(log.save_vote(GroupId(1), &vote)).unwrap_err();
            let ShardError::WriteFailed { source, .. } = &err else { panic!("{err:?}") };
            assert!(source.to_string().contains("before a power cut"), "{source}");
            let cause = std::error::Error::source(&err).unwrap();
            assert_eq!(cause.to_string(), source.to_string());
        }
        assert!(log.failure().is_some_and(|e| e.to_string().contains("before a power cut")));
    }

    /// Appends 30 entries to each of three groups, one at a time, and returns for each group the
    /// last index acknowledged before the disk was cut.
    async fn append_until_cut(dir: LogDir, disk: Arc<SimDisk>, on_executor: bool) -> [u64; 3] {
        let log = CoreLog::open_with(dir, 2048).unwrap();
        let log = if on_executor { log.on_executor() } else { Rc::new(log) };
        let mut acked = [0u64; 3];
        for index in 1..=30u64 {
            for group in 0..3u32 {
                if acked_before_cut(&log, group, index, &disk).await {
                    acked[group as usize] = index;
                }
            }
        }
        acked
    }

    /// Appends entry `index` (term 1) to `group`; whether it was acknowledged before the disk was
    /// cut.
    async fn acked_before_cut(log: &CoreLog, group: u32, index: u64, disk: &SimDisk) -> bool {
        let (tx, rx) = oneshot::channel();
        let done: AppendDone = Box::new(move |r| drop(tx.send(r)));
        log.append(GroupId(group), &[entry(1, index)], SyncBy::IdleWriter, done).is_ok()
            && rx.await.unwrap().is_ok()
            && !disk.is_cut()
    }

    /// Replays the cut disk: every acknowledged entry is there, and each group's log is a
    /// contiguous prefix.
    fn check_after_cut(disk: &Arc<SimDisk>, mode: CutMode, nth: u64, acked: [u64; 3]) {
        if !disk.is_cut() {
            disk.cut_now();
        }
        disk.restore().unwrap();
        let log = CoreLog::open_with(LogDir::Sim(disk.clone(), PathBuf::from("/sim/log")), 2048).unwrap();
        for group in 0..3u32 {
            let got = indexes(&log, group);
            assert!(
                got.len() as u64 >= acked[group as usize],
                "{mode:?} cut at sync {nth}: group {group} lost acknowledged entries: {} < {}",
                got.len(),
                acked[group as usize]
            );
            assert!(got.iter().enumerate().all(|(i, x)| *x == i as u64 + 1), "{mode:?} {nth}: {got:?}");
        }
    }

    /// Proves D60's split of the writing: on its executor, an append synced by whoever is idle is
    /// written and synced by the executor itself while the log thread is idle, and one for the
    /// thread is written there, as are one too large for the executor and one queued after the
    /// core took a read; each is durable once acknowledged, and they replay.
    #[test]
    fn t06_the_executor_writes_when_the_thread_is_idle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let executor = glommio::LocalExecutorBuilder::default().make().unwrap();
        executor.run(async {
            let log = CoreLog::open(LogDir::Real(path.clone())).unwrap().on_executor();
            let here = std::thread::current().id();
            for (index, by) in [(1, SyncBy::IdleWriter), (2, SyncBy::Thread)] {
                let (tx, rx) = oneshot::channel();
                let done: AppendDone = Box::new(move |r| {
                    let _ = tx.send((r.is_ok(), std::thread::current().id()));
                });
                let seq = log.append(GroupId(1), &[entry(1, index)], by, done).unwrap();
                let (ok, written_on) = rx.await.unwrap();
                assert!(ok, "{by:?}");
                assert_eq!(
                    written_on == here,
                    by == SyncBy::IdleWriter,
                    "{by:?} written on the wrong thread"
                );
                assert!(log.flushed_seq() >= seq, "{by:?} acknowledged before it was durable");
            }
            // A core that took a read since the last choice leaves the sync to the thread.
            note_read();
            let (tx, rx) = oneshot::channel();
            let done: AppendDone = Box::new(move |r| {
                let _ = tx.send((r.is_ok(), std::thread::current().id()));
            });
            log.append(GroupId(1), &[entry(1, 3)], SyncBy::IdleWriter, done).unwrap();
            let (ok, written_on) = rx.await.unwrap();
            assert!(ok && written_on != here, "a core serving reads synced on the executor");
            // A record over the bound stays with the thread (group 2: its bytes are only filler).
            let (tx, rx) = oneshot::channel();
            let done: AppendDone = Box::new(move |r| {
                let _ = tx.send((r.is_ok(), std::thread::current().id()));
            });
            let large = vec![0u8; LOG_EXECUTOR_WRITE_BYTES_MAX + 1];
            log.append(GroupId(2), &[(log_id(1, 1), large)], SyncBy::IdleWriter, done).unwrap();
            let (ok, written_on) = rx.await.unwrap();
            assert!(ok && written_on != here, "a large record was written on the executor");
        });
        let log = CoreLog::open(LogDir::Real(path)).unwrap();
        assert_eq!(indexes(&log, 1), vec![1, 2, 3]);
    }

    /// Proves isolation: a record of one group that replays badly (here a vote that does not
    /// decode, with a valid checksum) makes only that group fail to attach, with the reason; the
    /// other groups of the core open as before.
    #[test]
    fn t05_a_bad_record_fails_only_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        futures::executor::block_on(async {
            let log = CoreLog::open(LogDir::Real(path.clone())).unwrap();
            for index in 1..=5 {
                append_durably(&log, 1, vec![entry(1, index)]).await;
                append_durably(&log, 2, vec![entry(1, index)]).await;
            }
        });
        let seg = LogDir::Real(path.clone()).segment_path(1);
        let bytes = std::fs::read(&seg).unwrap();
        let end = parse_segment(&bytes).1 as u64;
        let mut bad_vote = encode_record(KIND_VOTE, GroupId(2), b"not a vote");
        seal_record(&mut bad_vote, u32_at(&bytes, 12).unwrap());
        let file = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &bad_vote, end).unwrap();
        drop(file);
        let log = CoreLog::open(LogDir::Real(path)).unwrap();
        match log.attach(GroupId(2)) {
            Some(Err(ShardError::Corrupt { detail, .. })) => assert!(detail.contains("vote"), "{detail}"),
            other => panic!("group 2 attached: {:?}", other.map(|r| r.map(|s| s.last_log_id))),
        }
        assert_eq!(log.attach(GroupId(1)).unwrap().unwrap().last_log_id, Some(log_id(1, 5)));
        assert_eq!(indexes(&log, 1), (1..=5).collect::<Vec<_>>());
    }

    /// Proves reuse (D61): purged segments are kept as spares (at most `LOG_SPARE_SEGMENTS_MAX`,
    /// the others deleted) and renamed into place as later segments; a reused segment's old
    /// records, which still follow its new ones with valid checksums, are never replayed; and a
    /// replay after reuse holds exactly the live entries.
    #[test]
    fn t07_purged_segments_are_reused_and_their_old_records_never_replay() {
        let dir = tempfile::tempdir().unwrap();
        let ldir = LogDir::Real(dir.path().join("log"));
        futures::executor::block_on(async {
            let log = CoreLog::open_with(ldir.clone(), 2048).unwrap();
            for index in 1..=400 {
                append_durably(&log, 1, vec![entry(1, index)]).await;
            }
            let before = ldir.list().unwrap();
            assert!(before.len() > LOG_SPARE_SEGMENTS_MAX + 2, "{before:?}");
            log.purge(GroupId(1), log_id(1, 390)).await.unwrap();
            // The writer retires removed segments after the batch that removes them is durable.
            append_durably(&log, 1, vec![entry(2, 401)]).await;
            assert_eq!(ldir.spares().unwrap().len(), LOG_SPARE_SEGMENTS_MAX);
            assert!(ldir.list().unwrap().len() <= 2, "{:?}", ldir.list().unwrap());
            for index in 402..=430 {
                append_durably(&log, 1, vec![entry(2, index)]).await;
            }
            assert!(ldir.spares().unwrap().len() < LOG_SPARE_SEGMENTS_MAX, "no spare was reused");
            log.close();
        });
        // The active segment is a reused one: past its own records lie its old ones, valid under
        // their old tag, and replay stops before them.
        let active = *ldir.list().unwrap().last().unwrap();
        let bytes = std::fs::read(ldir.segment_path(active)).unwrap();
        let (records, stopped) = parse_segment(&bytes);
        assert_eq!(u64_at(records[0].payload, 8), Some(1), "the active segment was not reused");
        let tag = u32_at(&bytes, 12).unwrap();
        assert_ne!(tag, 0);
        let old = (stopped..bytes.len().saturating_sub(HEADER_LEN))
            .step_by(8)
            .find(|at| !parse_segment(&bytes[*at..]).0.is_empty())
            .expect("no old record follows the reused segment's own");
        assert_ne!(u32_at(&bytes[old..], 12), Some(tag));
        let log = CoreLog::open_with(ldir.clone(), 2048).unwrap();
        assert_eq!(indexes(&log, 1), (391..=430).collect::<Vec<_>>());
        let terms: Vec<u64> = log
            .read(GroupId(1), Included(399), Included(402))
            .unwrap()
            .iter()
            .map(|e| e.log_id.leader_id.term)
            .collect();
        assert_eq!(terms, vec![1, 1, 2, 2]);
    }

    /// Proves durability with reuse (D61) under a simulated power cut: a group appends and purges
    /// in small segments, so segments are retired to spares and reused, and is cut at every third
    /// of the first 120 syncs in both modes; every acknowledged entry replays and the log is
    /// contiguous.
    #[test]
    fn t08_acknowledged_appends_survive_a_power_cut_with_reuse() {
        for mode in [CutMode::DropUnsynced, CutMode::TornWriteback] {
            for nth in 1..=40u64 {
                let disk = SimDisk::new(nth, mode);
                let dir = LogDir::Sim(disk.clone(), PathBuf::from("/sim/log"));
                disk.arm(crate::storage::sim_disk::CutPlan { file: Some(".log".into()), nth: nth * 3 });
                let (acked, reused, quiet) = futures::executor::block_on(async {
                    let log = CoreLog::open_with(dir.clone(), 1024).unwrap();
                    // A quiet group, whose entries are copied forward (D62).
                    let mut quiet = 0;
                    for index in 1..=3u64 {
                        if !acked_before_cut(&log, 2, index, &disk).await {
                            break;
                        }
                        quiet = index;
                    }
                    let mut acked = 0;
                    let mut reused = false;
                    let mut spares_before = 0;
                    for index in 1..=150u64 {
                        if !acked_before_cut(&log, 1, index, &disk).await {
                            break;
                        }
                        acked = index;
                        if index % 20 == 0 && log.purge(GroupId(1), log_id(1, index - 5)).await.is_err() {
                            break;
                        }
                        // Only a reuse takes a spare away.
                        let spares = dir.spares().unwrap().len();
                        reused |= spares < spares_before;
                        spares_before = spares;
                    }
                    (acked, reused, quiet)
                });
                if !disk.is_cut() {
                    disk.cut_now();
                }
                disk.restore().unwrap();
                let log =
                    CoreLog::open_with(LogDir::Sim(disk.clone(), PathBuf::from("/sim/log")), 1024).unwrap();
                let got = indexes(&log, 1);
                assert!(
                    got.last().copied().unwrap_or(0) >= acked,
                    "{mode:?} cut {nth}: lost acked {acked}: {got:?}"
                );
                assert!(got.windows(2).all(|w| w[1] == w[0] + 1), "{mode:?} cut {nth}: {got:?}");
                let got = indexes(&log, 2);
                assert!(got.len() as u64 >= quiet, "{mode:?} cut {nth}: quiet group lost {quiet}: {got:?}");
                assert!(
                    got.iter().enumerate().all(|(i, x)| *x == i as u64 + 1),
                    "{mode:?} cut {nth}: {got:?}"
                );
                if nth == 40 {
                    assert!(reused, "{mode:?}: no spare was reused before the cut");
                }
            }
        }
    }

    /// Proves the tag check (D61) on bytes laid out as in a reused segment: new records (one tag)
    /// written over old ones of the same sizes (another tag), so the first old record left starts
    /// exactly where the new ones end; parsing stops there, though that record is valid under its
    /// own tag.
    #[test]
    fn t09_old_records_past_a_reused_segments_own_are_not_read() {
        let sealed = |from: u64, tag: u32| {
            let mut record = encode_record(KIND_TRUNCATE, GroupId(1), &from.to_le_bytes());
            seal_record(&mut record, tag);
            record
        };
        let mut bytes: Vec<u8> = (0..6).flat_map(|i| sealed(i, 7)).collect();
        let mut end = 0;
        for i in 0..3 {
            let record = sealed(100 + i, 9);
            bytes[end..end + record.len()].copy_from_slice(&record);
            end += record.len();
        }
        let (records, stopped) = parse_segment(&bytes);
        assert_eq!(records.len(), 3);
        assert_eq!(stopped, end);
        assert!(records.iter().all(|r| u64_at(r.payload, 0).is_some_and(|from| from >= 100)));
        assert_eq!(parse_segment(&bytes[end..]).0.len(), 3, "the old records are valid under their own tag");
    }

    /// Proves relocation (D62): a quiet group's few entries, left behind in the first segment,
    /// are copied forward as its busy neighbour rotates and purges, so the old segments go; reads
    /// of the quiet group work throughout; after a reopen the quiet group has exactly its entries
    /// and the busy one its live range.
    #[test]
    fn t10_a_quiet_group_does_not_keep_old_segments_alive() {
        let dir = tempfile::tempdir().unwrap();
        let ldir = LogDir::Real(dir.path().join("log"));
        futures::executor::block_on(async {
            let log = CoreLog::open_with(ldir.clone(), 2048).unwrap();
            for index in 1..=3 {
                append_durably(&log, 1, vec![entry(7, index)]).await;
            }
            for index in 1..=600 {
                append_durably(&log, 2, vec![entry(1, index)]).await;
                if index % 50 == 0 {
                    log.purge(GroupId(2), log_id(1, index - 10)).await.unwrap();
                    assert_eq!(indexes(&log, 1), vec![1, 2, 3]);
                }
            }
            let left = ldir.list().unwrap();
            assert!(left.len() <= 4, "old segments kept alive: {left:?}");
            // Its thread may still be retiring segments: a reopen meanwhile would race it.
            log.close();
        });
        let log = CoreLog::open_with(ldir, 2048).unwrap();
        assert_eq!(indexes(&log, 1), vec![1, 2, 3]);
        let terms: Vec<u64> = log
            .read(GroupId(1), Unbounded, Unbounded)
            .unwrap()
            .iter()
            .map(|e| e.log_id.leader_id.term)
            .collect();
        assert_eq!(terms, vec![7, 7, 7]);
        assert_eq!(indexes(&log, 2), (591..=600).collect::<Vec<_>>());
    }
}
