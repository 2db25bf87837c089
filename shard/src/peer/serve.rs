//! Peer calls that reach the core owning their group (SPEC §5.6): openraft's vote, append and
//! snapshot RPCs handed to the group's `Raft`, and the registry leader's scope commands proposed
//! here when this node leads the group, `GetGroupBlocks` (archive back-fill, SPEC §5.6 item
//! 44) and `GetSnapshotFile` (a member whose own snapshots are older than its purged log, D83). Bad bytes from a peer (an entry that does not decode) are refused with `InvalidArgument`;
//! nothing of the call is applied.
//!
//! Snapshot chunks are put together here rather than by openraft: once the last one arrived, the
//! whole file is verified off the core (`snapshot::verify_received`: checksums, roots, chain
//! commitments) and only then handed to `Raft::install_full_snapshot`; a bad snapshot is refused
//! to the leader (`InvalidArgument`, it retries later) with nothing changed, where an error from
//! the state machine's `install_snapshot` would stop the group's Raft (D31).

use crate::peer::convert::*;
use crate::raft::type_config::{Snapshot, TypeConfig};
use crate::reply::ReplySender;
use crate::round::group::{Group, ScopeCommand};
use ledger_wire::messages::{Response, ResponseEnvelope, Status};
use ledger_wire::peer::{
    PeerRequest, PeerResponse, WireScopeCommand, GROUP_BLOCKS_MAX, SNAPSHOT_FILE_CHUNK_MAX,
};
use openraft::raft::InstallSnapshotRequest;
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Cursor;
use std::rc::Rc;

thread_local! {
    /// Snapshots being received, per group of this core: (snapshot id, bytes so far).
    static RECEIVING: RefCell<HashMap<u32, (String, Vec<u8>)>> = RefCell::new(HashMap::new());
}

/// Answers one peer call on `reply` (spawned: openraft's calls may wait for an fsync).
pub fn handle(group: Rc<Group>, request: PeerRequest, request_id: u64, reply: ReplySender) {
    glommio::spawn_local(async move {
        let result = answer(&group, request).await;
        let _ = reply.try_send(ResponseEnvelope { request_id, result, leader_hint: None });
    })
    .detach();
}

/// Up to `chunk` bytes from `offset` of one of this group's snapshot files (D83): the one at
/// `group_height`, or with 0 the newest whose last log index is at least `min_log_index`.
async fn snapshot_file_chunk(
    group: &Group,
    min_log_index: u64,
    group_height: u64,
    offset: u64,
    chunk: u64,
) -> Result<PeerResponse, Status> {
    let found = group.data.borrow().snapshots.entries.iter().rev().find_map(|e| {
        let wanted = match group_height {
            0 => e.header.last_log_id.as_ref().is_some_and(|l| l.index >= min_log_index),
            h => e.header.group_height == h,
        };
        wanted.then(|| (e.path.clone(), e.header.group_height))
    });
    let Some((path, height)) = found else {
        return Err(Status::new(
            ledger_wire::messages::StatusCode::FailedPrecondition,
            format!(
                "group {}: no snapshot file here at group height {group_height} or past log index {min_log_index}",
                group.id
            ),
        ));
    };
    let read = glommio::executor()
        .spawn_blocking(move || -> std::io::Result<(u64, Vec<u8>)> {
            use std::io::{Read, Seek};
            let mut file = std::fs::File::open(&path)?;
            let total = file.metadata()?.len();
            file.seek(std::io::SeekFrom::Start(offset.min(total)))?;
            let mut bytes = Vec::new();
            file.take(chunk).read_to_end(&mut bytes)?;
            Ok((total, bytes))
        })
        .await;
    let (total_bytes, bytes) =
        read.map_err(|e| Status::unavailable(format!("group {} snapshot file: {e}", group.id)))?;
    Ok(PeerResponse::SnapshotFile { group_height: height, total_bytes, bytes })
}

fn raft_status(group: &Group, what: &str, e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("group {} {what}: {e}", group.id))
}

