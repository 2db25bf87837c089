//! The files of a core's Raft log (`core_log.rs`): a directory of numbered segment files, on the
//! real disk or, in power-loss tests, on the simulated one (`sim_disk.rs`). One small interface so
//! that the log's format, replay and group commit are the same code in both.

use crate::storage::dir_sync::{create_dir_durable, fsync_dir};
use crate::storage::sim_disk::{SimBackend, SimDisk};
use redb::StorageBackend;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Segment files are `{seq:016x}.log`.
const SEGMENT_SUFFIX: &str = ".log";
/// A deleted segment kept for reuse (D61) is `{seq:016x}.spare`: never replayed, only renamed into
/// place as a later segment.
const SPARE_SUFFIX: &str = ".spare";

/// One segment file: positioned reads and writes, and a data sync.
pub trait LogFile: Send + Sync {
    fn size(&self) -> io::Result<u64>;
    fn read_at(&self, offset: u64, out: &mut [u8]) -> io::Result<()>;
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// fdatasync: the data written so far (and the length) survive a power loss.
    fn sync(&self) -> io::Result<()>;
}

impl LogFile for std::fs::File {
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_at(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.read_exact_at(out, offset)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.write_all_at(data, offset)
    }

    fn sync(&self) -> io::Result<()> {
        self.sync_data()
    }
}

impl LogFile for SimBackend {
    fn size(&self) -> io::Result<u64> {
        StorageBackend::len(self)
    }

    fn read_at(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        StorageBackend::read(self, offset, out)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        StorageBackend::write(self, offset, data)
    }

    fn sync(&self) -> io::Result<()> {
        StorageBackend::sync_data(self)
    }
}

/// The directory of one core's log.
#[derive(Clone)]
pub enum LogDir {
    Real(PathBuf),
    Sim(Arc<SimDisk>, PathBuf),
}

impl std::fmt::Debug for LogDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogDir::Real(p) => write!(f, "{}", p.display()),
            LogDir::Sim(_, p) => write!(f, "sim:{}", p.display()),
        }
    }
}

impl LogDir {
    pub fn new(path: PathBuf, sim: Option<&Arc<SimDisk>>) -> LogDir {
        match sim {
            None => LogDir::Real(path),
            Some(disk) => LogDir::Sim(disk.clone(), path),
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            LogDir::Real(p) | LogDir::Sim(_, p) => p,
        }
    }

    /// Which incarnation of the simulated disk this is (0 on a real disk): a log opened before a
    /// simulated power cut must not be reused after it.
    pub fn generation(&self) -> u64 {
        match self {
            LogDir::Real(_) => 0,
            LogDir::Sim(disk, _) => disk.generation(),
        }
    }

    pub fn segment_path(&self, seq: u64) -> PathBuf {
        self.path().join(format!("{seq:016x}{SEGMENT_SUFFIX}"))
    }

    /// Creates the directory (durably) if it is missing.
    pub fn create(&self) -> io::Result<()> {
        match self {
            LogDir::Real(p) => create_dir_durable(p),
            LogDir::Sim(..) => Ok(()),
        }
    }

    /// Sequence numbers of the segment files present, ascending.
    pub fn list(&self) -> io::Result<Vec<u64>> {
        self.list_suffix(SEGMENT_SUFFIX)
    }

    /// Sequence numbers of the spare files present (old segments kept for reuse), ascending.
    pub fn spares(&self) -> io::Result<Vec<u64>> {
        self.list_suffix(SPARE_SUFFIX)
    }

    fn list_suffix(&self, suffix: &str) -> io::Result<Vec<u64>> {
        let names: Vec<String> = match self {
            LogDir::Real(p) => match std::fs::read_dir(p) {
                Ok(entries) => {
                    let mut names = Vec::new();
                    for entry in entries {
                        names.push(entry?.file_name().to_string_lossy().into_owned());
                    }
                    names
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(e),
            },
            LogDir::Sim(disk, p) => disk
                .files_in(p)
                .into_iter()
                .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect(),
        };
        let mut seqs: Vec<u64> = names
            .iter()
            .filter_map(|n| n.strip_suffix(suffix))
            .filter(|stem| stem.len() == 16)
            .filter_map(|stem| u64::from_str_radix(stem, 16).ok())
            .collect();
        seqs.sort_unstable();
        Ok(seqs)
    }

    /// Opens segment `seq` for reading and writing; `create` makes a new, empty one (it must not
    /// exist yet).
    pub fn open(&self, seq: u64, create: bool) -> io::Result<Arc<dyn LogFile>> {
        let path = self.segment_path(seq);
        match self {
            LogDir::Real(_) => {
                let file =
                    std::fs::OpenOptions::new().read(true).write(true).create_new(create).open(path)?;
                Ok(Arc::new(file))
            }
            LogDir::Sim(disk, _) => Ok(Arc::new(disk.open(&path))),
        }
    }

    /// Makes the directory's entries (new segment names) durable.
    pub fn sync_dir(&self) -> io::Result<()> {
        match self {
            LogDir::Real(p) => fsync_dir(p),
            LogDir::Sim(..) => Ok(()),
        }
    }

    fn spare_path(&self, seq: u64) -> PathBuf {
        self.path().join(format!("{seq:016x}{SPARE_SUFFIX}"))
    }

    /// Keeps deleted segment `seq` as a spare instead of deleting it (D61). Like a delete, the
    /// rename may be lost in a power cut, and the segment that comes back is harmless.
    pub fn make_spare(&self, seq: u64) -> io::Result<()> {
        self.rename(&self.segment_path(seq), &self.spare_path(seq))
    }

    /// Renames spare `spare` into place as segment `seq` and opens it; returns it and its length
    /// (written in its earlier use, so overwriting it syncs like overwriting the zeros ahead of a
    /// new segment's end). The name is durable once the directory is synced, as a new one's is.
    pub fn reuse_spare(&self, spare: u64, seq: u64) -> io::Result<(Arc<dyn LogFile>, u64)> {
        self.rename(&self.spare_path(spare), &self.segment_path(seq))?;
        let file = self.open(seq, false)?;
        let len = file.size()?;
        Ok((file, len))
    }

    /// Deletes spare `seq`.
    pub fn remove_spare(&self, seq: u64) -> io::Result<()> {
        self.remove_path(self.spare_path(seq))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        match self {
            LogDir::Real(_) => std::fs::rename(from, to),
            LogDir::Sim(disk, _) => disk.rename(from, to),
        }
    }

    /// Deletes segment `seq` (a segment that comes back after a power loss is harmless: replay
    /// applies its records before the later ones that superseded them).
    pub fn remove(&self, seq: u64) -> io::Result<()> {
        self.remove_path(self.segment_path(seq))
    }

    fn remove_path(&self, path: PathBuf) -> io::Result<()> {
        match self {
            LogDir::Real(_) => std::fs::remove_file(path),
            LogDir::Sim(disk, _) => {
                disk.remove(&path);
                Ok(())
            }
        }
    }
}
