//! The closed loop. `connections` gRPC clients are opened first; then `connections × pipeline`
//! workers start together, worker w on connection w / pipeline, each sending its next put when
//! the previous one is answered. A put that starts during the warm-up is sent but not recorded;
//! one that starts in the measured window is recorded when it ends, even if that is after the
//! window closed (the same rule as `ledger-loadgen`). Failures are counted, not retried at once:
//! a worker pauses 10 ms, doubling up to 1 s, after each one, so a dead endpoint is not hammered.

use crate::cli::Args;
use etcd_client::{Client, ConnectOptions, KvClient};
use hdrhistogram::Histogram;
use std::time::{Duration, Instant};

/// Latency histogram range, µs: 1 µs to 60 s, 3 significant digits (as `ledger-loadgen`).
pub const LATENCY_LOW_US: u64 = 1;
pub const LATENCY_HIGH_US: u64 = 60_000_000;
pub const LATENCY_SIGFIG: u8 = 3;
/// A connection or a put that takes longer than this fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A worker's pause after a failure, doubled per failure in a row up to the maximum.
const BACKOFF_FIRST: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("a worker stopped: {0}")]
    Worker(#[from] tokio::task::JoinError),
    #[error("cannot merge the latency histograms: {0}")]
    Merge(#[from] hdrhistogram::AdditionError),
}

/// What the workers measured in the window.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Latency of each recorded successful put, µs.
    pub latency_us: Histogram<u64>,
    /// Recorded successful puts.
    pub count: u64,
    /// Recorded failed puts.
    pub errors: u64,
    /// The first recorded failure, for the operator.
    pub first_error: Option<String>,
}

pub fn histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(LATENCY_LOW_US, LATENCY_HIGH_US, LATENCY_SIGFIG) {
        Ok(h) => h,
        Err(e) => panic!("constant histogram bounds rejected: {e}"),
    }
}

impl Tally {
    pub fn new() -> Self {
        Tally { latency_us: histogram(), count: 0, errors: 0, first_error: None }
    }

    /// Records one successful put that took `elapsed`.
    pub fn record(&mut self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.saturating_record(micros.max(LATENCY_LOW_US));
        self.count += 1;
    }

    /// Adds another worker's tally to this one.
    pub fn absorb(&mut self, other: Tally) -> Result<(), LoadError> {
        self.latency_us.add(&other.latency_us)?;
        self.count += other.count;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        Ok(())
    }
}

/// A worker's deterministic key and value sequence (splitmix64), seeded by (seed, worker).
#[derive(Debug, Clone)]
pub struct Draw {
    state: u64,
}

impl Draw {
    pub fn new(seed: u64, worker: u64) -> Self {
        Draw { state: seed ^ worker.wrapping_add(1).wrapping_mul(0xD1B5_4A32_D192_ED03) }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Overwrites `bytes` with the next random bytes.
    pub fn fill(&mut self, bytes: &mut [u8]) {
        for chunk in bytes.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// Key number `n` as `ledger-loadgen` spells its keys: `k` and 10 digits.
pub fn key_name(n: u64) -> String {
    format!("k{n:010}")
}

/// When puts count: those that start in `[warm_end, end)`.
#[derive(Debug, Clone, Copy)]
struct Window {
    warm_end: Instant,
    end: Instant,
}

/// Opens the connections, runs every worker through the warm-up and the window, and merges
/// their tallies.
pub async fn run(args: &Args) -> Result<Tally, LoadError> {
    let options = ConnectOptions::new().with_connect_timeout(CONNECT_TIMEOUT).with_timeout(REQUEST_TIMEOUT);
    let mut connections = Vec::new();
    for index in 0..args.connections {
        let endpoint = &args.endpoints[index as usize % args.endpoints.len()];
        let client = Client::connect([endpoint.as_str()], Some(options.clone()))
            .await
            .map_err(|source| LoadError::Connect { endpoint: endpoint.clone(), source })?;
        connections.push(client.kv_client());
    }
    let start = Instant::now();
    let window = Window { warm_end: start + args.warmup, end: start + args.warmup + args.duration };
    let value_bytes = usize::try_from(args.value_size).unwrap_or(usize::MAX);
    let mut workers = Vec::new();
    for w in 0..args.in_flight() {
        let kv = connections[(w / args.pipeline) as usize].clone();
        let draw = Draw::new(args.seed, w);
        workers.push(tokio::spawn(worker(kv, draw, value_bytes, args.key_space, window)));
    }
    let mut tally = Tally::new();
    for handle in workers {
        tally.absorb(handle.await?)?;
    }
    Ok(tally)
}

/// One closed-loop worker: put, wait for the answer, repeat until the window ends.
async fn worker(
    mut kv: KvClient,
    mut draw: Draw,
    value_bytes: usize,
    key_space: u64,
    window: Window,
) -> Tally {
    let mut tally = Tally::new();
    let mut value = vec![0u8; value_bytes];
    let mut backoff = BACKOFF_FIRST;
    loop {
        let begun = Instant::now();
        if begun >= window.end {
            return tally;
        }
        let key = key_name(draw.next_u64() % key_space);
        draw.fill(&mut value);
        let result = kv.put(key, value.clone(), None).await;
        let recorded = begun >= window.warm_end;
        match result {
            Ok(_) => {
                backoff = BACKOFF_FIRST;
                if recorded {
                    tally.record(begun.elapsed());
                }
            }
            Err(e) => {
                if recorded {
                    tally.errors += 1;
                    tally.first_error.get_or_insert_with(|| e.to_string());
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn t10_draws_are_seeded_per_worker() {
        // Proves the same (seed, worker) gives the same keys and values, and that two workers or
        // two seeds differ: runs are repeatable and workers do not write in lockstep.
        let sequence = |seed, worker| {
            let mut draw = Draw::new(seed, worker);
            let mut value = [0u8; 100];
            draw.fill(&mut value);
            (key_name(draw.next_u64() % 100_000), value.to_vec())
        };
        assert_eq!(sequence(1, 0), sequence(1, 0));
        assert_ne!(sequence(1, 0), sequence(1, 1));
        assert_ne!(sequence(1, 0), sequence(2, 0));
        assert_eq!(key_name(42), "k0000000042");
        assert_eq!(key_name(99_999).len(), 11);
    }

    #[test]
    fn t11_tallies_merge() {
        // Proves absorb adds counts, errors and histograms, and keeps the first error seen.
        let mut a = Tally::new();
        a.record(Duration::from_micros(100));
        a.errors = 1;
        a.first_error = Some("first".into());
        let mut b = Tally::new();
        b.record(Duration::from_micros(300));
        b.record(Duration::from_nanos(10));
        b.errors = 2;
        b.first_error = Some("second".into());
        a.absorb(b).unwrap();
        assert_eq!(a.count, 3);
        assert_eq!(a.errors, 3);
        assert_eq!(a.latency_us.len(), 3);
        assert_eq!(a.latency_us.min(), LATENCY_LOW_US);
        assert_eq!(a.latency_us.max(), 300);
        assert_eq!(a.first_error.as_deref(), Some("first"));
    }
}
