//! Leadership transfer (SPEC §5.3 item 32, §11.2 `stepdown`). openraft 0.9 has no transfer call
//! and a voter refuses votes for `election_timeout_max` after the leader's last AppendEntries (a
//! lease), so the leader hands over in steps: it stops proposing blocks, waits until the
//! successor holds its whole log, asks the other voters to hold their elections, stops its
//! heartbeats, waits out the lease, and asks the successor to elect itself. Whatever happens,
//! it then restores its heartbeats and the others' elections. Successors are chosen so that
//! leaderships end spread across the nodes (fewest leaderships first).

// Errors travel as the wire `Status` (SPEC §4.5), built once at this edge.
#![allow(clippy::result_large_err)]

use crate::round::group::Group;
use crate::shard::Shard;
use ledger_wire::messages::{GroupStatusInfo, Request, Response, Status, StatusCode};
use ledger_wire::peer::{LeadershipAction, PeerRequest};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How long the successor may take to receive the leader's last entries.
const CATCH_UP_WAIT: Duration = Duration::from_secs(3);
/// How long the new leader may take to be seen here once the successor started its election.
const ELECTION_WAIT: Duration = Duration::from_secs(3);
/// Margin past the lease before the successor is asked to elect itself.
const LEASE_MARGIN: Duration = Duration::from_millis(40);

thread_local! {
    /// Per group of this core: until when its elections are held (`HoldElections`).
    static HELD_UNTIL: RefCell<HashMap<u32, Instant>> = RefCell::new(HashMap::new());
}

/// Whether `group`'s elections are held on this core now (`HoldElections`).
pub fn elections_held(group: u32) -> bool {
    HELD_UNTIL.with(|h| h.borrow().get(&group).is_some_and(|until| Instant::now() < *until))
}

/// Picks a successor for each group in `to_move` among its other voters: the node with the
/// fewest leaderships (counting earlier picks), ties to the lowest id; a node in `avoid` (drained,
/// D70) only when the group has no other voter. Groups with no other voter are left out.
pub fn plan_successors(
    statuses: &[GroupStatusInfo],
    to_move: &[u32],
    leaving: u64,
    avoid: &std::collections::BTreeSet<u64>,
) -> BTreeMap<u32, u64> {
    let mut leads: BTreeMap<u64, usize> = BTreeMap::new();
    for s in statuses {
        for v in &s.voters {
            leads.entry(*v).or_default();
        }
        if let Some(l) = s.leader {
            *leads.entry(l).or_default() += 1;
        }
    }
    let mut plan = BTreeMap::new();
    for g in to_move {
        let Some(status) = statuses.iter().find(|s| s.group_id == *g) else { continue };
        let pick = status
            .voters
            .iter()
            .filter(|v| **v != leaving)
            .min_by_key(|v| (avoid.contains(v), leads.get(v).copied().unwrap_or(0), **v))
            .copied();
        if let Some(successor) = pick {
            *leads.entry(successor).or_default() += 1;
            if let Some(n) = leads.get_mut(&leaving) {
                *n = n.saturating_sub(1);
            }
            plan.insert(*g, successor);
        }
    }
    plan
}

/// Hands `group`'s leadership to `successor`; returns the leader seen afterwards (the successor,
/// or in a race another voter — never this node).
pub async fn hand_over(shard: &Shard, group: &Rc<Group>, successor: u64) -> Result<u64, Status> {
    let me = shard.config.node_id;
    if !group.is_leader() {
        return Err(Status::new(
            StatusCode::FailedPrecondition,
            format!("this node does not lead group {}", group.id),
        ));
    }
    let (voters, successor_addr) = {
        let metrics = group.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voters: Vec<(u64, String)> = membership
            .voter_ids()
            .filter(|v| *v != me)
            .map(|v| (v, membership.get_node(&v).map(|n| n.addr.clone()).unwrap_or_default()))
            .collect();
        let addr = voters.iter().find(|(v, _)| *v == successor).map(|(_, a)| a.clone());
        (voters, addr)
    };
    let Some(successor_addr) = successor_addr else {
        return Err(Status::invalid(format!("node {successor} is not a voter of group {}", group.id)));
    };
    group.set_handing_over(true);
    let result = hand_over_steps(shard, group, successor, &successor_addr, &voters).await;
    // Whatever happened: heartbeats on again (a follower ignores them; in a cluster the core's
    // heartbeat tick sends them, not openraft's timer), blocks again, and the other voters may
    // elect again.
    group.raft.runtime_config().heartbeat(group.config().cluster.is_none());
    group.set_handing_over(false);
    for (v, addr) in voters.iter().filter(|(v, _)| *v != successor) {
        let _ = leadership_call(shard, group, *v, addr, LeadershipAction::HoldElections { ms: 0 }).await;
    }
    let new_leader = result?;
    crate::ops::vault_repair::note_event_at(
        ledger_wire::messages::EventLevel::Info,
        "leader_transfer",
        Some(group.id.0),
        None,
        format!("group {} leadership moved from node {me} to node {new_leader}", group.id),
    );
    Ok(new_leader)
}