async fn answer(group: &Rc<Group>, request: PeerRequest) -> Result<Response, Status> {
    let response = match request {
        PeerRequest::Vote { vote, last_log_id, .. } => {
            let rpc = vote_request_from_wire(vote, last_log_id);
            if let Some(refused) = refusal_of_non_member(group, rpc.vote.leader_id().voted_for()) {
                return Err(refused);
            }
            let r = group.raft.vote(rpc).await.map_err(|e| raft_status(group, "vote", e))?;
            let (vote, vote_granted, last_log_id) = vote_response_to_wire(&r);
            PeerResponse::Vote { vote, vote_granted, last_log_id }
        }
        PeerRequest::AppendEntries { vote, prev_log_id, entries, leader_commit, .. } => {
            let rpc = append_from_wire(vote, prev_log_id, &entries, leader_commit)
                .map_err(|e| Status::invalid(format!("append entries for group {}: {e}", group.id)))?;
            let received = std::time::Instant::now();
            let r = group.raft.append_entries(rpc).await.map_err(|e| raft_status(group, "append", e))?;
            if !matches!(r, openraft::raft::AppendEntriesResponse::HigherVote(_)) {
                // The sender leads this node's term: this replica has heard from a leader.
                group.data.borrow().contact.heard_from_leader(received);
            }
            PeerResponse::AppendEntries(append_response_to_wire(&r))
        }
        PeerRequest::InstallSnapshot { vote, meta, offset, data, done, .. } => {
            let rpc = install_from_wire(vote, meta, offset, data, done);
            receive_snapshot_chunk(group, rpc).await?
        }
        PeerRequest::GetGroupBlocks { from_group_height, max_blocks, .. } => {
            let max = max_blocks.clamp(1, GROUP_BLOCKS_MAX);
            // Half a frame: the rest of the response batch and its envelope fit beside it.
            let budget = (group.config().max_frame_bytes / 2) as usize;
            let blocks = group
                .data
                .borrow()
                .archive
                .group_blocks(from_group_height, max, budget)
                .map_err(|e| Status::internal(format!("group {} archive: {e}", group.id)))?;
            PeerResponse::GroupBlocks { blocks }
        }
        PeerRequest::GetSnapshotFile { min_log_index, group_height, offset, .. } => {
            let chunk = u64::from(group.config().max_frame_bytes / 2).clamp(1, SNAPSHOT_FILE_CHUNK_MAX);
            snapshot_file_chunk(group, min_log_index, group_height, offset, chunk).await?
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
        PeerRequest::PreVote { candidate, term, last_log_id, .. } => {
            // A node removed while it was away learns it here, as from a vote (D69).
            if let Some(refused) = refusal_of_non_member(group, Some(candidate)) {
                return Err(refused);
            }
            let granted =
                crate::raft::election::answer_pre_vote(group, term, last_log_id.map(log_id_from_wire));
            PeerResponse::PreVote { granted }
        }
        PeerRequest::Leadership { action, .. } => {
            crate::ops::leadership::on_leadership_request(group, action).await?;
            PeerResponse::Leadership
        }
    };
    Ok(Response::Peer(response))
}

/// Prefix of the status a vote request from a node that is no voter of the group gets.
pub const NOT_A_MEMBER: &str = "NotAMember";

/// A node that is no voter of the group here asks for votes only when it was removed while it
/// was away (SPEC §10.6, D69): it is told so, rather than left to campaign unanswered. Refusing
/// a vote is always safe; a voter this replica does not know yet is refused too and wins with
/// the votes of those that know it.
fn refusal_of_non_member(group: &Group, candidate: Option<u64>) -> Option<Status> {
    let candidate = candidate?;
    let metrics = group.raft.metrics();
    let m = metrics.borrow();
    let membership = m.membership_config.membership();
    if membership.voter_ids().any(|v| v == candidate) || membership.voter_ids().next().is_none() {
        return None;
    }
    Some(Status::new(
        ledger_wire::messages::StatusCode::FailedPrecondition,
        format!(
            "{NOT_A_MEMBER}: node {candidate} is not a voter of group {} (removed from the cluster?); \
             a removed node must rejoin as a new member with a wiped data directory",
            group.id
        ),
    ))
}

/// One `InstallSnapshot` chunk: appended to the group's buffer; the last one is verified and
/// installed (see the module comment).
async fn receive_snapshot_chunk(
    group: &Group,
    rpc: InstallSnapshotRequest<TypeConfig>,
) -> Result<PeerResponse, Status> {
    let my_vote = group.raft.metrics().borrow().vote;
    if rpc.vote < my_vote {
        // A stale leader: it learns the newer vote and stops.
        return Ok(PeerResponse::InstallSnapshot { vote: vote_to_wire(&my_vote) });
    }
    let group_id = group.id.0;
    let snapshot_id = rpc.meta.snapshot_id.clone();
    let complete = RECEIVING
        .with(|receiving| {
            let mut receiving = receiving.borrow_mut();
            if rpc.offset == 0 {
                receiving.insert(group_id, (snapshot_id.clone(), Vec::new()));
            }
            let fits = matches!(receiving.get(&group_id),
            Some((id, bytes)) if *id == snapshot_id && bytes.len() as u64 == rpc.offset);
            if !fits {
                receiving.remove(&group_id);
                return Err(format!(
                    "group {group_id}: snapshot chunk at {} of {snapshot_id} out of order",
                    rpc.offset
                ));
            }
            if let Some((_, bytes)) = receiving.get_mut(&group_id) {
                bytes.extend_from_slice(&rpc.data);
            }
            Ok(if rpc.done { receiving.remove(&group_id).map(|(_, bytes)| bytes) } else { None })
        })
        .map_err(Status::invalid)?;
    let Some(bytes) = complete else {
        return Ok(PeerResponse::InstallSnapshot { vote: vote_to_wire(&my_vote) });
    };
    let db = group.data.borrow().archive.db().cloned();
    let meta = rpc.meta.clone();
    let verified = glommio::executor()
        .spawn_blocking(move || {
            crate::storage::snapshot::verify_received(bytes, group_id, &meta, db.as_deref())
        })
        .await
        .map_err(|e| {
            crate::event!(warn, "snapshot_refused", group = %group_id, snapshot = %snapshot_id, error = %e);
            Status::invalid(format!("group {group_id}: snapshot {snapshot_id} refused: {e}"))
        })?;
    group.data.borrow_mut().received_snapshot = Some(verified);
    let snapshot = Snapshot { meta: rpc.meta, snapshot: Box::new(Cursor::new(Vec::new())) };
    let installed = group.raft.install_full_snapshot(rpc.vote, snapshot).await;
    // openraft skips a snapshot older than what is committed here: drop it unused.
    group.data.borrow_mut().received_snapshot = None;
    let response = installed.map_err(|e| raft_status(group, "snapshot", e))?;
    Ok(PeerResponse::InstallSnapshot { vote: vote_to_wire(&response.vote) })
}
