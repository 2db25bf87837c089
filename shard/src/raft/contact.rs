//! When this replica last heard from its group's leader, for the `stale` flag of eventual reads
//! (SPEC §8.6: a replica that has not heard from a leader for more than 2 × the election timeout
//! says so). A follower notes each AppendEntries or snapshot chunk it accepts (`peer/serve.rs`);
//! a leader notes each peer's answer that accepted its term (`network.rs`; an empty
//! AppendEntries answered on this node by D58's commit notice is not an answer) and is current
//! while a quorum of voters, itself included, answered within the window.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct LeaderContact {
    /// As a follower: the last message accepted from a leader.
    heard: Cell<Option<Instant>>,
    /// As a leader: each peer's last answer that accepted this node's term.
    acks: RefCell<HashMap<u64, Instant>>,
    /// A peer refused this node's vote request because it is no voter there (removed while it
    /// was away, D69): reported once.
    pub told_not_a_member: Cell<bool>,
}

/// Where this replica stands in its group right now.
pub enum Standing<I: IntoIterator<Item = u64>> {
    /// Leading: this node's id and the group's voters.
    Leader {
        self_id: u64,
        voters: I,
    },
    Follower,
}

impl LeaderContact {
    pub fn heard_from_leader(&self, at: Instant) {
        self.heard.set(Some(at));
    }

    /// As a follower: when a leader was last heard from.
    pub fn heard(&self) -> Option<Instant> {
        self.heard.get()
    }

    pub fn acked_by(&self, node: u64, at: Instant) {
        self.acks.borrow_mut().insert(node, at);
    }

    /// As a leader: when `node` last answered (`None`: never, since this node started).
    pub fn last_ack(&self, node: u64) -> Option<Instant> {
        self.acks.borrow().get(&node).copied()
    }

    /// Whether this replica's reads may be staler than replication lag: it has not heard from a
    /// leader (or, leading, from a quorum of voters, itself included) within `window` before
    /// `now`. A leader that is the group's only voter is never stale.
    pub fn is_stale<I: IntoIterator<Item = u64>>(
        &self,
        standing: Standing<I>,
        now: Instant,
        window: Duration,
    ) -> bool {
        let recent = |at: Instant| now.saturating_duration_since(at) <= window;
        match standing {
            Standing::Follower => !self.heard.get().is_some_and(recent),
            Standing::Leader { self_id, voters } => {
                let acks = self.acks.borrow();
                let (mut count, mut current) = (0usize, 0usize);
                for voter in voters {
                    count += 1;
                    if voter == self_id || acks.get(&voter).is_some_and(|&at| recent(at)) {
                        current += 1;
                    }
                }
                current < count / 2 + 1
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(2);

    fn standing(is_leader: bool, voters: &[u64]) -> Standing<Vec<u64>> {
        match is_leader {
            true => Standing::Leader { self_id: 1, voters: voters.to_vec() },
            false => Standing::Follower,
        }
    }

    /// A single-voter group is current; a follower is current only within the window after it
    /// last heard from a leader (never before the first contact).
    #[test]
    fn t01_follower_window_and_single_voter() {
        let c = LeaderContact::default();
        let t0 = Instant::now();
        assert!(!c.is_stale(standing(true, &[1]), t0, WINDOW));
        assert!(c.is_stale(standing(false, &[1, 2, 3]), t0, WINDOW), "never heard: stale");
        c.heard_from_leader(t0);
        assert!(!c.is_stale(standing(false, &[1, 2, 3]), t0 + WINDOW, WINDOW));
        assert!(c.is_stale(standing(false, &[1, 2, 3]), t0 + WINDOW + Duration::from_millis(1), WINDOW));
    }

    /// A leader of three voters is current while one peer answered within the window; of five,
    /// while two did; answers from outside the voters do not count.
    #[test]
    fn t02_leader_needs_a_quorum_of_recent_answers() {
        let c = LeaderContact::default();
        let t0 = Instant::now();
        assert!(c.is_stale(standing(true, &[1, 2, 3]), t0, WINDOW), "no answers yet");
        c.acked_by(9, t0);
        assert!(c.is_stale(standing(true, &[1, 2, 3]), t0, WINDOW), "9 is not a voter");
        c.acked_by(2, t0);
        assert!(!c.is_stale(standing(true, &[1, 2, 3]), t0 + WINDOW, WINDOW));
        assert!(c.is_stale(standing(true, &[1, 2, 3]), t0 + WINDOW * 2, WINDOW));
        assert!(c.is_stale(standing(true, &[1, 2, 3, 4, 5]), t0, WINDOW), "one of four peers");
        c.acked_by(4, t0);
        assert!(!c.is_stale(standing(true, &[1, 2, 3, 4, 5]), t0, WINDOW));
    }
}
