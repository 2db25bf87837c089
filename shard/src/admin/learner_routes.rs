//! Routing lookups on a `_system` learner (SPEC §10.4, D75). A learner's copy of the registry
//! answers while it heard from the leader within `learner_cache_ttl_secs`; past that, its copy
//! may be arbitrarily old (it is cut off, or the leader is gone), so it asks a voter (the
//! `_system` leader, at its read index) and reuses that answer for one namespace for
//! `learner_refresh_interval_ms`, so that a stale learner under load sends the leader at most one
//! lookup per namespace and interval. Counted in `learner_cache_stale_total` (lookups that found
//! the copy stale) and `learner_refresh_total` (answers fetched from a voter).

use ledger_core::types::GroupId;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Answers kept at most; past this, expired ones are dropped before a new one is kept.
const ANSWERS_MAX: usize = 4096;

/// Whether a learner's copy, last refreshed by its leader at `heard`, may answer at `now`.
pub fn copy_is_fresh(heard: Option<Instant>, now: Instant, ttl: Duration) -> bool {
    heard.is_some_and(|at| now.saturating_duration_since(at) < ttl)
}

/// Voters' answers a stale learner reuses.
#[derive(Debug, Default)]
pub struct LearnerRoutes {
    answers: HashMap<i64, (Instant, Option<GroupId>)>,
}

impl LearnerRoutes {
    /// The voter's answer for `namespace` if it is younger than `refresh`.
    pub fn reuse(&self, namespace: i64, now: Instant, refresh: Duration) -> Option<Option<GroupId>> {
        let (at, answer) = self.answers.get(&namespace)?;
        (now.saturating_duration_since(*at) < refresh).then_some(*answer)
    }

    pub fn remember(&mut self, namespace: i64, now: Instant, answer: Option<GroupId>, refresh: Duration) {
        if self.answers.len() >= ANSWERS_MAX {
            self.answers.retain(|_, (at, _)| now.saturating_duration_since(*at) < refresh);
            if self.answers.len() >= ANSWERS_MAX {
                self.answers.clear();
            }
        }
        self.answers.insert(namespace, (now, answer));
    }

    /// The copy is fresh again: nothing fetched while it was stale is needed.
    pub fn forget_all(&mut self) {
        self.answers.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t01_a_copy_is_fresh_only_within_the_ttl_of_the_last_contact() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(5);
        assert!(copy_is_fresh(Some(t0), t0 + Duration::from_secs(4), ttl));
        assert!(!copy_is_fresh(Some(t0), t0 + Duration::from_secs(5), ttl));
        assert!(!copy_is_fresh(None, t0, ttl), "never heard from a leader");
    }

    #[test]
    fn t02_an_answer_is_reused_for_the_refresh_interval_only() {
        let t0 = Instant::now();
        let refresh = Duration::from_millis(1000);
        let mut routes = LearnerRoutes::default();
        assert_eq!(routes.reuse(7, t0, refresh), None);
        routes.remember(7, t0, Some(GroupId(3)), refresh);
        routes.remember(8, t0, None, refresh);
        assert_eq!(routes.reuse(7, t0 + Duration::from_millis(999), refresh), Some(Some(GroupId(3))));
        assert_eq!(routes.reuse(8, t0, refresh), Some(None), "a miss is an answer too");
        assert_eq!(routes.reuse(7, t0 + refresh, refresh), None);
        routes.forget_all();
        assert_eq!(routes.reuse(7, t0, refresh), None);
    }

    #[test]
    fn t03_the_kept_answers_stay_bounded() {
        let t0 = Instant::now();
        let refresh = Duration::from_millis(10);
        let mut routes = LearnerRoutes::default();
        for ns in 0..(ANSWERS_MAX as i64 * 2) {
            routes.remember(ns, t0, None, refresh);
        }
        assert!(routes.answers.len() <= ANSWERS_MAX);
    }
}
