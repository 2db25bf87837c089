//! The connections of a run and how failure is paced: a `ConnSlot` per connection, shared by its
//! `pipeline` workers, so that a lost connection is reported once with its cause and replaced
//! once (by the first worker to notice, after a jittered exponential backoff), not once per
//! worker or per failed request; a `Backoff` per worker, so that retryable failures are retried
//! no faster than SPEC §6.4's schedule; and `Health`, which the run watches to stop with a clear
//! message when every request fails.

use crate::constants::{
    RECONNECT_BACKOFF_BASE_MS, RECONNECT_BACKOFF_CAP_MS, RETRY_BACKOFF_BASE_MS, RETRY_BACKOFF_CAP_MS,
};
use ledger_wire::{Client, ClientError, RetryPolicy};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One connection's current client and how many times it has been replaced.
struct SlotState {
    client: Client,
    generation: u64,
}

/// A connection shared by the workers of one `--connections` slot.
pub struct ConnSlot {
    /// Index of the connection, for messages.
    index: usize,
    state: tokio::sync::Mutex<SlotState>,
}

impl ConnSlot {
    pub fn new(index: usize, client: Client) -> ConnSlot {
        ConnSlot { index, state: tokio::sync::Mutex::new(SlotState { client, generation: 0 }) }
    }

    /// The current client and its generation.
    pub async fn current(&self) -> (Client, u64) {
        let state = self.state.lock().await;
        (state.client.clone(), state.generation)
    }

    /// Replaces the connection of generation `seen`, which failed with `cause`. The first worker
    /// to call this for a generation prints the cause (once) and reconnects, backing off between
    /// failed attempts until `deadline`; the others wait on the lock and get its result.
    pub async fn replace(&self, seen: u64, cause: &ClientError, deadline: Instant) -> (Client, u64) {
        let mut state = self.state.lock().await;
        if state.generation != seen {
            return (state.client.clone(), state.generation);
        }
        // Counted before the reconnect, so that a replacer cancelled mid-way (the run stopping)
        // does not make the next worker in line report the same loss again.
        state.generation += 1;
        eprintln!(
            "ledger-loadgen: connection {} to {} lost: {cause}; reconnecting",
            self.index,
            state.client.peer_addr()
        );
        let policy = RetryPolicy {
            base: Duration::from_millis(RECONNECT_BACKOFF_BASE_MS),
            cap: Duration::from_millis(RECONNECT_BACKOFF_CAP_MS),
            max_attempts: u32::MAX,
            jitter: true,
        };
        let mut rng = StdRng::from_entropy();
        let mut attempt = 0;
        while Instant::now() < deadline {
            tokio::time::sleep(policy.delay(attempt, &mut rng)).await;
            attempt += 1;
            match state.client.reconnect().await {
                Ok(client) => {
                    state.client = client;
                    break;
                }
                Err(e) if attempt == 1 => {
                    eprintln!("ledger-loadgen: connection {} cannot reconnect yet: {e}", self.index);
                }
                Err(_) => {}
            }
        }
        (state.client.clone(), state.generation)
    }
}

/// A worker's pause after failed operations: SPEC §6.4's `10 ms × 2^n`, capped, jittered; reset by
/// a success.
pub struct Backoff {
    policy: RetryPolicy,
    failures: u32,
    rng: StdRng,
}

