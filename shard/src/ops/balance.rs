//! Leader balancing (SPEC §10.5: "Leader balancing SHOULD spread group leaderships evenly across
//! nodes (periodic, via TransferLeadership)", D70). After a failover the survivors lead
//! everything, and a node that comes back leads nothing until something moves. Every
//! `leader_balance_interval_secs` the `_system` leader looks at who leads each group; when the
//! same move is due at two looks in a row, it makes it: one group from the node leading the most
//! to the live voter leading the fewest, when they differ by two or more. A node drained by a
//! whole-node stepdown gets nothing and gives up what it leads; a node that does not answer, or
//! that `_system`'s leader marked unavailable, is left out, and nothing moves while a group has
//! no leader or a leader that is not live.

use crate::shard::Shard;
use ledger_core::types::GroupId;
use ledger_wire::messages::{GroupStatusInfo, Response};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Weak;
use std::time::Duration;

/// One leadership to move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    pub group: u32,
    pub from: u64,
    pub to: u64,
}

/// The move due now, if any. `live`: the nodes that answered (this one included); `draining`:
/// those of them drained by a stepdown.
pub fn plan_move(
    statuses: &[GroupStatusInfo],
    live: &BTreeSet<u64>,
    draining: &BTreeSet<u64>,
) -> Option<Move> {
    if statuses.is_empty() || statuses.iter().any(|s| !s.leader.is_some_and(|l| live.contains(&l))) {
        return None;
    }
    let takers: BTreeSet<u64> = live.difference(draining).copied().collect();
    let mut leads: BTreeMap<u64, usize> = live.iter().map(|n| (*n, 0)).collect();
    for leader in statuses.iter().filter_map(|s| s.leader) {
        *leads.entry(leader).or_default() += 1;
    }
    // Givers in order: a drained node that leads anything, then the most loaded (lowest id first).
    let mut givers: Vec<(u64, usize)> =
        leads.iter().filter(|(_, n)| **n > 0).map(|(id, n)| (*id, *n)).collect();
    givers.sort_by_key(|(id, n)| (!draining.contains(id), std::cmp::Reverse(*n), *id));
    for (from, count) in givers {
        // A drained node gives up everything; another gives only to a node two behind it.
        let drained = draining.contains(&from);
        let mut led: Vec<&GroupStatusInfo> = statuses.iter().filter(|s| s.leader == Some(from)).collect();
        // Data groups first: moving `_system` moves the balancer too.
        led.sort_by_key(|s| (s.group_id == 0, s.group_id));
        for status in led {
            let to = status
                .voters
                .iter()
                .filter(|v| **v != from && takers.contains(v))
                .min_by_key(|v| (leads.get(v).copied().unwrap_or(0), **v));
            if let Some(&to) = to {
                if drained || count >= leads.get(&to).copied().unwrap_or(0) + 2 {
                    return Some(Move { group: status.group_id, from, to });
                }
            }
        }
    }
    None
}

/// The balancer on core 0 of a cluster node; it acts only while this node leads `_system`.
pub async fn balance_leaders(shard: Weak<Shard>) {
    let Some(interval) = shard.upgrade().map(|s| Duration::from_secs(s.config.leader_balance_interval_secs))
    else {
        return;
    };
    if interval.is_zero() {
        return;
    }
    let mut due: Option<Move> = None;
    loop {
        glommio::timer::sleep(interval).await;
        let Some(shard) = shard.upgrade() else { return };
        if shard.is_closing() {
            return;
        }
        let Some(group0) = shard.group(GroupId(0)).filter(|g| g.is_leader()) else {
            due = None;
            continue;
        };
        let (live, draining) = answering_members(&shard, &group0).await;
        let statuses = crate::admin::requests::group_statuses(&shard).await;
        let planned = plan_move(&statuses, &live, &draining);
        if planned.is_none() || planned != due {
            // A move is made only when two looks in a row agree on it: a failover in progress, or
            // one just over, settles first.
            due = planned;
            continue;
        }
        due = None;
        let Some(m) = planned else { continue };
        let moved = make_move(&shard, m).await;
        match moved {
            Ok(leader) => crate::event!(info, "leader_balanced", group = m.group, from = m.from, to = leader),
            Err(e) => {
                crate::event!(warn, "leader_balance_failed", group = m.group, from = m.from, to = m.to, error = %e)
            }
        }
    }
}

