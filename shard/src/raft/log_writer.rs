//! Writing a core log's queued records (D38, D60): write what is queued contiguously, sync each
//! written file once, and only then complete the callbacks (nothing is acknowledged before its
//! fdatasync).
//!
//! Two parties write, one at a time under the writer's lock, always taking the queue's records in
//! order: the core's log thread, woken by a nudge, and the executor itself, when the thread is idle
//! at the moment a synced record is due (D60). Taking records off the queue only while holding the
//! lock keeps them in order, so "every record up to the highest one processed is written" holds
//! whichever party wrote them, and `flushed_seq` means what it always meant.

use crate::constants::{
    LOG_SPARE_SEGMENTS_MAX, LOG_WRITER_BATCH_MAX, LOG_ZERO_AHEAD_BYTES, LOG_ZERO_STEP_BYTES,
};
use crate::raft::log_store::LogStats;
use crate::storage::log_files::{LogDir, LogFile};
use futures::channel::oneshot;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, TryLockError};

/// Completion of an append (openraft's `LogFlushed`, boxed): runs on whichever thread wrote it.
pub type AppendDone = Box<dyn FnOnce(Result<(), std::io::Error>) + Send>;

/// What to do once a write is durable (or failed).
pub(crate) enum Done {
    Nothing,
    Append(AppendDone),
    Wait(oneshot::Sender<Result<(), LogFailure>>),
}

pub(crate) enum WalCmd {
    /// Record bytes for `offset` of segment `seg`; `sync`: must be durable before `done`.
    Write { seq: u64, seg: u64, offset: u64, bytes: Vec<u8>, sync: bool, done: Done },
    /// Later writes go to this new segment; its name must be made durable. `prewritten`: how many
    /// of its bytes are already written (a reused spare's length, D61; 0 for a new file).
    NewSegment { seg: u64, file: Arc<dyn LogFile>, prewritten: u64 },
    /// Delete a segment once everything queued before is durable (or keep it as a spare).
    Remove { seg: u64 },
}

/// Old segments kept for reuse (D61), by their old sequence numbers: the writer adds the ones it
/// removes, the executor takes one when it starts a segment.
pub(crate) type Spares = Arc<Mutex<Vec<u64>>>;

/// Why the writer stopped writing, shared with the executor.
/// Why the log thread stopped writing: the first failed write or sync, shared by every waiter
/// (nothing is written after it; the core's groups reopen the log).
pub type LogFailure = Arc<std::io::Error>;
pub(crate) type Failure = Arc<Mutex<Option<LogFailure>>>;

/// The writing side of a core log: the queue's receiving end and what has been written.
pub(crate) struct LogWriter {
    dir: LogDir,
    rx: flume::Receiver<WalCmd>,
    files: BTreeMap<u64, Arc<dyn LogFile>>,
    buffer: Vec<u8>,
    unsynced: Unsynced,
    zeroed: ZeroedAhead,
    /// Highest write sequence number known durable (read by the executor).
    flushed_seq: Arc<AtomicU64>,
    stats: Arc<LogStats>,
    failure: Failure,
    spares: Spares,
}

impl LogWriter {
    pub(crate) fn new(
        dir: LogDir,
        rx: flume::Receiver<WalCmd>,
        flushed_seq: Arc<AtomicU64>,
        stats: Arc<LogStats>,
        failure: Failure,
        spares: Spares,
    ) -> LogWriter {
        LogWriter {
            dir,
            rx,
            files: BTreeMap::new(),
            buffer: Vec::new(),
            unsynced: Unsynced::default(),
            zeroed: ZeroedAhead::default(),
            flushed_seq,
            stats,
            failure,
            spares,
        }
    }

    /// Writes everything queued, a batch at a time.
    fn drain(&mut self) {
        loop {
            let batch: Vec<WalCmd> = self.rx.try_iter().take(LOG_WRITER_BATCH_MAX).collect();
            if batch.is_empty() {
                return;
            }
            self.write(batch);
        }
    }