impl Backoff {
    pub fn new(seed: u64) -> Backoff {
        Backoff {
            policy: RetryPolicy {
                base: Duration::from_millis(RETRY_BACKOFF_BASE_MS),
                cap: Duration::from_millis(RETRY_BACKOFF_CAP_MS),
                max_attempts: u32::MAX,
                jitter: true,
            },
            failures: 0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// Counts a failure and returns how long to wait before the next operation.
    pub fn failed(&mut self) -> Duration {
        let delay = self.policy.delay(self.failures, &mut self.rng);
        self.failures = self.failures.saturating_add(1);
        delay
    }
}

/// Outcomes of the whole run so far, for the all-failing watchdog.
pub struct Health {
    /// Origin of `last_ok_ns`.
    started: Instant,
    /// When the last operation succeeded (or the run started), in ns since `started`.
    last_ok_ns: AtomicU64,
    /// Failures since that success.
    failed_since_ok: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            started: Instant::now(),
            last_ok_ns: AtomicU64::new(0),
            failed_since_ok: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }
}

impl Health {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub fn record_ok(&self) {
        self.last_ok_ns.store(self.now_ns(), Ordering::Relaxed);
        self.failed_since_ok.store(0, Ordering::Relaxed);
    }

    pub fn record_failure(&self, error: &str) {
        self.failed_since_ok.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last_error.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *last = Some(error.to_string());
    }

    /// `(time since the last success, failures since then)`.
    fn since_ok(&self) -> (Duration, u64) {
        let last_ok = self.last_ok_ns.load(Ordering::Relaxed);
        let failed = self.failed_since_ok.load(Ordering::Relaxed);
        (Duration::from_nanos(self.now_ns().saturating_sub(last_ok)), failed)
    }

    fn last_error(&self) -> String {
        let last = self.last_error.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        last.clone().unwrap_or_default()
    }
}

/// Why the watchdog stopped a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllFailing {
    pub window: Duration,
    pub failed: u64,
    pub last_error: String,
}

/// Returns once `window` has passed since the last success (or the start) with failures since
/// (checked every `window / 5`); a run whose requests succeed never returns from it. Workers
/// may be parked meanwhile (backing off, or waiting for a reconnect), so the window counts from
/// the last success, not from the last failure.
pub async fn watch_all_failing(health: &Health, window: Duration) -> AllFailing {
    loop {
        tokio::time::sleep(window / 5).await;
        let (since, failed) = health.since_ok();
        if failed > 0 && since >= window {
            return AllFailing { window, failed, last_error: health.last_error() };
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn t80_backoff_grows_is_capped_and_resets() {
        // Proves a worker's pause doubles per consecutive failure within [d/2, d], never exceeds
        // the cap, and starts over after a success.
        let mut backoff = Backoff::new(1);
        let first = backoff.failed();
        assert!(first >= Duration::from_millis(RETRY_BACKOFF_BASE_MS / 2));
        assert!(first <= Duration::from_millis(RETRY_BACKOFF_BASE_MS));
        let mut last = first;
        for _ in 0..20 {
            last = backoff.failed();
            assert!(last <= Duration::from_millis(RETRY_BACKOFF_CAP_MS));
        }
        assert!(last >= Duration::from_millis(RETRY_BACKOFF_CAP_MS / 2));
        backoff.succeeded();
        assert!(backoff.failed() <= Duration::from_millis(RETRY_BACKOFF_BASE_MS));
    }

    #[tokio::test]
    async fn t81_watchdog_fires_only_when_everything_fails() {
        // Proves the all-failing watchdog returns after a window of failures without success,
        // with the count and the last error, and keeps waiting while some requests succeed.
        let health = std::sync::Arc::new(Health::default());
        let feeder = {
            let health = health.clone();
            tokio::spawn(async move {
                for i in 0..1000u32 {
                    if i < 20 && i % 4 == 0 {
                        health.record_ok();
                    }
                    health.record_failure(&format!("protocol #{i}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        let started = Instant::now();
        let stop = watch_all_failing(&health, Duration::from_millis(300)).await;
        // The last success is at i = 16 (~160 ms); a 300 ms window ends at ~460 ms at the earliest.
        assert!(started.elapsed() >= Duration::from_millis(440), "{:?}", started.elapsed());
        assert!(stop.failed >= 15, "{stop:?}");
        assert!(stop.last_error.starts_with("protocol #"));
        feeder.abort();
    }
}
