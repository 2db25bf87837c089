//! Per-operation measurements: an HDR histogram of successful latencies (1 µs–60 s, 3 significant
//! digits) and error counts by status code. Each worker records into its own `Recorder` (no
//! sharing on the hot path); the run merges them at the end.

use crate::constants::{HDR_HIGH_US, HDR_LOW_US, HDR_SIGFIG};
use crate::mix::OpKind;
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::time::Duration;

/// Measurements of one operation kind.
#[derive(Debug, Clone)]
pub struct OpStats {
    /// Latency of successful operations, in microseconds.
    pub latency_us: Histogram<u64>,
    /// Successful reads that found no value and lists that returned an empty page.
    pub misses: u64,
    /// Failed operations by error code (`NotFound`, `write:SequenceGap`, `timeout`, ...).
    pub errors: BTreeMap<String, u64>,
}

/// A histogram with the run's bounds.
pub fn new_histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(HDR_LOW_US, HDR_HIGH_US, HDR_SIGFIG) {
        Ok(h) => h,
        Err(e) => panic!("constant histogram bounds rejected: {e}"),
    }
}

impl OpStats {
    pub fn new() -> OpStats {
        OpStats { latency_us: new_histogram(), misses: 0, errors: BTreeMap::new() }
    }

    /// Records one success; latencies outside 1 µs–60 s are clamped into range.
    pub fn record_ok(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).clamp(HDR_LOW_US, HDR_HIGH_US);
        self.latency_us.saturating_record(us);
    }

    pub fn record_error(&mut self, code: &str) {
        *self.errors.entry(code.to_string()).or_default() += 1;
    }

    pub fn ok_count(&self) -> u64 {
        self.latency_us.len()
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn merge(&mut self, other: &OpStats) {
        // Both histograms share bounds, so `add` cannot fail for lack of range.
        if let Err(e) = self.latency_us.add(&other.latency_us) {
            panic!("merging histograms with equal bounds failed: {e}");
        }
        self.misses += other.misses;
        for (code, n) in &other.errors {
            *self.errors.entry(code.clone()).or_default() += n;
        }
    }
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats::new()
    }
}

/// The measurements of one worker (or of the whole run after merging), one `OpStats` per kind.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    pub read: OpStats,
    pub write: OpStats,
    pub verified: OpStats,
    pub list: OpStats,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder::default()
    }

    pub fn op(&self, kind: OpKind) -> &OpStats {
        match kind {
            OpKind::Read => &self.read,
            OpKind::Write => &self.write,
            OpKind::Verified => &self.verified,
            OpKind::List => &self.list,
        }
    }

    pub fn op_mut(&mut self, kind: OpKind) -> &mut OpStats {
        match kind {
            OpKind::Read => &mut self.read,
            OpKind::Write => &mut self.write,
            OpKind::Verified => &mut self.verified,
            OpKind::List => &mut self.list,
        }
    }

    pub fn merge(&mut self, other: &Recorder) {
        for kind in OpKind::ALL {
            self.op_mut(kind).merge(other.op(kind));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn t40_record_clamp_and_merge() {
        // Proves out-of-range latencies are clamped rather than lost, and merging sums counts
        // and error codes.
        let mut a = Recorder::new();
        a.op_mut(OpKind::Read).record_ok(Duration::from_nanos(10));
        a.op_mut(OpKind::Read).record_ok(Duration::from_secs(120));
        a.op_mut(OpKind::Write).record_error("NotFound");
        a.read.misses = 2;
        let mut b = Recorder::new();
        b.op_mut(OpKind::Read).record_ok(Duration::from_micros(500));
        b.op_mut(OpKind::Write).record_error("NotFound");
        b.op_mut(OpKind::Write).record_error("timeout");
        b.read.misses = 1;
        a.merge(&b);
        assert_eq!(a.read.misses, 3);
        assert_eq!(a.read.ok_count(), 3);
        assert_eq!(a.read.latency_us.min(), HDR_LOW_US);
        assert!(a.read.latency_us.max() >= HDR_HIGH_US);
        assert_eq!(a.write.errors.get("NotFound"), Some(&2));
        assert_eq!(a.write.error_count(), 3);
        assert_eq!(a.list.ok_count(), 0);
    }
}
