//! Requests for a data group this node hosts but is not a member of (SPEC §10.5, D90). A data
//! group has `replication_factor` voters; every node keeps an empty, uninitialized copy of every
//! group so that it can be added to it later (a replacement, a join), and sends whatever reaches
//! that copy on to the group's members: the leader it learned from their answers, else the
//! members `_system` lists (core 0 hands each core the list, `admin/requests.rs`
//! `registry_keeper`), one after another.

use ledger_core::types::GroupId;
use std::collections::BTreeMap;

/// Where requests for one group this node is outside of go.
#[derive(Debug, Default)]
pub struct OutsideRoute {
    /// The group's members with their addresses, as `_system` last listed them.
    members: Vec<(u64, String)>,
    /// The member that last said it leads (or was named leader by another member).
    leader: Option<(u64, String)>,
    /// The member to try next when no leader is known.
    next: usize,
}

impl OutsideRoute {
    /// The members as `_system` lists them now; a remembered leader that is no longer one of
    /// them is forgotten.
    pub fn set_members(&mut self, members: Vec<(u64, String)>) {
        if self.leader.as_ref().is_some_and(|(id, _)| !members.iter().any(|(m, _)| m == id)) {
            self.leader = None;
        }
        self.members = members;
    }

    /// The node to send to: the known leader, else the next listed member (never `self_id`).
    pub fn target(&self, self_id: u64) -> Option<(u64, String)> {
        if let Some(leader) = self.leader.clone().filter(|(id, _)| *id != self_id) {
            return Some(leader);
        }
        let others: Vec<&(u64, String)> = self.members.iter().filter(|(id, _)| *id != self_id).collect();
        (!others.is_empty()).then(|| others[self.next % others.len()].clone())
    }

    /// A member named `leader` the group's leader (an answer's hint).
    pub fn learn_leader(&mut self, leader: (u64, String)) {
        if !leader.1.is_empty() {
            self.leader = Some(leader);
        }
    }

    /// `node` could not be reached or did not know a leader: try another member next.
    pub fn failed(&mut self, node: u64) {
        if self.leader.as_ref().is_some_and(|(id, _)| *id == node) {
            self.leader = None;
        }
        self.next = self.next.wrapping_add(1);
    }

    /// The members as `_system` last listed them (empty: not known yet).
    pub fn members(&self) -> &[(u64, String)] {
        &self.members
    }

    /// Whether `_system`'s list is known here and leaves `node` out.
    pub fn lists_others_only(&self, node: u64) -> bool {
        !self.members.is_empty() && !self.members.iter().any(|(id, _)| *id == node)
    }
}

/// Every data group's members with their addresses, as core 0 sends them to each core.
pub type GroupMembers = BTreeMap<GroupId, Vec<(u64, String)>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn members(ids: &[u64]) -> Vec<(u64, String)> {
        ids.iter().map(|id| (*id, format!("n{id}"))).collect()
    }

    /// Without a leader the members are tried in turn (never this node); a learned leader is
    /// used until it fails or stops being a member.
    #[test]
    fn t01_leader_first_then_members_in_turn() {
        let mut route = OutsideRoute::default();
        assert_eq!(route.target(1), None, "no members listed yet");
        assert!(!route.lists_others_only(1), "an unknown list leaves no one out");
        route.set_members(members(&[1, 2, 3]));
        assert!(!route.lists_others_only(1));
        assert!(route.lists_others_only(7));
        assert_eq!(route.target(1).map(|t| t.0), Some(2));
        route.failed(2);
        assert_eq!(route.target(1).map(|t| t.0), Some(3));
        route.learn_leader((2, "n2".into()));
        assert_eq!(route.target(1).map(|t| t.0), Some(2));
        route.learn_leader((9, String::new()));
        assert_eq!(route.target(1).map(|t| t.0), Some(2), "a hint without an address is ignored");
        route.set_members(members(&[3, 4]));
        assert_ne!(route.target(1).map(|t| t.0), Some(2), "a leader no longer a member is forgotten");
        route.learn_leader((4, "n4".into()));
        route.failed(4);
        assert!(matches!(route.target(1), Some((3 | 4, _))));
    }
}
