//! The core's metrics registry (SPEC §11.3): plain counters and hdrhistograms in a thread-local,
//! written by the code running on this core's executor (its router connections and its shard)
//! without atomics or locks, and copied into a `CoreSnapshot` when the metrics endpoint asks the
//! core (`ShardMsg::Metrics`). The server merges the cores' snapshots and encodes them; nothing
//! here knows the exposition format. Helper threads (tree, log, blocking pool) record nothing:
//! what they do is timed by the core task that awaits them.
//!
//! Latencies are microseconds in histograms of 1 µs–60 s at 3 significant digits. Next to each
//! cumulative histogram a `LatencyWindow` keeps the last 60 s in six 10 s slots, for the quantile
//! gauges (`request_latency_p99`) and the summaries.

use crate::constants::{
    LATENCY_DIGITS, LATENCY_US_MAX, METRICS_WINDOW_SLOTS, METRICS_WINDOW_SLOT_SECS, WINDOW_SECS_MAX,
};
use hdrhistogram::Histogram;
use ledger_wire::messages::StatusCode;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

thread_local! {
    static CORE: RefCell<CoreMetrics> = RefCell::new(CoreMetrics::default());
}

/// Runs `f` on this thread's registry. Callers keep `f` short and never call `with` inside it.
pub fn with<R>(f: impl FnOnce(&mut CoreMetrics) -> R) -> R {
    CORE.with(|m| f(&mut m.borrow_mut()))
}

/// A fresh histogram of 1..=`LATENCY_US_MAX` at `LATENCY_DIGITS` (also used for counts such as
/// transactions per block, which stay far below the bound).
pub fn histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts (checked by t01).
    Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_DIGITS).unwrap_or_else(|_| {
        unreachable!("constant histogram bounds are valid");
    })
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The §11.3 `status` label: `ok` or the status code in snake_case.
pub fn status_label(result: Result<(), StatusCode>) -> &'static str {
    match result {
        Ok(()) => "ok",
        Err(code) => match code {
            StatusCode::InvalidArgument => "invalid_argument",
            StatusCode::NotFound => "not_found",
            StatusCode::AlreadyExists => "already_exists",
            StatusCode::Unauthenticated => "unauthenticated",
            StatusCode::PermissionDenied => "permission_denied",
            StatusCode::Unavailable => "unavailable",
            StatusCode::NotLeader => "not_leader",
            StatusCode::ResourceExhausted => "resource_exhausted",
            StatusCode::FailedPrecondition => "failed_precondition",
            StatusCode::DeadlineExceeded => "deadline_exceeded",
            StatusCode::Cancelled => "cancelled",
            StatusCode::Internal => "internal",
        },
    }
}

/// Seconds since the process's first use of the window clock, in 10 s slots.
fn epoch_of(now: Instant) -> u64 {
    thread_local! {
        static ORIGIN: Instant = Instant::now();
    }
    ORIGIN.with(|origin| now.saturating_duration_since(*origin).as_secs() / METRICS_WINDOW_SLOT_SECS)
}

/// The last 60 s of a latency: six 10 s histograms, each reset when its slot comes round again.
/// Slots are made on first use, so an operation seen once costs one histogram, not six.
#[derive(Default)]
pub struct LatencyWindow {
    slots: Vec<Option<(u64, Histogram<u64>)>>,
}

impl LatencyWindow {
    pub fn record_at(&mut self, now: Instant, value: u64) {
        let epoch = epoch_of(now);
        if self.slots.is_empty() {
            self.slots.resize_with(METRICS_WINDOW_SLOTS, || None);
        }
        let slot = &mut self.slots[(epoch % METRICS_WINDOW_SLOTS as u64) as usize];
        match slot {
            Some((at, h)) if *at == epoch => h.saturating_record(value.max(1)),
            Some((at, h)) => {
                h.reset();
                *at = epoch;
                h.saturating_record(value.max(1));
            }
            None => {
                let mut h = histogram();
                h.saturating_record(value.max(1));
                *slot = Some((epoch, h));
            }
        }
    }

