//! The per-namespace write rate limit of SPEC §8.9: a token bucket per namespace at the group
//! leader, refilled at `rate_limit_rps` transactions per second and holding at most twice that
//! (the burst). A client write takes one token when the leader admits it; without one it is
//! refused with `ResourceExhausted` and told how long until a token is there (D44). Writes the
//! server issues itself never pass here.

use crate::constants::RATE_LIMIT_BUCKETS_MAX;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Bucket capacity as a multiple of the rate (SPEC §8.9: burst 2×).
pub const BURST_FACTOR: f64 = 2.0;

/// One namespace's tokens as of `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(self, now: Instant, rate: f64, capacity: f64) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * rate).min(capacity)
    }
}

/// The buckets of the namespaces whose writes this core admits (a namespace lives in one group,
/// so one core is its only admitter on a node).
#[derive(Debug)]
pub struct RateLimiter {
    /// Transactions per second per namespace; 0 = no limit.
    rps: u32,
    buckets: HashMap<i64, Bucket>,
}

impl RateLimiter {
    pub fn new(rps: u32) -> RateLimiter {
        RateLimiter { rps, buckets: HashMap::new() }
    }

    fn capacity(&self) -> f64 {
        f64::from(self.rps) * BURST_FACTOR
    }

    /// Takes one token of `namespace` at `now`: `Err(wait)` when there is none, `wait` being the
    /// time until the next one (at least 1 ms).
    pub fn admit(&mut self, namespace: i64, now: Instant) -> Result<(), Duration> {
        if self.rps == 0 {
            return Ok(());
        }
        let (rate, capacity) = (f64::from(self.rps), self.capacity());
        if self.buckets.len() >= RATE_LIMIT_BUCKETS_MAX && !self.buckets.contains_key(&namespace) {
            // A full bucket is the same as none: forgetting those bounds the map by the
            // namespaces written recently.
            self.buckets.retain(|_, b| b.refilled(now, rate, capacity) < capacity);
        }
        let bucket = self.buckets.entry(namespace).or_insert(Bucket { tokens: capacity, at: now });
        let tokens = bucket.refilled(now, rate, capacity);
        if tokens >= 1.0 {
            *bucket = Bucket { tokens: tokens - 1.0, at: now };
            return Ok(());
        }
        *bucket = Bucket { tokens, at: now };
        let wait = Duration::from_secs_f64((1.0 - tokens) / rate);
        Err(wait.max(Duration::from_millis(1)))
    }

    /// Buckets held (for tests of the bound).
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// A wait as the whole milliseconds of a retry-after hint, rounded up.
pub fn retry_after_ms(wait: Duration) -> u32 {
    let ms = wait.as_micros().div_ceil(1000);
    u32::try_from(ms).unwrap_or(u32::MAX).max(1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn admitted(limiter: &mut RateLimiter, namespace: i64, now: Instant, tries: usize) -> usize {
        (0..tries).filter(|_| limiter.admit(namespace, now).is_ok()).count()
    }

    /// A fresh bucket holds the burst (2 × rate), no more; the refusal says when the next token
    /// comes; time refills at the rate, never past the burst.
    #[test]
    fn t01_burst_then_refill_at_the_rate() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(50);
        assert_eq!(admitted(&mut limiter, 7, t0, 500), 100);
        let wait = limiter.admit(7, t0).unwrap_err();
        assert_eq!(retry_after_ms(wait), 20);
        // Half a token after 10 ms: still refused, and the hint says the other 10 ms.
        let wait = limiter.admit(7, t0 + Duration::from_millis(10)).unwrap_err();
        assert_eq!(retry_after_ms(wait), 10);
        // One second later: 50 more (49 and a fraction after rounding of the clock arithmetic).
        let t1 = t0 + Duration::from_secs(1);
        assert!((49..=50).contains(&admitted(&mut limiter, 7, t1, 500)));
        // A long pause refills to the burst only.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!(admitted(&mut limiter, 7, t2, 500), 100);
    }

    /// Namespaces have buckets of their own: one that is empty leaves the others full.
    #[test]
    fn t02_namespaces_are_independent() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(10);
        assert_eq!(admitted(&mut limiter, 1, t0, 100), 20);
        assert!(limiter.admit(1, t0).is_err());
        assert_eq!(admitted(&mut limiter, 2, t0, 100), 20);
    }

    /// Rate 0 is off: everything is admitted and nothing is kept.
    #[test]
    fn t03_zero_is_off() {
        let mut limiter = RateLimiter::new(0);
        assert_eq!(admitted(&mut limiter, 1, Instant::now(), 100_000), 100_000);
        assert!(limiter.is_empty());
    }

    /// Steady traffic at the rate is never refused (after the burst is spent, each token is
    /// taken as it arrives).
    #[test]
    fn t04_steady_rate_is_admitted() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(1000);
        for i in 0..10_000u64 {
            let now = t0 + Duration::from_micros(i * 1000);
            assert!(limiter.admit(3, now).is_ok(), "write {i} at the rate was refused");
        }
        // Twice the rate: half of the writes beyond the burst are refused.
        let mut limiter = RateLimiter::new(1000);
        let ok =
            (0..10_000u64).filter(|i| limiter.admit(3, t0 + Duration::from_micros(i * 500)).is_ok()).count();
        assert!((6_900..=7_100).contains(&ok), "{ok}");
    }

    /// The map forgets full buckets once it holds `RATE_LIMIT_BUCKETS_MAX`.
    #[test]
    fn t05_buckets_are_bounded() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(1);
        for ns in 0..RATE_LIMIT_BUCKETS_MAX as i64 {
            limiter.admit(ns, t0).unwrap();
        }
        assert_eq!(limiter.len(), RATE_LIMIT_BUCKETS_MAX);
        // Two seconds on every bucket is full again: the next new namespace clears them.
        limiter.admit(-1, t0 + Duration::from_secs(2)).unwrap();
        assert_eq!(limiter.len(), 1);
    }
}