    /// Writes one batch, syncs it if any record must be durable, then completes its callbacks.
    /// After a failed write or sync nothing is written any more (the groups reopen the log).
    fn write(&mut self, batch: Vec<WalCmd>) {
        let failed_before = self.failure.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let started = std::time::Instant::now();
        let result = match failed_before {
            Some(e) => Err(e),
            None => write_batch(&self.dir, &mut self.files, &mut self.buffer, &mut self.unsynced, &batch)
                .and_then(|()| self.retire_removed(&batch))
                .map_err(Arc::new),
        };
        let synced = batch.iter().any(|c| matches!(c, WalCmd::Write { sync: true, .. }));
        if synced {
            self.stats.record(started.elapsed(), true);
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
                    // Records leave the queue in order and only under the lock, so every record
                    // before this one is written, and this sync covered the unsynced ones.
                    debug_assert!(seq >= self.flushed_seq.load(Ordering::Acquire));
                    self.flushed_seq.store(seq, Ordering::Release);
                }
            }
            Err(e) => {
                let mut failed = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
                if failed.is_none() {
                    crate::event!(error, "raft_log_write_failed", dir = %self.dir.path().display(), error = %e);
                    *failed = Some(e.clone());
                }
            }
        }
        self.zeroed.note(&batch);
        for cmd in batch {
            if let WalCmd::Write { done, .. } = cmd {
                match done {
                    Done::Nothing => {}
                    Done::Append(done) => done(result.clone().map_err(|e| std::io::Error::new(e.kind(), e))),
                    Done::Wait(tx) => {
                        let _ = tx.send(result.clone());
                    }
                }
            }
        }
    }

    /// Deletes the segments `batch` removes, or keeps them as spares while fewer than
    /// `LOG_SPARE_SEGMENTS_MAX` are kept (D61). Runs after the batch is durable.
    fn retire_removed(&mut self, batch: &[WalCmd]) -> std::io::Result<()> {
        for cmd in batch {
            if let WalCmd::Remove { seg } = cmd {
                self.files.remove(seg);
                let mut spares = self.spares.lock().unwrap_or_else(PoisonError::into_inner);
                if spares.len() < LOG_SPARE_SEGMENTS_MAX {
                    self.dir.make_spare(*seg)?;
                    spares.push(*seg);
                } else {
                    self.dir.remove(*seg)?;
                }
            }
        }
        Ok(())
    }

    /// Whether the zeros ahead of the log's end need extending (a job for the thread: it writes
    /// and syncs a whole chunk).
    fn zeros_due(&self) -> bool {
        self.zeroed.due()
    }

    /// Writes one step of zeros ahead of the end if nothing waits to be written; whether another
    /// step may follow.
    fn extend_zeros_step_when_idle(&mut self) -> bool {
        let healthy = self.failure.lock().unwrap_or_else(PoisonError::into_inner).is_none();
        if !healthy || !self.rx.is_empty() {
            return false;
        }
        match self.zeroed.step(&self.files) {
            Ok(more) => more,
            Err(e) => {
                // Only a cost: appends past the zeroed region sync like plain appends.
                crate::event!(warn, "raft_log_zero_ahead_failed", dir = %self.dir.path().display(), error = %e);
                false
            }
        }
    }
}

/// The writer shared by the executor and the log thread, and the thread's wake-up.
#[derive(Clone)]
pub(crate) struct SharedWriter {
    writer: Arc<Mutex<LogWriter>>,
    nudge: flume::Sender<()>,
}

impl SharedWriter {
    /// Starts the core's log thread for `writer`.
    pub(crate) fn start(writer: LogWriter) -> std::io::Result<SharedWriter> {
        // One pending nudge is enough: the thread drains the whole queue each time it wakes.
        let (nudge, woken) = flume::bounded(1);
        let writer = Arc::new(Mutex::new(writer));
        let thread_writer = writer.clone();
        crate::helper_threads::spawn_helper("raft-log-io", move || writer_loop(&thread_writer, &woken))?;
        Ok(SharedWriter { writer, nudge })
    }

    /// Gone once the log thread has stopped (and the log holding this writer was dropped).
    pub(crate) fn thread_alive(&self) -> std::sync::Weak<Mutex<LogWriter>> {
        Arc::downgrade(&self.writer)
    }

    /// Wakes the log thread to write what is queued.
    pub(crate) fn nudge(&self) {
        let _ = self.nudge.try_send(());
    }

    /// Writes what is queued on the calling thread (the executor), if the log thread is not
    /// writing now; otherwise leaves it to the thread, which takes it with its current batch's
    /// successor (D60).
    pub(crate) fn write_here_if_idle(&self) {
        let mut writer = match self.writer.try_lock() {
            Ok(writer) => writer,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                self.nudge();
                return;
            }
        };
        writer.drain();
        if writer.zeros_due() {
            self.nudge();
        }
    }
}