/// The members of `_system` that answer `GetNodeInfo` now, and which of them are draining. A
/// member `_system`'s leader marked unavailable is not asked.
async fn answering_members(
    shard: &Shard,
    group0: &crate::round::group::Group,
) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let me = shard.config.node_id;
    let members: Vec<u64> = {
        let metrics = group0.raft.metrics();
        let m = metrics.borrow();
        let watch = shard.node_watch.borrow();
        let voters = m.membership_config.membership().voter_ids();
        voters.filter(|v| *v != me && !watch.is_unavailable(*v)).collect()
    };
    let mut live = BTreeSet::from([me]);
    let mut draining = BTreeSet::new();
    if shard.is_draining() {
        draining.insert(me);
    }
    for (node, drained) in crate::ops::leadership::ask_members(shard, members).await {
        live.insert(node);
        if drained {
            draining.insert(node);
        }
    }
    (live, draining)
}

/// Makes `m` through the group's leader; returns the new leader.
async fn make_move(shard: &Shard, m: Move) -> Result<u64, String> {
    let answer = if m.from == shard.config.node_id {
        let statuses = crate::admin::requests::group_statuses(shard).await;
        crate::ops::leadership::transfer(shard, statuses, Some(m.group), Some(m.to)).await
    } else {
        crate::admin::requests::transfer_elsewhere(shard, m.from, Some(m.group), Some(m.to)).await
    };
    match answer {
        Ok(Response::TransferLeadership { moved, .. }) => {
            moved.first().map(|(_, leader)| *leader).ok_or_else(|| format!("group {} did not move", m.group))
        }
        Ok(other) => Err(format!("unexpected answer {:.80}", format!("{other:?}"))),
        Err(status) => Err(status.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(group: u32, leader: Option<u64>, voters: &[u64]) -> GroupStatusInfo {
        GroupStatusInfo {
            group_id: group,
            role: "follower".into(),
            leader,
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

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    const ALL: &[u64] = &[1, 2, 3];

    /// Spread within one: nothing moves; a node leading two more than another gives one, a data
    /// group before `_system`.
    #[test]
    fn t01_moves_only_past_a_difference_of_two() {
        let spread = [
            status(0, Some(1), ALL),
            status(1, Some(2), ALL),
            status(2, Some(3), ALL),
            status(3, Some(1), ALL),
        ];
        assert_eq!(plan_move(&spread, &set(ALL), &set(&[])), None);
        let piled = [status(0, Some(1), ALL), status(1, Some(1), ALL), status(2, Some(2), ALL)];
        assert_eq!(plan_move(&piled, &set(ALL), &set(&[])), Some(Move { group: 1, from: 1, to: 3 }));
    }

    /// A drained node gives up what it leads and gets nothing; a node that did not answer gets
    /// nothing; a group without a live leader stops everything.
    #[test]
    fn t02_drained_silent_and_leaderless() {
        let one_each = [status(0, Some(1), ALL), status(1, Some(2), ALL), status(2, Some(3), ALL)];
        assert_eq!(plan_move(&one_each, &set(ALL), &set(&[3])), Some(Move { group: 2, from: 3, to: 1 }));
        let drained_leads_least = [
            status(0, Some(1), ALL),
            status(1, Some(1), ALL),
            status(2, Some(2), ALL),
            status(3, Some(2), ALL),
            status(4, Some(3), ALL),
        ];
        assert_eq!(
            plan_move(&drained_leads_least, &set(ALL), &set(&[3])),
            Some(Move { group: 4, from: 3, to: 1 }),
            "a drained node gives up its group even to nodes that lead more"
        );
        let piled = [status(0, Some(1), ALL), status(1, Some(1), ALL), status(2, Some(2), ALL)];
        assert_eq!(plan_move(&piled, &set(ALL), &set(&[3])), None, "3 is drained, 1 and 2 differ by one");
        assert_eq!(plan_move(&piled, &set(&[1, 2]), &set(&[])), None, "3 did not answer");
        let leaderless = [status(0, Some(1), ALL), status(1, Some(1), ALL), status(2, None, ALL)];
        assert_eq!(plan_move(&leaderless, &set(ALL), &set(&[])), None);
        let dead_leader = [status(0, Some(1), ALL), status(1, Some(1), ALL), status(2, Some(3), ALL)];
        assert_eq!(plan_move(&dead_leader, &set(&[1, 2]), &set(&[])), None);
    }

    /// Only a voter of the group can take it.
    #[test]
    fn t03_only_to_a_voter_of_the_group() {
        let piled = [status(0, Some(1), ALL), status(1, Some(1), &[1, 2]), status(2, Some(1), &[1, 2])];
        assert_eq!(plan_move(&piled, &set(ALL), &set(&[])), Some(Move { group: 1, from: 1, to: 2 }));
        let stuck = [status(1, Some(1), &[1, 2]), status(2, Some(1), &[1, 2]), status(3, Some(2), &[1, 2])];
        assert_eq!(plan_move(&stuck, &set(ALL), &set(&[])), None, "2 leads one, 1 two: within one of 2");
    }
}
