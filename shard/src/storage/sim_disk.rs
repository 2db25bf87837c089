//! A simulated disk for power-loss tests (issue 12 item 4, docs/decisions.md D34). `kill -9`
//! keeps the kernel's page cache, so a missing fsync survives every process crash test; a power
//! cut does not. Every redb file of a group goes through `db::open_db`, which uses a
//! [`SimBackend`] over this disk when `ShardConfig::sim_disk` is set (never in production).
//!
//! Each file keeps what the running process sees (`live`) and what survived the last
//! `sync_data` (`durable`). A power cut freezes the durable image: it keeps only synced bytes
//! ([`CutMode::DropUnsynced`]), or also a seeded subset of the unsynced 4 KiB pages and maybe the
//! unsynced length ([`CutMode::TornWriteback`], the kernel writing back some dirty pages in any
//! order). The process goes on running on `live` until the test stops it; [`SimDisk::restore`]
//! then makes the frozen image the whole truth, and handles from before the cut fail.
//!
//! Files written with std::fs (snapshot files) stay on the real disk, but the sim tracks their
//! directory entries: a file renamed into place counts only once its directory is fsync'd
//! ([`SimDisk::dir_synced`]); `restore` deletes the ones that were not before the cut, and a
//! delete after the cut is skipped (it never reached the disk). Not
//! simulated: loss of file contents written with std::fs before their own fsync, a redb file's
//! own directory entry (the sim knows files by path), and deletes that come undone.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redb::{BackendError, StorageBackend};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Writeback is tracked per page of this size (the kernel's page cache granularity).
const SIM_PAGE_BYTES: u64 = 4096;

/// What survives a power cut besides the synced bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutMode {
    /// Nothing that was not followed by a sync.
    DropUnsynced,
    /// A seeded subset of the dirty pages, and the unsynced length or the synced one.
    TornWriteback,
}

/// Cut the power at the `nth` sync (1-based, counted from `arm`) of files named `file` (any file
/// when `None`; a name suffix such as `.log` matches every segment of the Raft logs), before that sync makes anything durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutPlan {
    pub file: Option<String>,
    pub nth: u64,
}

#[derive(Debug, Default)]
struct SimFile {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Pages written since the last sync.
    dirty: BTreeSet<u64>,
    /// The backend holding redb's whole-file lock, if any.
    held_by: Option<u64>,
    syncs: u64,
}

#[derive(Debug)]
struct DiskState {
    files: BTreeMap<PathBuf, SimFile>,
    /// Bumped by `restore`: backends opened before it are dead.
    generation: u64,
    plan: Option<CutPlan>,
    /// Matching syncs seen since the plan was armed.
    plan_syncs: u64,
    mode: CutMode,
    rng: StdRng,
    /// Canary: syncs make nothing durable (a disk that lies), so tests must notice lost writes.
    ignore_syncs: bool,
    /// Files written through std::fs: path → whether their directory was fsync'd since (frozen
    /// by a cut: what the dying process renames afterwards is lost).
    plain: BTreeMap<PathBuf, bool>,
}

/// The simulated disk shared by every redb file of a test node.
pub struct SimDisk {
    state: Mutex<DiskState>,
    cut: AtomicBool,
    next_backend: AtomicU64,
    syncs: AtomicU64,
}

impl std::fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimDisk").field("cut", &self.is_cut()).field("syncs", &self.syncs()).finish()
    }
}

