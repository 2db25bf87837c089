//! Cluster membership changes (SPEC §10.6–10.7): `JoinCluster` and `LeaveCluster`, run by the
//! `_system` leader one group at a time, each change made by that group's leader through
//! openraft's joint consensus. A node is added as a learner and promoted to voter only once it
//! has caught up (a node that does not catch up in time is removed again and the voters stay as
//! they were); a removal that would leave fewer voters than the current quorum is refused
//! (`WouldBreakQuorum`). Changes of one group are serialized by its lock; openraft refuses a
//! second change in flight anyway.

use crate::admin::system_voters::{self, SYSTEM_VOTERS_MAX};
use crate::constants::LEARNER_CATCH_UP_TIMEOUT;
use crate::peer::forward::{self, Forwarded};
use crate::round::group::Group;
use crate::shard::Shard;
use ledger_core::types::GroupId;
use ledger_wire::messages::{Request, Response, Status, StatusCode};
use ledger_wire::peer::{MembershipChange, PeerRequest, PeerResponse};
use openraft::ChangeMembers;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Duration;

/// How long one group's change may take, catching a learner up included.
pub fn change_timeout() -> Duration {
    LEARNER_CATCH_UP_TIMEOUT + Duration::from_secs(10)
}

fn voters(group: &Group) -> BTreeSet<u64> {
    group.raft.metrics().borrow().membership_config.membership().voter_ids().collect()
}

fn failed(code: StatusCode, message: String) -> Status {
    Status::new(code, message)
}

type ChangeError =
    openraft::error::RaftError<u64, openraft::error::ClientWriteError<u64, openraft::BasicNode>>;

/// A change openraft refused. Leadership that moved mid-change (a rejoining voter's higher term
/// deposes leaders, SPEC §10.7) is `NotLeader` with the new leader, so that the change is made
/// again there (`change_anywhere`); anything else is `Unavailable`.
fn raft_failed(group: GroupId, what: &str, e: &ChangeError) -> Status {
    if let Some(forward) = e.forward_to_leader() {
        let mut status = Status::new(
            StatusCode::NotLeader,
            format!("group {group}: {what} failed: leadership moved ({e})"),
        );
        status.leader_hint = forward.leader_id.zip(forward.leader_node.as_ref().map(|n| n.addr.clone()));
        return status;
    }
    if let openraft::error::RaftError::APIError(openraft::error::ClientWriteError::ChangeMembershipError(
        openraft::error::ChangeMembershipError::InProgress(in_progress),
    )) = e
    {
        // A new leader first commits the change its predecessor left uncommitted.
        return Status::unavailable(format!(
            "group {group}: {what} waits: {CHANGE_IN_PROGRESS} ({in_progress})"
        ));
    }
    Status::unavailable(format!("group {group}: {what} failed: {e}"))
}

/// Marks a change refused because another one is still being committed: made again shortly.
const CHANGE_IN_PROGRESS: &str = "another membership change is still being committed";

/// Whether a failed change is made again (leadership moved, or a change is being committed).
fn worth_retrying(status: &Status) -> bool {
    status.code == StatusCode::NotLeader || status.message.contains(CHANGE_IN_PROGRESS)
}

/// Runs one of openraft's membership calls on this group's leader, ending it with `NotLeader`
/// as soon as this node stops leading: openraft does not always answer a change whose proposer
/// was deposed before it committed (seen: a rejoining voter's higher term deposed the leader
/// right after it proposed, and the call hung for a minute), and a hung change would hold the
/// group's lock and the registry's. The change itself is idempotent and made again at the new
/// leader (`change_anywhere`).
pub(crate) async fn while_leading<T>(
    group: &Group,
    what: &str,
    call: impl std::future::Future<Output = Result<T, ChangeError>>,
) -> Result<T, Status> {
    let wait = group.raft.wait(None);
    let deposed = wait.metrics(|m| m.state != openraft::ServerState::Leader, "deposed");
    futures::pin_mut!(call);
    futures::pin_mut!(deposed);
    match futures::future::select(call, deposed).await {
        futures::future::Either::Left((result, _)) => result.map_err(|e| raft_failed(group.id, what, &e)),
        futures::future::Either::Right(_) => {
            let mut status = Status::new(
                StatusCode::NotLeader,
                format!("group {}: {what} abandoned: this node stopped leading", group.id),
            );
            status.leader_hint = group.leader_hint();
            Err(status)
        }
    }
}

