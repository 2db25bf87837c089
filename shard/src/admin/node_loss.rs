//! Unexpected loss of a node (SPEC §10.6, D69): the `_system` leader marks a member unavailable
//! once it has not answered group 0's appends for `node_heartbeat_timeout_secs`, and after the
//! same timeout again removes it from every group, as `LeaveCluster` would, when the voters left
//! still have a quorum of live nodes. A removed node that comes back is no member of anything:
//! it must rejoin as a new member (wipe or new data directory).
//!
//! The answers come from group 0's `LeaderContact` (raft/contact.rs: each peer's last answer
//! that accepted the leader's term). A leader counts silence only from the start of its own
//! term, so a new leader waits a whole timeout before it marks anyone.

use crate::round::group::Group;
use crate::shard::Shard;
use ledger_core::types::GroupId;
use ledger_wire::peer::MembershipChange;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Weak;
use std::time::{Duration, Instant};

/// What one look at the members found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Silent for longer than the timeout since the last look.
    pub unavailable: Vec<u64>,
    /// Marked unavailable before, answering again.
    pub back: Vec<u64>,
    /// The member to remove now, if any: silent for twice the timeout, and the voters left
    /// without it still have a quorum of live nodes.
    pub remove: Option<u64>,
}

/// The members of group 0 as its leader sees them.
pub struct Members<'a> {
    pub self_id: u64,
    pub voters: &'a BTreeSet<u64>,
    pub learners: &'a BTreeSet<u64>,
    /// Members that said they were stopping on purpose (D74): marked, never removed.
    pub stopped: &'a BTreeSet<u64>,
}

/// The `_system` leader's view of which members are silent, kept across looks.
#[derive(Debug)]
pub struct NodeWatch {
    timeout: Duration,
    /// The term this node leads `_system` in and when it started counting for it.
    leading: Option<(u64, Instant)>,
    unavailable: BTreeSet<u64>,
}

impl NodeWatch {
    /// `timeout` zero: nobody is ever marked or removed.
    pub fn new(timeout: Duration) -> Self {
        NodeWatch { timeout, leading: None, unavailable: BTreeSet::new() }
    }

    pub fn enabled(&self) -> bool {
        !self.timeout.is_zero()
    }

    /// When `node` was last heard from, as this leader counts it (its term's start at the
    /// earliest); `None` when this node does not lead `_system`.
    fn heard(&self, last_ack: Option<Instant>) -> Option<Instant> {
        let (_, since) = self.leading?;
        Some(last_ack.map_or(since, |ack| ack.max(since)))
    }

    /// How long `node` has been silent, for `GetClusterInfo` (`None` off the leader).
    pub fn silence(&self, now: Instant, last_ack: Option<Instant>) -> Option<Duration> {
        self.heard(last_ack).map(|heard| now.saturating_duration_since(heard))
    }

    pub fn is_unavailable(&self, node: u64) -> bool {
        self.unavailable.contains(&node)
    }

    /// One look. `leader_term`: the term this node leads `_system` in, `None` when it does not
    /// lead it (everything is forgotten then). `last_ack`: each member's last answer.
    pub fn observe(
        &mut self,
        now: Instant,
        leader_term: Option<u64>,
        members: &Members<'_>,
        last_ack: impl Fn(u64) -> Option<Instant>,
    ) -> Verdict {
        let mut verdict = Verdict::default();
        let Some(term) = leader_term.filter(|_| self.enabled()) else {
            self.leading = None;
            self.unavailable.clear();
            return verdict;
        };
        if self.leading.map(|(t, _)| t) != Some(term) {
            self.leading = Some((term, now));
            self.unavailable.clear();
        }
        let others: Vec<u64> = members
            .voters
            .iter()
            .chain(members.learners)
            .copied()
            .filter(|n| *n != members.self_id)
            .collect();
        self.unavailable.retain(|n| others.contains(n));
        let mut longest: Option<(Duration, u64)> = None;
        for &node in &others {
            let silent = self.silence(now, last_ack(node)).unwrap_or_default();
            if silent > self.timeout {
                if self.unavailable.insert(node) {
                    verdict.unavailable.push(node);
                }
                let planned = members.stopped.contains(&node);
                if !planned && silent > self.timeout * 2 && longest.is_none_or(|(d, _)| silent > d) {
                    longest = Some((silent, node));
                }
            } else if self.unavailable.remove(&node) {
                verdict.back.push(node);
            }
        }
        verdict.remove = longest.map(|(_, node)| node).filter(|node| self.keeps_quorum(members, *node));
        verdict
    }

