//! The file backend of `state.redb` and `blocks.redb` (D64): redb's own file backend, whose writes
//! are pushed to the disk in small steps and paced while a checkpoint writes.
//!
//! A checkpoint commits megabytes at once (the row journal's record, the archive's blocks, now and
//! then a merge step), and redb writes them all into the page cache before its sync. The core
//! log's `fdatasync`s run meanwhile, a millisecond apart, and the one that met the checkpoint's
//! sync waited behind all of it: at 256 writes in flight that was the write p99 (23 ms, against
//! 10–11 ms with no checkpoint in the window). Here, past the first `CHECKPOINT_PACE_FREE_BYTES`
//! after a sync (a small checkpoint goes at once, as before: pacing it only spread its cost over
//! more of the log's syncs), every `CHECKPOINT_PUSH_BYTES` written are handed to the disk at once
//! (`sync_file_range(SYNC_FILE_RANGE_WRITE)`: writeback starts, nothing waits) and the writer, a
//! blocking thread of the core, sleeps as long as those bytes take at
//! `CHECKPOINT_PACE_BYTES_PER_SEC`, up to `CHECKPOINT_PACE_BUDGET_MS` between two syncs. Each log
//! sync then carries at most about a push's worth of the checkpoint. Durability is unchanged: redb
//! still syncs the file at its commit, and a push only starts early what that sync would write.

use crate::constants::{
    CHECKPOINT_PACE_BUDGET_MS, CHECKPOINT_PACE_BYTES_PER_SEC, CHECKPOINT_PACE_FREE_BYTES,
    CHECKPOINT_PUSH_BYTES,
};
use redb::backends::FileBackend;
use redb::{BackendError, DatabaseError, StorageBackend};
use std::fs::File;
use std::ops::Bound;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// When a writer pushes and how long it then sleeps; pure, so its rules are tested without a clock.
#[derive(Debug, Clone)]
pub struct Pacer {
    free_bytes: u64,
    push_bytes: u64,
    sleep_per_push: Duration,
    budget: Duration,
    /// Bytes written since the last sync.
    written: u64,
    unpushed: u64,
    slept: Duration,
}

/// What a write asks of its writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing yet.
    Go,
    /// Push the written bytes to the disk, then sleep this long (zero once the budget is spent).
    Push(Duration),
}

impl Pacer {
    /// The first `free_bytes` after a sync go as they come; after them, every `push_bytes` are
    /// pushed and paced at `bytes_per_sec`, sleeping at most `budget` until the next sync.
    pub fn new(free_bytes: u64, push_bytes: u64, bytes_per_sec: u64, budget: Duration) -> Self {
        let nanos = u128::from(push_bytes) * 1_000_000_000 / u128::from(bytes_per_sec.max(1));
        let sleep_per_push = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        Pacer {
            free_bytes,
            push_bytes: push_bytes.max(1),
            sleep_per_push,
            budget,
            written: 0,
            unpushed: 0,
            slept: Duration::ZERO,
        }
    }

    /// The project's pace (the `CHECKPOINT_*` constants).
    pub fn checkpoint() -> Self {
        Self::new(
            CHECKPOINT_PACE_FREE_BYTES,
            CHECKPOINT_PUSH_BYTES,
            CHECKPOINT_PACE_BYTES_PER_SEC,
            Duration::from_millis(CHECKPOINT_PACE_BUDGET_MS),
        )
    }

    /// `bytes` were written.
    pub fn wrote(&mut self, bytes: u64) -> Step {
        self.written = self.written.saturating_add(bytes);
        if self.written <= self.free_bytes {
            return Step::Go;
        }
        self.unpushed = self.unpushed.saturating_add(bytes);
        if self.unpushed < self.push_bytes {
            return Step::Go;
        }
        self.unpushed = 0;
        let sleep = self.sleep_per_push.min(self.budget.saturating_sub(self.slept));
        self.slept += sleep;
        Step::Push(sleep)
    }

    /// The file was synced: everything written is on the disk, and the budget starts afresh.
    pub fn synced(&mut self) {
        self.written = 0;
        self.unpushed = 0;
        self.slept = Duration::ZERO;
    }
}

/// redb's file backend with paced writes. Locks, reads and syncs are redb's own.
#[derive(Debug)]
pub struct PacedFileBackend {
    inner: FileBackend,
    /// The same open file, for `sync_file_range`.
    file: File,
    pacer: Mutex<Pacer>,
}

impl PacedFileBackend {
    /// Opens (creating if missing) `path` as `Database::builder().create` would.
    pub fn open(path: &Path) -> Result<Self, DatabaseError> {
        let file =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let handle = file.try_clone()?;
        Ok(PacedFileBackend {
            inner: FileBackend::new(file)?,
            file: handle,
            pacer: Mutex::new(Pacer::checkpoint()),
        })
    }

