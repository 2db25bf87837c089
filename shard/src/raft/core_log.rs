//! One durable Raft log per core (issue 15 item 1, D38): every group of a core appends to the same
//! segment files, and one write + one fdatasync on the core's log thread covers whatever every
//! group queued meanwhile. openraft 0.9 keeps one append per group in flight (D8), so this is what
//! lets a core's groups share an fsync instead of each paying its own.
//!
//! Layout: `{data_dir}/log/core-NN/{seq:016x}.log`. A segment is a sequence of records, each
//! `len u32 | kind u8 | 0 u8×3 | group u32 | 0 u32 | checksum u64` followed by `len` payload bytes
//! and zero padding to 8 bytes; the checksum is blake3 over the first 16 header bytes and the
//! payload. Kinds: entries of one append, truncate, purge, vote, committed, and a segment's opening
//! record. Every start of the log opens a new segment and every segment begins with each group's
//! vote, committed and purged ids, so a segment that holds no live entry of any group can be
//! deleted (oldest first) without losing metadata, and nothing is ever written after a torn tail:
//! replay reads each segment up to its first invalid record.
//!
//! Split of work: the executor (this type, single-threaded) decides where each record goes (segment
//! and offset), keeps every group's index of entry positions and its vote/committed/purged ids, and
//! queues the encoded bytes; the log thread (`writer_loop`) writes what is queued contiguously,
//! syncs each file it wrote once, and only then completes the callbacks (nothing is acknowledged
//! before its fdatasync).

use crate::codec::{decode, encode};
use crate::constants::{LOG_SEGMENT_BYTES, LOG_WRITER_BATCH_MAX, LOG_WRITER_QUEUE_MAX, LOG_ZERO_AHEAD_BYTES};
use crate::error::ShardError;
use crate::metrics::CodecKind;
use crate::raft::log_store::records::VoteRecord;
use crate::raft::log_store::{decode_entry, log_id_from_le, stored_log_id, LogStats};
use crate::raft::type_config::{Entry, LogId, Vote};
use crate::storage::log_files::{LogDir, LogFile};
use futures::channel::oneshot;
use ledger_core::types::GroupId;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

const HEADER_LEN: usize = 24;
const KIND_ENTRIES: u8 = 1;
const KIND_TRUNCATE: u8 = 2;
const KIND_PURGE: u8 = 3;
const KIND_VOTE: u8 = 4;
const KIND_COMMITTED: u8 = 5;
const KIND_SEGMENT: u8 = 6;

/// Completion of an append (openraft's `LogFlushed`, boxed): runs on the log thread.
pub type AppendDone = Box<dyn FnOnce(Result<(), std::io::Error>) + Send>;

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

enum Done {
    Nothing,
    Append(AppendDone),
    Wait(oneshot::Sender<Result<(), String>>),
}

enum WalCmd {
    /// Record bytes for `offset` of segment `seg`; `sync`: must be durable before `done`.
    Write { seq: u64, seg: u64, offset: u64, bytes: Vec<u8>, sync: bool, done: Done },
    /// Later writes go to this new (empty) segment; its name must be made durable.
    NewSegment { seg: u64, file: Arc<dyn LogFile> },
    /// Delete a segment once everything queued before is durable.
    Remove { seg: u64 },
}

/// A group's vote, committed and purged ids, as a segment header repeats them.
type GroupMeta = (GroupId, Option<Vote>, Option<LogId>, Option<LogId>);

/// Why the log thread stopped writing, shared with the executor.
type Failure = Arc<Mutex<Option<String>>>;

/// One core's Raft log. Single-threaded (the core's executor); shared by its groups' log stores.
pub struct CoreLog {
    dir: LogDir,
    generation: u64,
    /// A segment is closed once it would grow past this (`LOG_SEGMENT_BYTES`; tests lower it).
    segment_bytes: u64,
    inner: RefCell<Inner>,
    stats: Arc<LogStats>,
    /// Highest write sequence number known durable (set by the log thread).
    flushed_seq: Arc<AtomicU64>,
    failure: Failure,
}

