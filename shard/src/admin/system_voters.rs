//! `_system`'s voters (SPEC §10.4, D75): group 0 has at most five voters, the oldest members by
//! join order; every other member follows it as a learner (and is still a voter of every data
//! group). A node that joins a group 0 of five voters stays a learner there; when a voter leaves
//! or is removed, the oldest live learner is promoted. The `_system` leader keeps this true at
//! each registry-keeper tick (`keep`), one change at a time, behind the registry's admin lock,
//! so a change left half-done by a crash or a lost leadership is finished by the next leader.
//!
//! Join order: a node record's `version` is the `_system` height that wrote it (a join writes
//! it once every group has the node), so an earlier join has a lower version; the records of a
//! bootstrap are written together and ordered by node id (lower id = earlier start, §10.1).

use crate::admin::membership::while_leading;
use crate::admin::registry as reg;
use crate::round::group::Group;
use crate::shard::Shard;
use ledger_core::state::ScopeState;
use ledger_core::types::GroupId;
use openraft::ChangeMembers;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// SPEC §10.4: `_system` voters at most.
pub const SYSTEM_VOTERS_MAX: usize = 5;

/// The one change that brings group 0 closer to §10.4's rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoterChange {
    /// A recorded member that is in no role of group 0 (a bootstrap of more than five nodes
    /// initializes group 0 with the first five): add it as a learner.
    AddLearner { node_id: u64, address: String },
    /// Fewer than five voters while a live learner waits: promote the oldest.
    Promote { node_id: u64 },
}

/// The recorded members (`node:{id}`) with their addresses, oldest first.
pub fn members_in_join_order(system: &ScopeState) -> Vec<(u64, String)> {
    let rows = system
        .entities_from(std::ops::Bound::Included("node:"))
        .take_while(|(key, _)| key.starts_with("node:"))
        .map(|(_, row)| (row.version, row.value.as_slice()));
    join_order(rows)
}

/// Orders node records (`(version, encoded record)`) by version, then node id.
fn join_order<'a>(rows: impl Iterator<Item = (u64, &'a [u8])>) -> Vec<(u64, String)> {
    let mut members: Vec<(u64, u64, String)> = rows
        .filter_map(|(version, bytes)| {
            let record = reg::decode::<reg::NodeRecord>(bytes)?;
            Some((version, record.node_id, record.address))
        })
        .collect();
    members.sort();
    members.into_iter().map(|(_, id, address)| (id, address)).collect()
}

/// The change group 0 needs now, if any. `members`: the recorded members, oldest first;
/// `live`: whether the leader heard from a node recently.
pub fn next_change(
    voters: &BTreeSet<u64>,
    learners: &BTreeSet<u64>,
    members: &[(u64, String)],
    live: impl Fn(u64) -> bool,
) -> Option<VoterChange> {
    if let Some((node_id, address)) =
        members.iter().find(|(id, _)| !voters.contains(id) && !learners.contains(id))
    {
        return Some(VoterChange::AddLearner { node_id: *node_id, address: address.clone() });
    }
    if voters.len() >= SYSTEM_VOTERS_MAX {
        return None;
    }
    oldest_learner(learners, members, live).map(|node_id| VoterChange::Promote { node_id })
}

/// The learner to promote: the oldest recorded one that is live. A learner without a record is
/// still joining (its record is written last) and is left to its join.
pub fn oldest_learner(
    learners: &BTreeSet<u64>,
    members: &[(u64, String)],
    live: impl Fn(u64) -> bool,
) -> Option<u64> {
    members.iter().map(|(id, _)| *id).find(|id| learners.contains(id) && live(*id))
}

/// How recently a learner must have answered the leader to be promoted.
fn live_window(group: &Group) -> Duration {
    Duration::from_millis(group.config().raft_election_max_ms.saturating_mul(2).max(1_000))
}

/// A learner within this many entries of the leader's log has caught up (SPEC §10.6).
const CAUGHT_UP_ENTRIES: u64 = 100;

/// Whether the leader of `group` heard from `node` within the live window and `node` has
/// caught up with its log, so that promoting it adds a voter that can vote at once.
pub fn answered_lately(group: &Group, node: u64) -> bool {
    let window = live_window(group);
    let heard = {
        let data = group.data.borrow();
        data.contact.last_ack(node).is_some_and(|at| Instant::now().saturating_duration_since(at) <= window)
    };
    let metrics = group.raft.metrics();
    let m = metrics.borrow();
    let last = m.last_log_index.unwrap_or(0);
    let matched = m.replication.as_ref().and_then(|r| r.get(&node).copied().flatten()).map_or(0, |l| l.index);
    heard && matched + CAUGHT_UP_ENTRIES >= last
}

