//! Elections with a pre-vote (D93). openraft 0.9 has none: a voter that stops hearing from its
//! leader raises its term and campaigns, and one cut off from the group (a partition, a stalled
//! host) keeps doing so; when it comes back, its higher term makes the leader step down, and the
//! group writes nothing until the next election (D82 saw a membership change lost to it).
//!
//! In a cluster openraft's own election timer is off (`open.rs`), and one task per core (`drive`,
//! beside the core's heartbeat tick) decides for each of its groups when this node campaigns. A voter that has heard from no leader for its election
//! timeout (the leader's lease, `raft_election_max_ms`, plus a random time between the election
//! timeout bounds, as openraft waits; without the lease when it has not heard from a leader since
//! its last attempt) first asks the group's other voters `PreVote` at its next term: a voter
//! grants it only if it has itself heard from no leader within `raft_election_min_ms` (a leader:
//! from no quorum), the candidate's term would be above its own and the candidate's log is at
//! least as up to date as its own. Only with the grants of a quorum (of each configuration of a
//! joint one) does it call openraft's election, which raises the term. A pre-vote changes no
//! state anywhere, so a node that cannot reach a quorum never raises its term, and its return
//! leaves the leader in place. A leadership transfer's elections (`ops/leadership.rs`) are not
//! asked first: the leader hands over on purpose; its hold on the other voters' elections holds
//! this task too.

use crate::peer::convert::log_id_to_wire;
use crate::peer::pool::PeerPool;
use crate::raft::contact::Standing;
use crate::raft::core_log::CoreLog;
use crate::raft::open::core_log_dir;
use crate::raft::type_config::LogId;
use crate::round::group::Group;
use ledger_wire::messages::{Request, Response};
use ledger_wire::peer::{PeerRequest, PeerResponse};
use rand::Rng;
use std::collections::BTreeSet;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

/// How often the task looks at its group.
const TICK: Duration = Duration::from_millis(10);

/// What a voter knows when asked for a pre-vote.
#[derive(Debug, Clone, Copy)]
pub struct VoterView {
    /// It heard from a leader within the minimum election timeout (leading: from a quorum).
    pub leader_alive: bool,
    pub term: u64,
    pub last_log_id: Option<LogId>,
}

/// Whether a voter that sees `view` grants a pre-vote to a candidate for `term` whose log ends at
/// `candidate_last` (Raft's vote rule, plus the live leader check of the pre-vote).
pub fn grants(view: VoterView, term: u64, candidate_last: Option<LogId>) -> bool {
    !view.leader_alive && term > view.term && candidate_last >= view.last_log_id
}

/// Whether `granted` (the candidate included) holds a majority of every configuration in
/// `configs` (one, or two during a joint change).
pub fn has_quorum(configs: &[BTreeSet<u64>], granted: &BTreeSet<u64>) -> bool {
    !configs.is_empty()
        && configs.iter().all(|c| c.iter().filter(|v| granted.contains(v)).count() * 2 > c.len())
}

/// The voter's side of `PeerRequest::PreVote`.
pub fn answer_pre_vote(group: &Group, term: u64, candidate_last: Option<LogId>) -> bool {
    let config = group.config();
    let me = config.node_id;
    let now = Instant::now();
    let window = Duration::from_millis(config.raft_election_min_ms);
    let (leading, voters, my_term) = {
        let metrics = group.raft.metrics();
        let m = metrics.borrow();
        let leading = m.current_leader == Some(me) && m.state == openraft::ServerState::Leader;
        let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
        (leading, voters, m.current_term)
    };
    let leader_alive = {
        let data = group.data.borrow();
        if leading {
            !data.contact.is_stale(Standing::Leader { self_id: me, voters }, now, window)
        } else {
            data.contact.heard().is_some_and(|at| now.saturating_duration_since(at) < window)
        }
    };
    let view = VoterView { leader_alive, term: my_term, last_log_id: last_log_id(group) };
    grants(view, term, candidate_last)
}

/// The id of the group's last log entry here (or of its purge point).
fn last_log_id(group: &Group) -> Option<LogId> {
    let log = CoreLog::shared(core_log_dir(group.config(), group.core.get())).ok()?;
    log.last_log_id(group.id)
}

/// One group's election timer: it runs from `since` (the last message from a leader, or this
/// node's last attempt) for `timeout`.
#[derive(Debug)]
pub struct ElectionTimer {
    since: Instant,
    timeout: Duration,
    heard_before: Option<Instant>,
    /// A pre-vote (and maybe an election) of this group is under way.
    campaigning: Rc<std::cell::Cell<bool>>,
}