    /// The slots of the last `METRICS_WINDOW_SLOTS` epochs up to `now`, merged.
    pub fn merged_at(&self, now: Instant) -> Histogram<u64> {
        let epoch = epoch_of(now);
        let mut out = histogram();
        for (at, h) in self.slots.iter().flatten() {
            if *at <= epoch && epoch - *at < METRICS_WINDOW_SLOTS as u64 {
                // Same bounds on both sides: `add` cannot fail.
                let _ = out.add(h);
            }
        }
        out
    }
}

/// A cumulative latency histogram with its sum, plus its 60 s window.
#[derive(Default)]
pub struct Latency {
    pub total: Option<Histogram<u64>>,
    pub sum_us: u64,
    pub window: LatencyWindow,
}

impl Latency {
    pub fn record(&mut self, now: Instant, us: u64) {
        self.total.get_or_insert_with(histogram).saturating_record(us.max(1));
        self.sum_us = self.sum_us.saturating_add(us);
        self.window.record_at(now, us);
    }

    pub fn snapshot(&self, now: Instant) -> LatencySnapshot {
        LatencySnapshot {
            total: self.total.clone().unwrap_or_else(histogram),
            sum_us: self.sum_us,
            window: self.window.merged_at(now),
        }
    }
}

/// One operation's counters (router-observed, SPEC §11.3 `requests_total`, `request_latency_*`).
#[derive(Default)]
pub struct OpMetrics {
    pub statuses: Vec<(&'static str, u64)>,
    pub latency: Latency,
}

/// One group's counters on this core.
#[derive(Default)]
pub struct GroupCounters {
    pub batch_size: Option<Histogram<u64>>,
    pub batch_wait_us: Option<Histogram<u64>>,
    pub eager_commits: u64,
    pub timeout_commits: u64,
    pub size_commits: u64,
    pub state_root_us: Option<Histogram<u64>>,
    pub proposals: u64,
    pub snapshots_created: u64,
    pub snapshot_bytes_last: u64,
    pub snapshot_create_us: Option<Histogram<u64>>,
    pub snapshot_restore_us: Option<Histogram<u64>>,
    /// State-tree nodes hashed per proposed block (all its scopes' trees).
    pub nodes_hashed: Option<Histogram<u64>>,
    /// The leader seen at the previous look (scrape or proposal) and how often it changed.
    pub leader_seen: Option<Option<u64>>,
    pub leader_changes: u64,
    /// `(when, group height)` at the previous scrape, for `blocks_per_second`.
    pub height_seen: Option<(Instant, u64)>,
}

/// The §11.3 `kind` of `merkle_proof_generation_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofKind {
    Tx = 0,
    State = 1,
    Chain = 2,
}

impl ProofKind {
    pub const ALL: [ProofKind; 3] = [ProofKind::Tx, ProofKind::State, ProofKind::Chain];

    pub fn label(self) -> &'static str {
        match self {
            ProofKind::Tx => "tx",
            ProofKind::State => "state",
            ProofKind::Chain => "chain",
        }
    }
}

/// The §11.3 `kind` of the `serialization_*` families other than `wire` (whose frames the
/// routers time in `CoreMetrics::decode`/`encode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecKind {
    /// Raft log entries: encoded when appended, decoded when read back from a segment file.
    Log,
    /// Snapshot files: encoded when written, decoded when installed or restored.
    Snapshot,
}

/// Encode and decode times (µs) and sizes of one kind, with exact sums.
#[derive(Default)]
pub struct Codec {
    pub encode_us: Option<Histogram<u64>>,
    pub encode_sum_us: u64,
    pub decode_us: Option<Histogram<u64>>,
    pub decode_sum_us: u64,
    pub bytes_out: Option<Histogram<u64>>,
    pub bytes_out_sum: u64,
    pub bytes_in: Option<Histogram<u64>>,
    pub bytes_in_sum: u64,
}

impl Codec {
    fn record(&mut self, encode: bool, bytes: usize, elapsed: Duration) {
        let us = micros(elapsed);
        let bytes = bytes as u64;
        if encode {
            record_into(&mut self.encode_us, us);
            self.encode_sum_us = self.encode_sum_us.saturating_add(us);
            record_into(&mut self.bytes_out, bytes);
            self.bytes_out_sum = self.bytes_out_sum.saturating_add(bytes);
        } else {
            record_into(&mut self.decode_us, us);
            self.decode_sum_us = self.decode_sum_us.saturating_add(us);
            record_into(&mut self.bytes_in, bytes);
            self.bytes_in_sum = self.bytes_in_sum.saturating_add(bytes);
        }
    }

