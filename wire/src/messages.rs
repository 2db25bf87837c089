//! Request and response types of the native protocol (SPEC §4.3–§5). Every frame body is the rkyv
//! archive of one of the root types at the bottom of this file.

use ledger_core::types::*;
use rkyv::{Archive, Deserialize, Serialize};

pub const PROTOCOL_VERSION: u16 = 1;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum Role {
    Client,
    Peer,
    Admin,
}

/// `Debug` never shows the credential (a token secret).
#[derive(Archive, Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct Hello {
    pub protocol_version: u16,
    pub role: Role,
    pub node_id: Option<u64>,
    pub client_name: String,
    pub credential: Option<String>,
    /// The namespace this connection will mostly serve (D53): a node may then serve the
    /// connection on the core that owns that namespace's group. Only a hint; every request is
    /// routed by its own namespace whatever the core.
    pub namespace_hint: Option<i64>,
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("protocol_version", &self.protocol_version)
            .field("role", &self.role)
            .field("node_id", &self.node_id)
            .field("client_name", &self.client_name)
            .field("credential", &self.credential.as_ref().map(|_| "<redacted>"))
            .field("namespace_hint", &self.namespace_hint)
            .finish()
    }
}

impl std::fmt::Debug for ArchivedHello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchivedHello")
            .field("role", &self.role)
            .field("client_name", &self.client_name.as_str())
            .field("credential", &self.credential.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct HelloAck {
    pub protocol_version: u16,
    pub node_id: u64,
    pub cluster_id: Option<u64>,
    pub max_frame_bytes: u32,
    pub max_batch_items: u32,
    pub server_version: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum GoawayCode {
    ProtocolError,
    UnsupportedVersion,
    Corrupt,
    FrameTooLarge,
    Idle,
    Shutdown,
    /// The node already serves `max_connections` connections (D46); sent instead of `HelloAck`.
    TooManyConnections,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Goaway {
    pub code: GoawayCode,
    pub message: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Ping {
    pub nonce: u64,
}

// ---------------------------------------------------------------------------------------------
// Status (SPEC §4.5)

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum StatusCode {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    Unauthenticated,
    PermissionDenied,
    Unavailable,
    NotLeader,
    ResourceExhausted,
    FailedPrecondition,
    DeadlineExceeded,
    Cancelled,
    Internal,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum ErrorDetail {
    HeightUnavailable {
        requested: u64,
        oldest_available: u64,
    },
    VaultUnavailable {
        health: VaultHealth,
    },
    WriteError(WriteError),
    /// With `ResourceExhausted` from the rate limit (SPEC §8.9, D44): the earliest a retry can
    /// be admitted, in milliseconds.
    RetryAfter {
        ms: u32,
    },
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Status {
    pub code: StatusCode,
    pub message: String,
    pub leader_hint: Option<(u64, String)>,
    pub detail: Option<ErrorDetail>,
}

impl Status {
    pub fn new(code: StatusCode, message: impl Into<String>) -> Self {
        Status { code, message: message.into(), leader_hint: None, detail: None }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::InvalidArgument, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NotFound, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::Internal, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::Unavailable, message)
    }
    pub fn exhausted(message: impl Into<String>) -> Self {
        Self::new(StatusCode::ResourceExhausted, message)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

// ---------------------------------------------------------------------------------------------
// Requests (SPEC §5)

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum NamespaceSelector {
    Id(i64),
    Name(String),
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum Request {
    // --- reads (§5.1)
    Read {
        namespace_id: i64,
        vault_id: Option<i64>,
        key: String,
        consistency: ReadConsistency,
    },
    BatchRead {
        namespace_id: i64,
        vault_id: Option<i64>,
        keys: Vec<String>,
        consistency: ReadConsistency,
    },
    GetBlock {
        namespace_id: i64,
        vault_id: Option<i64>,
        height: u64,
    },
    GetBlockRange {
        namespace_id: i64,
        vault_id: Option<i64>,
        start_height: u64,
        end_height: u64,
    },
    GetTip {
        namespace_id: i64,
        vault_id: Option<i64>,
    },
    GetClientState {
        namespace_id: i64,
        vault_id: Option<i64>,
        client_id: String,
    },
    ListRelationships {
        namespace_id: i64,
        vault_id: i64,
        resource: Option<String>,
        relation: Option<String>,
        subject: Option<String>,
        at_height: Option<u64>,
        limit: u32,
        page_token: String,
        consistency: ReadConsistency,
    },
    ListResources {
        namespace_id: i64,
        vault_id: i64,
        resource_type: String,
        at_height: Option<u64>,
        limit: u32,
        page_token: String,
        consistency: ReadConsistency,
    },
    ListEntities {
        namespace_id: i64,
        vault_id: Option<i64>,
        key_prefix: String,
        at_height: Option<u64>,
        include_expired: bool,
        limit: u32,
        page_token: String,
        consistency: ReadConsistency,
    },
    // --- writes (§5.2)
    Write {
        namespace_id: i64,
        vault_id: Option<i64>,
        client_id: String,
        sequence: u64,
        operations: Vec<Operation>,
        include_tx_proof: bool,
    },
    BatchWrite {
        namespace_id: i64,
        vault_id: Option<i64>,
        client_id: String,
        sequence: u64,
        groups: Vec<Vec<Operation>>,
        include_tx_proof: bool,
    },
    // --- admin (§5.3)
    CreateNamespace {
        name: String,
        group_id: Option<u32>,
    },
    DeleteNamespace {
        namespace_id: i64,
    },
    GetNamespace {
        by: NamespaceSelector,
    },
    ListNamespaces {
        page_token: String,
        page_size: u32,
    },
    CreateVault {
        namespace_id: i64,
        replication_factor: u32,
        initial_nodes: Vec<u64>,
        retention_policy: Option<RetentionPolicy>,
    },
    DeleteVault {
        namespace_id: i64,
        vault_id: i64,
    },
    GetVault {
        namespace_id: i64,
        vault_id: i64,
    },
    ListVaults,
    GetNodeInfo,
    // --- health (§5.4)
    HealthCheck {
        namespace_id: Option<i64>,
        vault_id: Option<i64>,
    },
    // --- integrity and snapshots (§5.3 items 27–28, §9.4, §9.7)
    /// `vault_id: None` checks the namespace scope.
    CheckIntegrity {
        namespace_id: i64,
        vault_id: Option<i64>,
        full_check: bool,
    },
    CreateSnapshot {
        namespace_id: i64,
        vault_id: Option<i64>,
    },
    // --- streams (§4.3, §5.1 item 5)
    /// Opens a block stream: no `ResponseEnvelope`; `StreamItem`s, then one `StreamEnd`, all
    /// carrying this envelope's `request_id`. `vault_id: None` watches the namespace scope.
    WatchBlocks {
        namespace_id: i64,
        vault_id: Option<i64>,
        start_height: u64,
    },
    /// Ends the stream opened by `request_id` with `StreamEnd{Cancelled}`; answered with
    /// `Response::CancelStream` (also for an unknown id).
    CancelStream {
        request_id: u64,
    },
    // --- verified and historical reads (§5.1 items 3–4, §7.7, §8.7)
    /// `at_height` None or 0 = current state; `consistency` None = Linearizable.
    VerifiedRead {
        namespace_id: i64,
        vault_id: Option<i64>,
        key: String,
        at_height: Option<u64>,
        include_chain_proof: bool,
        trusted_height: Option<u64>,
        consistency: Option<ReadConsistency>,
    },
    HistoricalRead {
        namespace_id: i64,
        vault_id: Option<i64>,
        key: String,
        at_height: u64,
        include_proof: bool,
        include_chain_proof: bool,
        trusted_height: Option<u64>,
    },
    /// SPEC §10.6: make `node_id` (listening at `address`) a voter of every group — a learner
    /// first, promoted once caught up — one group at a time (joint consensus).
    JoinCluster {
        node_id: u64,
        address: String,
    },
    /// SPEC §10.6: remove `node_id` from every group (data groups first, `_system` last).
    LeaveCluster {
        node_id: u64,
    },
    /// Test fault switch (issue 14 item 7): cut this node off from these peer nodes, both ways
    /// (empty heals). Refused unless the server runs with `--test-faults`.
    SetPartition {
        blocked_nodes: Vec<u64>,
    },
    // --- operations (SPEC §5.3 items 25, 29–30, 32–36; §11.2)
    /// The cluster's members from the `_system` registry, with group 0's leader and term.
    GetClusterInfo,
    /// Raft status of every group hosted by THIS node (project addition for `cluster-status`).
    GetGroupStatus,
    /// Rebuild the scope on this node (SPEC §9.9). Without `force` only a non-Healthy scope.
    RecoverVault {
        namespace_id: i64,
        vault_id: Option<i64>,
        force: bool,
    },
    /// Test builds only (`--test-faults`): mark the local replica Diverged, data untouched.
    SimulateDivergence {
        namespace_id: i64,
        vault_id: Option<i64>,
        expected_state_root: Hash,
        computed_state_root: Hash,
        at_height: u64,
    },
    /// Served by `node_id` (forwarded there): give up leadership of `group_id` (or of every
    /// group it leads) by making an up-to-date voter elect itself: `successor`, or else the
    /// voter leading the fewest groups. Moving every group of a node, with no successor named,
    /// also drains it: the leader balancer gives it no leadership for a while (D70).
    TransferLeadership {
        node_id: u64,
        group_id: Option<u32>,
        successor: Option<u64>,
    },
    /// Each group's replication progress, from its leader (the receiving node forwards).
    LagReport {
        group_id: Option<u32>,
    },
    /// This node's event log (SPEC §11.6).
    GetEvents {
        since_secs: u64,
        filter: Option<String>,
        min_level: Option<EventLevel>,
        limit: u32,
    },
    /// The scope's state root on every replica (fans out to the group's members).
    CompareStateRoots {
        namespace_id: i64,
        vault_id: Option<i64>,
        height: Option<u64>,
    },
    /// The local replica's health and recovery progress.
    GetVaultHealth {
        namespace_id: i64,
        vault_id: Option<i64>,
    },
    /// One GC cycle now (SPEC §3.8, §5.3 item 31): with a namespace, of that scope (at its
    /// group's leader); without, of every scope of the groups the receiving node leads.
    ForceGc {
        namespace_id: Option<i64>,
        vault_id: Option<i64>,
    },
    // --- peer role only (§5.6): refused on client connections
    Peer(Box<crate::peer::PeerRequest>),
    // --- discovery (§5.5)
    /// The cluster's members this node knows (SPEC §5.5 item 38; 0 = all).
    GetPeers {
        max_peers: u32,
    },
    /// The registry as the answering node's replica holds it (SPEC §5.5 item 40): empty lists
    /// when its version is not above `if_version_greater_than`.
    GetSystemState {
        if_version_greater_than: u64,
    },
    /// A member says it is stopping on purpose (SIGTERM): `_system`'s leader records it, and
    /// does not remove the node for its silence until it is heard again (D74).
    NodeStopping {
        node_id: u64,
    },
    /// A member tells another of a node it knows (SPEC §5.5 item 39): merged into the
    /// receiver's peer cache when its addresses are private.
    AnnouncePeer {
        peer: PeerInfo,
    },
}

impl Request {
    /// The namespace of a request that only its group's leader answers (writes and linearizable
    /// reads; SPEC §8.1 step 3): where a client that learned leaders sends it directly.
    pub fn leader_namespace(&self) -> Option<i64> {
        use ReadConsistency::Linearizable;
        match self {
            Request::Write { namespace_id, .. } | Request::BatchWrite { namespace_id, .. } => {
                Some(*namespace_id)
            }
            // SPEC §5.1 item 9: always linearizable.
            Request::GetClientState { namespace_id, .. } => Some(*namespace_id),
            // SPEC §5.3 item 31: a scope's GC runs where its writes are built.
            Request::ForceGc { namespace_id: Some(namespace_id), .. } => Some(*namespace_id),
            Request::Read { namespace_id, consistency, .. }
            | Request::BatchRead { namespace_id, consistency, .. }
            | Request::ListRelationships { namespace_id, consistency, .. }
            | Request::ListResources { namespace_id, consistency, .. }
            | Request::ListEntities { namespace_id, consistency, .. }
                if *consistency == Linearizable =>
            {
                Some(*namespace_id)
            }
            // A historical height is served by any replica that has it.
            Request::VerifiedRead { namespace_id, consistency, at_height, .. }
                if at_height.unwrap_or(0) == 0 && consistency.unwrap_or(Linearizable) == Linearizable =>
            {
                Some(*namespace_id)
            }
            _ => None,
        }
    }

    /// snake_case name of the variant, for metrics labels and logs.
    pub fn op_name(&self) -> &'static str {
        match self {
            Request::Read { .. } => "read",
            Request::BatchRead { .. } => "batch_read",
            Request::GetBlock { .. } => "get_block",
            Request::GetBlockRange { .. } => "get_block_range",
            Request::GetTip { .. } => "get_tip",
            Request::GetClientState { .. } => "get_client_state",
            Request::ListRelationships { .. } => "list_relationships",
            Request::ListResources { .. } => "list_resources",
            Request::ListEntities { .. } => "list_entities",
            Request::Write { .. } => "write",
            Request::BatchWrite { .. } => "batch_write",
            Request::CreateNamespace { .. } => "create_namespace",
            Request::DeleteNamespace { .. } => "delete_namespace",
            Request::GetNamespace { .. } => "get_namespace",
            Request::ListNamespaces { .. } => "list_namespaces",
            Request::CreateVault { .. } => "create_vault",
            Request::DeleteVault { .. } => "delete_vault",
            Request::GetVault { .. } => "get_vault",
            Request::ListVaults => "list_vaults",
            Request::GetNodeInfo => "get_node_info",
            Request::GetPeers { .. } => "get_peers",
            Request::GetSystemState { .. } => "get_system_state",
            Request::NodeStopping { .. } => "node_stopping",
            Request::AnnouncePeer { .. } => "announce_peer",
            Request::HealthCheck { .. } => "health_check",
            Request::CheckIntegrity { .. } => "check_integrity",
            Request::CreateSnapshot { .. } => "create_snapshot",
            Request::WatchBlocks { .. } => "watch_blocks",
            Request::CancelStream { .. } => "cancel_stream",
            Request::VerifiedRead { .. } => "verified_read",
            Request::HistoricalRead { .. } => "historical_read",
            Request::SetPartition { .. } => "set_partition",
            Request::JoinCluster { .. } => "join_cluster",
            Request::LeaveCluster { .. } => "leave_cluster",
            Request::GetClusterInfo => "get_cluster_info",
            Request::GetGroupStatus => "get_group_status",
            Request::RecoverVault { .. } => "recover_vault",
            Request::SimulateDivergence { .. } => "simulate_divergence",
            Request::TransferLeadership { .. } => "transfer_leadership",
            Request::LagReport { .. } => "lag_report",
            Request::GetEvents { .. } => "get_events",
            Request::CompareStateRoots { .. } => "compare_state_roots",
            Request::GetVaultHealth { .. } => "get_vault_health",
            Request::ForceGc { .. } => "force_gc",
            Request::Peer(peer) => peer.op_name(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Responses

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct BatchReadItem {
    pub key: String,
    pub value: Option<Vec<u8>>,
    pub found: bool,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct WriteSuccess {
    pub tx_id: TxId,
    pub block_height: u64,
    pub tx_timestamp: Timestamp,
    pub actor: String,
    pub block_header: Option<BlockHeader>,
    pub tx_proof: Option<MerkleProof>,
    /// One list per operation group; a plain `Write` has exactly one group.
    pub statuses: Vec<Vec<OpStatus>>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum WriteResult {
    Success(WriteSuccess),
    Error(WriteError),
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct NamespaceInfo {
    pub namespace_id: i64,
    pub name: String,
    pub group_id: u32,
    pub member_nodes: Vec<u64>,
    pub leader_hint: Option<u64>,
    pub config_version: u64,
    pub status: NamespaceStatus,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct VaultInfo {
    pub namespace_id: i64,
    pub vault_id: i64,
    pub height: u64,
    pub state_root: Hash,
    pub nodes: Vec<u64>,
    pub leader: Option<u64>,
    pub status: VaultStatus,
    pub retention_policy: RetentionPolicy,
    pub health: VaultHealth,
    pub group_id: u32,
    pub last_block_timestamp: Timestamp,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum HealthStatus {
    Healthy,
    Degraded,
    Unavailable,
}

/// What kind of problem an integrity check found (SPEC §5.3 item 28, §9.7).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum IntegrityIssueType {
    ChainBreak,
    StateDivergence,
    SnapshotCorruption,
    MissingBlock,
    TxRootMismatch,
}

impl IntegrityIssueType {
    /// The SPEC's name: `chain_break`, `state_divergence`, `snapshot_corruption`,
    /// `missing_block`, `tx_root_mismatch`.
    pub fn as_str(&self) -> &'static str {
        match self {
            IntegrityIssueType::ChainBreak => "chain_break",
            IntegrityIssueType::StateDivergence => "state_divergence",
            IntegrityIssueType::SnapshotCorruption => "snapshot_corruption",
            IntegrityIssueType::MissingBlock => "missing_block",
            IntegrityIssueType::TxRootMismatch => "tx_root_mismatch",
        }
    }
}

/// One problem found by `CheckIntegrity`, at the vault height where it shows.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct IntegrityIssue {
    pub block_height: u64,
    pub issue_type: IntegrityIssueType,
    pub description: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum Response {
    Read {
        value: Option<Vec<u8>>,
        block_height: u64,
        stale: bool,
    },
    BatchRead {
        results: Vec<BatchReadItem>,
        block_height: u64,
        stale: bool,
    },
    GetBlock {
        block: Block,
        body_pruned: bool,
    },
    GetBlockRange {
        blocks: Vec<Block>,
        current_tip: u64,
    },
    GetTip {
        height: u64,
        block_hash: Hash,
        state_root: Hash,
    },
    GetClientState {
        last_committed_sequence: u64,
    },
    ListRelationships {
        relationships: Vec<Relationship>,
        block_height: u64,
        next_page_token: String,
    },
    ListResources {
        resources: Vec<String>,
        block_height: u64,
        next_page_token: String,
    },
    ListEntities {
        entities: Vec<Entity>,
        block_height: u64,
        next_page_token: String,
    },
    Write(WriteResult),
    CreateNamespace {
        namespace_id: i64,
        group_id: u32,
    },
    DeleteNamespace {
        deleted_at: Timestamp,
    },
    GetNamespace(NamespaceInfo),
    ListNamespaces {
        namespaces: Vec<NamespaceInfo>,
        next_page_token: String,
    },
    CreateVault {
        vault_id: i64,
        genesis: BlockHeader,
    },
    DeleteVault {
        deleted_at: Timestamp,
    },
    GetVault(VaultInfo),
    ListVaults {
        vaults: Vec<VaultInfo>,
    },
    GetNodeInfo {
        node_id: u64,
        address: String,
        is_cluster_member: bool,
        term: u64,
        /// Cores of the node: the bootstrapping node's count sets the initial data groups.
        cores: u16,
        /// The groups this node hosts (a joining node hosts the same ones).
        groups: Vec<u32>,
        /// Stepped down as a whole lately: the leader balancer gives it no leadership (D70).
        draining: bool,
        /// The data groups it starts a cluster with if it initializes one (`initial_groups`,
        /// else cores × groups_per_core); a member: the data groups it hosts (D79).
        data_groups: u32,
        /// The `replication_factor` it starts a cluster with if it initializes one; a member:
        /// the cluster's (SPEC §10.5; 0 = every member in every data group).
        replication_factor: u32,
    },
    HealthCheck {
        status: HealthStatus,
        message: String,
        details: Vec<(String, String)>,
    },
    CheckIntegrity {
        healthy: bool,
        issues: Vec<IntegrityIssue>,
    },
    CreateSnapshot {
        block_height: u64,
        state_root: Hash,
        snapshot_path: String,
    },
    /// Answers `Request::CancelStream` (SPEC §5.1 item 5).
    CancelStream,
    /// `value` is TTL-filtered; `entity` is the raw committed row the proof covers.
    VerifiedRead {
        value: Option<Vec<u8>>,
        entity: Option<Entity>,
        block_height: u64,
        block_header: BlockHeader,
        state_proof: StateProof,
        chain_proof: Option<ChainProof>,
    },
    /// `entity` and the proof fields are present only when `include_proof` was set.
    HistoricalRead {
        value: Option<Vec<u8>>,
        entity: Option<Entity>,
        block_height: u64,
        block_header: Option<BlockHeader>,
        state_proof: Option<StateProof>,
        chain_proof: Option<ChainProof>,
    },
    /// Per group (in the order changed): its voters afterwards.
    JoinCluster {
        groups: Vec<(u32, Vec<u64>)>,
    },
    LeaveCluster {
        groups: Vec<(u32, Vec<u64>)>,
    },
    SetPartition {
        blocked_nodes: Vec<u64>,
    },
    GetClusterInfo {
        members: Vec<ClusterMember>,
        leader_id: Option<u64>,
        term: u64,
    },
    GetGroupStatus {
        node_id: u64,
        groups: Vec<GroupStatusInfo>,
    },
    RecoverVault {
        success: bool,
        message: String,
        health: VaultHealth,
        final_height: u64,
        final_state_root: Hash,
    },
    SimulateDivergence {
        success: bool,
        message: String,
        health: VaultHealth,
    },
    /// `moved`: (group, new leader).
    TransferLeadership {
        moved: Vec<(u32, u64)>,
        not_moved: Vec<u32>,
    },
    LagReport {
        groups: Vec<GroupLag>,
    },
    GetEvents {
        events: Vec<Event>,
    },
    CompareStateRoots {
        height: u64,
        replicas: Vec<ReplicaRoot>,
    },
    GetVaultHealth {
        health: VaultHealth,
        recovery_attempts: u32,
        last_error: Option<String>,
        /// The last background integrity check of the scope here (SPEC §9.7), and its findings.
        last_integrity_check: Option<Timestamp>,
        integrity_issues: Vec<IntegrityIssue>,
    },
    /// SPEC §5.3 item 31: `vaults_scanned` counts every scope scanned (namespace scopes too).
    ForceGc {
        success: bool,
        message: String,
        expired_count: u64,
        vaults_scanned: u64,
    },
    Peer(crate::peer::PeerResponse),
    /// `system_version`: the `_system` group's applied index on the answering node (SPEC §10.4).
    GetPeers {
        peers: Vec<PeerInfo>,
        system_version: u64,
    },
    /// `version`: `_system`'s applied index on the answering node (SPEC §10.4).
    GetSystemState {
        version: u64,
        nodes: Vec<SystemNode>,
        namespaces: Vec<NamespaceInfo>,
    },
    NodeStopping,
    AnnouncePeer {
        accepted: bool,
    },
}

/// A member in `GetSystemState` (SPEC §5.5 item 40's NodeInfo).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct SystemNode {
    pub node_id: u64,
    /// IP addresses without the port (an address that is a name is given whole).
    pub addresses: Vec<String>,
    pub port: u16,
    pub capabilities: NodeCapabilities,
    /// As `PeerInfo::last_seen`.
    pub last_heartbeat: ledger_core::types::Timestamp,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct NodeCapabilities {
    /// A voter of `_system` (a learner cannot lead).
    pub can_lead: bool,
    /// 0: no limit.
    pub max_vaults: u64,
    /// Known for the answering node only (0 elsewhere).
    pub cores: u16,
}

/// One member as discovery reports it (SPEC §5.5 item 38): its IP addresses without the port,
/// which follows apart; only private addresses are ever returned.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct PeerInfo {
    pub node_id: u64,
    pub addresses: Vec<String>,
    pub port: u16,
    /// When the answering node last heard from it (itself: now); zero when it does not know.
    pub last_seen: ledger_core::types::Timestamp,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum MemberRole {
    Voter,
    Learner,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ClusterMember {
    pub node_id: u64,
    pub address: String,
    pub role: MemberRole,
    pub is_leader: bool,
    /// Milliseconds since `_system`'s leader last heard from this member: known only when the
    /// answering node is that leader (`None` elsewhere, and for the leader itself).
    pub heard_ms_ago: Option<u64>,
    /// `_system`'s leader has marked it unavailable (SPEC §10.6, D69).
    pub unavailable: bool,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct GroupStatusInfo {
    pub group_id: u32,
    /// `leader`, `follower`, `candidate`, `learner`, or `failed: …` when the group did not open.
    pub role: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Scopes of the group on this replica, and how many are not Healthy.
    pub scopes: u32,
    pub unhealthy_scopes: u32,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct FollowerLag {
    pub node_id: u64,
    pub matched_index: u64,
    pub lag_blocks: u64,
    /// Milliseconds since the leader last heard from it (None: never).
    pub last_ack_ms: Option<u64>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct GroupLag {
    pub group_id: u32,
    pub leader: Option<u64>,
    pub leader_last_index: u64,
    pub followers: Vec<FollowerLag>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[rkyv(derive(Debug))]
pub enum EventLevel {
    Error,
    Warn,
    Info,
    Debug,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Event {
    pub ts: Timestamp,
    pub level: EventLevel,
    pub kind: String,
    pub group_id: Option<u32>,
    pub namespace_id: Option<i64>,
    pub vault_id: Option<i64>,
    pub message: String,
    pub fields: Vec<(String, String)>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ReplicaRoot {
    pub node_id: u64,
    /// None: the replica did not answer or has no root at that height.
    pub state_root: Option<Hash>,
    pub height: u64,
    pub health: Option<VaultHealth>,
    pub matches_leader: bool,
    /// Why `state_root` is missing.
    pub error: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Frame roots (SPEC §4.3)

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct RequestEnvelope {
    pub request_id: u64,
    /// 0 = the server default (`requests_timeout_secs`).
    pub deadline_ms: u32,
    /// Set only by a node forwarding a client's request to the group's leader (SPEC §8.1 step 3):
    /// the credential id that client authenticated with, so the leader records the same actor
    /// (SPEC §4.1). Honoured on peer connections only; a client that sets it is refused.
    pub on_behalf_of: Option<String>,
    pub request: Request,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct RequestBatch {
    pub items: Vec<RequestEnvelope>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ResponseEnvelope {
    pub request_id: u64,
    pub result: Result<Response, Status>,
    /// Set when this node forwarded the request to its group's leader (SPEC §8.1 step 3): that
    /// leader's `(node_id, address)`, so a client can send the scope's next requests there
    /// directly (issue 14 item 3, D33). Failures carry their hint in `Status::leader_hint`.
    pub leader_hint: Option<(u64, String)>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ResponseBatch {
    pub items: Vec<ResponseEnvelope>,
}

/// What a stream carries (SPEC §4.3); v1 has block announcements only.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum StreamPayload {
    Block(BlockAnnouncement),
}

/// Root of a `StreamItem` frame (kind 5): one item of the stream opened by `request_id`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct StreamItem {
    pub request_id: u64,
    pub item: StreamPayload,
}

/// Root of a `StreamEnd` frame (kind 6): the last frame of the stream opened by `request_id`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct StreamEnd {
    pub request_id: u64,
    pub status: Status,
}
