//! Over-limit writes refused at the router (D47). The rate limit itself is the token bucket at
//! the namespace's group leader (SPEC §8.9, shard/src/round/rate_limit.rs). Without this
//! module a client that ignores the retry-after hint costs the node a frame decode, a hop to the
//! leader's core and an answer for every refused write, as fast as it can send them, and that
//! CPU is taken from every other namespace. So each core's router remembers the refusals that
//! pass back through its connections ("namespace N has no token until T") and, until T, refuses
//! that namespace's writes itself, without the hop.
//!
//! A refusal made here is also *paced*: it is answered at the next free slot of the namespace
//! on this core (slots `1 / rate_limit_rps` apart, starting at T) rather than at once. A client
//! that waits for the hint loses nothing (its retry would not have been admitted before then);
//! one that retries at once, or floods, is slowed to about one attempt per slot per core, so its
//! refusals stop costing more CPU than its admitted writes. A held refusal counts as an
//! outstanding request of its connection, so `requests_max_concurrent` bounds them.

use crate::constants::{THROTTLE_HOLD_MAX, THROTTLE_NAMESPACES_MAX};
use ledger_wire::messages::{ErrorDetail, Request, Status, StatusCode};
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What this core knows of one namespace's bucket.
#[derive(Debug, Clone, Copy)]
struct Throttled {
    /// The leader said: no token before this.
    until: Instant,
    /// The next refusal made here is answered no earlier than this.
    next_slot: Instant,
}

/// A write refused here: answer it after `hold`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalRefusal {
    pub hold: Duration,
}

/// One core's memory of over-limit namespaces.
#[derive(Debug)]
pub struct WriteThrottle {
    /// Time between two slots of a namespace: `1 / rate_limit_rps`; `None` = no rate limit.
    slot: Option<Duration>,
    namespaces: RefCell<HashMap<i64, Throttled>>,
}

impl WriteThrottle {
    pub fn new(rate_limit_rps: u32) -> WriteThrottle {
        let slot = (rate_limit_rps > 0).then(|| Duration::from_secs_f64(1.0 / f64::from(rate_limit_rps)));
        WriteThrottle { slot, namespaces: RefCell::new(HashMap::new()) }
    }

    /// A leader refused a write of `namespace` at `now`, with no token for `retry_after`.
    pub fn learn(&self, namespace: i64, retry_after: Duration, now: Instant) {
        if self.slot.is_none() {
            return;
        }
        let until = now + retry_after;
        let mut namespaces = self.namespaces.borrow_mut();
        if namespaces.len() >= THROTTLE_NAMESPACES_MAX && !namespaces.contains_key(&namespace) {
            namespaces.retain(|_, t| t.until > now || t.next_slot > now);
            if namespaces.len() >= THROTTLE_NAMESPACES_MAX {
                // Every entry is live: forgetting one only costs its next write the hop.
                return;
            }
        }
        let entry = namespaces.entry(namespace).or_insert(Throttled { until, next_slot: until });
        entry.until = entry.until.max(until);
        entry.next_slot = entry.next_slot.max(entry.until);
    }

    /// A client write of `namespace` arrives at `now`: `Some` when it is refused here, with how
    /// long to hold the refusal; `None` sends it on to the leader.
    pub fn check(&self, namespace: i64, now: Instant) -> Option<LocalRefusal> {
        let slot = self.slot?;
        let mut namespaces = self.namespaces.borrow_mut();
        let entry = namespaces.get_mut(&namespace)?;
        if now >= entry.until {
            return None;
        }
        let answer_at = entry.next_slot.max(now);
        entry.next_slot = answer_at + slot;
        let hold = answer_at.saturating_duration_since(now).min(THROTTLE_HOLD_MAX);
        Some(LocalRefusal { hold })
    }

    /// Namespaces remembered (for tests of the bound).
    pub fn len(&self) -> usize {
        self.namespaces.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.namespaces.borrow().is_empty()
    }
}