/// Body of the core's log thread: on each nudge, write everything queued (including what the
/// executor queued while the thread was writing), then keep zeros ahead of the end, a step per
/// hold of the lock (D87: a whole chunk held the executor's own log writes for milliseconds). When
/// the log closes (the nudge's sender is dropped) it writes what is left and stops.
fn writer_loop(writer: &Mutex<LogWriter>, woken: &flume::Receiver<()>) {
    let lock = || writer.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let closed = woken.recv().is_err();
        lock().drain();
        if closed {
            return;
        }
        while lock().extend_zeros_step_when_idle() {}
    }
}

/// Keeps a stretch of zeros, written and synced, ahead of the active segment's end (D38): an
/// fdatasync after overwriting allocated blocks skips the file-system metadata an append must
/// journal (about half the cost here, STACK.md). Replay stops at the first zero header anyway.
/// A reused spare (D61) is written already up to its length: no zeros are needed below that.
/// Once less than half of `LOG_ZERO_AHEAD_BYTES` is left it is topped up to all of it, in steps
/// of `LOG_ZERO_STEP_BYTES` (D87).
#[derive(Default)]
struct ZeroedAhead {
    /// The segment written last and the end of its last write.
    frontier: Option<(u64, u64)>,
    /// How far that segment is zeroed (or written by its earlier use) and synced.
    zeroed_to: u64,
    /// Topping up: set when less than half was left, cleared once it is all there again.
    filling: bool,
    /// Segments started but not written yet, and how much of each is written already.
    prewritten: BTreeMap<u64, u64>,
}

/// What a step writes: static, so no step allocates or faults in a zeroed buffer.
static ZEROS: [u8; LOG_ZERO_STEP_BYTES] = [0; LOG_ZERO_STEP_BYTES];

impl ZeroedAhead {
    fn note(&mut self, batch: &[WalCmd]) {
        for cmd in batch {
            match cmd {
                WalCmd::NewSegment { seg, prewritten, .. } => {
                    self.prewritten.insert(*seg, *prewritten);
                }
                WalCmd::Write { seg, offset, bytes, .. } => {
                    if self.frontier.is_none_or(|(s, _)| s != *seg) {
                        self.zeroed_to = self.prewritten.remove(seg).unwrap_or(0);
                        self.filling = false;
                    }
                    self.frontier = Some((*seg, offset + bytes.len() as u64));
                }
                WalCmd::Remove { .. } => {}
            }
        }
    }

    /// Whether less than half of the zeros is left past the frontier (or a top-up is under way).
    fn due(&self) -> bool {
        self.filling || self.frontier.is_some_and(|(_, end)| self.zeroed_to < end + LOG_ZERO_AHEAD_BYTES / 2)
    }

    /// Writes and syncs one step of zeros past the frontier if they are due; whether more are.
    fn step(&mut self, files: &BTreeMap<u64, Arc<dyn LogFile>>) -> std::io::Result<bool> {
        let Some((seg, end)) = self.frontier else { return Ok(false) };
        if !self.due() {
            return Ok(false);
        }
        let start = self.zeroed_to.max(end);
        let Some(file) = files.get(&seg).filter(|_| start < end + LOG_ZERO_AHEAD_BYTES) else {
            self.filling = false;
            return Ok(false);
        };
        self.filling = true;
        file.write_at(start, &ZEROS)?;
        file.sync()?;
        self.zeroed_to = start + LOG_ZERO_STEP_BYTES as u64;
        Ok(true)
    }
}

