//! The shard crate's error type. Causes are kept (`#[source]`) so that the edge that maps them to
//! wire codes (and the event log) can still say what failed underneath.

use std::path::PathBuf;

/// A boxed error from openraft (its error types are generic; the shard only reports them).
pub type BoxedCause = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("shard not ready")]
    NotReady,
    #[error("i/o on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("redb: {context}")]
    Redb {
        context: String,
        #[source]
        source: redb::Error,
    },
    #[error("decoding {what}")]
    Codec {
        what: &'static str,
        #[source]
        source: rkyv::rancor::BoxedError,
    },
    /// Stored data violates an invariant of its own format (a bug or on-disk corruption).
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("raft: {context}")]
    Raft {
        context: String,
        #[source]
        source: BoxedCause,
    },
    /// A storage write failed on the group's I/O thread; the error is shared by everything that
    /// waited for that write.
    #[error("write to {what} failed: {source}")]
    WriteFailed {
        what: String,
        #[source]
        source: std::sync::Arc<std::io::Error>,
    },
    /// The group's storage I/O thread is gone (it failed or the group is closing).
    #[error("storage thread of {what} stopped")]
    StorageClosed { what: String },
    /// The group's log is still held by a previous incarnation of the group (closing): retry.
    #[error("the raft log of group {group} is still open")]
    LogAttached { group: u32 },
    /// Applying the group's log broke an invariant (`GroupData::fault`): the group is stopped.
    #[error("group {group} failed: {fault}")]
    GroupFailed { group: u32, fault: GroupFault },
    /// Core 0 could not create `_system` or the registry's bootstrap records.
    #[error("bootstrap: {0}")]
    Bootstrap(String),
}

impl ShardError {
    pub fn redb(context: impl Into<String>, source: impl Into<redb::Error>) -> Self {
        ShardError::Redb { context: context.into(), source: source.into() }
    }

    pub fn raft(context: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        ShardError::Raft { context: context.into(), source: Box::new(source) }
    }
}

/// Why a group stopped applying (see `GroupData::fault`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupFault {
    /// Log index of the entry whose apply failed.
    pub at_index: u64,
    pub reason: String,
}

impl std::fmt::Display for GroupFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "applying log entry {} failed: {}", self.at_index, self.reason)
    }
}