impl SimDisk {
    pub fn new(seed: u64, mode: CutMode) -> Arc<SimDisk> {
        Arc::new(SimDisk {
            state: Mutex::new(DiskState {
                files: BTreeMap::new(),
                generation: 0,
                plan: None,
                plan_syncs: 0,
                mode,
                rng: StdRng::seed_from_u64(seed),
                ignore_syncs: false,
                plain: BTreeMap::new(),
            }),
            cut: AtomicBool::new(false),
            next_backend: AtomicU64::new(1),
            syncs: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, DiskState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A redb backend over `path` (created empty if the disk has no such file).
    pub fn open(self: &Arc<Self>, path: &Path) -> SimBackend {
        let mut state = self.lock();
        state.files.entry(path.to_path_buf()).or_default();
        SimBackend {
            disk: self.clone(),
            path: path.to_path_buf(),
            generation: state.generation,
            id: self.next_backend.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Bumped by every `restore` (handles and logs opened before it are stale).
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Paths of the files directly in `dir`.
    pub fn files_in(&self, dir: &Path) -> Vec<PathBuf> {
        self.lock().files.keys().filter(|p| p.parent() == Some(dir)).cloned().collect()
    }

    /// Deletes a file (after a cut the delete never reaches the disk: the file stays).
    pub fn remove(&self, path: &Path) {
        let mut state = self.lock();
        if !self.is_cut() {
            state.files.remove(path);
        }
    }

    /// Moves a file (durably at once: redb files are renamed only while closed).
    pub fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        let mut state = self.lock();
        let file =
            state.files.remove(from).ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))?;
        state.files.insert(to.to_path_buf(), file);
        Ok(())
    }

    /// Cuts the power at the sync `plan` names.
    pub fn arm(&self, plan: CutPlan) {
        let mut state = self.lock();
        state.plan = Some(plan);
        state.plan_syncs = 0;
    }

    /// Forgets an armed plan that was not reached.
    pub fn disarm(&self) {
        self.lock().plan = None;
    }

    /// Canary switch: syncs stop making anything durable.
    pub fn ignore_syncs(&self, ignore: bool) {
        self.lock().ignore_syncs = ignore;
    }

    /// Cuts the power now (no-op if it is already cut).
    pub fn cut_now(&self) {
        let mut state = self.lock();
        self.cut_locked(&mut state);
    }

    fn cut_locked(&self, state: &mut DiskState) {
        if self.cut.load(Ordering::Acquire) {
            return;
        }
        if state.mode == CutMode::TornWriteback {
            let DiskState { files, rng, .. } = &mut *state;
            for file in files.values_mut() {
                tear(file, rng);
            }
        }
        state.plan = None;
        self.cut.store(true, Ordering::Release);
    }

    /// Whether the power was cut (what a test checks when an acknowledgement arrives: one that
    /// arrives before the cut must survive it).
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }

    /// Files some redb handle still holds (a stopped node's I/O threads end just after it).
    pub fn files_held(&self) -> usize {
        self.lock().files.values().filter(|f| f.held_by.is_some()).count()
    }

    /// Syncs of any file so far.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Syncs so far per file name (`state.redb`, `0000000000000001.log`, …), summed over the groups.
    pub fn syncs_by_name(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for (path, file) in &self.lock().files {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            *counts.entry(name).or_default() += file.syncs;
        }
        counts
    }

    /// Power back on, once the process that saw the cut has stopped: every file is its frozen
    /// durable image, plain files renamed but not made durable are gone, old handles fail.
    pub fn restore(&self) -> std::io::Result<()> {
        let mut state = self.lock();
        assert!(self.cut.load(Ordering::Acquire), "restore without a power cut");
        for file in state.files.values_mut() {
            file.live = file.durable.clone();
            file.dirty.clear();
            file.held_by = None;
        }
        let lost: Vec<PathBuf> =
            state.plain.iter().filter(|(_, durable)| !**durable).map(|(p, _)| p.clone()).collect();
        for path in lost {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            state.plain.remove(&path);
        }
        state.generation += 1;
        self.cut.store(false, Ordering::Release);
        Ok(())
    }

    /// Writes the frozen durable image of every file to its real path, and removes the plain
    /// files whose rename never became durable: the disk as the power finds it when it comes
    /// back, for a process that ends right after the cut and a next one that runs on the real
    /// disk (the cluster power-cut tests, D89). Holds the disk while it writes, so the process's
    /// own I/O waits meanwhile.
    pub fn write_out(&self) -> std::io::Result<()> {
        let state = self.lock();
        assert!(self.is_cut(), "write_out without a power cut");
        for (path, file) in &state.files {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(path, &file.durable)?;
        }
        for (path, durable) in &state.plain {
            if !*durable {
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// A std::fs file was renamed into place; it survives a cut once its directory is synced.
    pub fn plain_file_renamed(&self, path: &Path) {
        let mut state = self.lock();
        if self.is_cut() {
            // After the cut a new name never reaches the disk; an old one keeps what it had.
            state.plain.entry(path.to_path_buf()).or_insert(false);
        } else {
            state.plain.insert(path.to_path_buf(), false);
        }
    }

    /// Whether a std::fs delete would reach the disk (not after the cut: the file stays).
    pub fn deletes_persist(&self) -> bool {
        !self.is_cut()
    }

    /// `dir` was fsync'd: the plain files renamed into it are durable.
    pub fn dir_synced(&self, dir: &Path) {
        let mut state = self.lock();
        if self.is_cut() || state.ignore_syncs {
            return;
        }
        for (path, durable) in state.plain.iter_mut() {
            if path.parent() == Some(dir) {
                *durable = true;
            }
        }
    }
}

/// Keeps a seeded subset of `file`'s dirty pages and maybe its unsynced length in the image.
fn tear(file: &mut SimFile, rng: &mut StdRng) {
    let len = if rng.gen_bool(0.5) { file.live.len() } else { file.durable.len() };
    file.durable.resize(len, 0);
    for page in &file.dirty {
        if rng.gen_bool(0.5) {
            let start = (page * SIM_PAGE_BYTES) as usize;
            let end = (start + SIM_PAGE_BYTES as usize).min(len).min(file.live.len());
            if start < end {
                file.durable[start..end].copy_from_slice(&file.live[start..end]);
            }
        }
    }
}

/// redb's storage over one [`SimDisk`] file. It supports whole-file locks only (so redb runs in
/// its exclusive-writer mode and a second open of a file still in use is `DatabaseAlreadyOpen`).
pub struct SimBackend {
    disk: Arc<SimDisk>,
    path: PathBuf,
    generation: u64,
    id: u64,
}

impl std::fmt::Debug for SimBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimBackend").field("path", &self.path).finish()
    }
}

fn dead() -> std::io::Error {
    std::io::Error::other("simulated disk: handle from before a power cut")
}

fn is_whole(start: Bound<u64>, end: Bound<u64>) -> bool {
    matches!((start, end), (Bound::Unbounded, Bound::Unbounded))
}

impl SimBackend {
    /// Runs `f` on this backend's file, unless the handle predates a restore.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut SimFile, &mut DiskState) -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        let mut state = self.disk.lock();
        if state.generation != self.generation {
            return Err(dead());
        }
        let mut file = state.files.remove(&self.path).ok_or_else(dead)?;
        let result = f(&mut file, &mut state);
        state.files.insert(self.path.clone(), file);
        result
    }

    fn try_lock(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        if !is_whole(start, end) {
            return Err(BackendError::Unsupported);
        }
        let id = self.id;
        Ok(self.with(|file, _| {
            Ok(match file.held_by {
                Some(holder) => holder == id,
                None => {
                    file.held_by = Some(id);
                    true
                }
            })
        })?)
    }
}

impl StorageBackend for SimBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.with(|file, _| Ok(file.live.len() as u64))
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.with(|file, _| {
            let start = offset as usize;
            let end = start + out.len();
            let bytes = file
                .live
                .get(start..end)
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
            out.copy_from_slice(bytes);
            Ok(())
        })
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.with(|file, _| {
            let old = file.live.len() as u64;
            file.live.resize(len as usize, 0);
            // A shrink or growth is unsynced data too: mark the pages it changed.
            let (low, high) = (old.min(len), old.max(len));
            file.dirty.extend(low / SIM_PAGE_BYTES..high.div_ceil(SIM_PAGE_BYTES));
            Ok(())
        })
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        let disk = self.disk.clone();
        let name = self.path.file_name().map(|n| n.to_string_lossy().into_owned());
        self.with(|file, state| {
            disk.syncs.fetch_add(1, Ordering::Relaxed);
            file.syncs += 1;
            let hit = state.plan.as_ref().is_some_and(|plan| {
                plan.file.as_ref().is_none_or(|f| name.as_ref().is_some_and(|n| n.ends_with(f.as_str())))
            });
            if hit {
                state.plan_syncs += 1;
            }
            if hit && state.plan.as_ref().is_some_and(|plan| state.plan_syncs >= plan.nth) {
                // The power goes during this sync: this file (out of the map meanwhile) tears too.
                if state.mode == CutMode::TornWriteback {
                    tear(file, &mut state.rng);
                }
                disk.cut_locked(state);
            }
            if disk.is_cut() || state.ignore_syncs {
                return Ok(());
            }
            file.durable.resize(file.live.len(), 0);
            for page in std::mem::take(&mut file.dirty) {
                let start = (page * SIM_PAGE_BYTES) as usize;
                let end = (start + SIM_PAGE_BYTES as usize).min(file.live.len());
                if start < end {
                    file.durable[start..end].copy_from_slice(&file.live[start..end]);
                }
            }
            Ok(())
        })
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.with(|file, _| {
            let start = offset as usize;
            let end = start + data.len();
            if end > file.live.len() {
                file.live.resize(end, 0);
            }
            file.live[start..end].copy_from_slice(data);
            if !data.is_empty() {
                file.dirty.extend(offset / SIM_PAGE_BYTES..(end as u64).div_ceil(SIM_PAGE_BYTES));
            }
            Ok(())
        })
    }

    fn close(&self) -> Result<(), std::io::Error> {
        let id = self.id;
        // A handle from before a restore has nothing left to release.
        match self.with(|file, _| {
            if file.held_by == Some(id) {
                file.held_by = None;
            }
            Ok(())
        }) {
            Err(_) | Ok(()) => Ok(()),
        }
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.try_lock(start, end)
    }

    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.try_lock(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        if !is_whole(start, end) {
            return Err(BackendError::Unsupported);
        }
        let id = self.id;
        Ok(self.with(|file, _| {
            if file.held_by == Some(id) {
                file.held_by = None;
            }
            Ok(())
        })?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use redb::{Database, Durability, ReadableDatabase, TableDefinition};

    const T: TableDefinition<u64, u64> = TableDefinition::new("t");

    fn commit(db: &Database, key: u64, durability: Durability) {
        let mut txn = db.begin_write().unwrap();
        txn.set_durability(durability).unwrap();
        txn.open_table(T).unwrap().insert(key, key).unwrap();
        txn.commit().unwrap();
    }

    fn keys(db: &Database) -> Vec<u64> {
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(T).unwrap();
        redb::ReadableTable::iter(&table).unwrap().map(|r| r.unwrap().0.value()).collect()
    }

    /// A durable commit survives a cut and a non-durable one after it does not, in both modes; a
    /// second open of a held file is refused; a handle from before the restore fails.
    #[test]
    fn t01_cut_keeps_synced_commits_only() {
        for (seed, mode) in
            [(1, CutMode::DropUnsynced), (2, CutMode::TornWriteback), (3, CutMode::TornWriteback)]
        {
            let disk = SimDisk::new(seed, mode);
            let path = Path::new("/sim/x.redb");
            let db = Database::builder().create_with_backend(disk.open(path)).unwrap();
            commit(&db, 1, Durability::Immediate);
            commit(&db, 2, Durability::None);
            assert!(matches!(
                Database::builder().create_with_backend(disk.open(path)),
                Err(redb::DatabaseError::DatabaseAlreadyOpen)
            ));
            disk.cut_now();
            commit(&db, 3, Durability::Immediate);
            drop(db);
            disk.restore().unwrap();
            let mut db = Database::builder().create_with_backend(disk.open(path)).unwrap();
            assert_eq!(keys(&db), vec![1], "seed {seed}");
            assert!(db.check_integrity().unwrap(), "seed {seed}");
        }
    }

    /// The armed plan cuts inside the nth sync of the named file, before it makes anything
    /// durable.
    #[test]
    fn t02_plan_cuts_at_the_nth_sync() {
        let disk = SimDisk::new(7, CutMode::DropUnsynced);
        let db = Database::builder().create_with_backend(disk.open(Path::new("/sim/a.redb"))).unwrap();
        let syncs_per_commit = {
            let before = disk.syncs();
            commit(&db, 1, Durability::Immediate);
            disk.syncs() - before
        };
        assert!(syncs_per_commit > 0);
        disk.arm(CutPlan { file: Some("a.redb".into()), nth: syncs_per_commit + 1 });
        commit(&db, 2, Durability::Immediate);
        assert!(!disk.is_cut());
        commit(&db, 3, Durability::Immediate);
        assert!(disk.is_cut());
        drop(db);
        disk.restore().unwrap();
        let db = Database::builder().create_with_backend(disk.open(Path::new("/sim/a.redb"))).unwrap();
        assert_eq!(keys(&db), vec![1, 2]);
    }
}
