//! openraft's network for a group while the cluster transport does not exist yet: every peer is
//! unreachable. A single-voter group never sends RPCs, so this is enough to run one node; the
//! cluster work replaces the factory with one that ships messages through the router's peer
//! connection pool (SPEC §10.9, STYLE "One request, end to end" step 4).

use crate::raft::type_config::{Snapshot, TypeConfig, Vote};
use openraft::error::{
    Fatal, InstallSnapshotError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use std::future::Future;

/// Why every RPC fails.
#[derive(Debug, thiserror::Error)]
#[error("no peer transport: node {target} is unreachable from a single-node group")]
pub struct NoTransport {
    pub target: u64,
}

/// Creates a [`NoPeers`] client per target.
#[derive(Debug, Default, Clone)]
pub struct NoPeersFactory;

/// A client to one peer that answers every RPC with `Unreachable`.
#[derive(Debug)]
pub struct NoPeers {
    target: u64,
}

impl NoPeers {
    fn unreachable(&self) -> Unreachable {
        Unreachable::new(&NoTransport { target: self.target })
    }
}

impl RaftNetworkFactory<TypeConfig> for NoPeersFactory {
    type Network = NoPeers;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> NoPeers {
        NoPeers { target }
    }
}

impl RaftNetwork<TypeConfig> for NoPeers {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>>
    {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn full_snapshot(
        &mut self,
        _vote: Vote,
        _snapshot: Snapshot,
        _cancel: impl Future<Output = ReplicationClosed> + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<TypeConfig, Fatal<u64>>> {
        Err(StreamingError::Unreachable(self.unreachable()))
    }
}