    fn snapshot(&self) -> CodecSnapshot {
        let copy = |h: &Option<Histogram<u64>>| h.clone().unwrap_or_else(histogram);
        CodecSnapshot {
            encode_us: copy(&self.encode_us),
            encode_sum_us: self.encode_sum_us,
            decode_us: copy(&self.decode_us),
            decode_sum_us: self.decode_sum_us,
            bytes_out: copy(&self.bytes_out),
            bytes_out_sum: self.bytes_out_sum,
            bytes_in: copy(&self.bytes_in),
            bytes_in_sum: self.bytes_in_sum,
        }
    }
}

/// Why a block round closed (SPEC §8.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitReason {
    Eager,
    Timeout,
    Size,
}

/// Everything one core records between scrapes.
#[derive(Default)]
pub struct CoreMetrics {
    pub ops: HashMap<&'static str, OpMetrics>,
    pub groups: BTreeMap<u32, GroupCounters>,
    pub write_raft: Latency,
    pub idem_hits: u64,
    pub idem_misses: u64,
    pub idem_evictions: u64,
    pub connections_open: i64,
    /// Client connections this core took over from the core that accepted them (D53).
    pub connection_handoffs_in: u64,
    pub decode: Latency,
    pub encode: Latency,
    pub bytes_in: Option<Histogram<u64>>,
    pub bytes_out: Option<Histogram<u64>>,
    /// `serialization_*{kind="log"}` and `{kind="snapshot"}`.
    pub log_codec: Codec,
    pub snapshot_codec: Codec,
    /// `merkle_proof_generation_seconds` by `ProofKind`, µs, with exact sums.
    pub proof_us: [Option<Histogram<u64>>; 3],
    pub proof_sum_us: [u64; 3],
    /// When the executor's busy time was last taken (`core_busy_ratio`).
    pub busy_since: Option<Instant>,
    /// Client writes refused by the rate limit, per namespace (`rate_limit_exceeded_total`).
    pub rate_limited: BTreeMap<i64, u64>,
    /// Routing lookups a stale `_system` learner took to a voter (`learner_cache_stale_total`)
    /// and the voters' answers it fetched (`learner_refresh_total`), SPEC §10.4.
    pub learner_cache_stale: u64,
    pub learner_refreshes: u64,
}

fn record_into(h: &mut Option<Histogram<u64>>, value: u64) {
    h.get_or_insert_with(histogram).saturating_record(value.max(1));
}

impl CoreMetrics {
    pub fn group(&mut self, group: u32) -> &mut GroupCounters {
        self.groups.entry(group).or_default()
    }

    /// One request answered: `op` (`Request::op_name`), its status label and latency.
    pub fn request_done(&mut self, op: &'static str, status: &'static str, now: Instant, elapsed: Duration) {
        let m = self.ops.entry(op).or_default();
        match m.statuses.iter_mut().find(|(s, _)| *s == status) {
            Some((_, n)) => *n += 1,
            None => m.statuses.push((status, 1)),
        }
        m.latency.record(now, micros(elapsed));
    }

    /// A block round closed with `transactions` taken, the first of which waited `waited`.
    pub fn round_closed(&mut self, group: u32, reason: CommitReason, transactions: usize, waited: Duration) {
        let g = self.group(group);
        match reason {
            CommitReason::Eager => g.eager_commits += 1,
            CommitReason::Timeout => g.timeout_commits += 1,
            CommitReason::Size => g.size_commits += 1,
        }
        record_into(&mut g.batch_size, transactions as u64);
        record_into(&mut g.batch_wait_us, micros(waited));
    }

