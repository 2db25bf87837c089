//! Peer calls that reach the core owning their group (SPEC §5.6): openraft's vote, append and
//! snapshot RPCs handed to the group's `Raft`, and the registry leader's scope commands proposed
//! here when this node leads the group. Bad bytes from a peer (an entry that does not decode) are
//! refused with `InvalidArgument`; nothing of the call is applied.

use crate::peer::convert::*;
use crate::reply::ReplySender;
use crate::round::group::{Group, ScopeCommand};
use ledger_wire::messages::{Response, ResponseEnvelope, Status};
use ledger_wire::peer::{PeerRequest, PeerResponse, WireScopeCommand};
use std::rc::Rc;

/// Answers one peer call on `reply` (spawned: openraft's calls may wait for an fsync).
pub fn handle(group: Rc<Group>, request: PeerRequest, request_id: u64, reply: ReplySender) {
    glommio::spawn_local(async move {
        let result = answer(&group, request).await;
        let _ = reply.try_send(ResponseEnvelope { request_id, result });
    })
    .detach();
}

fn raft_status(group: &Group, what: &str, e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("group {} {what}: {e}", group.id))
}

async fn answer(group: &Group, request: PeerRequest) -> Result<Response, Status> {
    let response = match request {
        PeerRequest::Vote { vote, last_log_id, .. } => {
            let rpc = vote_request_from_wire(vote, last_log_id);
            let r = group.raft.vote(rpc).await.map_err(|e| raft_status(group, "vote", e))?;
            let (vote, vote_granted, last_log_id) = vote_response_to_wire(&r);
            PeerResponse::Vote { vote, vote_granted, last_log_id }
        }
        PeerRequest::AppendEntries { vote, prev_log_id, entries, leader_commit, .. } => {
            let rpc = append_from_wire(vote, prev_log_id, &entries, leader_commit)
                .map_err(|e| Status::invalid(format!("append entries for group {}: {e}", group.id)))?;
            let r = group.raft.append_entries(rpc).await.map_err(|e| raft_status(group, "append", e))?;
            PeerResponse::AppendEntries(append_response_to_wire(&r))
        }
        PeerRequest::InstallSnapshot { vote, meta, offset, data, done, .. } => {
            let rpc = install_from_wire(vote, meta, offset, data, done);
            let r = group.raft.install_snapshot(rpc).await.map_err(|e| raft_status(group, "snapshot", e))?;
            PeerResponse::InstallSnapshot { vote: vote_to_wire(&r.vote) }
        }
        PeerRequest::ScopeCommand { command, .. } => {
            let command = match command {
                WireScopeCommand::Create { scope, retention } => ScopeCommand::Create { scope, retention },
                WireScopeCommand::SetStatus { scope, status } => ScopeCommand::SetStatus { scope, status },
            };
            let meta = group.scope_command(command).await?;
            PeerResponse::ScopeCommand { genesis: meta.genesis }
        }
        PeerRequest::ChangeMembership { change, .. } => {
            let voters = crate::admin::membership::change_at_leader(group, change).await?;
            PeerResponse::ChangeMembership { voters }
        }
    };
    Ok(Response::Peer(response))
}
