//! Why a benchmark could not run (the benches themselves do not fail): temp files, file and socket
//! I/O, and redb.

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot create a temporary database file: {0}")]
    TempFile(#[source] std::io::Error),
    #[error("{step}: {source}")]
    Io {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("redb: {0}")]
    Redb(#[from] redb::Error),
    #[error("codec: {0}")]
    Codec(#[from] ledger_wire::CodecError),
    #[error("{0}")]
    Check(String),
}

macro_rules! redb_from {
    ($($t:ty),*) => {$(
        impl From<$t> for BenchError {
            fn from(e: $t) -> Self {
                BenchError::Redb(e.into())
            }
        }
    )*};
}
redb_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);
