//! The block round of one group: `group` (the block builder: queues transactions, drafts and
//! dry-runs blocks, proposes them, replies), `group_data` (the group's applied in-memory state,
//! shared with the state machine and the readers), `tree_worker` (the state-tree thread) and
//! `idem_cache` (recent write responses, for retries).

pub mod group;
pub mod group_data;
pub mod idem_cache;
pub mod tree_worker;