    /// A block was handed to openraft, its trees having taken `state_root` to build and hashed
    /// `nodes_hashed` tree nodes.
    pub fn block_proposed(&mut self, group: u32, state_root: Duration, nodes_hashed: u64) {
        let g = self.group(group);
        g.proposals += 1;
        record_into(&mut g.state_root_us, micros(state_root));
        // A block whose trees hashed nothing (only unchanged values) counts as 1: hdrhistogram
        // has no zero bucket at these bounds (the same floor every histogram here has).
        record_into(&mut g.nodes_hashed, nodes_hashed);
    }

    /// A snapshot was installed or restored at open, in `elapsed` (read, verify, load, checkpoint).
    pub fn snapshot_restored(&mut self, group: u32, elapsed: Duration) {
        record_into(&mut self.group(group).snapshot_restore_us, micros(elapsed));
    }

    /// A Merkle proof of `kind` was generated in `elapsed`.
    pub fn proof_generated(&mut self, kind: ProofKind, elapsed: Duration) {
        let us = micros(elapsed);
        record_into(&mut self.proof_us[kind as usize], us);
        self.proof_sum_us[kind as usize] = self.proof_sum_us[kind as usize].saturating_add(us);
    }

    /// A log entry or snapshot file of `bytes` encoded (`encode`) or decoded in `elapsed`.
    pub fn codec(&mut self, kind: CodecKind, encode: bool, bytes: usize, elapsed: Duration) {
        match kind {
            CodecKind::Log => self.log_codec.record(encode, bytes, elapsed),
            CodecKind::Snapshot => self.snapshot_codec.record(encode, bytes, elapsed),
        }
    }

    /// A client write of `namespace` was refused by the rate limit.
    pub fn rate_limited(&mut self, namespace: i64) {
        *self.rate_limited.entry(namespace).or_default() += 1;
    }

    /// A proposed block committed and applied `elapsed` after it was proposed.
    pub fn block_applied(&mut self, elapsed: Duration) {
        self.write_raft.record(Instant::now(), micros(elapsed));
    }

    pub fn snapshot_created(&mut self, group: u32, bytes: u64, elapsed: Duration) {
        let g = self.group(group);
        g.snapshots_created += 1;
        g.snapshot_bytes_last = bytes;
        record_into(&mut g.snapshot_create_us, micros(elapsed));
    }

    /// A frame decoded (`inbound`) or encoded, of `bytes`, in `elapsed`.
    pub fn wire_frame(&mut self, inbound: bool, bytes: usize, elapsed: Duration) {
        let now = Instant::now();
        if inbound {
            self.decode.record(now, micros(elapsed));
            record_into(&mut self.bytes_in, bytes as u64);
        } else {
            self.encode.record(now, micros(elapsed));
            record_into(&mut self.bytes_out, bytes as u64);
        }
    }

    /// Notes the group's current leader; counts a change since the previous look.
    pub fn leader_seen(&mut self, group: u32, leader: Option<u64>) -> u64 {
        let g = self.group(group);
        if let Some(previous) = g.leader_seen {
            if previous != leader {
                g.leader_changes += 1;
            }
        }
        g.leader_seen = Some(leader);
        g.leader_changes
    }

    /// Blocks per second since the previous scrape (0 at the first).
    pub fn blocks_rate(&mut self, group: u32, now: Instant, height: u64) -> f64 {
        let g = self.group(group);
        let rate = match g.height_seen {
            Some((at, seen)) if now > at => {
                height.saturating_sub(seen) as f64 / now.duration_since(at).as_secs_f64()
            }
            _ => 0.0,
        };
        g.height_seen = Some((now, height));
        rate
    }