/// The recorded members of `_system` as `group` (group 0) holds them, oldest first.
pub fn recorded_members(group: &Group) -> Vec<(u64, String)> {
    let data = group.data.borrow();
    data.scopes.get(&crate::admin::requests::SYSTEM_SCOPE).map(members_in_join_order).unwrap_or_default()
}

/// On the `_system` leader, at each registry-keeper tick: makes the one change §10.4 needs now,
/// unless a join, leave or other registry change holds the admin lock.
pub async fn keep(shard: &Shard) {
    let Some(group) = shard.group(GroupId(0)) else { return };
    if !group.is_leader() || shard.config.cluster.is_none() {
        return;
    }
    let Some(_serial) = shard.admin_lock.try_lock() else { return };
    let (voters, learners) = {
        let metrics = group.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        if membership.get_joint_config().len() > 1 {
            return;
        }
        (
            membership.voter_ids().collect::<BTreeSet<u64>>(),
            membership.learner_ids().collect::<BTreeSet<u64>>(),
        )
    };
    let members = recorded_members(&group);
    let unavailable = |id: u64| shard.node_watch.borrow().is_unavailable(id);
    let Some(change) =
        next_change(&voters, &learners, &members, |id| answered_lately(&group, id) && !unavailable(id))
    else {
        return;
    };
    let Some(_one_at_a_time) = group.membership_lock.try_lock() else { return };
    match change {
        VoterChange::AddLearner { node_id, address } => {
            // Not blocking: the learner catches up in the background and is promoted, if a
            // voter is missing, once it answers.
            let node = openraft::BasicNode { addr: address };
            match while_leading(&group, "adding the learner", group.raft.add_learner(node_id, node, false))
                .await
            {
                Ok(_) => crate::event!(info, "system_learner_added", node = node_id),
                Err(e) => crate::event!(warn, "system_learner_not_added", node = node_id, error = %e.message),
            }
        }
        VoterChange::Promote { node_id } => {
            let promote =
                group.raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node_id])), false);
            match while_leading(&group, "promoting", promote).await {
                Ok(_) => crate::event!(info, "system_learner_promoted", node = node_id),
                Err(e) => {
                    crate::event!(warn, "system_learner_not_promoted", node = node_id, error = %e.message)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    fn members(ids: &[u64]) -> Vec<(u64, String)> {
        ids.iter().map(|id| (*id, format!("10.0.0.{id}:7000"))).collect()
    }

    #[test]
    fn t01_five_voters_and_every_member_placed_need_nothing() {
        let all = members(&[1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(next_change(&set(&[1, 2, 3, 4, 5]), &set(&[6, 7]), &all, |_| true), None);
        assert_eq!(next_change(&set(&[1, 2, 3]), &set(&[]), &members(&[1, 2, 3]), |_| true), None);
    }

    #[test]
    fn t02_a_recorded_member_outside_group_0_is_added_as_a_learner_first() {
        // A bootstrap of seven: group 0 starts with the first five.
        let all = members(&[1, 2, 3, 4, 5, 6, 7]);
        let change = next_change(&set(&[1, 2, 3, 4, 5]), &set(&[]), &all, |_| true);
        assert_eq!(change, Some(VoterChange::AddLearner { node_id: 6, address: "10.0.0.6:7000".into() }));
    }

    #[test]
    fn t03_a_missing_voter_is_replaced_by_the_oldest_live_learner() {
        // Join order 9 before 6 before 7 (records written at increasing heights).
        let order = members(&[1, 2, 3, 4, 9, 6, 7]);
        let (voters, learners) = (set(&[1, 2, 3, 4]), set(&[6, 7, 9]));
        assert_eq!(
            next_change(&voters, &learners, &order, |_| true),
            Some(VoterChange::Promote { node_id: 9 })
        );
        assert_eq!(
            next_change(&voters, &learners, &order, |id| id != 9),
            Some(VoterChange::Promote { node_id: 6 })
        );
        assert_eq!(next_change(&voters, &learners, &order, |_| false), None);
    }

    #[test]
    fn t04_a_learner_still_joining_is_left_to_its_join() {
        // Node 8 is a learner of group 0 but has no record yet: its join is running.
        let order = members(&[1, 2, 3, 4]);
        assert_eq!(next_change(&set(&[1, 2, 3, 4]), &set(&[8]), &order, |_| true), None);
    }

    #[test]
    fn t05_join_order_is_the_record_version_then_the_node_id() {
        let record = |id: u64| reg::encode(&reg::NodeRecord { node_id: id, address: format!("a{id}") });
        let rows =
            [(2, record(30)), (2, record(20)), (1, record(50)), (7, record(10)), (3, b"junk".to_vec())];
        let order: Vec<u64> =
            join_order(rows.iter().map(|(v, b)| (*v, b.as_slice()))).into_iter().map(|(id, _)| id).collect();
        assert_eq!(order, vec![50, 20, 30, 10]);
    }
}