struct Inner {
    groups: BTreeMap<GroupId, GroupLog>,
    /// Open segment files (reads of entries no longer cached go here).
    segments: BTreeMap<u64, Arc<dyn LogFile>>,
    active: u64,
    next_offset: u64,
    next_seq: u64,
    writer: flume::Sender<WalCmd>,
    /// Groups whose log store is open (a group opens at most once at a time).
    attached: std::collections::BTreeSet<GroupId>,
}

thread_local! {
    /// The logs open on this thread (one core), by directory.
    static OPEN_LOGS: RefCell<HashMap<PathBuf, Weak<CoreLog>>> = RefCell::new(HashMap::new());
}

fn align8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

fn checksum(header16: &[u8], payload: &[u8]) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(header16);
    hasher.update(payload);
    let mut out = [0u8; 8];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
    u64::from_le_bytes(out)
}

/// Encodes one record (header, payload, padding).
fn encode_record(kind: u8, group: GroupId, payload: &[u8]) -> Vec<u8> {
    record_with(kind, group, payload.len(), |out| out.extend_from_slice(payload))
}

/// Encodes one record whose payload `fill` appends (`capacity`: its expected length), so a
/// payload built from parts is written once, straight into the record.
fn record_with(kind: u8, group: GroupId, capacity: usize, fill: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + align8(capacity));
    out.resize(HEADER_LEN, 0);
    fill(&mut out);
    let len = out.len() - HEADER_LEN;
    out[0..4].copy_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    out[4] = kind;
    out[8..12].copy_from_slice(&group.0.to_le_bytes());
    let sum = checksum(&out[..16], &out[HEADER_LEN..]);
    out[16..24].copy_from_slice(&sum.to_le_bytes());
    out.resize(HEADER_LEN + align8(len), 0);
    out
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

