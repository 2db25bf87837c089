//! Opening the redb files of a group (`raft.redb`, `state.redb`, `blocks.redb`): one place that
//! sets the page cache and says what "already open" means, used by the log store and the
//! checkpoint alike.

use crate::error::ShardError;
use redb::Database;
use std::path::Path;

/// Opens (creating if missing) a redb file whose page cache holds at most `cache_bytes`.
pub fn open_db(path: &Path, cache_bytes: usize) -> Result<Database, ShardError> {
    Database::builder()
        .set_cache_size(cache_bytes)
        .create(path)
        .map_err(|e| ShardError::redb(format!("open {}", path.display()), e))
}

impl ShardError {
    /// The file is still held by a previous incarnation of the group in this process.
    pub fn is_already_open(&self) -> bool {
        matches!(self, ShardError::Redb { source: redb::Error::DatabaseAlreadyOpen, .. })
    }
}