/// The namespace of a client write, the only requests the rate limit counts.
pub fn write_namespace(request: &Request) -> Option<i64> {
    match request {
        Request::Write { namespace_id, .. } | Request::BatchWrite { namespace_id, .. } => Some(*namespace_id),
        _ => None,
    }
}

/// The wait of a rate-limit refusal (`ResourceExhausted` with a retry-after hint).
pub fn retry_after(status: &Status) -> Option<Duration> {
    match (status.code, &status.detail) {
        (StatusCode::ResourceExhausted, Some(ErrorDetail::RetryAfter { ms })) => {
            Some(Duration::from_millis(u64::from(*ms)))
        }
        _ => None,
    }
}

/// The refusal a router makes itself, answered after its hold: by then the namespace's next
/// token is due, so the hint is the 1 ms minimum.
pub fn refusal(namespace_id: i64, held: Duration) -> Status {
    Status {
        code: StatusCode::ResourceExhausted,
        message: format!(
            "namespace {namespace_id} is over its write rate limit (refused by this node's router, answered after {} ms); retry after 1 ms",
            held.as_millis()
        ),
        leader_hint: None,
        detail: Some(ErrorDetail::RetryAfter { ms: 1 }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Nothing learned, nothing refused; without a rate limit nothing is ever learned.
    #[test]
    fn t01_unknown_or_unlimited_namespaces_pass() {
        let now = Instant::now();
        let throttle = WriteThrottle::new(1000);
        assert_eq!(throttle.check(7, now), None);
        let off = WriteThrottle::new(0);
        off.learn(7, 5 * MS, now);
        assert_eq!(off.check(7, now), None);
        assert!(off.is_empty());
    }

    /// After a leader's refusal the namespace's writes are refused here until its retry-after,
    /// each held to its own slot (1 ms apart at 1000/s, starting at the retry-after); then they
    /// go to the leader again. Other namespaces are not touched.
    #[test]
    fn t02_refusals_until_the_hint_are_paced_slots() {
        let t0 = Instant::now();
        let throttle = WriteThrottle::new(1000);
        throttle.learn(7, 3 * MS, t0);
        assert_eq!(throttle.check(8, t0), None);
        let holds: Vec<Duration> = (0..4).map(|_| throttle.check(7, t0).unwrap().hold).collect();
        assert_eq!(holds, vec![3 * MS, 4 * MS, 5 * MS, 6 * MS]);
        // Later arrivals queue behind the slots already given out.
        assert_eq!(throttle.check(7, t0 + 2 * MS).unwrap().hold, 5 * MS);
        // Past the hint: the leader decides again.
        assert_eq!(throttle.check(7, t0 + 3 * MS), None);
        // A new refusal from the leader: slots continue after those given out.
        throttle.learn(7, MS, t0 + 3 * MS);
        assert_eq!(throttle.check(7, t0 + 3 * MS).unwrap().hold, 5 * MS);
    }

    /// Holds never exceed THROTTLE_HOLD_MAX, however many refusals queue up.
    #[test]
    fn t03_holds_are_capped() {
        let t0 = Instant::now();
        let throttle = WriteThrottle::new(10);
        throttle.learn(1, Duration::from_secs(60), t0);
        for _ in 0..1000 {
            assert!(throttle.check(1, t0).unwrap().hold <= THROTTLE_HOLD_MAX);
        }
    }

    /// The map is bounded: once full, expired entries are dropped before a new one is added,
    /// and a new one is not added while every entry is live.
    #[test]
    fn t04_memory_is_bounded() {
        let t0 = Instant::now();
        let throttle = WriteThrottle::new(1000);
        for ns in 0..THROTTLE_NAMESPACES_MAX as i64 {
            throttle.learn(ns, MS, t0);
        }
        throttle.learn(-1, MS, t0);
        assert_eq!(throttle.len(), THROTTLE_NAMESPACES_MAX);
        assert_eq!(throttle.check(-1, t0), None);
        throttle.learn(-1, MS, t0 + 10 * MS);
        assert_eq!(throttle.len(), 1);
        assert!(throttle.check(-1, t0 + 10 * MS).is_some());
    }
}
