//! Raft plumbing: everything openraft 0.9 needs to run one group on a glommio executor. `runtime`
//! is the glommio `AsyncRuntime`; `type_config` holds the one `declare_raft_types!`; `core_log`
//! is the core's durable log file shared by its groups (`log_writer` writes and syncs it, on the
//! log thread or the executor, D60), `log_store` a group's view of it for
//! openraft; `network` is the peer transport (through the core's peer pool), and `commit_notice`
//! spares followers the empty AppendEntries that only repeat a commit (D58); `contact` tracks
//! when a replica last heard from its leader (the `stale` flag of reads); `state_machine` applies committed blocks to the group's
//! state (a replica's replay of a large vault's block builds its tree on the tree thread first:
//! `tree_replay`, D86); `open` assembles a group from its files and starts openraft, after `snapshot_fetch` has
//! fetched a member's snapshot when none of its own covers its purged log (D83). Kept apart so that the
//! cluster work finds openraft's side in one room.

pub mod commit_notice;
pub mod contact;
pub mod core_log;
pub mod election;
pub mod log_move;
pub mod log_store;
pub mod log_writer;
pub mod network;
pub mod open;
pub mod runtime;
pub mod snapshot_fetch;
pub mod state_machine;
pub mod tree_replay;
pub mod type_config;