/// What was written and not synced yet (kept across batches: a batch that needs no sync leaves
/// its writes for the next one that does).
#[derive(Default)]
struct Unsynced {
    files: BTreeSet<u64>,
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
    let mut removes = false;
    for cmd in batch {
        match cmd {
            WalCmd::NewSegment { seg, file, .. } => {
                files.insert(*seg, file.clone());
                unsynced.dir = true;
            }
            WalCmd::Remove { .. } => removes = true,
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
    if must_sync || removes {
        for seg in std::mem::take(&mut unsynced.files) {
            if let Some(file) = files.get(&seg) {
                file.sync()?;
            }
        }
        if std::mem::take(&mut unsynced.dir) {
            dir.sync_dir()?;
        }
    }
    if buffer.capacity() > 4 * 1024 * 1024 {
        *buffer = Vec::new();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A segment file that records what is written to it and when it is synced.
    #[derive(Default)]
    struct Recorded {
        /// (offset, length, all zeros) of each write, and `None` for a sync.
        ops: Mutex<Vec<Option<(u64, usize, bool)>>>,
    }

    impl LogFile for Recorded {
        fn size(&self) -> std::io::Result<u64> {
            Ok(0)
        }
        fn read_at(&self, _: u64, _: &mut [u8]) -> std::io::Result<()> {
            Ok(())
        }
        fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            let zeros = data.iter().all(|b| *b == 0);
            self.ops.lock().unwrap().push(Some((offset, data.len(), zeros)));
            Ok(())
        }
        fn sync(&self) -> std::io::Result<()> {
            self.ops.lock().unwrap().push(None);
            Ok(())
        }
    }

    fn write(seg: u64, offset: u64, len: usize) -> WalCmd {
        WalCmd::Write { seq: 0, seg, offset, bytes: vec![1; len], sync: true, done: Done::Nothing }
    }

    /// D87: the zeros ahead are written in synced steps past the frontier, topped up to the whole
    /// stretch once less than half is left, and nothing is due in between.
    #[test]
    fn t01_zeros_ahead_in_synced_steps() {
        let file = Arc::new(Recorded::default());
        let files: BTreeMap<u64, Arc<dyn LogFile>> = [(7, file.clone() as Arc<dyn LogFile>)].into();
        let mut zeroed = ZeroedAhead::default();
        assert!(!zeroed.due(), "nothing written yet");
        zeroed.note(&[write(7, 0, 1000)]);
        let mut steps = 0;
        while zeroed.step(&files).unwrap() {
            steps += 1;
        }
        let step = LOG_ZERO_STEP_BYTES as u64;
        assert_eq!(steps as u64, LOG_ZERO_AHEAD_BYTES.div_ceil(step));
        let ops = file.ops.lock().unwrap().clone();
        for (i, pair) in ops.chunks(2).enumerate() {
            assert_eq!(pair, [Some((1000 + i as u64 * step, LOG_ZERO_STEP_BYTES, true)), None]);
        }
        // Less than half used: nothing due, nothing written.
        zeroed.note(&[write(7, 1000, (LOG_ZERO_AHEAD_BYTES / 2 - step) as usize)]);
        assert!(!zeroed.due());
        assert!(!zeroed.step(&files).unwrap());
        assert_eq!(file.ops.lock().unwrap().len(), ops.len());
        // Past half: topped up from where the zeros end, to a whole stretch past the frontier.
        let end = 1000 + LOG_ZERO_AHEAD_BYTES / 2 + step;
        zeroed.note(&[write(7, 1000, (end - 1000) as usize)]);
        assert!(zeroed.due());
        let before = file.ops.lock().unwrap().len();
        while zeroed.step(&files).unwrap() {}
        let after = file.ops.lock().unwrap()[before..].to_vec();
        assert_eq!(after.first(), Some(&Some((1000 + steps as u64 * step, LOG_ZERO_STEP_BYTES, true))));
        assert!(zeroed.zeroed_to >= end + LOG_ZERO_AHEAD_BYTES);
        assert!(zeroed.zeroed_to < end + LOG_ZERO_AHEAD_BYTES + step);
        assert!(!zeroed.due());
    }

    /// A new segment starts from its prewritten length (a reused spare needs no zeros below it).
    #[test]
    fn t02_spare_segment_needs_no_zeros_below_its_length() {
        let file = Arc::new(Recorded::default());
        let files: BTreeMap<u64, Arc<dyn LogFile>> = [(9, file.clone() as Arc<dyn LogFile>)].into();
        let mut zeroed = ZeroedAhead::default();
        let spare: Arc<dyn LogFile> = file.clone();
        zeroed.note(&[WalCmd::NewSegment { seg: 9, file: spare, prewritten: 64 << 20 }, write(9, 0, 4096)]);
        assert!(!zeroed.due());
        assert!(!zeroed.step(&files).unwrap());
        assert!(file.ops.lock().unwrap().is_empty());
    }
}
