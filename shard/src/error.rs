//! The shard crate's error type.

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("shard not ready")]
    NotReady,
}
