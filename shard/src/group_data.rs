//! The applied, in-memory state of one Raft group on its owning core, shared (`Rc<RefCell<_>>`,
//! same core only) between the openraft state machine, which is its only writer, and the group's
//! request handlers, which read it. CONTRACT between the storage layer (state_machine.rs,
//! archive.rs, checkpoint.rs) and the service layer (group.rs, reads.rs, admin.rs).

use ledger_core::state::{ScopeDelta, ScopeState};
use ledger_core::types::*;
use std::collections::BTreeMap;

/// The leader's dry-run result for the block it proposed (SPEC §8.2). The state machine commits
/// these deltas instead of recomputing when it applies the entry with the same `group_height`
/// and every delta's `block_hash` equals the hash of the entry's header. Otherwise (follower, or
/// anything unexpected) it replays the entry and verifies the roots itself.
pub struct SpeculativeBlock {
    pub group_height: u64,
    pub deltas: Vec<(ScopeKey, ScopeDelta)>,
}

pub struct GroupData {
    pub group_id: GroupId,
    /// Every scope hosted by this group, including deleted ones (status says so).
    pub scopes: BTreeMap<ScopeKey, ScopeState>,
    /// Height and hash of the last applied group block (SPEC §7.1); 0 / ZERO_HASH before any.
    pub group_height: u64,
    pub last_group_hash: Hash,
    /// Log index of the last applied entry (0 before any).
    pub applied_index: u64,
    /// Set by the block builder before proposing, taken by apply.
    pub speculative: Option<SpeculativeBlock>,
    /// Block archive (SPEC §9.3): recent blocks not yet flushed plus the blocks.redb reader.
    pub archive: crate::archive::Archive,
}