    /// The core's counters and histograms, copied (raft and scope numbers are added by the
    /// shard, which owns the groups).
    pub fn snapshot(&mut self, now: Instant) -> CounterSnapshot {
        let mut ops: Vec<OpSnapshot> = self
            .ops
            .iter()
            .map(|(name, m)| OpSnapshot {
                op: name,
                statuses: m.statuses.clone(),
                latency: m.latency.snapshot(now),
            })
            .collect();
        ops.sort_by_key(|o| o.op);
        let groups = self
            .groups
            .iter()
            .map(|(id, g)| GroupCounterSnapshot {
                group: *id,
                batch_size: g.batch_size.clone().unwrap_or_else(histogram),
                batch_wait_us: g.batch_wait_us.clone().unwrap_or_else(histogram),
                eager_commits: g.eager_commits,
                timeout_commits: g.timeout_commits,
                size_commits: g.size_commits,
                state_root_us: g.state_root_us.clone().unwrap_or_else(histogram),
                proposals: g.proposals,
                snapshots_created: g.snapshots_created,
                snapshot_bytes_last: g.snapshot_bytes_last,
                snapshot_create_us: g.snapshot_create_us.clone().unwrap_or_else(histogram),
                snapshot_restore_us: g.snapshot_restore_us.clone().unwrap_or_else(histogram),
                nodes_hashed: g.nodes_hashed.clone().unwrap_or_else(histogram),
            })
            .collect();
        let busy_window = self.busy_since.replace(now).map(|since| now.saturating_duration_since(since));
        CounterSnapshot {
            ops,
            groups,
            write_raft: self.write_raft.snapshot(now),
            idem_hits: self.idem_hits,
            idem_misses: self.idem_misses,
            idem_evictions: self.idem_evictions,
            connections_open: self.connections_open,
            connection_handoffs_in: self.connection_handoffs_in,
            decode: self.decode.snapshot(now),
            encode: self.encode.snapshot(now),
            bytes_in: self.bytes_in.clone().unwrap_or_else(histogram),
            bytes_out: self.bytes_out.clone().unwrap_or_else(histogram),
            log_codec: self.log_codec.snapshot(),
            snapshot_codec: self.snapshot_codec.snapshot(),
            proofs: ProofKind::ALL.map(|kind| {
                let i = kind as usize;
                (kind, self.proof_us[i].clone().unwrap_or_else(histogram), self.proof_sum_us[i])
            }),
            busy_window,
            rate_limited: self.rate_limited.iter().map(|(ns, n)| (*ns, *n)).collect(),
            learner_cache_stale: self.learner_cache_stale,
            learner_refreshes: self.learner_refreshes,
        }
    }
}

/// A latency's cumulative histogram, exact sum and last-60 s histogram (µs).
#[derive(Clone)]
pub struct LatencySnapshot {
    pub total: Histogram<u64>,
    pub sum_us: u64,
    pub window: Histogram<u64>,
}

impl LatencySnapshot {
    pub fn empty() -> Self {
        LatencySnapshot { total: histogram(), sum_us: 0, window: histogram() }
    }

    /// Adds `other` (another core's) into this one.
    pub fn merge(&mut self, other: &LatencySnapshot) {
        // Same bounds everywhere: `add` cannot fail.
        let _ = self.total.add(&other.total);
        let _ = self.window.add(&other.window);
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }
}

#[derive(Clone)]
pub struct OpSnapshot {
    pub op: &'static str,
    pub statuses: Vec<(&'static str, u64)>,
    pub latency: LatencySnapshot,
}

#[derive(Clone)]
pub struct GroupCounterSnapshot {
    pub group: u32,
    pub batch_size: Histogram<u64>,
    pub batch_wait_us: Histogram<u64>,
    pub eager_commits: u64,
    pub timeout_commits: u64,
    pub size_commits: u64,
    pub state_root_us: Histogram<u64>,
    pub proposals: u64,
    pub snapshots_created: u64,
    pub snapshot_bytes_last: u64,
    pub snapshot_create_us: Histogram<u64>,
    pub snapshot_restore_us: Histogram<u64>,
    pub nodes_hashed: Histogram<u64>,
}

/// A `Codec` copied; `merge` adds another core's.
#[derive(Clone)]
pub struct CodecSnapshot {
    pub encode_us: Histogram<u64>,
    pub encode_sum_us: u64,
    pub decode_us: Histogram<u64>,
    pub decode_sum_us: u64,
    pub bytes_out: Histogram<u64>,
    pub bytes_out_sum: u64,
    pub bytes_in: Histogram<u64>,
    pub bytes_in_sum: u64,
}

impl CodecSnapshot {
    pub fn empty() -> Self {
        Codec::default().snapshot()
    }

