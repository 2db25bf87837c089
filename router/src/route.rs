//! Where a request goes (SPEC §8.1 step 1): node-level and registry requests to core 0, every
//! scope request to the core owning its namespace's group.

use ledger_wire::messages::Request;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Handled by core 0, which owns group 0 (`_system`).
    Admin,
    /// Handled by the core owning this namespace's group.
    Namespace(i64),
    /// A peer call for one group (SPEC §5.6), handled by the core owning it.
    Group(u32),
}

pub fn target_of(request: &Request) -> Target {
    use Request::*;
    match request {
        Read { namespace_id, .. }
        | BatchRead { namespace_id, .. }
        | GetBlock { namespace_id, .. }
        | GetBlockRange { namespace_id, .. }
        | GetTip { namespace_id, .. }
        | GetClientState { namespace_id, .. }
        | ListRelationships { namespace_id, .. }
        | ListResources { namespace_id, .. }
        | ListEntities { namespace_id, .. }
        | Write { namespace_id, .. }
        | BatchWrite { namespace_id, .. }
        | GetVault { namespace_id, .. }
        | VerifiedRead { namespace_id, .. }
        | HistoricalRead { namespace_id, .. }
        | CheckIntegrity { namespace_id, .. }
        | CreateSnapshot { namespace_id, .. }
        | RecoverVault { namespace_id, .. }
        | SimulateDivergence { namespace_id, .. }
        | CompareStateRoots { namespace_id, .. }
        | GetVaultHealth { namespace_id, .. }
        | WatchBlocks { namespace_id, .. } => Target::Namespace(*namespace_id),
        ForceGc { namespace_id: Some(namespace_id), .. } => Target::Namespace(*namespace_id),
        // Every group this node leads: core 0 asks every core (admin/requests.rs).
        ForceGc { namespace_id: None, .. } => Target::Admin,
        // Answered by the connection itself, which knows which core serves each of its streams.
        CancelStream { .. } => Target::Admin,
        CreateNamespace { .. }
        | DeleteNamespace { .. }
        | GetNamespace { .. }
        | ListNamespaces { .. }
        | GetSystemState { .. }
        | CreateVault { .. }
        | DeleteVault { .. }
        | ListVaults
        | GetNodeInfo
        | GetPeers { .. }
        | HealthCheck { .. }
        | SetPartition { .. }
        | JoinCluster { .. }
        | LeaveCluster { .. }
        | NodeStopping { .. }
        | AnnouncePeer { .. }
        | GetClusterInfo
        | GetGroupStatus
        | TransferLeadership { .. }
        | LagReport { .. }
        | GetEvents { .. } => Target::Admin,
        Peer(peer) => Target::Group(peer.group_id()),
    }
}