impl ElectionTimer {
    pub fn new(now: Instant, first_timeout: Duration) -> ElectionTimer {
        ElectionTimer { since: now, timeout: first_timeout, heard_before: None, campaigning: Rc::default() }
    }

    /// One look at the group at `now`: `heard` is when it last heard from a leader, `eligible`
    /// whether it may campaign at all (a voter, not leading, elections not held). `lease` is
    /// added after a leader was heard (openraft waits out its lease too); `next` draws the random
    /// part. True when a campaign is due; the timer then starts over from `now`.
    pub fn due(
        &mut self,
        now: Instant,
        heard: Option<Instant>,
        eligible: bool,
        lease: Duration,
        next: impl Fn() -> Duration,
    ) -> bool {
        if heard.is_some() && heard != self.heard_before {
            self.heard_before = heard;
            if let Some(at) = heard.filter(|at| *at > self.since) {
                self.since = at;
                self.timeout = lease + next();
            }
        }
        if !eligible || self.campaigning.get() {
            self.since = now;
            return false;
        }
        if now.saturating_duration_since(self.since) < self.timeout {
            return false;
        }
        self.since = now;
        self.timeout = next();
        true
    }
}

/// The election timers of every group of a core (cluster nodes; see the module docs): one task
/// per core that looks at each group every `TICK`, as the core's heartbeat tick does (D30), and
/// starts a group's campaign in a task of its own. Ends when the shard closes.
pub async fn drive(shard: Weak<crate::shard::Shard>) {
    let Some((min, max)) = shard.upgrade().map(|s| {
        let c = &s.config;
        (c.raft_election_min_ms, c.raft_election_max_ms.max(c.raft_election_min_ms))
    }) else {
        return;
    };
    let lease = Duration::from_millis(max);
    let next = || Duration::from_millis(rand::thread_rng().gen_range(min..=max));
    let mut timers: std::collections::HashMap<ledger_core::types::GroupId, ElectionTimer> =
        std::collections::HashMap::new();
    loop {
        glommio::timer::sleep(TICK).await;
        let Some(shard) = shard.upgrade() else { return };
        if shard.is_closing() {
            return;
        }
        let groups = shard.group_list();
        // A group that reopened is a new instance: it starts a fresh timer.
        timers.retain(|id, _| groups.iter().any(|g| g.id == *id));
        let now = Instant::now();
        for group in groups {
            let timer = timers.entry(group.id).or_insert_with(|| ElectionTimer::new(now, next()));
            let heard = group.data.borrow().contact.heard();
            let eligible = is_eligible(&group);
            if timer.due(now, heard, eligible, lease, next) {
                let campaigning = timer.campaigning.clone();
                campaigning.set(true);
                let peers = shard.peers.clone();
                glommio::spawn_local(async move {
                    campaign(&group, &peers, Duration::from_millis(min)).await;
                    campaigning.set(false);
                })
                .detach();
            }
        }
    }
}

/// A voter of the group that does not lead it, whose elections are not held (a transfer).
fn is_eligible(group: &Group) -> bool {
    if group.is_stopping() || crate::ops::leadership::elections_held(group.id.0) {
        return false;
    }
    let me = group.config().node_id;
    let metrics = group.raft.metrics();
    let m = metrics.borrow();
    m.state != openraft::ServerState::Leader && m.membership_config.membership().voter_ids().any(|v| v == me)
}

/// A pre-vote, then with a quorum of grants openraft's election.
async fn campaign(group: &Group, peers: &PeerPool, timeout: Duration) {
    if pre_vote(group, peers, timeout).await && !group.is_stopping() {
        let _ = group.raft.trigger().elect().await;
    }
}

/// Asks the group's other voters for a pre-vote at this node's next term; true with a quorum.
async fn pre_vote(group: &Group, peers: &PeerPool, timeout: Duration) -> bool {
    let me = group.config().node_id;
    let (term, configs, addresses) = {
        let metrics = group.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let configs: Vec<BTreeSet<u64>> = membership.get_joint_config().clone();
        let addresses: Vec<(u64, String)> = configs
            .iter()
            .flatten()
            .copied()
            .collect::<BTreeSet<u64>>()
            .into_iter()
            .filter(|v| *v != me)
            .map(|v| (v, membership.get_node(&v).map(|n| n.addr.clone()).unwrap_or_default()))
            .collect();
        (m.current_term, configs, addresses)
    };
    let candidate_last = last_log_id(group).map(|l| log_id_to_wire(&l));
    let asks = addresses.into_iter().map(|(node, addr)| async move {
        let request = Request::Peer(Box::new(PeerRequest::PreVote {
            group_id: group.id.0,
            candidate: me,
            term: term + 1,
            last_log_id: candidate_last,
        }));
        let answer = peers.call(node, &addr, request, timeout).await;
        if let Ok(Err(status)) = &answer {
            told_not_a_member(group, node, status);
        }
        (node, matches!(answer, Ok(Ok(Response::Peer(PeerResponse::PreVote { granted: true })))))
    });
    let mut granted: BTreeSet<u64> =
        futures::future::join_all(asks).await.into_iter().filter(|(_, yes)| *yes).map(|(n, _)| n).collect();
    granted.insert(me);
    has_quorum(&configs, &granted)
}