/// Reads the records of a segment's bytes up to the first invalid one; returns them and the
/// offset where reading stopped.
fn parse_segment(bytes: &[u8]) -> (Vec<Record<'_>>, usize) {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + HEADER_LEN <= bytes.len() {
        let header = &bytes[at..at + HEADER_LEN];
        let (Some(len), Some(group), Some(sum)) = (u32_at(header, 0), u32_at(header, 8), u64_at(header, 16))
        else {
            break;
        };
        let kind = header[4];
        if !(KIND_ENTRIES..=KIND_SEGMENT).contains(&kind)
            || header[5..8] != [0, 0, 0]
            || header[12..16] != [0, 0, 0, 0]
        {
            break;
        }
        let start = at + HEADER_LEN;
        let Some(payload) = bytes.get(start..start + len as usize) else { break };
        if checksum(&header[..16], payload) != sum {
            break;
        }
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
        let log = Rc::new(CoreLog::open(dir)?);
        OPEN_LOGS.with(|open| {
            let mut open = open.borrow_mut();
            open.retain(|_, weak| weak.strong_count() > 0);
            open.insert(key, Rc::downgrade(&log));
        });
        Ok(log)
    }

    /// Replays every segment of `dir`, starts a new segment and the log thread.
    pub fn open(dir: LogDir) -> Result<CoreLog, ShardError> {
        CoreLog::open_with(dir, LOG_SEGMENT_BYTES)
    }

    /// `open` with segments of at most `segment_bytes` (tests make them small to rotate often).
    pub fn open_with(dir: LogDir, segment_bytes: u64) -> Result<CoreLog, ShardError> {
        dir.create().map_err(|e| io_err(&dir, e))?;
        let generation = dir.generation();
        let mut groups: BTreeMap<GroupId, GroupLog> = BTreeMap::new();
        let mut segments: BTreeMap<u64, Arc<dyn LogFile>> = BTreeMap::new();
        let seqs = dir.list().map_err(|e| io_err(&dir, e))?;
        for &seg in &seqs {
            let file = dir.open(seg, false).map_err(|e| io_err(&dir, e))?;
            let len = file.size().map_err(|e| io_err(&dir, e))?;
            let mut bytes = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
            file.read_at(0, &mut bytes).map_err(|e| io_err(&dir, e))?;
            let (records, stopped) = parse_segment(&bytes);
            let opens_right = records.first().is_some_and(|r| {
                r.kind == KIND_SEGMENT && u64_at(r.payload, 0) == Some(seg) && r.group == GroupId(0)
            });
            if !opens_right {
                // Created but never written (a crash right after the create): nothing in it.
                if records.is_empty() {
                    segments.insert(seg, file);
                    continue;
                }
                return Err(corrupt(format!("segment {seg:016x} does not start with its own header")));
            }
            if bytes[stopped..].iter().any(|b| *b != 0) {
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
                let log = groups.entry(record.group).or_default();
                if log.broken.is_some() {
                    continue;
                }
                if let Err(e) = replay_record(log, seg, record) {
                    log.broken = Some(e.to_string());
                }
            }
            segments.insert(seg, file);
        }
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
        let active = seqs.last().map(|s| s + 1).unwrap_or(1);
        let (writer, rx) = flume::bounded(LOG_WRITER_QUEUE_MAX);
        let stats = Arc::new(LogStats::default());
        let flushed_seq = Arc::new(AtomicU64::new(0));
        let failure: Failure = Arc::default();
        let (thread_dir, thread_stats, thread_flushed, thread_failure) =
            (dir.clone(), stats.clone(), flushed_seq.clone(), failure.clone());
        crate::helper_threads::spawn_helper("raft-log-io", move || {
            writer_loop(thread_dir, rx, thread_flushed, thread_stats, thread_failure)
        })
        .map_err(|e| io_err(&dir, e))?;
        let log = CoreLog {
            dir,
            generation,
            segment_bytes,
            inner: RefCell::new(Inner {
                groups,
                segments,
                active: 0,
                next_offset: 0,
                next_seq: 1,
                writer,
                attached: Default::default(),
            }),
            stats,
            flushed_seq,
            failure,
        };
        log.start_segment(active)?;
        Ok(log)
    }

    pub fn dir(&self) -> &LogDir {
        &self.dir
    }

    pub fn stats(&self) -> Arc<LogStats> {
        self.stats.clone()
    }

    /// Why the log thread stopped writing, if it did (the core's groups must reopen).
    pub fn failure(&self) -> Option<String> {
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
    fn queue(&self, bytes: Vec<u8>, sync: bool, done: Done) -> Result<(u64, u64, u64), ShardError> {
        if self.inner.borrow().next_offset > 0
            && self.inner.borrow().next_offset + bytes.len() as u64 > self.segment_bytes
        {
            let next = self.inner.borrow().active + 1;
            self.start_segment(next)?;
        }
        let mut inner = self.inner.borrow_mut();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let (seg, offset) = (inner.active, inner.next_offset);
        inner.next_offset += bytes.len() as u64;
        let cmd = WalCmd::Write { seq, seg, offset, bytes, sync, done };
        inner.writer.try_send(cmd).or_else(|e| match e {
            // The queue is bounded so a stuck disk shows up as back-pressure, not memory growth;
            // the executor waits for room (rare: the thread drains 1,024 commands per batch).
            flume::TrySendError::Full(cmd) => inner.writer.send(cmd).map_err(|_| self.closed()),
            flume::TrySendError::Disconnected(_) => Err(self.closed()),
        })?;
        Ok((seq, seg, offset + HEADER_LEN as u64))
    }

    fn closed(&self) -> ShardError {
        ShardError::StorageClosed { what: format!("raft log {}", self.dir.path().display()) }
    }

    /// Opens segment `seg` as the active one and writes its header: the segment record and every
    /// group's vote, committed and purged ids.
    fn start_segment(&self, seg: u64) -> Result<(), ShardError> {
        let file = self.dir.open(seg, true).map_err(|e| io_err(&self.dir, e))?;
        let metas: Vec<GroupMeta> = {
            let mut inner = self.inner.borrow_mut();
            inner.segments.insert(seg, file.clone());
            inner.active = seg;
            inner.next_offset = 0;
            inner.writer.send(WalCmd::NewSegment { seg, file }).map_err(|_| self.closed())?;
            inner.groups.iter().map(|(g, l)| (*g, l.vote, l.committed, l.last_purged)).collect()
        };
        self.queue(encode_record(KIND_SEGMENT, GroupId(0), &seg.to_le_bytes()), false, Done::Nothing)?;
        for (group, vote, committed, purged) in metas {
            if let Some(vote) = vote {
                self.queue(
                    encode_record(KIND_VOTE, group, &encode(&VoteRecord::from(&vote))),
                    false,
                    Done::Nothing,
                )?;
            }
            if let Some(committed) = committed {
                self.queue(
                    encode_record(KIND_COMMITTED, group, &log_id_bytes(&committed)),
                    false,
                    Done::Nothing,
                )?;
            }
            if let Some(purged) = purged {
                self.queue(encode_record(KIND_PURGE, group, &log_id_bytes(&purged)), false, Done::Nothing)?;
            }
        }
        Ok(())
    }

    /// Queues one append of `group` (entries in stored form, ascending and contiguous); `done`
    /// runs on the log thread once they are durable. Returns the write's sequence number.
    pub fn append(
        &self,
        group: GroupId,
        entries: &[(LogId, Vec<u8>)],
        done: AppendDone,
    ) -> Result<u64, ShardError> {
        let (seq, seg, payload_at) = self.queue(entries_record(group, entries), true, Done::Append(done))?;
        let mut inner = self.inner.borrow_mut();
        let log = inner.groups.entry(group).or_default();
        let mut at = payload_at + 4;
        for (log_id, bytes) in entries {
            let len = bytes.len() as u32;
            log.insert(EntryLoc { seg, offset: at + 4, len, log_id: *log_id });
            at += 4 + len as u64;
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
        self.queue(encode_record(KIND_COMMITTED, group, &log_id_bytes(&committed)), false, Done::Nothing)
            .map(|_| ())
    }

    fn queue_and_wait(
        &self,
        kind: u8,
        group: GroupId,
        payload: &[u8],
    ) -> impl std::future::Future<Output = Result<(), ShardError>> {
        let (tx, rx) = oneshot::channel();
        let queued = self.queue(encode_record(kind, group, payload), true, Done::Wait(tx));
        let what = format!("raft log {}", self.dir.path().display());
        async move {
            queued?;
            match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(detail)) => Err(ShardError::WriteFailed { what, detail }),
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
            inner.writer.send(WalCmd::Remove { seg }).map_err(|_| self.closed())?;
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
            let file = inner
                .segments
                .get(&loc.seg)
                .ok_or_else(|| corrupt(format!("group {group}: segment {:016x} is gone", loc.seg)))?;
            let mut bytes = vec![0u8; loc.len as usize];
            file.read_at(loc.offset, &mut bytes).map_err(|e| io_err(&self.dir, e))?;
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

    /// The log id at `index`, if the log holds that entry.
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

/// Body of the core's log thread: write what is queued, sync each written file once, then
/// complete. After a failed write or sync nothing is written any more (the groups reopen the log).
fn writer_loop(
    dir: LogDir,
    rx: flume::Receiver<WalCmd>,
    flushed_seq: Arc<AtomicU64>,
    stats: Arc<LogStats>,
    failure: Failure,
) {
    let mut files: BTreeMap<u64, Arc<dyn LogFile>> = BTreeMap::new();
    let mut buffer: Vec<u8> = Vec::new();
    let mut unsynced = Unsynced::default();
    let mut zeroed = ZeroedAhead::default();
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < LOG_WRITER_BATCH_MAX {
            match rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
        let failed_before = failure.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let started = std::time::Instant::now();
        let result = match failed_before {
            Some(e) => Err(e),
            None => {
                write_batch(&dir, &mut files, &mut buffer, &mut unsynced, &batch).map_err(|e| e.to_string())
            }
        };
        let synced = batch.iter().any(|c| matches!(c, WalCmd::Write { sync: true, .. }));
        if synced {
            stats.record(started.elapsed(), true);
        }
        match &result {
            Ok(()) => {
                let max_seq = batch
                    .iter()
                    .filter_map(|c| match c {
                        WalCmd::Write { seq, .. } => Some(*seq),
                        _ => None,
                    })
                    .max();
                if let (true, Some(seq)) = (synced, max_seq) {
                    flushed_seq.store(seq, Ordering::Release);
                }
            }
            Err(e) => {
                let mut failed = failure.lock().unwrap_or_else(PoisonError::into_inner);
                if failed.is_none() {
                    crate::event!(error, "raft_log_write_failed", dir = %dir.path().display(), error = ?e);
                    *failed = Some(e.clone());
                }
            }
        }
        zeroed.note(&batch);
        for cmd in batch {
            if let WalCmd::Write { done, .. } = cmd {
                match done {
                    Done::Nothing => {}
                    Done::Append(done) => done(result.clone().map_err(std::io::Error::other)),
                    Done::Wait(tx) => {
                        let _ = tx.send(result.clone());
                    }
                }
            }
        }
        if result.is_ok() && rx.is_empty() {
            if let Err(e) = zeroed.extend(&files) {
                // Only a cost: appends past the zeroed region sync like plain appends.
                crate::event!(warn, "raft_log_zero_ahead_failed", dir = %dir.path().display(), error = %e);
            }
        }
    }
}

/// Keeps a stretch of zeros, written and synced, ahead of the active segment's end (D38): an
/// fdatasync after overwriting allocated blocks skips the file-system metadata an append must
/// journal (about half the cost here, STACK.md). Replay stops at the first zero header anyway.
#[derive(Default)]
struct ZeroedAhead {
    /// The segment written last and the end of its last write.
    frontier: Option<(u64, u64)>,
    /// How far that segment is zeroed and synced.
    zeroed_to: u64,
}

impl ZeroedAhead {
    fn note(&mut self, batch: &[WalCmd]) {
        for cmd in batch {
            if let WalCmd::Write { seg, offset, bytes, .. } = cmd {
                if self.frontier.is_some_and(|(s, _)| s != *seg) {
                    self.zeroed_to = 0;
                }
                self.frontier = Some((*seg, offset + bytes.len() as u64));
            }
        }
    }

    /// Zeroes one chunk past the frontier if less than half a chunk is left.
    fn extend(&mut self, files: &BTreeMap<u64, Arc<dyn LogFile>>) -> std::io::Result<()> {
        let Some((seg, end)) = self.frontier else { return Ok(()) };
        if self.zeroed_to >= end + LOG_ZERO_AHEAD_BYTES / 2 {
            return Ok(());
        }
        let Some(file) = files.get(&seg) else { return Ok(()) };
        let start = self.zeroed_to.max(end);
        let zeros = vec![0u8; LOG_ZERO_AHEAD_BYTES as usize];
        file.write_at(start, &zeros)?;
        file.sync()?;
        self.zeroed_to = start + LOG_ZERO_AHEAD_BYTES;
        Ok(())
    }
}

/// What was written and not synced yet (kept across batches: a batch that needs no sync leaves
/// its writes for the next one that does).
#[derive(Default)]
struct Unsynced {
    files: std::collections::BTreeSet<u64>,
    dir: bool,
}

fn write_batch(
    dir: &LogDir,
    files: &mut BTreeMap<u64, Arc<dyn LogFile>>,
    buffer: &mut Vec<u8>,
    unsynced: &mut Unsynced,
    batch: &[WalCmd],
) -> std::io::Result<()> {
    let mut must_sync = false;
    // Contiguous writes to one segment go out as one write.
    let mut pending: Option<(u64, u64)> = None; // (seg, start offset) of `buffer`
    let flush =
        |pending: &mut Option<(u64, u64)>, buffer: &mut Vec<u8>, files: &BTreeMap<u64, Arc<dyn LogFile>>| {
            if let Some((seg, start)) = pending.take() {
                let file = files
                    .get(&seg)
                    .ok_or_else(|| std::io::Error::other(format!("segment {seg:016x} not open")))?;
                file.write_at(start, buffer)?;
                buffer.clear();
            }
            Ok::<(), std::io::Error>(())
        };
    let mut removes = Vec::new();
    for cmd in batch {
        match cmd {
            WalCmd::NewSegment { seg, file } => {
                files.insert(*seg, file.clone());
                unsynced.dir = true;
            }
            WalCmd::Remove { seg } => removes.push(*seg),
            WalCmd::Write { seg, offset, bytes, sync, .. } => {
                must_sync |= *sync;
                let contiguous =
                    pending.is_some_and(|(s, start)| s == *seg && start + buffer.len() as u64 == *offset);
                if !contiguous {
                    flush(&mut pending, buffer, files)?;
                    pending = Some((*seg, *offset));
                }
                buffer.extend_from_slice(bytes);
                unsynced.files.insert(*seg);
            }
        }
    }
    flush(&mut pending, buffer, files)?;
    if must_sync || !removes.is_empty() {
        for seg in std::mem::take(&mut unsynced.files) {
            if let Some(file) = files.get(&seg) {
                file.sync()?;
            }
        }
        if std::mem::take(&mut unsynced.dir) {
            dir.sync_dir()?;
        }
    }
    for seg in removes {
        files.remove(&seg);
        dir.remove(seg)?;
    }
    if buffer.capacity() > 4 * 1024 * 1024 {
        *buffer = Vec::new();
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
        log.append(group, &[(entry.log_id, encode_entry(entry))], Box::new(move |r| drop(tx.send(r))))?;
        let what = format!("raft log {}", log.dir.path().display());
        match rx.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ShardError::WriteFailed { what, detail: e.to_string() }),
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
        log.append(GroupId(group), &entries, Box::new(move |r| drop(tx.send(r)))).unwrap();
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
                    log.append(GroupId(group), &[entry(2, index)], Box::new(move |r| drop(tx.send(r))))
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
    #[test]
    fn t04_acknowledged_appends_survive_a_power_cut() {
        for mode in [CutMode::DropUnsynced, CutMode::TornWriteback] {
            for nth in 1..=40u64 {
                let disk = SimDisk::new(nth, mode);
                let dir = LogDir::Sim(disk.clone(), PathBuf::from("/sim/log"));
                disk.arm(crate::storage::sim_disk::CutPlan { file: Some(".log".into()), nth });
                let acked = futures::executor::block_on(async {
                    let log = CoreLog::open_with(dir.clone(), 2048).unwrap();
                    let mut acked = [0u64; 3];
                    for index in 1..=30u64 {
                        for group in 0..3u32 {
                            let (tx, rx) = oneshot::channel();
                            if log
                                .append(
                                    GroupId(group),
                                    &[entry(1, index)],
                                    Box::new(move |r| drop(tx.send(r))),
                                )
                                .is_err()
                            {
                                break;
                            }
                            if rx.await.unwrap().is_ok() && !disk.is_cut() {
                                acked[group as usize] = index;
                            }
                        }
                    }
                    acked
                });
                if !disk.is_cut() {
                    disk.cut_now();
                }
                disk.restore().unwrap();
                let log =
                    CoreLog::open_with(LogDir::Sim(disk.clone(), PathBuf::from("/sim/log")), 2048).unwrap();
                for group in 0..3u32 {
                    let got = indexes(&log, group);
                    assert!(
                        got.len() as u64 >= acked[group as usize],
                        "{mode:?} cut at sync {nth}: group {group} lost acknowledged entries: {} < {}",
                        got.len(),
                        acked[group as usize]
                    );
                    assert!(
                        got.iter().enumerate().all(|(i, x)| *x == i as u64 + 1),
                        "{mode:?} {nth}: {got:?}"
                    );
                }
            }
        }
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
        let end = parse_segment(&std::fs::read(&seg).unwrap()).1 as u64;
        let file = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        std::os::unix::fs::FileExt::write_all_at(
            &file,
            &encode_record(KIND_VOTE, GroupId(2), b"not a vote"),
            end,
        )
        .unwrap();
        drop(file);
        let log = CoreLog::open(LogDir::Real(path)).unwrap();
        match log.attach(GroupId(2)) {
            Some(Err(ShardError::Corrupt { detail, .. })) => assert!(detail.contains("vote"), "{detail}"),
            other => panic!("group 2 attached: {:?}", other.map(|r| r.map(|s| s.last_log_id))),
        }
        assert_eq!(log.attach(GroupId(1)).unwrap().unwrap().last_log_id, Some(log_id(1, 5)));
        assert_eq!(indexes(&log, 1), (1..=5).collect::<Vec<_>>());
    }
}
