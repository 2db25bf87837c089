//! The one `declare_raft_types!` of the workspace: what a Raft group of this server replicates
//! (`LogPayload`), what apply answers (`ApplyResult`), and the glommio runtime it runs on.
//!
//! openraft's `serde` feature stays off: the log store and the checkpoint persist votes, log ids
//! and memberships through small rkyv mirror structs (`log_store::records`).

use std::io::Cursor;

openraft::declare_raft_types!(
    /// Type configuration of every Raft group on this node.
    pub TypeConfig:
        D = ledger_core::types::LogPayload,
        R = crate::raft::state_machine::ApplyResult,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = crate::raft::runtime::GlommioRuntime,
);

/// A Raft group handle on its owning core (`!Send` with `singlethreaded`).
pub type LedgerRaft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<u64>;
pub type Vote = openraft::Vote<u64>;
pub type StorageError = openraft::StorageError<u64>;
pub type StoredMembership = openraft::StoredMembership<u64, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<u64, openraft::BasicNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
