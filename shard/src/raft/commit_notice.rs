//! D58: the empty AppendEntries openraft 0.9 sends a follower after every commit, answered here
//! when the follower has nothing to learn from it yet, and replaced by one delayed notice.
//!
//! openraft's replication stream follows each committed block with a heartbeat to every follower
//! (`Replicate::Committed`), so a block costs each follower two AppendEntries and two answers.
//! Under load the next block's AppendEntries, a millisecond later, carries the same commit index.
//! So a replication stream's empty AppendEntries that comes within `window` of the follower's last
//! acknowledgement, under the same vote and naming the same last entry, is answered `Success` on
//! the leader without being sent. That answer carries nothing openraft acts on: a heartbeat's
//! answer has no request id, so the leader only notes the time (which openraft 0.9 uses for
//! metrics alone), and the follower matched that entry under that vote a moment ago.
//!
//! If the skipped call announced a commit the follower was not told, a notice is scheduled: after
//! `COMMIT_NOTICE_DELAY` it is sent as a real empty AppendEntries, unless an AppendEntries that
//! went out meanwhile carried the commit (the notice waits for its answer to know), with the
//! commit clamped to what is durable here (D50). Followers of an idle group therefore still learn a
//! commit within a few milliseconds, and a busy group sends none. Heartbeats are never skipped
//! once `window` (at most half the heartbeat interval) has passed, so followers' election timers
//! see the leader as often as before. Calls on a fresh client (openraft's leadership check for a
//! linearizable read, elections) always go out: only a client's own acknowledged call opens the
//! window.

use crate::raft::type_config::Vote;
use openraft::LogId;
use std::time::{Duration, Instant};

/// What the follower acknowledged on this client, as of its last successful AppendEntries.
#[derive(Clone, Debug, PartialEq)]
pub struct Acked {
    pub at: Instant,
    pub vote: Vote,
    /// The follower's last entry after that call (its last entry sent, or `prev_log_id`).
    pub last: Option<LogId<u64>>,
    /// The commit index that call carried.
    pub commit: Option<LogId<u64>>,
}

/// One replication client's view of its follower, for skipping empty AppendEntries.
#[derive(Debug, Default)]
pub struct CommitNotice {
    acked: Option<Acked>,
    /// Real AppendEntries sent on this client so far; a notice waits for the answer of one sent
    /// after it was scheduled.
    sends: u64,
    /// A notice is scheduled and not yet sent.
    scheduled: bool,
    /// The newest commit openraft asked to announce in a skipped call.
    pending: Option<LogId<u64>>,
}

/// The notice task's next step.
#[derive(Debug, PartialEq)]
pub enum Due {
    Void,
    NotYet,
    Send(Acked, Option<LogId<u64>>),
}

/// What to do with an empty AppendEntries.
#[derive(Debug, PartialEq, Eq)]
pub enum Heartbeat {
    /// Send it.
    Send,
    /// Answer `Success` without sending; `schedule`: start the notice task (none is running).
    Answer { schedule: bool },
}

impl CommitNotice {
    /// Decides about an empty AppendEntries; `leader_commit` is openraft's, before D50's clamp (the
    /// notice clamps it when it sends).
    pub fn heartbeat(
        &mut self,
        vote: &Vote,
        prev_log_id: Option<LogId<u64>>,
        leader_commit: Option<LogId<u64>>,
        window: Duration,
    ) -> Heartbeat {
        let Some(acked) = &self.acked else { return Heartbeat::Send };
        if acked.vote != *vote || acked.last != prev_log_id || acked.at.elapsed() >= window {
            return Heartbeat::Send;
        }
        if leader_commit <= acked.commit {
            return Heartbeat::Answer { schedule: false };
        }
        self.pending = self.pending.max(leader_commit);
        let schedule = !std::mem::replace(&mut self.scheduled, true);
        Heartbeat::Answer { schedule }
    }

    /// A real AppendEntries is about to go out; returns its number for [`CommitNotice::acked`].
    pub fn sending(&mut self) -> u64 {
        self.sends += 1;
        self.sends
    }

    /// Send number `send` succeeded; kept unless a later one went out since.
    pub fn acked(&mut self, send: u64, acked: Acked) {
        if send == self.sends {
            self.pending = self.pending.filter(|p| Some(*p) > acked.commit);
            self.acked = Some(acked);
        }
    }

    /// Anything but a plain success: the next empty AppendEntries goes out for real.
    pub fn forget(&mut self) {
        self.acked = None;
    }

    /// The notice task's turn after its delay. Void when nothing is acknowledged (the next empty
    /// AppendEntries goes out for real) or the follower knows the pending commit; not yet while a
    /// call went out since `since` (its answer may carry the commit) or while the pending commit,
    /// clamped by `clamp` to the durable log, would tell the follower nothing; else the call to
    /// send: the acknowledged vote and entry, and the clamped commit.
    pub fn due(&mut self, since: u64, clamp: impl FnOnce(LogId<u64>) -> Option<LogId<u64>>) -> Due {
        let Some(acked) = self.acked.clone() else { return Due::Void };
        let Some(pending) = self.pending.filter(|p| Some(*p) > acked.commit) else { return Due::Void };
        if self.sends != since {
            return Due::NotYet;
        }
        let commit = clamp(pending);
        if commit > acked.commit {
            Due::Send(acked, commit)
        } else {
            Due::NotYet
        }
    }

