//! Peer-role messages (SPEC §5.6): openraft's three RPCs between the replicas of a group, and the
//! scope lifecycle command the `_system` leader sends to a data group's leader. They travel as
//! `Request::Peer` / `Response::Peer` inside ordinary `RequestBatch` / `ResponseBatch` frames, on
//! connections whose `Hello` said `Role::Peer` (a client connection that sends one is refused), so
//! peer frames get exactly the checks client frames get (D30).
//!
//! The types mirror openraft's with plain fields: the wire crate does not depend on openraft, and
//! log entries travel in the log store's own stored form (`entries`), so an entry is encoded once
//! for the disk and the network alike.

use ledger_core::types::{BlockHeader, GroupBlock, RetentionPolicy, ScopeKey, VaultStatus};
use rkyv::{Archive, Deserialize, Serialize};

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct WireVote {
    pub term: u64,
    pub node_id: u64,
    pub committed: bool,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct WireLogId {
    pub term: u64,
    pub node_id: u64,
    pub index: u64,
}

/// A membership config: the voter sets (two while joint) and every node with its address.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct WireMembership {
    pub configs: Vec<Vec<u64>>,
    pub nodes: Vec<(u64, String)>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct WireSnapshotMeta {
    pub last_log_id: Option<WireLogId>,
    pub membership_log_id: Option<WireLogId>,
    pub membership: WireMembership,
    pub snapshot_id: String,
}

/// Scope lifecycle work for a data group (SPEC §8.4 `AdminCommand`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum WireScopeCommand {
    Create { scope: ScopeKey, retention: RetentionPolicy },
    SetStatus { scope: ScopeKey, status: VaultStatus },
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum PeerRequest {
    /// SPEC §5.6 item 41.
    Vote { group_id: u32, vote: WireVote, last_log_id: Option<WireLogId> },
    /// SPEC §5.6 item 42; each entry in the log store's stored form.
    AppendEntries {
        group_id: u32,
        vote: WireVote,
        prev_log_id: Option<WireLogId>,
        entries: Vec<Vec<u8>>,
        leader_commit: Option<WireLogId>,
    },
    /// SPEC §5.6 item 43: one chunk of a snapshot.
    InstallSnapshot {
        group_id: u32,
        vote: WireVote,
        meta: WireSnapshotMeta,
        offset: u64,
        data: Vec<u8>,
        done: bool,
    },
    /// Proposed by the receiving node if it leads `group_id`; answered with the scope's genesis.
    ScopeCommand { group_id: u32, command: WireScopeCommand },
    /// One membership change of `group_id`, made by its leader (SPEC §10.6–10.7): add a node
    /// (as a learner, then a voter once caught up) or remove one.
    ChangeMembership { group_id: u32, change: MembershipChange },
    /// SPEC §5.6 item 44: archived group blocks `from_group_height..`, ascending, at most
    /// `max_blocks` (≤ `GROUP_BLOCKS_MAX`); compacted bodies are empty. Archive back-fill after a
    /// snapshot install. The answer may hold fewer blocks (frame size, end of the archive).
    GetGroupBlocks { group_id: u32, from_group_height: u64, max_blocks: u32 },
    /// Leadership transfer (project, SPEC §5.3 item 32): what the old leader asks of a voter.
    Leadership { group_id: u32, action: LeadershipAction },
    /// Project addition (D83): up to `SNAPSHOT_FILE_CHUNK_MAX` bytes from `offset` of one of the
    /// member's snapshot files of `group_id`: the one at `group_height`, or with 0 its newest one
    /// whose last log index is at least `min_log_index`. A node whose group cannot open because
    /// its own snapshots are older than its purged log fetches one this way.
    GetSnapshotFile { group_id: u32, min_log_index: u64, group_height: u64, offset: u64 },
    /// Project addition (D93): would the receiver vote for a candidate at `term` whose log ends
    /// at `last_log_id`? Asked before a voter starts an election (Raft's pre-vote), so that a
    /// voter cut off from its group does not raise its term and depose the leader on its return.
    PreVote { group_id: u32, candidate: u64, term: u64, last_log_id: Option<WireLogId> },
}

/// The most bytes one `GetSnapshotFile` answer carries.
pub const SNAPSHOT_FILE_CHUNK_MAX: u64 = 1 << 20;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum LeadershipAction {
    /// Start an election now (the chosen successor).
    ElectNow,
    /// Do not start elections for this long (the other voters, so the successor wins); 0 ends
    /// the hold early.
    HoldElections { ms: u32 },
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum MembershipChange {
    Add { node_id: u64, address: String },
    Remove { node_id: u64 },
}

/// The most blocks one `GetGroupBlocks` may ask for (SPEC §5.6 item 44).
pub const GROUP_BLOCKS_MAX: u32 = 1000;

impl PeerRequest {
    pub fn group_id(&self) -> u32 {
        match self {
            PeerRequest::Vote { group_id, .. }
            | PeerRequest::AppendEntries { group_id, .. }
            | PeerRequest::InstallSnapshot { group_id, .. }
            | PeerRequest::ScopeCommand { group_id, .. }
            | PeerRequest::ChangeMembership { group_id, .. }
            | PeerRequest::GetGroupBlocks { group_id, .. }
            | PeerRequest::Leadership { group_id, .. }
            | PeerRequest::GetSnapshotFile { group_id, .. }
            | PeerRequest::PreVote { group_id, .. } => *group_id,
        }
    }

    pub fn op_name(&self) -> &'static str {
        match self {
            PeerRequest::Vote { .. } => "raft_vote",
            PeerRequest::AppendEntries { .. } => "raft_append_entries",
            PeerRequest::InstallSnapshot { .. } => "raft_install_snapshot",
            PeerRequest::ScopeCommand { .. } => "scope_command",
            PeerRequest::ChangeMembership { .. } => "change_membership",
            PeerRequest::GetGroupBlocks { .. } => "get_group_blocks",
            PeerRequest::Leadership { .. } => "leadership",
            PeerRequest::GetSnapshotFile { .. } => "get_snapshot_file",
            PeerRequest::PreVote { .. } => "raft_pre_vote",
        }
    }
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum AppendOutcome {
    Success,
    PartialSuccess(Option<WireLogId>),
    Conflict,
    HigherVote(WireVote),
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum PeerResponse {
    Vote {
        vote: WireVote,
        vote_granted: bool,
        last_log_id: Option<WireLogId>,
    },
    AppendEntries(AppendOutcome),
    InstallSnapshot {
        vote: WireVote,
    },
    ScopeCommand {
        genesis: BlockHeader,
    },
    /// The group's voters after the change.
    ChangeMembership {
        voters: Vec<u64>,
    },
    GroupBlocks {
        blocks: Vec<GroupBlock>,
    },
    Leadership,
    /// Bytes `offset..offset + bytes.len()` of the snapshot file at `group_height`, which holds
    /// `total_bytes` in all.
    SnapshotFile {
        group_height: u64,
        total_bytes: u64,
        bytes: Vec<u8>,
    },
    PreVote {
        granted: bool,
    },
}
