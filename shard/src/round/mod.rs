//! The block round of one group: `group` (the block builder: queues transactions, drafts and
//! dry-runs blocks, proposes them, replies), `group_data` (the group's applied in-memory state,
//! shared with the state machine and the readers), `tree_worker` (the state-tree thread) and
//! `idem_cache` (recent write responses, for retries) and `rate_limit` (the per-namespace write
//! rate limit of the leader).

pub mod group;
pub mod group_data;
pub mod idem_cache;
pub mod rate_limit;
pub mod tree_worker;
