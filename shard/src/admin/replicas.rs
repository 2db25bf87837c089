//! How many members each data group has, and who is added when it has too few (SPEC §10.5,
//! D90). A data group's voters are `replication_factor` nodes (at most the cluster's size). The
//! `_system` leader adds a joining node only to the groups below that; a node that leaves or is
//! removed is first replaced, in each of its groups, by the live node hosting the fewest groups,
//! so a group of two voters can lose one; and any group left short (no spare node then, a
//! failed add) is topped up once a spare exists; once none is short, replicas move one at a
//! time from the node hosting the most groups to the one hosting the fewest (`keep`). The pure planning is `ReplicaView`;
//! the changes themselves are `requests::change_group`'s.

use crate::admin::registry as reg;
use crate::shard::Shard;
use ledger_core::state::ScopeState;
use ledger_core::types::GroupId;
use ledger_wire::peer::MembershipChange;
use std::collections::{BTreeMap, BTreeSet};

/// `_system`'s view of the data groups' members and the nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaView {
    /// The cluster's replication factor (0: every node in every data group).
    pub replication_factor: u32,
    /// Data group → its members.
    pub groups: BTreeMap<u32, Vec<u64>>,
    /// Every node with its address.
    pub nodes: BTreeMap<u64, String>,
}

impl ReplicaView {
    pub fn read(system: &ScopeState) -> ReplicaView {
        let nodes = reg::node_addresses(system);
        let groups = reg::groups(system)
            .into_iter()
            .filter(|g| g.group_id != 0)
            .map(|g| (g.group_id, g.members))
            .collect();
        ReplicaView { replication_factor: reg::replication_factor(system), groups, nodes }
    }

    /// The voters a data group should have in a cluster of `nodes` nodes.
    pub fn target(&self, nodes: usize) -> usize {
        match self.replication_factor {
            0 => nodes,
            rf => (rf as usize).min(nodes),
        }
    }

