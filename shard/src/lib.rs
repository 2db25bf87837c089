//! A core shard: one glommio executor that owns a disjoint set of Raft groups (openraft 0.9) and
//! their redb files (SPEC §0.1, §8, §9, §10.9). Storage layer: `runtime`, `type_config`,
//! `log_store`, `network`, `state_machine`, `archive`, `checkpoint`. Service layer: `shard`
//! (inbox loop), `group` (block builder), `reads`, `admin`.

pub mod admin;
pub mod archive;
pub mod archive_scan;
pub mod checkpoint;
pub mod config;
pub mod constants;
pub mod error;
pub mod faults;
pub mod group;
pub mod group_data;
pub mod helper_threads;
pub mod history;
pub mod idem_cache;
pub mod integrity;
pub mod internal;
pub mod isolation;
pub mod log_store;
pub mod maintenance;
pub mod msg;
pub mod network;
pub mod page_token;
pub mod proof_reads;
pub mod reads;
pub mod registry;
pub mod retention;
pub mod row_journal;
pub mod runtime;
#[cfg(test)]
mod service_tests;
pub mod shard;
pub mod snapshot;
pub mod state_machine;
pub mod tree_worker;
pub mod type_config;
pub mod watch;

pub use config::ShardConfig;
pub use error::ShardError;
pub use msg::{ReplySender, ShardMsg};
pub use shard::{run_shard, ShardSpec};