    pub fn merge(&mut self, other: &CodecSnapshot) {
        // Same bounds everywhere: `add` cannot fail.
        let _ = self.encode_us.add(&other.encode_us);
        let _ = self.decode_us.add(&other.decode_us);
        let _ = self.bytes_out.add(&other.bytes_out);
        let _ = self.bytes_in.add(&other.bytes_in);
        self.encode_sum_us = self.encode_sum_us.saturating_add(other.encode_sum_us);
        self.decode_sum_us = self.decode_sum_us.saturating_add(other.decode_sum_us);
        self.bytes_out_sum = self.bytes_out_sum.saturating_add(other.bytes_out_sum);
        self.bytes_in_sum = self.bytes_in_sum.saturating_add(other.bytes_in_sum);
    }
}

/// What `CoreMetrics::snapshot` copies.
pub struct CounterSnapshot {
    pub ops: Vec<OpSnapshot>,
    pub groups: Vec<GroupCounterSnapshot>,
    pub write_raft: LatencySnapshot,
    pub idem_hits: u64,
    pub idem_misses: u64,
    pub idem_evictions: u64,
    pub connections_open: i64,
    /// Client connections this core took over from the core that accepted them (D53).
    pub connection_handoffs_in: u64,
    pub decode: LatencySnapshot,
    pub encode: LatencySnapshot,
    pub bytes_in: Histogram<u64>,
    pub bytes_out: Histogram<u64>,
    pub log_codec: CodecSnapshot,
    pub snapshot_codec: CodecSnapshot,
    /// `(kind, µs histogram, exact sum µs)` of every proof kind, empty ones included.
    pub proofs: [(ProofKind, Histogram<u64>, u64); 3],
    /// Wall time since the previous scrape of this core (`None` at the first).
    pub busy_window: Option<Duration>,
    /// `(namespace, refused writes)` since the node started (`rate_limit_exceeded_total`).
    pub rate_limited: Vec<(i64, u64)>,
    pub learner_cache_stale: u64,
    pub learner_refreshes: u64,
}

/// One group's Raft and chain numbers on this node (SPEC §11.3 raft_* and group families).
pub struct GroupSnapshot {
    pub group: u32,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub commit_index: u64,
    pub leader: bool,
    pub current_leader: Option<u64>,
    /// The leader's view: `(follower, last index − matched index)`; empty on a follower.
    pub replication: Vec<(u64, u64)>,
    /// This replica's own lag: entries it holds but has not applied (follower or leader).
    pub local_lag: u64,
    pub leader_changes: u64,
    pub pending: u64,
    pub group_height: u64,
    pub blocks_per_second: f64,
    /// Failed to open, stopped, or reopening: why.
    pub failure: Option<String>,
}

/// A scope's health as the three §11.3 `vault_health` states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthState {
    Healthy,
    Diverged,
    Recovering,
}

impl HealthState {
    pub fn label(self) -> &'static str {
        match self {
            HealthState::Healthy => "healthy",
            HealthState::Diverged => "diverged",
            HealthState::Recovering => "recovering",
        }
    }
}

/// One scope with recent activity or not Healthy (the cardinality rule of SPEC §11.3).
pub struct ScopeSnapshot {
    pub namespace: i64,
    pub vault: i64,
    pub group: u32,
    pub height: u64,
    pub tip_age_secs: f64,
    pub keys: u64,
    pub health: HealthState,
    /// Recovery attempts and successes since the node started (ops/vault_repair.rs).
    pub recovery_attempts_total: u64,
    pub recovery_successes_total: u64,
    pub recovery_exhausted: bool,
}

/// One core's answer to `ShardMsg::Metrics`.
pub struct CoreSnapshot {
    pub core: u16,
    pub counters: CounterSnapshot,
    /// Time the executor spent running tasks since the previous scrape.
    pub busy: Duration,
    pub groups: Vec<GroupSnapshot>,
    pub scopes: Vec<ScopeSnapshot>,
    /// Local scopes per health state, all of them: `[healthy, diverged, recovering]`.
    pub health_counts: [u64; 3],
    pub idem_size: u64,
    pub closing: bool,
    /// Per group of this core: scopes found diverged at apply, and determinism bugs found by
    /// recoveries (ops/vault_repair.rs), since the node started.
    pub divergences: Vec<(u32, u64)>,
    pub determinism_bugs: Vec<(u32, u64)>,
    /// Background integrity checks run and issues they found, per group (SPEC §9.7).
    pub integrity_checks: Vec<(u32, u64, u64)>,
    /// GC cycles run and entities they expired, per group (SPEC §3.8, §11.3).
    pub gc: Vec<(u32, u64, u64)>,
}