async fn hand_over_steps(
    shard: &Shard,
    group: &Group,
    successor: u64,
    successor_addr: &str,
    voters: &[(u64, String)],
) -> Result<u64, Status> {
    let me = shard.config.node_id;
    wait_caught_up(group, successor).await?;
    let election_max = Duration::from_millis(group.raft.config().election_timeout_max);
    let hold_ms = (election_max * 4 + ELECTION_WAIT).as_millis() as u32;
    for (v, addr) in voters.iter().filter(|(v, _)| *v != successor) {
        // Best effort: a voter that does not hold may win instead, which still moves leadership.
        let _ =
            leadership_call(shard, group, *v, addr, LeadershipAction::HoldElections { ms: hold_ms }).await;
    }
    group.raft.runtime_config().heartbeat(false);
    glommio::timer::sleep(election_max + LEASE_MARGIN).await;
    leadership_call(shard, group, successor, successor_addr, LeadershipAction::ElectNow).await?;
    let deadline = Instant::now() + ELECTION_WAIT;
    loop {
        let leader = group.raft.metrics().borrow().current_leader;
        if let Some(l) = leader.filter(|l| *l != me) {
            return Ok(l);
        }
        if Instant::now() >= deadline {
            return Err(Status::unavailable(format!(
                "group {}: node {successor} did not take over within {ELECTION_WAIT:?}",
                group.id
            )));
        }
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (no new blocks are proposed meanwhile) until `successor` holds every entry this leader
/// has.
async fn wait_caught_up(group: &Group, successor: u64) -> Result<(), Status> {
    let deadline = Instant::now() + CATCH_UP_WAIT;
    loop {
        let (last, matched) = {
            let metrics = group.raft.metrics();
            let m = metrics.borrow();
            let matched = m.replication.as_ref().and_then(|r| r.get(&successor).copied().flatten());
            (m.last_log_index.unwrap_or(0), matched.map(|l| l.index).unwrap_or(0))
        };
        if matched >= last && last > 0 {
            return Ok(());
        }
        if !group.is_leader() {
            return Err(Status::unavailable(format!(
                "group {}: lost leadership while handing it over",
                group.id
            )));
        }
        if Instant::now() >= deadline {
            return Err(Status::unavailable(format!(
                "group {}: node {successor} is behind ({matched} of {last}) after {CATCH_UP_WAIT:?}",
                group.id
            )));
        }
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

async fn leadership_call(
    shard: &Shard,
    group: &Group,
    node: u64,
    addr: &str,
    action: LeadershipAction,
) -> Result<(), Status> {
    let request = Request::Peer(Box::new(PeerRequest::Leadership { group_id: group.id.0, action }));
    match shard.peers.call(node, addr, request, shard.config.forward_timeout).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) => Err(status),
        Err(e) => Err(Status::unavailable(format!("group {}: node {node}: {e}", group.id))),
    }
}

/// The voter's side of a transfer (`PeerRequest::Leadership`).
pub async fn on_leadership_request(group: &Rc<Group>, action: LeadershipAction) -> Result<(), Status> {
    match action {
        LeadershipAction::ElectNow => {
            HELD_UNTIL.with(|h| h.borrow_mut().remove(&group.id.0));
            group
                .raft
                .trigger()
                .elect()
                .await
                .map_err(|e| Status::unavailable(format!("group {}: election: {e}", group.id)))
        }
        LeadershipAction::HoldElections { ms } => {
            // The group's election timer (raft/election.rs, D93) looks at the hold; a later hold
            // or release replaces this one.
            if ms == 0 {
                HELD_UNTIL.with(|h| h.borrow_mut().remove(&group.id.0));
            } else {
                let until = Instant::now() + Duration::from_millis(u64::from(ms));
                HELD_UNTIL.with(|h| h.borrow_mut().insert(group.id.0, until));
            }
            Ok(())
        }
    }
}

/// Asks each of `nodes` (members of `_system`, by their address there) `GetNodeInfo`: the
/// members that answered in time, each with whether it is drained (D70). Shared by the
/// balancer and by a stepdown's choice of successors.
pub async fn ask_members(shard: &Shard, nodes: impl IntoIterator<Item = u64>) -> BTreeMap<u64, bool> {
    let addresses: Vec<(u64, String)> = match shard.group(ledger_core::types::GroupId(0)) {
        Some(group0) => {
            let metrics = group0.raft.metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            nodes.into_iter().filter_map(|v| membership.get_node(&v).map(|n| (v, n.addr.clone()))).collect()
        }
        None => Vec::new(),
    };
    let timeout = shard.config.forward_timeout.min(Duration::from_secs(2));
    let mut answered = BTreeMap::new();
    for (node, addr) in addresses {
        if let Ok(Ok(Response::GetNodeInfo { draining, is_cluster_member: true, .. })) =
            shard.peers.call(node, &addr, Request::GetNodeInfo, timeout).await
        {
            answered.insert(node, draining);
        }
    }
    answered
}

/// The voters of the groups in `led` (this node aside) that say they are drained; one that does
/// not answer in time counts as not drained.
async fn draining_voters(
    shard: &Shard,
    statuses: &[GroupStatusInfo],
    led: &[u32],
) -> std::collections::BTreeSet<u64> {
    let me = shard.config.node_id;
    let voters: std::collections::BTreeSet<u64> = statuses
        .iter()
        .filter(|s| led.contains(&s.group_id))
        .flat_map(|s| s.voters.iter().copied())
        .filter(|v| *v != me)
        .collect();
    ask_members(shard, voters)
        .await
        .into_iter()
        .filter(|(_, drained)| *drained)
        .map(|(node, _)| node)
        .collect()
}

/// `TransferLeadership` on node `node_id` (core 0): every group it leads (or `group_id`), each
/// handed to `successor` or else to the voter with the fewest leaderships. A whole node moved
/// with no successor named is drained for `LEADER_DRAIN` (D70): an operator's stepdown before
/// maintenance is not undone by the leader balancer.
pub async fn transfer(
    shard: &Shard,
    statuses: Vec<GroupStatusInfo>,
    group_id: Option<u32>,
    successor: Option<u64>,
) -> Result<Response, Status> {
    let me = shard.config.node_id;
    let led: Vec<u32> = statuses
        .iter()
        .filter(|s| s.leader == Some(me) && group_id.is_none_or(|g| g == s.group_id))
        .map(|s| s.group_id)
        .collect();
    if let Some(g) = group_id {
        if !statuses.iter().any(|s| s.group_id == g) {
            return Err(Status::not_found(format!("group {g} is not hosted on node {me}")));
        }
    }
    if group_id.is_none() && successor.is_none() {
        shard.drain_for(crate::constants::LEADER_DRAIN);
    }
    let plan = match successor {
        Some(to) => {
            if to == me {
                return Err(Status::invalid(format!("node {me} cannot hand its leadership to itself")));
            }
            led.iter()
                .filter(|g| statuses.iter().any(|s| s.group_id == **g && s.voters.contains(&to)))
                .map(|g| (*g, to))
                .collect()
        }
        None => {
            let avoid = draining_voters(shard, &statuses, &led).await;
            plan_successors(&statuses, &led, me, &avoid)
        }
    };
    let mut not_moved: Vec<u32> = led.iter().filter(|g| !plan.contains_key(g)).copied().collect();
    let mut waits = Vec::new();
    for (g, successor) in &plan {
        let (tx, rx) = futures::channel::oneshot::channel();
        let msg = crate::admin::internal::InternalMsg::HandOver {
            group: ledger_core::types::GroupId(*g),
            successor: *successor,
            reply: tx,
        };
        match crate::admin::requests::send_to_owner(shard, ledger_core::types::GroupId(*g), msg).await {
            Ok(()) => waits.push((*g, rx)),
            Err(_) => not_moved.push(*g),
        }
    }
    let mut moved = Vec::new();
    for (g, rx) in waits {
        match rx.await {
            Ok(Ok(leader)) => moved.push((g, leader)),
            Ok(Err(status)) => {
                tracing::warn!(group = g, error = %status.message, "leadership transfer failed");
                not_moved.push(g);
            }
            Err(_) => not_moved.push(g),
        }
    }
    not_moved.sort_unstable();
    Ok(Response::TransferLeadership { moved, not_moved })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(group: u32, leader: u64, voters: &[u64]) -> GroupStatusInfo {
        GroupStatusInfo {
            group_id: group,
            role: "leader".into(),
            leader: Some(leader),
            term: 1,
            last_log_index: 0,
            committed_index: 0,
            applied_index: 0,
            voters: voters.to_vec(),
            learners: Vec::new(),
            scopes: 0,
            unhealthy_scopes: 0,
        }
    }

    /// Successors spread by fewest leaderships; a drained node is picked only when the group
    /// has no other voter.
    #[test]
    fn t01_successors_spread_and_avoid_drained_nodes() {
        let statuses = [status(0, 1, &[1, 2, 3]), status(1, 1, &[1, 2, 3]), status(2, 2, &[1, 2, 3])];
        let none = std::collections::BTreeSet::new();
        let plan = plan_successors(&statuses, &[0, 1], 1, &none);
        assert_eq!(
            plan,
            BTreeMap::from([(0, 3), (1, 2)]),
            "3 leads none and takes one; then 2 and 3 tie and the lower id wins"
        );
        let drained = std::collections::BTreeSet::from([3]);
        assert_eq!(plan_successors(&statuses, &[0, 1], 1, &drained), BTreeMap::from([(0, 2), (1, 2)]));
        let pair = [status(0, 1, &[1, 3])];
        assert_eq!(plan_successors(&pair, &[0], 1, &drained), BTreeMap::from([(0, 3)]), "no other voter");
    }
}
