//! Command line: where etcd is, how much load (connections × pipeline), for how long, and the
//! report format. Durations read like `ledger-loadgen`'s: an integer with `ms`, `s`, `m` or `h`
//! (a bare number is seconds).

use clap::{Parser, ValueEnum};
use std::time::Duration;

/// Bounds of the load, so that a typo cannot open a million connections.
pub const CONNECTIONS_MAX: u64 = 1_024;
pub const PIPELINE_MAX: u64 = 4_096;
pub const VALUE_BYTES_MAX: u64 = 1 << 20;

/// Closed-loop put load against etcd v3 (100-byte values to single keys by default).
#[derive(Debug, Clone, Parser)]
#[command(name = "etcd-loadgen", version, about)]
pub struct Args {
    /// etcd client URLs, comma-separated; connection i goes to URL i mod N.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    pub endpoints: Vec<String>,
    /// gRPC connections (each its own HTTP/2 connection), each carrying `--pipeline` workers.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=CONNECTIONS_MAX))]
    pub connections: u64,
    /// Puts in flight per connection.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=PIPELINE_MAX))]
    pub pipeline: u64,
    /// Measured window after the warm-up (e.g. 10s, 500ms, 2m).
    #[arg(long, default_value = "10s", value_parser = parse_window)]
    pub duration: Duration,
    /// Warm-up before the measured window; its puts are sent but not recorded.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Bytes per value.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=VALUE_BYTES_MAX))]
    pub value_size: u64,
    /// Distinct keys (`k0000000000` …); each put picks one at random.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub key_space: u64,
    /// Seed of the key and value sequence; worker w draws from (seed, w).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output format of the result on stdout.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub report: ReportFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
}

impl Args {
    /// Workers in all: the puts in flight.
    pub fn in_flight(&self) -> u64 {
        self.connections * self.pipeline
    }
}

/// `250ms`, `10s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let text = input.trim();
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    let value: u64 = digits.parse().map_err(|_| format!("{input:?}: expected e.g. 10s, 500ms, 2m"))?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("{input:?}: the unit is one of ms, s, m, h")),
    };
    let millis = value.checked_mul(millis_per_unit).ok_or_else(|| format!("{input:?}: too long"))?;
    Ok(Duration::from_millis(millis))
}

/// A measured window: a duration that is not zero (throughput divides by it).
pub fn parse_window(input: &str) -> Result<Duration, String> {
    match parse_duration(input)? {
        Duration::ZERO => Err(format!("{input:?}: the measured window cannot be empty")),
        window => Ok(window),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn args(list: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("etcd-loadgen").chain(list.iter().copied()))
    }

    #[test]
    fn t01_durations() {
        // Proves each unit reads as documented and malformed input is refused with a message.
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        for bad in ["", "s", "10x", "1.5s", "-3s", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn t02_flags_and_defaults() {
        // Proves the defaults (4 × 8 workers, 100-byte values, local etcd), the endpoint list
        // split, and that out-of-range loads are refused before anything connects.
        let d = args(&[]).unwrap();
        assert_eq!(d.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!((d.connections, d.pipeline, d.in_flight()), (4, 8, 32));
        assert_eq!(d.value_size, 100);
        assert_eq!(d.duration, Duration::from_secs(10));
        assert_eq!(d.report, ReportFormat::Text);
        let a = args(&[
            "--endpoints",
            "http://127.0.0.1:1,http://127.0.0.1:2",
            "--connections",
            "4",
            "--pipeline",
            "64",
            "--duration",
            "3s",
            "--warmup",
            "0",
            "--report",
            "json",
        ])
        .unwrap();
        assert_eq!(a.endpoints.len(), 2);
        assert_eq!(a.in_flight(), 256);
        assert_eq!(a.warmup, Duration::ZERO);
        assert_eq!(a.report, ReportFormat::Json);
        for bad in [
            &["--connections", "0"][..],
            &["--pipeline", "5000"],
            &["--value-size", "0"],
            &["--key-space", "0"],
            &["--duration", "ten"],
            &["--duration", "0s"],
            &["--report", "csv"],
        ] {
            assert!(args(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