    fn members(&self, group: u32) -> &[u64] {
        self.groups.get(&group).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn has_member(&self, group: u32, node: u64) -> bool {
        self.members(group).contains(&node)
    }

    /// Whether `change` is made in `group`: always in `_system` (and in a data group the
    /// registry does not know); an added node joins a data group below the factor; a removed
    /// one leaves the data groups it is a member of (every data group when the factor is 0,
    /// every node everywhere, as before D90).
    pub fn concerns(&self, group: u32, change: &MembershipChange) -> bool {
        if group == 0 || !self.groups.contains_key(&group) {
            return true;
        }
        match change {
            MembershipChange::Add { node_id, .. } => {
                let nodes = self.nodes.len() + usize::from(!self.nodes.contains_key(node_id));
                self.takes_joiner(group, nodes)
            }
            MembershipChange::Remove { node_id } => {
                self.replication_factor == 0 || self.has_member(group, *node_id)
            }
        }
    }

    /// Whether a node joining now (so the cluster has `nodes` nodes with it) goes into `group`.
    pub fn takes_joiner(&self, group: u32, nodes: usize) -> bool {
        self.members(group).len() < self.target(nodes)
    }

    /// The node to add to `group`: not a member, not `unusable` (gone, silent, stopping), hosting
    /// the fewest data groups (ties → lowest id).
    pub fn spare(&self, group: u32, unusable: impl Fn(u64) -> bool) -> Option<(u64, String)> {
        let members: BTreeSet<u64> = self.members(group).iter().copied().collect();
        let hosted = |node: u64| self.groups.values().filter(|m| m.contains(&node)).count();
        self.nodes
            .iter()
            .filter(|(id, _)| !members.contains(id) && !unusable(**id))
            .min_by_key(|(id, _)| (hosted(**id), **id))
            .map(|(id, addr)| (*id, addr.clone()))
    }

    /// One replica to move so that the usable nodes host as many groups as each other (±1):
    /// from the node hosting the most (ties → highest id) to the one hosting the fewest (ties →
    /// lowest id), the lowest group that has the first and not the second; `None` when they
    /// differ by less than two, or while a member of any group is unusable (a node that is down
    /// is replaced, not balanced around). Returns (group, the node to add, the node to remove).
    pub fn rebalance_move(&self, unusable: impl Fn(u64) -> bool) -> Option<(u32, (u64, String), u64)> {
        if self.groups.values().flatten().any(|m| unusable(*m)) {
            return None;
        }
        let hosted = |node: u64| self.groups.values().filter(|m| m.contains(&node)).count();
        let usable: Vec<u64> = self.nodes.keys().copied().filter(|id| !unusable(*id)).collect();
        let to = usable.iter().copied().min_by_key(|id| (hosted(*id), *id))?;
        let from = usable.iter().copied().max_by_key(|id| (hosted(*id), *id))?;
        if hosted(from) < hosted(to) + 2 {
            return None;
        }
        let group =
            self.groups.iter().find(|(_, m)| m.contains(&from) && !m.contains(&to)).map(|(g, _)| *g)?;
        Some((group, (to, self.nodes.get(&to)?.clone()), from))
    }

    /// The first data group with fewer members than the factor asks, and the spare to add.
    pub fn short_group(&self, unusable: impl Fn(u64) -> bool + Copy) -> Option<(u32, (u64, String))> {
        let usable = self.nodes.keys().filter(|id| !unusable(**id)).count();
        self.groups
            .iter()
            .filter(|(_, members)| members.len() < self.target(usable))
            .find_map(|(group, _)| self.spare(*group, unusable).map(|spare| (*group, spare)))
    }
}

/// Nodes not to add to a group now: ones that said they are stopping, and any other than this
/// node (`_system`'s leader) that is not a member of `_system` or has not answered it lately. A
/// registry record alone is not enough: a node that left may keep its record for a while (its
/// removal's last registry write can fail when it led `_system` itself), and a learner added on
/// a dead node would stall the group's next change.
pub fn unusable_nodes(shard: &Shard, system: &ScopeState) -> BTreeSet<u64> {
    let watch = shard.node_watch.borrow();
    let group0 = shard.group(GroupId(0));
    let me = shard.config.node_id;
    let live = |id: u64| {
        id == me
            || group0.as_ref().is_some_and(|g| {
                let member = g.raft.metrics().borrow().membership_config.membership().get_node(&id).is_some();
                member && crate::admin::system_voters::answered_lately(g, id)
            })
    };
    let mut out = reg::stopped_nodes(system);
    out.extend(reg::node_addresses(system).into_keys().filter(|id| watch.is_unavailable(*id) || !live(*id)));
    out
}

/// On the `_system` leader, one step at a time: adds a spare node to a data group that has
/// fewer members than the factor asks, or else moves one replica from the node hosting the
/// most groups to the one hosting the fewest (SPEC §10.5 "the placement planner may add it to
/// data groups": a node that joined a cluster whose groups were all full takes its share);
/// returns whether it changed a group.
pub async fn keep(shard: &Shard) -> bool {
    let plan = crate::admin::requests::with_system(shard, |s| {
        let unusable = unusable_nodes(shard, s);
        let view = ReplicaView::read(s);
        let short = view.short_group(|id| unusable.contains(&id));
        let balance = view.rebalance_move(|id| unusable.contains(&id));
        (short, balance)
    });
    match plan {
        Ok((Some((group, spare)), _)) => add_spare(shard, group, spare).await,
        Ok((None, Some((group, to, from)))) => move_replica(shard, group, to, from).await,
        _ => false,
    }
}

async fn add_spare(shard: &Shard, group: u32, (node_id, address): (u64, String)) -> bool {
    let _serial = shard.admin_lock.lock().await;
    crate::event!(info, "group_replica_adding", group, node = node_id, reason = "below replication_factor");
    let change = MembershipChange::Add { node_id, address };
    match crate::admin::requests::change_group(shard, GroupId(group), change).await {
        Ok(voters) => {
            crate::event!(info, "group_replica_added", group, node = node_id, voters = ?voters);
            if let Err(e) = crate::admin::requests::record_group_members(shard, &[(group, voters)]).await {
                crate::event!(warn, "group_members_not_recorded", group, error = %e.message);
            }
            true
        }
        Err(e) => {
            crate::event!(warn, "group_replica_not_added", group, node = node_id, error = %e.message);
            false
        }
    }
}

/// Adds `to` to `group` (learner, caught up, voter), then removes `from`: the group keeps its
/// voters throughout. A failed add leaves the group as it was; the look after next tries again.
async fn move_replica(shard: &Shard, group: u32, (to, address): (u64, String), from: u64) -> bool {
    let _serial = shard.admin_lock.lock().await;
    crate::event!(info, "group_replica_moving", group, from, to);
    let add = MembershipChange::Add { node_id: to, address };
    let mut changed = Vec::new();
    let result = match crate::admin::requests::change_group(shard, GroupId(group), add).await {
        Ok(voters) => {
            changed.push((group, voters));
            let remove = MembershipChange::Remove { node_id: from };
            crate::admin::requests::change_group(shard, GroupId(group), remove).await
        }
        Err(e) => Err(e),
    };
    let moved = match result {
        Ok(voters) => {
            crate::event!(info, "group_replica_moved", group, from, to, voters = ?voters);
            changed.push((group, voters));
            true
        }
        Err(e) => {
            crate::event!(warn, "group_replica_not_moved", group, from, to, error = %e.message);
            false
        }
    };
    if let Err(e) = crate::admin::requests::record_group_members(shard, &changed).await {
        crate::event!(warn, "group_members_not_recorded", group, error = %e.message);
    }
    moved
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(rf: u32, groups: &[(u32, &[u64])], nodes: &[u64]) -> ReplicaView {
        ReplicaView {
            replication_factor: rf,
            groups: groups.iter().map(|(g, m)| (*g, m.to_vec())).collect(),
            nodes: nodes.iter().map(|id| (*id, format!("n{id}"))).collect(),
        }
    }

    /// A joiner goes only into groups below the factor; factor 0 (every node) takes it everywhere.
    #[test]
    fn t01_a_joiner_fills_groups_below_the_factor_only() {
        let v = view(3, &[(1, &[1, 2, 3]), (2, &[1, 2])], &[1, 2, 3]);
        assert!(!v.takes_joiner(1, 4));
        assert!(v.takes_joiner(2, 4));
        let all = view(0, &[(1, &[1, 2, 3])], &[1, 2, 3]);
        assert!(all.takes_joiner(1, 4));
        let small = view(3, &[(1, &[1])], &[1]);
        assert!(small.takes_joiner(1, 2), "two nodes: a factor of 3 means both");
    }

    /// Which groups a change touches: `_system` always, a data group by the factor.
    #[test]
    fn t05_a_change_touches_system_and_the_groups_it_concerns() {
        let v = view(2, &[(1, &[1, 2]), (2, &[2, 3])], &[1, 2, 3]);
        let add = MembershipChange::Add { node_id: 4, address: "n4".into() };
        assert!(v.concerns(0, &add));
        assert!(!v.concerns(1, &add), "both groups are at the factor");
        let remove = MembershipChange::Remove { node_id: 1 };
        assert!(v.concerns(1, &remove));
        assert!(!v.concerns(2, &remove), "not a member of group 2");
        let every = view(0, &[(1, &[1, 2, 3])], &[1, 2, 3]);
        assert!(every.concerns(1, &add));
        assert!(every.concerns(1, &MembershipChange::Remove { node_id: 9 }));
    }

    /// The spare is the usable non-member hosting the fewest groups (ties: lowest id).
    #[test]
    fn t02_the_spare_hosts_fewest_groups_and_is_usable() {
        let v = view(2, &[(1, &[1, 2]), (2, &[2, 3]), (3, &[3, 4])], &[1, 2, 3, 4, 5]);
        assert_eq!(v.spare(1, |_| false).map(|s| s.0), Some(5));
        assert_eq!(v.spare(1, |id| id == 5).map(|s| s.0), Some(4));
        assert_eq!(v.spare(1, |id| id >= 3).map(|s| s.0), None);
    }

    /// A group left short gets a spare once one is usable; none is short at the factor.
    #[test]
    fn t03_a_short_group_is_found_with_its_spare() {
        let v = view(2, &[(1, &[1, 2]), (2, &[3])], &[1, 2, 3]);
        assert_eq!(v.short_group(|_| false), Some((2, (1, "n1".to_string()))));
        assert_eq!(v.short_group(|id| id != 3), None, "only one usable node: the factor is 1");
        let full = view(2, &[(1, &[1, 2]), (2, &[2, 3])], &[1, 2, 3]);
        assert_eq!(full.short_group(|_| false), None);
    }

    /// A node that joined full groups takes replicas from the busiest until the counts are
    /// within one; nothing moves while a member is down.
    #[test]
    fn t04_replicas_move_to_the_node_hosting_fewest() {
        // Four groups of two over three nodes (3, 3, 2), and a fourth node with none.
        let mut v = view(2, &[(1, &[1, 2]), (2, &[3, 1]), (3, &[2, 3]), (4, &[1, 2])], &[1, 2, 3, 4]);
        assert_eq!(v.rebalance_move(|_| false), Some((1, (4, "n4".to_string()), 2)));
        assert_eq!(v.rebalance_move(|id| id == 3), None, "a member is down");
        let mut moves = 0;
        while let Some((group, (to, _), from)) = v.rebalance_move(|_| false) {
            let members = v.groups.get_mut(&group).expect("the moved group");
            members.retain(|m| *m != from);
            members.push(to);
            moves += 1;
            assert!(moves <= 4, "no end to the moves: {v:?}");
        }
        let hosted: Vec<usize> =
            (1..=4).map(|n| v.groups.values().filter(|m| m.contains(&n)).count()).collect();
        assert_eq!(hosted, vec![2, 2, 2, 2], "{v:?}");
        assert!(v.groups.values().all(|m| m.len() == 2));
    }
}