    /// The notice task ended (sent, void, or gave up).
    pub fn done(&mut self) {
        self.scheduled = false;
    }

    pub fn sends(&self) -> u64 {
        self.sends
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LeaderId};

    fn log_id(index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(2, 1), index)
    }

    fn vote(term: u64) -> Vote {
        Vote { leader_id: LeaderId::new(term, 1), committed: true }
    }

    const WINDOW: Duration = Duration::from_millis(5);

    fn acked_at(n: &mut CommitNotice, last: u64, commit: u64) {
        let send = n.sending();
        n.acked(
            send,
            Acked {
                at: Instant::now(),
                vote: vote(2),
                last: Some(log_id(last)),
                commit: Some(log_id(commit)),
            },
        );
    }

    #[test]
    fn t01_a_fresh_client_sends_every_heartbeat() {
        let mut n = CommitNotice::default();
        assert_eq!(n.heartbeat(&vote(2), Some(log_id(5)), Some(log_id(5)), WINDOW), Heartbeat::Send);
    }

    #[test]
    fn t02_a_heartbeat_right_after_an_ack_is_answered_and_a_new_commit_scheduled_once() {
        let mut n = CommitNotice::default();
        acked_at(&mut n, 5, 4);
        // Nothing new for the follower: answered, no notice.
        assert_eq!(
            n.heartbeat(&vote(2), Some(log_id(5)), Some(log_id(4)), WINDOW),
            Heartbeat::Answer { schedule: false }
        );
        // A new commit: answered, one notice scheduled; the next one joins it.
        assert_eq!(
            n.heartbeat(&vote(2), Some(log_id(5)), Some(log_id(5)), WINDOW),
            Heartbeat::Answer { schedule: true }
        );
        assert_eq!(
            n.heartbeat(&vote(2), Some(log_id(5)), Some(log_id(5)), WINDOW),
            Heartbeat::Answer { schedule: false }
        );
        let since = n.sends();
        // The notice carries the pending commit, clamped to the durable log.
        let Due::Send(acked, commit) = n.due(since, Some) else { panic!("a notice is due") };
        assert_eq!((acked.last, commit), (Some(log_id(5)), Some(log_id(5))));
        assert_eq!(n.due(since, |_| Some(log_id(4))), Due::NotYet, "clamped to what the follower knows");
        n.done();
        // Acknowledged: nothing pending any more.
        let send = n.sending();
        n.acked(send, Acked { commit: Some(log_id(5)), ..acked });
        assert_eq!(n.due(send, Some), Due::Void);
    }

    #[test]
    fn t03_another_vote_entry_or_an_old_ack_sends_for_real() {
        let mut n = CommitNotice::default();
        acked_at(&mut n, 5, 4);
        assert_eq!(n.heartbeat(&vote(3), Some(log_id(5)), Some(log_id(5)), WINDOW), Heartbeat::Send);
        assert_eq!(n.heartbeat(&vote(2), Some(log_id(6)), Some(log_id(5)), WINDOW), Heartbeat::Send);
        assert_eq!(n.heartbeat(&vote(2), Some(log_id(5)), Some(log_id(5)), Duration::ZERO), Heartbeat::Send);
        n.forget();
        assert_eq!(n.heartbeat(&vote(2), Some(log_id(5)), Some(log_id(5)), WINDOW), Heartbeat::Send);
    }

    #[test]
    fn t04_a_call_sent_meanwhile_defers_the_notice_and_a_late_ack_is_ignored() {
        let mut n = CommitNotice::default();
        acked_at(&mut n, 5, 4);
        assert_eq!(
            n.heartbeat(&vote(2), Some(log_id(5)), Some(log_id(5)), WINDOW),
            Heartbeat::Answer { schedule: true }
        );
        let since = n.sends();
        let first = n.sending();
        let second = n.sending();
        assert_eq!(n.due(since, Some), Due::NotYet, "a call went out: wait for its answer");
        // The first call's answer arrives after the second went out: not recorded, so a heartbeat
        // naming its entry goes out for real.
        n.acked(
            first,
            Acked { at: Instant::now(), vote: vote(2), last: Some(log_id(6)), commit: Some(log_id(5)) },
        );
        assert_eq!(n.heartbeat(&vote(2), Some(log_id(6)), Some(log_id(5)), WINDOW), Heartbeat::Send);
        n.acked(
            second,
            Acked { at: Instant::now(), vote: vote(2), last: Some(log_id(7)), commit: Some(log_id(6)) },
        );
        assert_eq!(n.due(n.sends(), Some), Due::Void, "the call carried the commit");
        assert_eq!(
            n.heartbeat(&vote(2), Some(log_id(7)), Some(log_id(6)), WINDOW),
            Heartbeat::Answer { schedule: false }
        );
    }
}
