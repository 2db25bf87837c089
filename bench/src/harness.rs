//! The measuring loop: run a closure for a number of timed samples, record each sample's time per
//! iteration (ns) in an HDR histogram, and print one line with p50/p99/p99.9/max and throughput.
//! Fast operations are timed in groups (`inner`) and divided, so the clock read is amortised.

use crate::constants::{HDR_HIGH_NS, HDR_LOW_NS, HDR_SIGFIG};
use hdrhistogram::Histogram;
use std::time::Instant;

/// How one bench is timed.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Timed samples.
    pub samples: u64,
    /// Iterations per sample (1 unless the operation is sub-microsecond).
    pub inner: u64,
    /// Items one iteration processes (hashes, keys, requests, transactions), for throughput.
    pub items: u64,
    /// Unit of `items` in the throughput column.
    pub unit: &'static str,
}

/// The measurements of one bench.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub name: String,
    pub plan: Plan,
    /// Nanoseconds per iteration.
    pub ns: Histogram<u64>,
}

impl Outcome {
    /// Items per second at the median iteration time.
    pub fn throughput(&self) -> f64 {
        let p50 = self.ns.value_at_quantile(0.5).max(1) as f64;
        self.plan.items as f64 * 1e9 / p50
    }

    /// One result line: name, iterations, p50/p99/p99.9/max per iteration, throughput at p50.
    pub fn line(&self) -> String {
        let h = &self.ns;
        format!(
            "{:<34} iters {:>9}  p50 {:>9}  p99 {:>9}  p99.9 {:>9}  max {:>9}  {:>12} {}/s",
            self.name,
            self.plan.samples * self.plan.inner,
            human_ns(h.value_at_quantile(0.50)),
            human_ns(h.value_at_quantile(0.99)),
            human_ns(h.value_at_quantile(0.999)),
            human_ns(h.max()),
            human_count(self.throughput()),
            self.plan.unit
        )
    }
}

/// `812ns`, `4.31µs`, `12.0ms`, `1.20s`.
pub fn human_ns(ns: u64) -> String {
    let x = ns as f64;
    if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        format!("{:.2}µs", x / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2}ms", x / 1e6)
    } else {
        format!("{:.2}s", x / 1e9)
    }
}

/// `950`, `12.3k`, `4.56M`, `1.20G`.
pub fn human_count(x: f64) -> String {
    if x < 1e3 {
        format!("{x:.0}")
    } else if x < 1e6 {
        format!("{:.1}k", x / 1e3)
    } else if x < 1e9 {
        format!("{:.2}M", x / 1e6)
    } else {
        format!("{:.2}G", x / 1e9)
    }
}

fn histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(HDR_LOW_NS, HDR_HIGH_NS, HDR_SIGFIG) {
        Ok(h) => h,
        Err(e) => panic!("constant histogram bounds rejected: {e}"),
    }
}

/// Times `iteration` under `plan`. One untimed warm-up sample runs first.
pub fn measure(name: &str, plan: Plan, mut iteration: impl FnMut()) -> Outcome {
    assert!(plan.samples >= 1, "a bench needs at least one sample");
    assert!(plan.inner >= 1, "a sample needs at least one iteration");
    for _ in 0..plan.inner {
        iteration();
    }
    let mut ns = histogram();
    for _ in 0..plan.samples {
        let start = Instant::now();
        for _ in 0..plan.inner {
            iteration();
        }
        let per_iteration = start.elapsed().as_nanos() / u128::from(plan.inner);
        ns.saturating_record(u64::try_from(per_iteration).unwrap_or(u64::MAX).max(HDR_LOW_NS));
    }
    Outcome { name: name.to_string(), plan, ns }
}

/// Like `measure`, but each sample gets a fresh input from `setup` (untimed), for operations that
/// consume or mutate their input.
pub fn measure_with_setup<T>(
    name: &str,
    plan: Plan,
    mut setup: impl FnMut() -> T,
    mut iteration: impl FnMut(T),
) -> Outcome {
    assert!(plan.samples >= 1, "a bench needs at least one sample");
    let mut ns = histogram();
    iteration(setup());
    for _ in 0..plan.samples {
        let input = setup();
        let start = Instant::now();
        iteration(input);
        let elapsed = start.elapsed().as_nanos();
        ns.saturating_record(u64::try_from(elapsed).unwrap_or(u64::MAX).max(HDR_LOW_NS));
    }
    Outcome { name: name.to_string(), plan: Plan { inner: 1, ..plan }, ns }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t01_measure_counts_and_formats() {
        // Proves measure records one value per sample and the line carries every column.
        let mut calls = 0u64;
        let plan = Plan { samples: 20, inner: 5, items: 10, unit: "hash" };
        let out = measure("demo", plan, || calls += 1);
        assert_eq!(out.ns.len(), 20);
        assert_eq!(calls, 5 * 21);
        let line = out.line();
        for needle in ["demo", "iters", "100", "p50", "p99", "p99.9", "max", "hash/s"] {
            assert!(line.contains(needle), "{line:?} lacks {needle}");
        }
        assert_eq!(human_ns(812), "812ns");
        assert_eq!(human_ns(4_310), "4.31µs");
        assert_eq!(human_count(12_300.0), "12.3k");
    }
}
