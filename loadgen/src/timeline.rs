//! When operations start and which ones count. A run is `warm-up | measured window`, both measured
//! from one start instant `t0`. Closed loop: a worker starts its next operation when the previous
//! one ends. Open loop: operations of a connection follow a fixed schedule (`t0 + i × interval`)
//! and latency is measured from the *scheduled* start, so time spent queued behind a slow
//! response is charged to the operation (coordinated-omission correction).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The fixed instants of a run.
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    pub t0: Instant,
    /// First instant whose operations are recorded (`t0 + warmup`).
    pub measure_start: Instant,
    /// No operation starts at or after this instant.
    pub end: Instant,
}

impl Timeline {
    pub fn new(t0: Instant, warmup: Duration, duration: Duration) -> Timeline {
        let measure_start = t0 + warmup;
        Timeline { t0, measure_start, end: measure_start + duration }
    }

    /// Whether an operation (intended to) start at `start` belongs to the measured window.
    pub fn is_measured(&self, start: Instant) -> bool {
        start >= self.measure_start && start < self.end
    }
}

/// The open-loop schedule of one connection, shared by its pipeline slots: each claims the next
/// slot index; slot `i` is due at `t0 + i × interval`.
#[derive(Debug)]
pub struct Schedule {
    interval_ns: f64,
    next: AtomicU64,
}

impl Schedule {
    /// A schedule issuing `rate_per_s` operations per second (> 0).
    pub fn new(rate_per_s: f64) -> Schedule {
        assert!(rate_per_s > 0.0, "an open-loop schedule needs a positive rate");
        Schedule { interval_ns: 1e9 / rate_per_s, next: AtomicU64::new(0) }
    }

    /// The intended start of the next operation.
    pub fn claim(&self, t0: Instant) -> Instant {
        let index = self.next.fetch_add(1, Ordering::Relaxed);
        t0 + Duration::from_nanos((index as f64 * self.interval_ns) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t95_warmup_is_not_measured() {
        // Proves the window boundaries: warm-up starts and post-end starts are excluded.
        let t0 = Instant::now();
        let tl = Timeline::new(t0, Duration::from_secs(10), Duration::from_secs(60));
        assert!(!tl.is_measured(t0));
        assert!(!tl.is_measured(t0 + Duration::from_millis(9_999)));
        assert!(tl.is_measured(t0 + Duration::from_secs(10)));
        assert!(tl.is_measured(t0 + Duration::from_secs(69)));
        assert!(!tl.is_measured(t0 + Duration::from_secs(70)));
    }

    #[test]
    fn t96_schedule_is_evenly_spaced() {
        // Proves slot i is due at t0 + i/rate regardless of who claims it.
        let t0 = Instant::now();
        let s = Schedule::new(1000.0);
        let due: Vec<Duration> = (0..4).map(|_| s.claim(t0) - t0).collect();
        assert_eq!(due, vec![0, 1, 2, 3].into_iter().map(Duration::from_millis).collect::<Vec<_>>());
    }
}
