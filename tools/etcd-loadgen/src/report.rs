//! The result of a run, as one text line of `label value` pairs (easy to read and to pick apart
//! with awk) or one JSON object. Throughput is recorded successes over the measured window;
//! latencies are those of successes, µs.

use crate::cli::Args;
use crate::load::Tally;
use serde_json::json;

/// The figures of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub endpoints: Vec<String>,
    pub connections: u64,
    pub pipeline: u64,
    pub value_size: u64,
    pub key_space: u64,
    pub warmup_s: f64,
    pub measured_s: f64,
    pub count: u64,
    pub errors: u64,
    pub ops_per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Summary {
    pub fn new(args: &Args, tally: &Tally) -> Self {
        let measured_s = args.duration.as_secs_f64();
        assert!(measured_s > 0.0, "the measured window is not empty (checked by the parser)");
        let h = &tally.latency_us;
        // An empty histogram answers 0 for every quantile, which is what an empty run reports.
        Summary {
            endpoints: args.endpoints.clone(),
            connections: args.connections,
            pipeline: args.pipeline,
            value_size: args.value_size,
            key_space: args.key_space,
            warmup_s: args.warmup.as_secs_f64(),
            measured_s,
            count: tally.count,
            errors: tally.errors,
            ops_per_s: tally.count as f64 / measured_s,
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean(),
        }
    }

    /// `put 4x16 100B 10s  ops 123456  ops/s 12345.6  p50_us 812  p99_us 2100  p999_us 5003  max_us 9011  errors 0`
    pub fn line(&self) -> String {
        format!(
            "put {}x{} {}B {}s  ops {}  ops/s {:.1}  p50_us {}  p99_us {}  p999_us {}  max_us {}  errors {}",
            self.connections,
            self.pipeline,
            self.value_size,
            self.measured_s,
            self.count,
            self.ops_per_s,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.errors
        )
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "tool": "etcd-loadgen",
            "version": env!("CARGO_PKG_VERSION"),
            "op": "put",
            "config": {
                "endpoints": self.endpoints,
                "connections": self.connections,
                "pipeline": self.pipeline,
                "in_flight": self.connections * self.pipeline,
                "value_size": self.value_size,
                "key_space": self.key_space,
                "warmup_s": self.warmup_s,
                "duration_s": self.measured_s,
            },
            "count": self.count,
            "errors": self.errors,
            "ops_per_s": self.ops_per_s,
            "latency_us": {
                "p50": self.p50_us,
                "p99": self.p99_us,
                "p999": self.p999_us,
                "max": self.max_us,
                "mean": self.mean_us,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;
    use std::time::Duration;

    fn args(list: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("etcd-loadgen").chain(list.iter().copied())).unwrap()
    }

    #[test]
    fn t20_summary_math() {
        // Proves throughput is recorded successes over the measured window (not the warm-up) and
        // the percentiles come from the success latencies: 1..=1000 µs over 2 s gives 500 ops/s,
        // p50 500, p99 990, p99.9 999, max 1000 (exact: every value is below the histogram's
        // 2048 exact range at 3 significant digits).
        let a = args(&["--connections", "2", "--pipeline", "3", "--duration", "2s", "--warmup", "5s"]);
        let mut tally = Tally::new();
        for us in 1..=1000 {
            tally.record(Duration::from_micros(us));
        }
        tally.errors = 4;
        let s = Summary::new(&a, &tally);
        assert_eq!(s.count, 1000);
        assert_eq!(s.ops_per_s, 500.0);
        assert_eq!((s.p50_us, s.p99_us, s.p999_us, s.max_us), (500, 990, 999, 1000));
        assert_eq!(s.errors, 4);
        assert_eq!(
            s.line(),
            "put 2x3 100B 2s  ops 1000  ops/s 500.0  p50_us 500  p99_us 990  p999_us 999  max_us 1000  errors 4"
        );
        let j = s.json();
        assert_eq!(j["ops_per_s"], 500.0);
        assert_eq!(j["latency_us"]["p99"], 990);
        assert_eq!(j["config"]["in_flight"], 6);
        assert_eq!(j["config"]["warmup_s"], 5.0);
    }

    #[test]
    fn t21_empty_run() {
        // Proves a run without a success reports zeros instead of failing or dividing by zero.
        let s = Summary::new(&args(&["--duration", "1s"]), &Tally::new());
        assert_eq!((s.count, s.ops_per_s, s.p50_us, s.max_us), (0, 0.0, 0, 0));
        assert!(s.line().contains("ops/s 0.0"));
    }
}