    /// Whether the voters left without `node` are at least the current quorum (SPEC §10.7's
    /// `WouldBreakQuorum`) and a majority of them is live, so that the change can commit.
    fn keeps_quorum(&self, members: &Members<'_>, node: u64) -> bool {
        if !members.voters.contains(&node) {
            return true;
        }
        let left: Vec<u64> = members.voters.iter().copied().filter(|v| *v != node).collect();
        let live = left.iter().filter(|v| !self.unavailable.contains(v)).count();
        let quorum = members.voters.len() / 2 + 1;
        left.len() >= quorum && live > left.len() / 2
    }
}

/// The loop on core 0 of a cluster node: one look every `tick`, an event for each mark, and a
/// removal when one is due (it runs like `LeaveCluster`, behind the registry's admin lock, and
/// the next look waits for it). A removal that fails is tried again a timeout later.
pub async fn watch_members(shard: Weak<Shard>) {
    let Some(timeout) = shard.upgrade().map(|s| s.node_watch.borrow().timeout) else { return };
    if timeout.is_zero() {
        return;
    }
    let tick = (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut retry_after: BTreeMap<u64, Instant> = BTreeMap::new();
    loop {
        glommio::timer::sleep(tick).await;
        let Some(shard) = shard.upgrade() else { return };
        let Some(group) = shard.group(GroupId(0)) else { continue };
        if group.stopped().is_some() || shard.is_closing() {
            return;
        }
        let now = Instant::now();
        let verdict = look(&shard, &group, now);
        for node in &verdict.unavailable {
            crate::event!(warn, "node_unavailable", node = *node, silent_secs = timeout.as_secs());
        }
        for node in &verdict.back {
            crate::event!(info, "node_available", node = *node);
        }
        for node in back_from_planned_stop(&shard, &group, timeout) {
            let op = ledger_core::types::Operation::DeleteEntity {
                key: crate::admin::registry::node_stopped_key(node),
            };
            match crate::admin::requests::system_tx_ok(&shard, vec![op]).await {
                Ok(_) => crate::event!(info, "node_back_from_planned_stop", node),
                Err(e) => crate::event!(warn, "node_stop_record_not_cleared", node, error = %e.message),
            }
        }
        let Some(node) = verdict.remove else { continue };
        if retry_after.get(&node).is_some_and(|at| now < *at) {
            continue;
        }
        crate::event!(warn, "node_removing", node, silent_secs = (timeout * 2).as_secs());
        let change = MembershipChange::Remove { node_id: node };
        match crate::admin::requests::change_membership_everywhere(&shard, change).await {
            Ok(groups) => {
                let groups: Vec<u32> = groups.iter().map(|g| g.0).collect();
                crate::event!(warn, "node_removed", node, groups = ?groups);
                retry_after.remove(&node);
            }
            Err(e) => {
                crate::event!(warn, "node_removal_failed", node, error = %e.message);
                retry_after.insert(node, Instant::now() + timeout);
            }
        }
    }
}

/// One look at group 0 on this node.
fn look(shard: &Shard, group: &Group, now: Instant) -> Verdict {
    let (term, voters, learners) = {
        let metrics = group.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let leading = (m.current_leader == Some(m.id) && m.state == openraft::ServerState::Leader)
            .then_some(m.current_term);
        (leading, membership.voter_ids().collect(), membership.learner_ids().collect())
    };
    let stopped =
        crate::admin::requests::with_system(shard, crate::admin::registry::stopped_nodes).unwrap_or_default();
    let members =
        Members { self_id: shard.config.node_id, voters: &voters, learners: &learners, stopped: &stopped };
    let data = group.data.borrow();
    shard.node_watch.borrow_mut().observe(now, term, &members, |node| data.contact.last_ack(node))
}

/// The planned-stop records (D74) of members this leader has heard from since well after the
/// record was written (one timeout later: a stopping node still answers for a moment after it
/// says so), and so are back.
fn back_from_planned_stop(shard: &Shard, group: &Group, timeout: Duration) -> Vec<u64> {
    if !group.is_leader() {
        return Vec::new();
    }
    let records: Vec<(u64, u64)> = crate::admin::requests::with_system(shard, |s| {
        crate::admin::registry::stopped_nodes(s)
            .into_iter()
            .filter_map(|node| {
                let row = s.get_entity(&crate::admin::registry::node_stopped_key(node))?;
                let secs = <[u8; 8]>::try_from(row.value.as_slice()).ok().map(i64::from_le_bytes)?;
                Some((node, secs.max(0) as u64))
            })
            .collect()
    })
    .unwrap_or_default();
    let now = Instant::now();
    let unix_now = crate::admin::peer_cache::unix_now();
    let data = group.data.borrow();
    records
        .into_iter()
        .filter(|(node, written)| {
            let record_age = Duration::from_secs(unix_now.saturating_sub(*written));
            data.contact
                .last_ack(*node)
                .is_some_and(|ack| now.saturating_duration_since(ack) + timeout < record_age)
        })
        .map(|(node, _)| node)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    /// A new leader counts from its term's start; a member silent past the timeout is marked
    /// once, removed past twice the timeout, and one that answers again is unmarked.
    #[test]
    fn t01_marks_then_removes_counting_from_the_terms_start() {
        let mut w = NodeWatch::new(T);
        let (voters, learners) = (set(&[1, 2, 3]), set(&[]));
        let m = Members { self_id: 1, voters: &voters, learners: &learners, stopped: &BTreeSet::new() };
        let t0 = Instant::now();
        let never = |_| None;
        assert_eq!(w.observe(t0, Some(5), &m, never), Verdict::default());
        assert_eq!(w.observe(t0 + T, Some(5), &m, never), Verdict::default(), "not past the timeout yet");
        let v = w.observe(t0 + T + Duration::from_secs(1), Some(5), &m, |n| (n == 2).then_some(t0 + T));
        assert_eq!(v, Verdict { unavailable: vec![3], back: vec![], remove: None });
        let v =
            w.observe(t0 + T * 2 + Duration::from_secs(1), Some(5), &m, |n| (n == 2).then_some(t0 + T * 2));
        assert_eq!(
            v,
            Verdict { unavailable: vec![], back: vec![], remove: Some(3) },
            "marked once, then removed"
        );
        let v = w.observe(t0 + T * 3, Some(5), &m, |_| Some(t0 + T * 3));
        assert_eq!(v, Verdict { unavailable: vec![], back: vec![3], remove: None });
    }

    /// Leadership lost forgets the marks; a new term restarts the count from its own start.
    #[test]
    fn t02_leadership_change_restarts_the_count() {
        let mut w = NodeWatch::new(T);
        let (voters, learners) = (set(&[1, 2, 3]), set(&[]));
        let m = Members { self_id: 1, voters: &voters, learners: &learners, stopped: &BTreeSet::new() };
        let t0 = Instant::now();
        w.observe(t0, Some(5), &m, |_| None);
        assert_eq!(w.observe(t0 + T * 3, Some(5), &m, |_| Some(t0 + T * 3)).remove, None);
        assert!(w.observe(t0 + T * 4, None, &m, |_| None) == Verdict::default());
        assert!(!w.is_unavailable(2));
        // Term 6 starts at 4T: nobody is past the timeout until 5T.
        assert_eq!(w.observe(t0 + T * 4, Some(6), &m, |_| None), Verdict::default());
        assert_eq!(w.observe(t0 + T * 5, Some(6), &m, |_| None), Verdict::default());
        let v = w.observe(t0 + T * 5 + Duration::from_secs(1), Some(6), &m, |_| None);
        assert_eq!(v.unavailable, vec![2, 3]);
        assert_eq!(w.silence(t0 + T * 5, None), Some(T));
    }

    /// No removal that would leave fewer voters than the quorum, or voters without a live
    /// majority; a silent learner is removed whatever the voters.
    #[test]
    fn t03_removal_keeps_a_live_quorum() {
        let t0 = Instant::now();
        let late = t0 + T * 2 + Duration::from_secs(1);
        let (two, none) = (set(&[1, 2]), set(&[]));
        let mut w = NodeWatch::new(T);
        let m = Members { self_id: 1, voters: &two, learners: &none, stopped: &BTreeSet::new() };
        w.observe(t0, Some(1), &m, |_| None);
        assert_eq!(w.observe(late, Some(1), &m, |_| None).remove, None, "two voters: WouldBreakQuorum");
        // Five voters, two silent: removing one leaves four with three live; then three with three.
        let five = set(&[1, 2, 3, 4, 5]);
        let mut w = NodeWatch::new(T);
        let m = Members { self_id: 1, voters: &five, learners: &none, stopped: &BTreeSet::new() };
        w.observe(t0, Some(1), &m, |_| None);
        let alive = |n| (n <= 3).then_some(late);
        assert_eq!(w.observe(late, Some(1), &m, alive).remove, Some(4));
        // Five voters, three silent: the leader cannot commit anyway, and removing one leaves
        // four with two live.
        let mut w = NodeWatch::new(T);
        w.observe(t0, Some(1), &m, |_| None);
        let alive = |n| (n <= 2).then_some(late);
        assert_eq!(w.observe(late, Some(1), &m, alive).remove, None);
        // A silent learner goes even beside two voters.
        let learners = set(&[7]);
        let mut w = NodeWatch::new(T);
        let m = Members { self_id: 1, voters: &two, learners: &learners, stopped: &BTreeSet::new() };
        w.observe(t0, Some(1), &m, |_| None);
        assert_eq!(w.observe(late, Some(1), &m, |n| (n == 2).then_some(late)).remove, Some(7));
    }

    /// A member that said it was stopping is marked but never removed.
    #[test]
    fn t05_a_planned_stop_is_not_removed() {
        let mut w = NodeWatch::new(T);
        let (voters, learners, stopped) = (set(&[1, 2, 3]), set(&[]), set(&[3]));
        let m = Members { self_id: 1, voters: &voters, learners: &learners, stopped: &stopped };
        let t0 = Instant::now();
        w.observe(t0, Some(1), &m, |_| None);
        let v = w.observe(t0 + T * 5, Some(1), &m, |n| (n == 2).then_some(t0 + T * 5));
        assert_eq!(v, Verdict { unavailable: vec![3], back: vec![], remove: None });
    }

    /// A timeout of zero turns the watch off.
    #[test]
    fn t04_zero_timeout_is_off() {
        let mut w = NodeWatch::new(Duration::ZERO);
        let (voters, learners) = (set(&[1, 2, 3]), set(&[]));
        let m = Members { self_id: 1, voters: &voters, learners: &learners, stopped: &BTreeSet::new() };
        let t0 = Instant::now();
        w.observe(t0, Some(1), &m, |_| None);
        assert_eq!(w.observe(t0 + T * 100, Some(1), &m, |_| None), Verdict::default());
        assert_eq!(w.silence(t0, None), None);
    }
}