/// Whether a scope whose last block is `tip_age_secs` old and in `health` gets its own labels.
pub fn scope_is_labelled(tip_age_secs: f64, health: HealthState) -> bool {
    health != HealthState::Healthy || tip_age_secs <= WINDOW_SECS_MAX as f64
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The constant bounds make a histogram that holds 1 µs and 60 s at 3 digits.
    #[test]
    fn t01_histogram_bounds() {
        let mut h = histogram();
        h.saturating_record(1);
        h.saturating_record(LATENCY_US_MAX);
        h.saturating_record(LATENCY_US_MAX * 10);
        assert_eq!(h.len(), 3);
        assert!(h.max() >= LATENCY_US_MAX);
        assert_eq!(h.sigfig(), 3);
    }

    /// Requests are counted per op and status, and their latencies land in both the cumulative
    /// histogram and the window.
    #[test]
    fn t02_request_counters() {
        let mut m = CoreMetrics::default();
        let now = Instant::now();
        m.request_done("write", "ok", now, Duration::from_millis(3));
        m.request_done("write", "ok", now, Duration::from_millis(5));
        m.request_done("write", "unavailable", now, Duration::from_millis(7));
        m.request_done("read", "ok", now, Duration::from_micros(40));
        let s = m.snapshot(now);
        assert_eq!(s.ops.len(), 2);
        let write = s.ops.iter().find(|o| o.op == "write").unwrap();
        assert_eq!(write.statuses, vec![("ok", 2), ("unavailable", 1)]);
        assert_eq!(write.latency.total.len(), 3);
        assert_eq!(write.latency.window.len(), 3);
        assert_eq!(write.latency.sum_us, 15_000);
        let p99 = write.latency.window.value_at_quantile(0.99);
        assert!((6_990..=7_010).contains(&p99), "{p99}");
    }

    /// A window forgets what is older than 60 s, and a slot coming round again starts empty;
    /// the cumulative histogram keeps everything.
    #[test]
    fn t03_window_slides() {
        let start = Instant::now();
        let mut l = Latency::default();
        l.record(start, 100);
        l.record(start + Duration::from_secs(30), 200);
        assert_eq!(l.snapshot(start + Duration::from_secs(35)).window.len(), 2);
        // 65 s later the first slot (epoch 0) is out of the window; the 30 s one is still in.
        let later = l.snapshot(start + Duration::from_secs(65));
        assert_eq!(later.window.len(), 1);
        assert_eq!(later.total.len(), 2);
        // Reusing slot 0 (epoch 6) resets it instead of adding to the old count.
        l.record(start + Duration::from_secs(61), 300);
        let s = l.snapshot(start + Duration::from_secs(62));
        assert_eq!(s.window.len(), 2);
        assert_eq!(s.total.len(), 3);
        let gone = l.snapshot(start + Duration::from_secs(200));
        assert_eq!(gone.window.len(), 0);
    }

    /// Merging two cores' snapshots adds counts and sums; quantiles come from the union.
    #[test]
    fn t04_merge() {
        let now = Instant::now();
        let mut a = Latency::default();
        let mut b = Latency::default();
        for _ in 0..99 {
            a.record(now, 1_000);
        }
        b.record(now, 50_000);
        let mut merged = LatencySnapshot::empty();
        merged.merge(&a.snapshot(now));
        merged.merge(&b.snapshot(now));
        assert_eq!(merged.total.len(), 100);
        assert_eq!(merged.sum_us, 99 * 1_000 + 50_000);
        assert!(merged.window.value_at_quantile(0.5) < 1_100);
        assert!(merged.window.value_at_quantile(0.999) >= 49_000);
    }

    /// Round reasons, leader changes and block rates.
    #[test]
    fn t05_group_counters() {
        let mut m = CoreMetrics::default();
        m.round_closed(1, CommitReason::Eager, 1, Duration::from_micros(10));
        m.round_closed(1, CommitReason::Size, 100, Duration::from_millis(2));
        m.round_closed(1, CommitReason::Timeout, 7, Duration::from_millis(10));
        m.block_proposed(1, Duration::from_micros(500), 40);
        assert_eq!(m.leader_seen(1, Some(5)), 0);
        assert_eq!(m.leader_seen(1, Some(5)), 0);
        assert_eq!(m.leader_seen(1, None), 1);
        assert_eq!(m.leader_seen(1, Some(6)), 2);
        let t0 = Instant::now();
        assert_eq!(m.blocks_rate(1, t0, 10), 0.0);
        assert_eq!(m.blocks_rate(1, t0 + Duration::from_secs(2), 30), 10.0);
        let s = m.snapshot(t0);
        let g = &s.groups[0];
        assert_eq!((g.eager_commits, g.size_commits, g.timeout_commits, g.proposals), (1, 1, 1, 1));
        assert_eq!(g.batch_size.len(), 3);
        assert_eq!(g.batch_size.max(), 100);
    }

    /// Nodes hashed per block, restore times, proof times by kind and log/snapshot codec
    /// timings land where the exporter reads them; merging adds them up.
    #[test]
    fn t08_tree_restore_proof_and_codec() {
        let mut m = CoreMetrics::default();
        m.block_proposed(2, Duration::from_micros(300), 120);
        m.block_proposed(2, Duration::from_micros(300), 0);
        m.snapshot_restored(2, Duration::from_millis(40));
        m.proof_generated(ProofKind::State, Duration::from_micros(12));
        m.proof_generated(ProofKind::State, Duration::from_micros(8));
        m.proof_generated(ProofKind::Chain, Duration::from_micros(100));
        m.codec(CodecKind::Log, true, 500, Duration::from_micros(3));
        m.codec(CodecKind::Log, false, 500, Duration::from_micros(2));
        m.codec(CodecKind::Snapshot, true, 1 << 20, Duration::from_millis(5));
        let s = m.snapshot(Instant::now());
        let g = s.groups.iter().find(|g| g.group == 2).unwrap();
        assert_eq!(g.nodes_hashed.len(), 2);
        assert_eq!(g.nodes_hashed.max(), 120);
        assert_eq!(g.nodes_hashed.min(), 1, "a block that hashed nothing counts at the floor");
        assert_eq!(g.snapshot_restore_us.len(), 1);
        assert!(g.snapshot_restore_us.equivalent(g.snapshot_restore_us.max(), 40_000));
        let proofs: Vec<(&str, u64, u64)> =
            s.proofs.iter().map(|(k, h, sum)| (k.label(), h.len(), *sum)).collect();
        assert_eq!(proofs, vec![("tx", 0, 0), ("state", 2, 20), ("chain", 1, 100)]);
        assert_eq!((s.log_codec.encode_us.len(), s.log_codec.decode_us.len()), (1, 1));
        assert_eq!((s.log_codec.bytes_out_sum, s.log_codec.bytes_in_sum), (500, 500));
        assert_eq!((s.snapshot_codec.encode_sum_us, s.snapshot_codec.bytes_out_sum), (5_000, 1 << 20));
        assert_eq!(s.snapshot_codec.decode_us.len(), 0);
        let mut merged = CodecSnapshot::empty();
        merged.merge(&s.log_codec);
        merged.merge(&s.log_codec);
        assert_eq!((merged.encode_us.len(), merged.encode_sum_us, merged.bytes_in_sum), (2, 6, 1000));
    }

    #[test]
    fn t06_status_labels() {
        assert_eq!(status_label(Ok(())), "ok");
        assert_eq!(status_label(Err(StatusCode::NotLeader)), "not_leader");
        assert_eq!(status_label(Err(StatusCode::ResourceExhausted)), "resource_exhausted");
    }

    /// Only recently active or unhealthy scopes get labels.
    #[test]
    fn t07_scope_cardinality() {
        assert!(scope_is_labelled(10.0, HealthState::Healthy));
        assert!(!scope_is_labelled(7200.0, HealthState::Healthy));
        assert!(scope_is_labelled(7200.0, HealthState::Diverged));
    }
}
