//! Opening the redb files of a group (`state.redb`, `blocks.redb`): one place that
//! sets the page cache and says what "already open" means, used by the log store and the
//! checkpoint alike.

use crate::error::ShardError;
use crate::storage::paced_file::PacedFileBackend;
use crate::storage::sim_disk::SimDisk;
use redb::Database;
use std::path::Path;
use std::sync::Arc;

/// Opens (creating if missing) a redb file whose page cache holds at most `cache_bytes`; on the
/// simulated disk of a power-loss test when `sim` is set (`ShardConfig::sim_disk`).
pub fn open_db(path: &Path, cache_bytes: usize, sim: Option<&Arc<SimDisk>>) -> Result<Database, ShardError> {
    let mut builder = Database::builder();
    builder.set_cache_size(cache_bytes);
    let opened = match sim {
        // redb's file backend with paced writes (D64).
        None => PacedFileBackend::open(path).and_then(|backend| builder.create_with_backend(backend)),
        Some(disk) => builder.create_with_backend(disk.open(path)),
    };
    opened.map_err(|e| ShardError::redb(format!("open {}", path.display()), e))
}

/// Renames a closed redb file (on the simulated disk when `sim` is set), durably.
pub fn rename_db(from: &Path, to: &Path, sim: Option<&Arc<SimDisk>>) -> Result<(), ShardError> {
    let io = |source| ShardError::Io { path: from.to_path_buf(), source };
    match sim {
        None => {
            std::fs::rename(from, to).map_err(io)?;
            match to.parent() {
                Some(dir) => crate::storage::dir_sync::fsync_dir(dir).map_err(io),
                None => Ok(()),
            }
        }
        Some(disk) => disk.rename(from, to).map_err(io),
    }
}

impl ShardError {
    /// The file is still held by a previous incarnation of the group in this process.
    pub fn is_already_open(&self) -> bool {
        matches!(
            self,
            ShardError::Redb { source: redb::Error::DatabaseAlreadyOpen, .. }
                | ShardError::LogAttached { .. }
        )
    }
}
