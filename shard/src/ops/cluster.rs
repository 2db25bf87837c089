//! Cluster status for operators: the members (`GetClusterInfo`, from group 0's membership), the
//! Raft status of every group on this node (`GetGroupStatus`) and each group's replication lag
//! as its leader sees it (`LagReport`, forwarded to the leader of each group).

// Errors travel as the wire `Status` (SPEC §4.5), built once at this edge.
#![allow(clippy::result_large_err)]

use crate::peer::forward::{self, Forwarded};
use crate::round::group::Group;
use crate::shard::Shard;
use ledger_core::types::{GroupId, VaultHealth};
use ledger_wire::messages::{
    ClusterMember, FollowerLag, GroupLag, GroupStatusInfo, MemberRole, Request, Response, Status,
};

/// `GetClusterInfo` (SPEC §5.3 item 25) on core 0: group 0's members, leader and term.
pub fn cluster_info(shard: &Shard) -> Result<Response, Status> {
    let group = shard.group(GroupId(0)).ok_or_else(|| Status::unavailable("group 0 is not on this core"))?;
    let metrics = group.raft.metrics();
    let m = metrics.borrow();
    let membership = m.membership_config.membership();
    let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    let leading = m.current_leader == Some(m.id) && m.state == openraft::ServerState::Leader;
    let (watch, data, now) = (shard.node_watch.borrow(), group.data.borrow(), std::time::Instant::now());
    let mut members: Vec<ClusterMember> = membership
        .nodes()
        .map(|(id, node)| ClusterMember {
            node_id: *id,
            address: node.addr.clone(),
            role: if voters.contains(id) { MemberRole::Voter } else { MemberRole::Learner },
            is_leader: m.current_leader == Some(*id),
            heard_ms_ago: (leading && *id != m.id)
                .then(|| {
                    let ack = data.contact.last_ack(*id);
                    watch.silence(now, ack).or_else(|| ack.map(|at| now.saturating_duration_since(at)))
                })
                .flatten()
                .map(|d| d.as_millis() as u64),
            unavailable: watch.is_unavailable(*id),
        })
        .collect();
    if members.is_empty() {
        // A node that never formed a cluster still reports itself.
        members.push(ClusterMember {
            node_id: shard.config.node_id,
            address: shard.config.advertise_addr.clone(),
            role: MemberRole::Voter,
            is_leader: group.is_leader(),
            heard_ms_ago: None,
            unavailable: false,
        });
    }
    members.sort_by_key(|m| m.node_id);
    Ok(Response::GetClusterInfo { members, leader_id: m.current_leader, term: m.current_term })
}

/// One group's Raft status on this replica.
pub fn group_status(shard: &Shard, group: &Group) -> GroupStatusInfo {
    let metrics = group.raft.metrics();
    let m = metrics.borrow();
    let membership = m.membership_config.membership();
    let voters: Vec<u64> = membership.voter_ids().collect();
    let learners: Vec<u64> = membership.learner_ids().collect();
    let role = if let Some(fault) = &group.data.borrow().fault {
        format!("failed: {fault}")
    } else if let Err(fatal) = &m.running_state {
        format!("stopped: {fatal}")
    } else {
        match m.state {
            openraft::ServerState::Leader => "leader",
            openraft::ServerState::Follower => "follower",
            openraft::ServerState::Candidate => "candidate",
            openraft::ServerState::Learner => "learner",
            openraft::ServerState::Shutdown => "shutdown",
        }
        .to_string()
    };
    let (mut voters, learners) = (voters, learners);
    if voters.is_empty() && learners.is_empty() {
        // A group openraft never initialized reports no members: this node is its only voter.
        voters.push(shard.config.node_id);
    }
    let data = group.data.borrow();
    let unhealthy = data.scopes.values().filter(|s| s.meta.health != VaultHealth::Healthy).count();
    let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
    GroupStatusInfo {
        group_id: group.id.0,
        role,
        leader: m.current_leader,
        term: m.current_term,
        last_log_index: m.last_log_index.unwrap_or(0),
        committed_index: commit_index(&m).max(applied),
        applied_index: applied,
        voters,
        learners,
        scopes: data.scopes.len() as u32,
        unhealthy_scopes: unhealthy as u32,
    }
}