    /// Starts writeback of the file's dirty pages without waiting for it. Advisory: an error here
    /// is ignored, since the commit's sync writes the same pages and reports any failure.
    fn push(&self) {
        // SAFETY: `self.file` is an open descriptor for the life of `self`; SYNC_FILE_RANGE_WRITE
        // with offset 0 and length 0 starts writeback of the whole file and touches no memory.
        unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
}

impl StorageBackend for PacedFileBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.inner.sync_data()?;
        if let Ok(mut pacer) = self.pacer.lock() {
            pacer.synced();
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.inner.write(offset, data)?;
        // A poisoned lock (a panic mid-write elsewhere) only loses the pacing.
        let step = match self.pacer.lock() {
            Ok(mut pacer) => pacer.wrote(data.len() as u64),
            Err(_) => Step::Go,
        };
        if let Step::Push(sleep) = step {
            self.push();
            if !sleep.is_zero() {
                std::thread::sleep(sleep);
            }
        }
        Ok(())
    }

    fn close(&self) -> Result<(), std::io::Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use redb::{Database, ReadableDatabase, ReadableTableMetadata, TableDefinition};

    const T: TableDefinition<u64, &[u8]> = TableDefinition::new("t");

    #[test]
    fn t01_pushes_every_push_bytes_and_sleeps_within_the_budget() {
        // 1 MiB pushes at 4 MiB/s: 250 ms each; a budget of 600 ms allows two and a half.
        let mut p = Pacer::new(0, 1 << 20, 4 << 20, Duration::from_millis(600));
        assert_eq!(p.wrote(700 << 10), Step::Go);
        assert_eq!(p.wrote(400 << 10), Step::Push(Duration::from_millis(250)));
        // The count restarts after a push: the 100 KiB over the mark are not carried.
        assert_eq!(p.wrote((1 << 20) - 1), Step::Go);
        assert_eq!(p.wrote(1), Step::Push(Duration::from_millis(250)));
        assert_eq!(p.wrote(1 << 20), Step::Push(Duration::from_millis(100)));
        assert_eq!(p.wrote(5 << 20), Step::Push(Duration::ZERO), "budget spent: push, no sleep");
        p.synced();
        assert_eq!(p.wrote(1 << 20), Step::Push(Duration::from_millis(250)), "a sync renews the budget");
        let mut q = Pacer::new(0, 1 << 20, 4 << 20, Duration::from_millis(600));
        assert_eq!(q.wrote(900 << 10), Step::Go);
        q.synced();
        assert_eq!(q.wrote(900 << 10), Step::Go, "a sync also forgets unpushed bytes");
    }

    #[test]
    fn t04_the_first_bytes_after_a_sync_go_unpaced() {
        let mut p = Pacer::new(2 << 20, 1 << 20, 4 << 20, Duration::from_millis(600));
        assert_eq!(p.wrote(2 << 20), Step::Go, "within the free bytes");
        assert_eq!(p.wrote((1 << 20) - 1), Step::Go, "past them, counting towards a push");
        assert_eq!(p.wrote(1), Step::Push(Duration::from_millis(250)));
        p.synced();
        assert_eq!(p.wrote(3 << 20), Step::Push(Duration::from_millis(250)), "free again after a sync");
    }

    #[test]
    fn t02_the_project_pace_is_what_the_constants_say() {
        let mut p = Pacer::checkpoint();
        assert_eq!(p.wrote(CHECKPOINT_PACE_FREE_BYTES), Step::Go);
        assert_eq!(p.wrote(CHECKPOINT_PUSH_BYTES - 1), Step::Go);
        assert_eq!(p.wrote(1), Step::Push(Duration::from_nanos(7_812_500)), "256 KiB at 32 MiB/s");
        let mut slept = Duration::from_nanos(7_812_500);
        for _ in 0..100 {
            if let Step::Push(s) = p.wrote(CHECKPOINT_PUSH_BYTES) {
                slept += s;
            }
        }
        assert_eq!(slept, Duration::from_millis(CHECKPOINT_PACE_BUDGET_MS));
    }

    #[test]
    fn t03_a_database_on_it_keeps_its_data_and_its_single_writer_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.redb");
        let value = vec![7u8; 3000];
        {
            let db = Database::builder().create_with_backend(PacedFileBackend::open(&path).unwrap()).unwrap();
            // The same file again in this process: refused, as redb's own backend refuses it.
            let second =
                PacedFileBackend::open(&path).and_then(|b| Database::builder().create_with_backend(b));
            assert!(matches!(second, Err(DatabaseError::DatabaseAlreadyOpen)), "{second:?}");
            let mut tx = db.begin_write().unwrap();
            tx.set_durability(redb::Durability::Immediate).unwrap();
            {
                let mut t = tx.open_table(T).unwrap();
                // ~1.2 MB: several pushes (and a few ms of pacing) inside one commit.
                for k in 0..400u64 {
                    t.insert(k, value.as_slice()).unwrap();
                }
            }
            tx.commit().unwrap();
        }
        let db = Database::builder().create_with_backend(PacedFileBackend::open(&path).unwrap()).unwrap();
        let tx = db.begin_read().unwrap();
        let t = tx.open_table(T).unwrap();
        assert_eq!(t.len().unwrap(), 400);
        assert_eq!(t.get(399).unwrap().unwrap().value(), value.as_slice());
    }
}