/// Makes `change` on `group`, whose leader must be this node; returns the voters afterwards.
pub async fn change_at_leader(group: &Group, change: MembershipChange) -> Result<Vec<u64>, Status> {
    let _one_at_a_time = group.membership_lock.lock().await;
    crate::event!(info, "group_membership_change_started", group = %group.id, change = ?change);
    if !group.is_leader() {
        let mut status = Status::new(StatusCode::NotLeader, format!("not the leader of group {}", group.id));
        status.leader_hint = group.leader_hint();
        return Err(status);
    }
    let current = voters(group);
    match change {
        MembershipChange::Add { node_id, address } => add_member(group, current, node_id, address).await,
        MembershipChange::Remove { node_id } => remove_member(group, current, node_id).await,
    }
}

/// Adds `node_id` to `group` (voters `current`) as a learner and, once it has caught up,
/// promotes it to voter; returns the voters afterwards. A voter already is left as it is.
async fn add_member(
    group: &Group,
    current: BTreeSet<u64>,
    node_id: u64,
    address: String,
) -> Result<Vec<u64>, Status> {
    if current.contains(&node_id) {
        return Ok(current.into_iter().collect());
    }
    add_caught_up_learner(group, node_id, address).await?;
    // SPEC §10.4: `_system` keeps at most five voters; a node joining a full one stays
    // its learner (admin/system_voters.rs promotes it when a voter goes).
    if group.id == GroupId(0) && current.len() >= SYSTEM_VOTERS_MAX {
        return Ok(current.into_iter().collect());
    }
    let promote = ChangeMembers::AddVoterIds(BTreeSet::from([node_id]));
    while_leading(group, "promoting", group.raft.change_membership(promote, false)).await?;
    Ok(voters(group).into_iter().collect())
}

/// Adds `node_id` as a learner of `group` and waits until it has caught up, at most
/// `LEARNER_CATCH_UP_TIMEOUT`; a learner that does not is removed again (`FailedPrecondition`).
async fn add_caught_up_learner(group: &Group, node_id: u64, address: String) -> Result<(), Status> {
    let node = openraft::BasicNode { addr: address };
    let added = glommio::timer::timeout(LEARNER_CATCH_UP_TIMEOUT, async {
        Ok(while_leading(group, "adding the learner", group.raft.add_learner(node_id, node, true)).await)
    })
    .await;
    match added {
        Ok(Ok(_)) => {}
        Ok(Err(status)) => return Err(status),
        Err(_) => {
            // A learner that never caught up leaves again: the voters are unchanged.
            let remove = ChangeMembers::RemoveNodes(BTreeSet::from([node_id]));
            let _ = while_leading(group, "removing the learner", group.raft.change_membership(remove, false))
                .await;
            return Err(failed(
                StatusCode::FailedPrecondition,
                format!(
                    "node {node_id} did not catch up with group {} within {} s; membership unchanged",
                    group.id,
                    LEARNER_CATCH_UP_TIMEOUT.as_secs()
                ),
            ));
        }
    }
    Ok(())
}