/// A voter refused the pre-vote because this node is no voter there: it was removed while it
/// was away (D69), and says so once, as after a refused vote (`network.rs`).
fn told_not_a_member(group: &Group, peer: u64, status: &ledger_wire::messages::Status) {
    if status.message.starts_with(crate::peer::serve::NOT_A_MEMBER)
        && !group.data.borrow().contact.told_not_a_member.replace(true)
    {
        crate::event!(error, "not_a_member", group = %group.id, peer, message = %status.message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn id(term: u64, index: u64) -> Option<LogId> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    /// A voter that hears from a leader refuses; otherwise the candidate needs a higher term and
    /// a log at least as up to date (by term, then index).
    #[test]
    fn t01_the_pre_vote_rule() {
        let idle = VoterView { leader_alive: false, term: 5, last_log_id: id(5, 10) };
        assert!(grants(idle, 6, id(5, 10)));
        assert!(grants(idle, 6, id(6, 2)), "a later term's log is more up to date");
        assert!(!grants(VoterView { leader_alive: true, ..idle }, 6, id(5, 10)), "a live leader");
        assert!(!grants(idle, 5, id(5, 10)), "not above the voter's term");
        assert!(!grants(idle, 6, id(5, 9)), "a shorter log");
        assert!(!grants(idle, 6, id(4, 99)), "an older term's log");
        assert!(grants(VoterView { last_log_id: None, ..idle }, 6, None), "two empty logs");
    }

    /// The timer: due after its first timeout; a message from a leader pushes it back by the
    /// lease plus a random time; it never fires while not eligible or while a campaign runs, and
    /// after firing it starts over.
    #[test]
    fn t03_the_election_timer() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let next = || ms(200);
        let mut timer = ElectionTimer::new(t0, ms(200));
        assert!(!timer.due(t0 + ms(199), None, true, ms(300), next));
        assert!(timer.due(t0 + ms(200), None, true, ms(300), next), "no leader heard: due");
        assert!(!timer.due(t0 + ms(300), None, true, ms(300), next), "started over");
        let heard = Some(t0 + ms(350));
        assert!(!timer.due(t0 + ms(400), heard, true, ms(300), next));
        assert!(!timer.due(t0 + ms(849), heard, true, ms(300), next), "lease + random after the leader");
        assert!(timer.due(t0 + ms(850), heard, true, ms(300), next));
        assert!(!timer.due(t0 + ms(5000), heard, false, ms(300), next), "not eligible");
        assert!(!timer.due(t0 + ms(5199), heard, true, ms(300), next), "restarted while not eligible");
        timer.campaigning.set(true);
        assert!(!timer.due(t0 + ms(9000), heard, true, ms(300), next), "a campaign is under way");
        timer.campaigning.set(false);
        assert!(timer.due(t0 + ms(9200), heard, true, ms(300), next));
    }

    /// A majority of each configuration: one of three is not enough, two are; in a joint change
    /// both the old and the new configuration must agree.
    #[test]
    fn t02_a_quorum_of_every_configuration() {
        let set = |ids: &[u64]| ids.iter().copied().collect::<BTreeSet<u64>>();
        assert!(!has_quorum(&[set(&[1, 2, 3])], &set(&[1])));
        assert!(has_quorum(&[set(&[1, 2, 3])], &set(&[1, 3])));
        assert!(has_quorum(&[set(&[1])], &set(&[1])), "a single voter elects itself");
        assert!(!has_quorum(&[set(&[1, 2])], &set(&[1])), "half is not a majority");
        let joint = [set(&[1, 2, 3]), set(&[2, 3, 4])];
        assert!(!has_quorum(&joint, &set(&[1, 2])), "the new configuration has one of three");
        assert!(has_quorum(&joint, &set(&[1, 2, 4])));
        assert!(!has_quorum(&[], &set(&[1])), "no configuration, no election");
    }
}