/// openraft 0.9 does not publish the commit index. A leader's is the highest index a majority
/// of voters hold (0 elsewhere: callers take the applied index instead). Shared with the
/// `raft_commit_index` metric (scrape.rs).
pub fn commit_index(m: &openraft::RaftMetrics<u64, openraft::BasicNode>) -> u64 {
    let Some(replication) = &m.replication else { return 0 };
    let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
    let mut held: Vec<u64> = voters
        .iter()
        .map(|v| {
            if *v == m.id {
                m.last_log_index.unwrap_or(0)
            } else {
                replication.get(v).copied().flatten().map(|l| l.index).unwrap_or(0)
            }
        })
        .collect();
    held.sort_unstable_by(|a, b| b.cmp(a));
    held.get(voters.len() / 2).copied().unwrap_or(0)
}

/// The status of a group that failed to open on this core.
pub fn failed_group_status(group_id: GroupId, reason: &str) -> GroupStatusInfo {
    GroupStatusInfo {
        group_id: group_id.0,
        role: format!("failed: {reason}"),
        leader: None,
        term: 0,
        last_log_index: 0,
        committed_index: 0,
        applied_index: 0,
        voters: Vec::new(),
        learners: Vec::new(),
        scopes: 0,
        unhealthy_scopes: 0,
    }
}

/// Replication lag of a group this node leads (SPEC §5.3 item 33), from openraft's metrics:
/// `lag_blocks` = the leader's last log index − the follower's matched index.
pub fn local_lag(group: &Group) -> Option<GroupLag> {
    if !group.is_leader() {
        return None;
    }
    let metrics = group.raft.metrics();
    let m = metrics.borrow();
    let last = m.last_log_index.unwrap_or(0);
    let (data, now) = (group.data.borrow(), std::time::Instant::now());
    let mut followers = Vec::new();
    if let Some(replication) = &m.replication {
        for (node, matched) in replication.iter() {
            if *node == m.id {
                continue;
            }
            let matched = matched.map(|l| l.index).unwrap_or(0);
            followers.push(FollowerLag {
                node_id: *node,
                matched_index: matched,
                lag_blocks: last.saturating_sub(matched),
                last_ack_ms: data
                    .contact
                    .last_ack(*node)
                    .map(|at| now.saturating_duration_since(at).as_millis() as u64),
            });
        }
    }
    Some(GroupLag { group_id: group.id.0, leader: Some(m.id), leader_last_index: last, followers })
}

/// A group's lag from its leader: here if this node leads it, else asked of the leader.
pub async fn lag_at_leader(shard: &Shard, group: &Group) -> Result<GroupLag, Status> {
    if let Some(lag) = local_lag(group) {
        return Ok(lag);
    }
    if shard.config.cluster.is_none() {
        return Err(Status::unavailable(format!("group {} has no leader", group.id)));
    }
    let request = Request::LagReport { group_id: Some(group.id.0) };
    let answer = match forward::to_leader(&shard.peers, group, request, shard.config.forward_timeout).await {
        Forwarded::Answer(answer) => answer,
        Forwarded::Local => return local_lag(group).ok_or_else(|| Status::unavailable("leadership moved")),
    };
    match answer? {
        Response::LagReport { groups } => groups
            .into_iter()
            .find(|g| g.group_id == group.id.0)
            .ok_or_else(|| Status::internal(format!("the leader of group {} left it out", group.id))),
        other => Err(Status::internal(format!("LagReport answered with {}", response_name(&other)))),
    }
}

fn response_name(response: &Response) -> String {
    format!("{response:?}").chars().take_while(|c| c.is_alphanumeric()).collect()
}