/// Removes `node_id` from `group` (voters `current`): a learner simply goes; a voter goes
/// unless that would leave fewer voters than the quorum (`WouldBreakQuorum`), a `_system`
/// voter once its successor is promoted. Returns the voters afterwards.
async fn remove_member(group: &Group, current: BTreeSet<u64>, node_id: u64) -> Result<Vec<u64>, Status> {
    if !current.contains(&node_id) {
        let learner = ChangeMembers::RemoveNodes(BTreeSet::from([node_id]));
        let _ =
            while_leading(group, "removing the learner", group.raft.change_membership(learner, false)).await;
        return Ok(current.into_iter().collect());
    }
    // A `_system` voter that goes is replaced by the oldest live learner first, so that
    // group 0 never runs with fewer voters than it could have (SPEC §10.4).
    if group.id == GroupId(0) {
        promote_system_successor(group, node_id).await?;
    }
    let current = voters(group);
    let quorum = current.len() / 2 + 1;
    if current.len() - 1 < quorum {
        return Err(failed(
            StatusCode::FailedPrecondition,
            format!(
                "WouldBreakQuorum: group {} has {} voters; removing node {node_id} leaves fewer than its quorum of {quorum}",
                group.id,
                current.len()
            ),
        ));
    }
    // A live node is made a learner first and told so before it goes: openraft stops sending
    // to a removed node once the change commits, so without this step a node that stays up
    // (a replica moved elsewhere, D90) would keep a config naming it a voter and campaign.
    let live = system_voters::answered_lately(group, node_id);
    let remove = ChangeMembers::RemoveVoters(BTreeSet::from([node_id]));
    while_leading(group, "removing", group.raft.change_membership(remove, live)).await?;
    if live {
        learner_has_config(group, node_id).await;
        let learner = ChangeMembers::RemoveNodes(BTreeSet::from([node_id]));
        while_leading(group, "removing the learner", group.raft.change_membership(learner, false)).await?;
    }
    Ok(voters(group).into_iter().collect())
}

/// Waits (at most `REMOVED_LEARNER_WAIT`) until `node_id` has the group's current membership
/// entry, so that it knows it is no voter any more.
async fn learner_has_config(group: &Group, node_id: u64) {
    let Some(config) = group.raft.metrics().borrow().membership_config.log_id().map(|l| l.index) else {
        return;
    };
    let has_it = move |m: &openraft::RaftMetrics<u64, openraft::BasicNode>| {
        m.replication
            .as_ref()
            .and_then(|r| r.get(&node_id).copied().flatten())
            .is_some_and(|l| l.index >= config)
    };
    let _ = group
        .raft
        .wait(Some(REMOVED_LEARNER_WAIT))
        .metrics(has_it, "the removed voter has its new role")
        .await;
}

/// How long a removal waits for a live node to learn it is a learner before it goes.
const REMOVED_LEARNER_WAIT: Duration = Duration::from_secs(5);

/// Promotes the oldest live learner of `_system` (`group`), other than `node_id`, to voter in
/// place of the voter `node_id` that goes; with no such learner nothing changes.
async fn promote_system_successor(group: &Group, node_id: u64) -> Result<(), Status> {
    let members = system_voters::recorded_members(group);
    let learners: BTreeSet<u64> =
        group.raft.metrics().borrow().membership_config.membership().learner_ids().collect();
    let learners: BTreeSet<u64> = learners.into_iter().filter(|l| *l != node_id).collect();
    let live = |id: u64| system_voters::answered_lately(group, id);
    if let Some(successor) = system_voters::oldest_learner(&learners, &members, live) {
        let promote = ChangeMembers::AddVoterIds(BTreeSet::from([successor]));
        while_leading(group, "promoting", group.raft.change_membership(promote, false)).await?;
        crate::event!(info, "system_learner_promoted", node = successor, replacing = node_id);
    }
    Ok(())
}

/// The voters a joint config of `group` is heading to, if its membership is joint.
fn joint_target(group: &Group) -> Option<BTreeSet<u64>> {
    let metrics = group.raft.metrics();
    let m = metrics.borrow();
    let configs = m.membership_config.membership().get_joint_config();
    (configs.len() > 1).then(|| configs.last().cloned()).flatten()
}

/// Finishes a joint config that no change on this node is making (SPEC §10.7: a leader that
/// crashed between the joint and the final config leaves the group joint, and its successor
/// completes the change). Called by the leader at each heartbeat tick; cheap when not joint.
/// A change this node is making holds the group's lock while it is joint, so it is left alone.
pub fn complete_joint_config(group: &Rc<Group>) {
    if joint_target(group).is_none() {
        return;
    }
    let group = group.clone();
    glommio::spawn_local(async move {
        let Some(_one_at_a_time) = group.membership_lock.try_lock() else { return };
        let Some(target) = joint_target(&group).filter(|_| group.is_leader()) else { return };
        let voters: Vec<u64> = target.iter().copied().collect();
        let change = group.raft.change_membership(ChangeMembers::ReplaceAllVoters(target), false);
        match while_leading(&group, "completing the joint config", change).await {
            Ok(_) => crate::event!(info, "joint_config_completed", group = %group.id, voters = ?voters),
            Err(e) => {
                crate::event!(warn, "joint_config_not_completed", group = %group.id, error = %e.message)
            }
        }
    })
    .detach();
}

