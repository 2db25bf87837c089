//! Which core owns which group (SPEC §10.5). Pure: the server persists the result in `node.redb`
//! so that placement is stable across restarts.

use ledger_core::types::{CoreId, GroupId};
use std::collections::BTreeMap;

/// The group ids a fresh single node creates: `_system` (0) and `cores × groups_per_core` data
/// groups numbered from 1.
pub fn initial_groups(cores: usize, groups_per_core: u32) -> Vec<GroupId> {
    data_groups(cores as u32 * groups_per_core.max(1))
}

/// `_system` (0) and `count` data groups numbered from 1 (SPEC §10.5 `initial_groups`).
pub fn data_groups(count: u32) -> Vec<GroupId> {
    (0..=count.max(1)).map(GroupId).collect()
}

/// Assigns every group in `groups` to a core. Groups already placed on a core that still exists
/// keep it; group 0 is always on core 0; every other group goes to the core with the fewest
/// groups (ties → lowest core id).
pub fn plan(
    previous: &BTreeMap<GroupId, CoreId>,
    groups: &[GroupId],
    cores: usize,
) -> BTreeMap<GroupId, CoreId> {
    assert!(cores >= 1, "a node has at least one core");
    let mut placement = BTreeMap::new();
    let mut load = vec![0usize; cores];
    placement.insert(GroupId(0), CoreId(0));
    load[0] += 1;
    for group in groups.iter().copied().filter(|g| g.0 != 0) {
        if let Some(core) = previous.get(&group).filter(|c| (c.0 as usize) < cores) {
            placement.insert(group, *core);
            load[core.0 as usize] += 1;
        }
    }
    for group in groups.iter().copied().filter(|g| g.0 != 0) {
        if placement.contains_key(&group) {
            continue;
        }
        let (core, _) =
            load.iter().enumerate().min_by_key(|(index, count)| (**count, *index)).expect("cores >= 1");
        placement.insert(group, CoreId(core as u16));
        load[core] += 1;
    }
    placement
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Group 0 sits on core 0 and the data groups spread over the cores evenly.
    #[test]
    fn t01_fresh_plan_balances_groups() {
        let groups = initial_groups(2, 1);
        assert_eq!(groups, vec![GroupId(0), GroupId(1), GroupId(2)]);
        let plan = plan(&BTreeMap::new(), &groups, 2);
        assert_eq!(plan[&GroupId(0)], CoreId(0));
        assert_eq!(plan[&GroupId(1)], CoreId(1));
        assert_eq!(plan[&GroupId(2)], CoreId(0));
    }

    /// A recorded placement is kept; groups of a vanished core are reassigned.
    #[test]
    fn t02_plan_is_stable_and_handles_shrinking() {
        let groups = initial_groups(4, 1);
        let first = plan(&BTreeMap::new(), &groups, 4);
        assert_eq!(plan(&first, &groups, 4), first);
        let shrunk = plan(&first, &groups, 2);
        assert!(shrunk.values().all(|c| c.0 < 2));
        for (group, core) in &first {
            if core.0 < 2 {
                assert_eq!(shrunk[group], *core);
            }
        }
    }
}
