//! A core shard: one glommio executor that owns a disjoint set of Raft groups (openraft 0.9) and
//! their redb files (SPEC §0.1, §8, §9, §10.9). The modules are grouped by role, and imports run
//! downward: `raft` (openraft's runtime, types, log store, network and state machine) and
//! `storage` (checkpoint, row journal, archive, snapshots) at the bottom; above them the block
//! `round` (block builder, applied state, tree thread) and `read` (current, historical and proven
//! reads, watch streams); then `maintenance` (snapshots, retention, integrity checks on a timer)
//! and `admin` (core 0's registry and the calls between cores); and at the top `shard` (the inbox
//! loop that owns everything on one core), with `msg` its inbox and the small shared modules
//! (`config`, `constants`, `error`, `faults`, `isolation`, `helper_threads`).

pub mod admin;
pub mod codec;
pub mod config;
pub mod constants;
pub mod db;
pub mod error;
pub mod events;
pub mod faults;
#[cfg(test)]
mod gc_tests;
pub mod helper_threads;
pub mod isolation;
pub mod maintenance;
pub mod metrics;
pub mod msg;
pub mod ops;
pub mod peer;
#[cfg(test)]
mod power_tests;
pub mod raft;
pub mod read;
pub mod reply;
pub mod round;
pub mod scrape;
#[cfg(test)]
mod service_tests;
pub mod shard;
pub mod storage;
pub mod yield_once;

pub use config::ShardConfig;
pub use error::ShardError;
pub use msg::{Caller, ShardMsg};
pub use reply::ReplySender;
pub use shard::{run_shard, ShardSpec};