/// Makes `change` on a group this core hosts: here if this node leads it, else on its leader.
pub async fn change_anywhere(
    shard: &Shard,
    group: &Group,
    change: MembershipChange,
) -> Result<Vec<u64>, Status> {
    // A change that lost its leader midway is made again by the next one (it is idempotent:
    // a node already added or removed is left as it is, a joint config is completed first).
    let deadline = std::time::Instant::now() + change_timeout();
    loop {
        match change_once(shard, group, change.clone()).await {
            Err(status) if worth_retrying(&status) && std::time::Instant::now() < deadline => {
                crate::event!(info, "membership_change_retried", group = %group.id, reason = %status.message);
                let election = Duration::from_millis(group.raft.config().election_timeout_max);
                glommio::timer::sleep(election).await;
            }
            other => return other,
        }
    }
}

async fn change_once(shard: &Shard, group: &Group, change: MembershipChange) -> Result<Vec<u64>, Status> {
    if group.is_leader() {
        return change_at_leader(group, change).await;
    }
    let request = Request::Peer(Box::new(PeerRequest::ChangeMembership {
        group_id: group.id.0,
        change: change.clone(),
    }));
    match forward::to_leader(&shard.peers, group, request, change_timeout()).await {
        Forwarded::Answer(Ok(Response::Peer(peer))) => match peer {
            PeerResponse::ChangeMembership { voters } => Ok(voters),
            other => Err(Status::internal(format!("the leader of group {} answered {other:?}", group.id))),
        },
        Forwarded::Answer(Ok(other)) => {
            Err(Status::internal(format!("the leader of group {} answered {}", group.id, other_name(&other))))
        }
        Forwarded::Answer(Err(status)) => Err(status),
        Forwarded::Local => change_at_leader(group, change).await,
    }
}

fn other_name(response: &Response) -> String {
    format!("{response:?}").chars().take(80).collect()
}

/// The order groups change in: `_system` first when joining (the new node learns the registry
/// first), last when leaving (the registry keeps a quorum until the end).
pub fn order(groups: impl Iterator<Item = GroupId>, joining: bool) -> Vec<GroupId> {
    let mut all: Vec<GroupId> = groups.collect();
    all.sort();
    if !joining {
        let first = usize::from(!all.is_empty());
        all.rotate_left(first);
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::error::{
        ChangeMembershipError, ClientWriteError, EmptyMembership, ForwardToLeader, InProgress, RaftError,
    };

    /// Proves which refusals make a change be made again (D82): leadership that moved (with the
    /// new leader as the hint) and a change still being committed; an empty membership is final.
    #[test]
    fn t01_moved_leadership_and_a_change_in_progress_are_retried() {
        let moved: ChangeError = RaftError::APIError(ClientWriteError::ForwardToLeader(ForwardToLeader {
            leader_id: Some(7),
            leader_node: Some(openraft::BasicNode { addr: "10.0.0.7:7000".into() }),
        }));
        let status = raft_failed(GroupId(3), "removing", &moved);
        assert_eq!(status.code, StatusCode::NotLeader);
        assert_eq!(status.leader_hint, Some((7, "10.0.0.7:7000".to_string())));
        assert!(worth_retrying(&status));

        let busy: ChangeError = RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(InProgress { committed: None, membership_log_id: None }),
        ));
        let status = raft_failed(GroupId(3), "removing", &busy);
        assert_eq!(status.code, StatusCode::Unavailable);
        assert!(worth_retrying(&status), "{}", status.message);

        let empty: ChangeError = RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::EmptyMembership(EmptyMembership {}),
        ));
        let status = raft_failed(GroupId(3), "removing", &empty);
        assert_eq!(status.code, StatusCode::Unavailable);
        assert!(!worth_retrying(&status), "{}", status.message);
    }
}
