//! Sending a request this node cannot answer to the group's leader (SPEC §8.1 step 3): writes,
//! linearizable reads and registry changes. The leader answers on this node's peer connection and
//! the answer goes back to the client's connection unchanged. A stale leader hint costs one more
//! attempt (at most `FORWARD_ATTEMPTS_MAX`); the node that receives a forwarded request never
//! forwards it again, it answers `NotLeader` with its own hint instead. A node outside the group
//! (SPEC §10.5, `outside.rs`) sends everything to the members and follows their hints.

use crate::constants::FORWARD_ATTEMPTS_MAX;
use crate::peer::pool::{PeerError, PeerPool};
use crate::round::group::Group;
use ledger_wire::messages::{Request, Response, Status, StatusCode};
use std::time::{Duration, Instant};

/// Where a forwarded request ended. Built once per forwarded request and moved straight into
/// the reply, so the size of the answer variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum Forwarded {
    /// The leader's answer (or why no leader could answer in time).
    Answer(Result<Response, Status>),
    /// This node became the leader meanwhile: answer it here.
    Local,
}

/// Sends `request` to the leader of `group` and returns its answer, waiting up to `timeout` for
/// a leader to be known. Transport failures and stale hints are retried: a write carries its
/// client sequence, so a retry of one that did apply is answered from the idempotency state
/// (SPEC §6).
pub async fn to_leader(pool: &PeerPool, group: &Group, request: Request, timeout: Duration) -> Forwarded {
    to_leader_for(pool, group, request, timeout, None).await
}

/// `to_leader` for a client's request: the leader records `on_behalf_of` (the credential id the
/// client authenticated with) as the actor, and drops the request once `timeout` has passed.
pub async fn to_leader_for(
    pool: &PeerPool,
    group: &Group,
    request: Request,
    timeout: Duration,
    on_behalf_of: Option<String>,
) -> Forwarded {
    let deadline = Instant::now() + timeout;
    let mut last = format!("group {} has no known leader", group.id);
    let mut refusals = 0;
    while refusals < FORWARD_ATTEMPTS_MAX {
        let Some((leader, addr)) = known_leader(group, deadline).await else { break };
        if leader == pool.self_id() {
            if group.is_leader() {
                return Forwarded::Local;
            }
            // Elected but not yet serving as leader (or just deposed): look again shortly.
            pause(group).await;
            if Instant::now() >= deadline {
                break;
            }
            continue;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let outside = group.is_outside();
        match pool.call_for(leader, &addr, request.clone(), remaining, on_behalf_of.clone()).await {
            Ok(Err(status)) if status.code == StatusCode::NotLeader && outside => {
                // A member that does not lead names the leader if it knows one.
                last = status.message;
                refusals += 1;
                match status.leader_hint.filter(|(id, _)| *id != leader) {
                    // Asked again at once, at the named leader.
                    Some(hint) => group.outside.borrow_mut().learn_leader(hint),
                    None => {
                        group.outside.borrow_mut().failed(leader);
                        pause(group).await;
                    }
                }
            }
            Ok(Err(status)) if status.code == StatusCode::NotLeader => {
                // The hint was stale (or that node is between elections): wait for this node to
                // learn another leader, at most an election's time, then ask again.
                last = status.message;
                refusals += 1;
                let election = Duration::from_millis(group.raft.config().election_timeout_max);
                leader_changed(group, leader, deadline.min(Instant::now() + election)).await;
            }
            Ok(answer) => return Forwarded::Answer(answer),
            Err(e @ PeerError::Timeout { .. }) => {
                last = e.to_string();
                break;
            }
            Err(e) if outside => {
                last = e.to_string();
                group.outside.borrow_mut().failed(leader);
                pause(group).await;
            }
            Err(e) => {
                // The leader is gone or unreachable: wait for this node to see another leader
                // (an election takes about one election timeout) rather than spend attempts.
                last = e.to_string();
                leader_changed(group, leader, deadline).await;
            }
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    let mut status = Status::unavailable(format!("could not reach the leader of group {}: {last}", group.id));
    status.leader_hint = group.route_hint();
    Forwarded::Answer(Err(status))
}

/// The group's leader once this node knows one (before `deadline`); outside the group, the
/// member to ask (`Group::route_hint`).
async fn known_leader(group: &Group, deadline: Instant) -> Option<(u64, String)> {
    loop {
        if let Some(hint) = group.route_hint() {
            return Some(hint);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return None;
        }
        // Outside the group the members arrive with `_system`'s list, not in the metrics:
        // look again shortly.
        let step = remaining.min(Duration::from_millis(OUTSIDE_ROUTE_POLL_MS));
        let _ = group.raft.wait(Some(step)).metrics(|m| m.current_leader.is_some(), "a known leader").await;
    }
}

/// How often a node outside a group looks for its members while it knows none.
const OUTSIDE_ROUTE_POLL_MS: u64 = 50;

/// Waits until this node knows a leader other than `old` (or the deadline passes).
async fn leader_changed(group: &Group, old: u64, deadline: Instant) {
    let remaining = deadline.saturating_duration_since(Instant::now());
    let _ = group
        .raft
        .wait(Some(remaining))
        .metrics(|m| m.current_leader.is_some_and(|l| l != old), "a new leader")
        .await;
}

/// A heartbeat's time: long enough for news of a new leader to arrive.
async fn pause(group: &Group) {
    let heartbeat = group.raft.config().heartbeat_interval;
    glommio::timer::sleep(Duration::from_millis(heartbeat.max(10))).await;
}
