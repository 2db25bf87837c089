//! Turns the cores' metrics snapshots into the Prometheus text exposition (format 0.0.4, SPEC
//! §11.3) with the `prometheus` crate's data model and `TextEncoder` (D40): families are built
//! here at scrape time from plain numbers and hdrhistograms, so the cores never touch the crate.
//! Histograms become cumulative buckets at fixed bounds; summaries carry quantiles of the last
//! 60 s and cumulative counts and sums.

use hdrhistogram::Histogram;
use ledger_shard::metrics::{
    CodecSnapshot, CoreSnapshot, GroupCounterSnapshot, GroupSnapshot, HealthState, LatencySnapshot, ProofKind,
};
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram as PromHistogram, LabelPair, Metric, MetricFamily, MetricType,
    Quantile, Summary,
};
use std::collections::BTreeMap;
use std::time::Duration;

/// Latency buckets in seconds (1 µs resolution underneath, 60 s at most).
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0,
];
const MS_BUCKETS: &[f64] = &[0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 500.0, 1000.0];
const COUNT_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 10000.0];
const BYTES_BUCKETS: &[f64] =
    &[64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0];
/// State-tree nodes hashed per block (a changed key at 1 M keys re-hashes ~20 nodes).
const NODES_BUCKETS: &[f64] =
    &[10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0, 30000.0, 100000.0, 300000.0, 1000000.0];
/// Operations whose latencies make up `read_latency_ms` and `reads_per_second`.
const READ_OPS: &[&str] = &[
    "read",
    "batch_read",
    "verified_read",
    "historical_read",
    "list_entities",
    "list_relationships",
    "list_resources",
];
/// Operations whose latencies make up `write_latency_ms` and `writes_per_second`.
const WRITE_OPS: &[&str] = &["write", "batch_write"];
/// Length of the quantile window (metrics.rs: 6 × 10 s).
const WINDOW_SECS: f64 = 60.0;

type Labels<'a> = &'a [(&'a str, String)];

/// The families of one exposition, in name order.
#[derive(Default)]
pub struct Families {
    list: BTreeMap<&'static str, MetricFamily>,
}

fn labels(pairs: Labels) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name(name.to_string());
            pair.set_value(value.clone());
            pair
        })
        .collect()
}

impl Families {
    fn push(&mut self, name: &'static str, help: &str, kind: MetricType, metric: Metric) {
        let family = self.list.entry(name).or_insert_with(|| {
            let mut f = MetricFamily::default();
            f.set_name(name.to_string());
            f.set_help(help.to_string());
            f.set_field_type(kind);
            f
        });
        family.mut_metric().push(metric);
    }

    pub fn gauge(&mut self, name: &'static str, help: &str, pairs: Labels, value: f64) {
        let mut gauge = Gauge::default();
        gauge.set_value(value);
        let mut metric = Metric::from_label(labels(pairs));
        metric.set_gauge(gauge);
        self.push(name, help, MetricType::GAUGE, metric);
    }

    pub fn counter(&mut self, name: &'static str, help: &str, pairs: Labels, value: f64) {
        let mut counter = Counter::default();
        counter.set_value(value);
        let mut metric = Metric::from_label(labels(pairs));
        metric.set_counter(counter);
        self.push(name, help, MetricType::COUNTER, metric);
    }

    /// `h` holds values in its own unit; `scale` turns them into the exposition's (µs → s:
    /// 1e-6). `sum` is in the exposition's unit (exact where the recorder kept it).
    #[allow(clippy::too_many_arguments)]
    pub fn histogram(
        &mut self,
        name: &'static str,
        help: &str,
        pairs: Labels,
        h: &Histogram<u64>,
        scale: f64,
        bounds: &[f64],
        sum: f64,
    ) {
        let mut counts = vec![0u64; bounds.len()];
        for v in h.iter_recorded() {
            let value = h.highest_equivalent(v.value_iterated_to()) as f64 * scale;
            if let Some(i) = bounds.iter().position(|b| value <= *b) {
                counts[i] += v.count_at_value();
            }
        }
        let mut cumulative = 0;
        let buckets = bounds
            .iter()
            .zip(counts)
            .map(|(bound, count)| {
                cumulative += count;
                let mut b = Bucket::default();
                b.set_upper_bound(*bound);
                b.set_cumulative_count(cumulative);
                b
            })
            .collect();
        let mut out = PromHistogram::default();
        out.set_bucket(buckets);
        out.set_sample_count(h.len());
        out.set_sample_sum(sum);
        let mut metric = Metric::from_label(labels(pairs));
        metric.set_histogram(out);
        self.push(name, help, MetricType::HISTOGRAM, metric);
    }

    /// A summary in ms: quantiles 0.5/0.95/0.99 of the last 60 s, cumulative count and sum.
    pub fn summary_ms(&mut self, name: &'static str, help: &str, latency: &LatencySnapshot) {
        let quantiles = [0.5, 0.95, 0.99]
            .iter()
            .map(|q| {
                let mut quantile = Quantile::default();
                quantile.set_quantile(*q);
                quantile.set_value(quantile_ms(&latency.window, *q));
                quantile
            })
            .collect();
        let mut summary = Summary::default();
        summary.set_quantile(quantiles);
        summary.set_sample_count(latency.total.len());
        summary.set_sample_sum(latency.sum_us as f64 / 1000.0);
        let mut metric = Metric::default();
        metric.set_summary(summary);
        self.push(name, help, MetricType::SUMMARY, metric);
    }

    /// The exposition text.
    pub fn encode(self) -> String {
        let families: Vec<MetricFamily> = self.list.into_values().collect();
        prometheus::TextEncoder::new()
            .encode_to_string(&families)
            .unwrap_or_else(|e| format!("# metrics could not be encoded: {e}\n"))
    }
}

/// Quantile `q` of a µs histogram, in ms (0 when empty).
pub fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

fn mean_sum(h: &Histogram<u64>, scale: f64) -> f64 {
    h.mean() * h.len() as f64 * scale
}

/// Every family that comes from the cores: requests, groups, scopes, core gauges.
pub fn add_core_families(f: &mut Families, cores: &[CoreSnapshot], node_id: u64, uptime: Duration) {
    add_requests(f, cores, uptime);
    add_groups(f, cores, node_id);
    add_scopes(f, cores);
    add_core_gauges(f, cores);
}

/// Per operation: its answers by status and its latency (cumulative and last 60 s), summed
/// over the cores.
type OpTotals = BTreeMap<&'static str, (BTreeMap<&'static str, u64>, LatencySnapshot)>;

/// The request families: counts and latencies per operation, the read and write summaries and
/// rates, then serialization and Merkle proof timings.
fn add_requests(f: &mut Families, cores: &[CoreSnapshot], uptime: Duration) {
    let ops = op_totals(cores);
    let latencies = add_per_op(f, &ops);
    add_quantile_gauges(f, "all", &latencies.all.window);
    add_latency_summaries(f, cores, &latencies);
    add_rates(f, &latencies, uptime);
    add_codec(f, "wire", &wire_codec(cores));
    add_stored_codecs(f, cores);
    add_proofs(f, cores);
}

/// The cores' per-operation counters, merged by operation (in name order).
fn op_totals(cores: &[CoreSnapshot]) -> OpTotals {
    let mut ops: OpTotals = BTreeMap::new();
    for core in cores {
        for op in &core.counters.ops {
            let (statuses, latency) =
                ops.entry(op.op).or_insert_with(|| (BTreeMap::new(), LatencySnapshot::empty()));
            for (status, n) in &op.statuses {
                *statuses.entry(status).or_default() += n;
            }
            latency.merge(&op.latency);
        }
    }
    ops
}

/// Latencies of every operation, of the reads (`READ_OPS`) and of the writes (`WRITE_OPS`).
struct OpLatencies {
    all: LatencySnapshot,
    reads: LatencySnapshot,
    writes: LatencySnapshot,
}

/// Each operation's `requests_total`, `request_latency_seconds` and quantile gauges; returns
/// their latencies summed for the `all`, read and write families that follow.
fn add_per_op(f: &mut Families, ops: &OpTotals) -> OpLatencies {
    let mut all = LatencySnapshot::empty();
    let mut reads = LatencySnapshot::empty();
    let mut writes = LatencySnapshot::empty();
    for (op, (statuses, latency)) in ops {
        for (status, n) in statuses {
            f.counter(
                "requests_total",
                "Requests answered, by operation and status (router-observed).",
                &[("op", op.to_string()), ("status", status.to_string())],
                *n as f64,
            );
        }
        f.histogram(
            "request_latency_seconds",
            "Request latency from admission on the connection to the reply being written.",
            &[("op", op.to_string())],
            &latency.total,
            1e-6,
            SECONDS_BUCKETS,
            latency.sum_us as f64 / 1e6,
        );
        add_quantile_gauges(f, op, &latency.window);
        all.merge(latency);
        if READ_OPS.contains(op) {
            reads.merge(latency);
        }
        if WRITE_OPS.contains(op) {
            writes.merge(latency);
        }
    }
    OpLatencies { all, reads, writes }
}

/// The read, write and Raft (proposal to applied) latency summaries.
fn add_latency_summaries(f: &mut Families, cores: &[CoreSnapshot], latencies: &OpLatencies) {
    f.summary_ms(
        "read_latency_ms",
        "Read latency (client-observed at the router), last 60 s quantiles.",
        &latencies.reads,
    );
    f.summary_ms(
        "write_latency_ms",
        "Write latency including batch wait (router-observed), last 60 s quantiles.",
        &latencies.writes,
    );
    let mut raft = LatencySnapshot::empty();
    for core in cores {
        raft.merge(&core.counters.write_raft);
    }
    f.summary_ms(
        "write_raft_latency_ms",
        "Block latency from proposal to applied, last 60 s quantiles.",
        &raft,
    );
}

/// Reads and writes per second over the quantile window (shorter while the node is younger
/// than the window, and at least 1 s).
fn add_rates(f: &mut Families, latencies: &OpLatencies, uptime: Duration) {
    let window = uptime.as_secs_f64().clamp(1.0, WINDOW_SECS);
    f.gauge(
        "reads_per_second",
        "Reads answered per second over the last 60 s.",
        &[],
        latencies.reads.window.len() as f64 / window,
    );
    f.gauge(
        "writes_per_second",
        "Writes answered per second over the last 60 s.",
        &[],
        latencies.writes.window.len() as f64 / window,
    );
}

/// The request and response frames' decode and encode times and sizes, summed over the cores,
/// in the shape of the other codecs (sizes' sums are estimated from the histograms' means).
fn wire_codec(cores: &[CoreSnapshot]) -> CodecSnapshot {
    let mut decode = LatencySnapshot::empty();
    let mut encode = LatencySnapshot::empty();
    let mut bytes_in = ledger_shard::metrics::histogram();
    let mut bytes_out = ledger_shard::metrics::histogram();
    for core in cores {
        decode.merge(&core.counters.decode);
        encode.merge(&core.counters.encode);
        let _ = bytes_in.add(&core.counters.bytes_in);
        let _ = bytes_out.add(&core.counters.bytes_out);
    }
    CodecSnapshot {
        encode_us: encode.total,
        encode_sum_us: encode.sum_us,
        decode_us: decode.total,
        decode_sum_us: decode.sum_us,
        bytes_out_sum: mean_sum(&bytes_out, 1.0) as u64,
        bytes_out,
        bytes_in_sum: mean_sum(&bytes_in, 1.0) as u64,
        bytes_in,
    }
}

/// The `log` and `snapshot` codecs' families, summed over the cores.
fn add_stored_codecs(f: &mut Families, cores: &[CoreSnapshot]) {
    let mut log = CodecSnapshot::empty();
    let mut snapshot = CodecSnapshot::empty();
    for core in cores {
        log.merge(&core.counters.log_codec);
        snapshot.merge(&core.counters.snapshot_codec);
    }
    add_codec(f, "log", &log);
    add_codec(f, "snapshot", &snapshot);
}

/// `merkle_proof_generation_seconds` of every proof kind, summed over the cores.
fn add_proofs(f: &mut Families, cores: &[CoreSnapshot]) {
    let mut proofs: Vec<(ProofKind, Histogram<u64>, u64)> =
        ProofKind::ALL.iter().map(|k| (*k, ledger_shard::metrics::histogram(), 0)).collect();
    for core in cores {
        for ((_, total, sum), (_, h, s)) in proofs.iter_mut().zip(&core.counters.proofs) {
            let _ = total.add(h);
            *sum += s;
        }
    }
    for (kind, h, sum_us) in &proofs {
        f.histogram(
            "merkle_proof_generation_seconds",
            "Time to build a Merkle proof: a transaction's inclusion proof in its block (tx), a \
             key's state-tree proof (state), the headers of a chain proof (chain).",
            &[("kind", kind.label().to_string())],
            h,
            1e-6,
            SECONDS_BUCKETS,
            *sum_us as f64 / 1e6,
        );
    }
}

/// The three `serialization_*` families of one `kind`: decoding is `direction="in"`, encoding
/// `direction="out"`.
fn add_codec(f: &mut Families, kind: &str, c: &CodecSnapshot) {
    let inbound = [("direction", "in".to_string()), ("kind", kind.to_string())];
    let outbound = [("direction", "out".to_string()), ("kind", kind.to_string())];
    f.histogram(
        "serialization_decode_seconds",
        "Time to validate and decode (rkyv): request frames (wire), log entries read back (log), \
         snapshot files installed or restored (snapshot).",
        &inbound,
        &c.decode_us,
        1e-6,
        SECONDS_BUCKETS,
        c.decode_sum_us as f64 / 1e6,
    );
    f.histogram(
        "serialization_encode_seconds",
        "Time to encode (rkyv): response frames (wire), log entries appended (log), snapshot \
         files written (snapshot).",
        &outbound,
        &c.encode_us,
        1e-6,
        SECONDS_BUCKETS,
        c.encode_sum_us as f64 / 1e6,
    );
    for (pairs, h, sum) in
        [(&inbound, &c.bytes_in, c.bytes_in_sum), (&outbound, &c.bytes_out, c.bytes_out_sum)]
    {
        f.histogram(
            "serialization_bytes",
            "Bytes decoded or encoded: frame payloads, log entries, snapshot files.",
            pairs,
            h,
            1.0,
            BYTES_BUCKETS,
            sum as f64,
        );
    }
}

fn add_quantile_gauges(f: &mut Families, op: &str, window: &Histogram<u64>) {
    let op = [("op", op.to_string())];
    let help = "Request latency quantile over the last 60 s, in ms.";
    f.gauge("request_latency_p50", help, &op, quantile_ms(window, 0.5));
    f.gauge("request_latency_p99", help, &op, quantile_ms(window, 0.99));
    f.gauge("request_latency_p999", help, &op, quantile_ms(window, 0.999));
}

/// The per-group families of every core: Raft state and progress of the groups it hosts, their
/// fault and background-work counters, then the block-round and snapshot counters it recorded
/// per group. Series keep the cores' order, then the groups'.
fn add_groups(f: &mut Families, cores: &[CoreSnapshot], node_id: u64) {
    for core in cores {
        for g in &core.groups {
            add_raft_state(f, g, node_id);
            add_group_progress(f, g);
        }
        add_fault_counters(f, core);
        add_background_counters(f, core);
        for g in &core.counters.groups {
            add_round_closes(f, g);
            add_round_timings(f, g);
            add_snapshot_counters(f, g);
        }
    }
}

/// A group's Raft term, indexes, leadership, and replication lag (the leader's per follower,
/// a follower's own under this node's id).
fn add_raft_state(f: &mut Families, g: &GroupSnapshot, node_id: u64) {
    let group = [("group", g.group.to_string())];
    f.gauge("raft_term", "Current Raft term.", &group, g.term as f64);
    f.gauge(
        "raft_commit_index",
        "Committed log index (leader: held by a majority of voters; follower: applied).",
        &group,
        g.commit_index as f64,
    );
    f.gauge("raft_apply_index", "Last applied log index.", &group, g.applied_index as f64);
    f.gauge("raft_last_log_index", "Last log index appended here.", &group, g.last_log_index as f64);
    f.gauge("raft_leader", "1 if this node leads the group.", &group, if g.leader { 1.0 } else { 0.0 });
    let lag_help = "Blocks (log entries) behind: leader: its last index minus the follower's matched \
                    index; follower: entries received and not yet applied.";
    if g.leader {
        for (follower, lag) in &g.replication {
            let pairs = [("group", g.group.to_string()), ("follower", follower.to_string())];
            f.gauge("raft_replication_lag", lag_help, &pairs, *lag as f64);
        }
    } else {
        let pairs = [("group", g.group.to_string()), ("follower", node_id.to_string())];
        f.gauge("raft_replication_lag", lag_help, &pairs, g.local_lag as f64);
    }
}

/// A group's queue, leader changes, height, block rate and failure flag.
fn add_group_progress(f: &mut Families, g: &GroupSnapshot) {
    let group = [("group", g.group.to_string())];
    f.gauge("raft_proposals_pending", "Transactions queued for the next block.", &group, g.pending as f64);
    f.counter(
        "raft_leader_changes_total",
        "Leader changes seen by this node (sampled at scrapes).",
        &group,
        g.leader_changes as f64,
    );
    f.gauge("group_height", "Height of the last applied group block.", &group, g.group_height as f64);
    f.gauge(
        "blocks_per_second",
        "Group blocks applied per second since the last scrape.",
        &group,
        g.blocks_per_second,
    );
    f.gauge(
        "group_failed",
        "1 if the group failed to open or stopped on an error here.",
        &group,
        if g.failure.is_some() { 1.0 } else { 0.0 },
    );
}

/// The core's groups' divergences found at apply and determinism bugs found by recoveries.
fn add_fault_counters(f: &mut Families, core: &CoreSnapshot) {
    for (group, n) in &core.divergences {
        let group = [("group", group.to_string())];
        f.counter(
            "state_root_divergence_total",
            "Scopes found diverged when applying (SPEC §8.4).",
            &group,
            *n as f64,
        );
    }
    for (group, n) in &core.determinism_bugs {
        let group = [("group", group.to_string())];
        f.counter(
            "determinism_bug_total",
            "Recoveries whose replay did not reproduce the chain.",
            &group,
            *n as f64,
        );
    }
}

/// The core's groups' GC cycles and expiries, and background integrity checks and issues.
fn add_background_counters(f: &mut Families, core: &CoreSnapshot) {
    for (group, cycles, expired) in &core.gc {
        let group = [("group", group.to_string())];
        f.counter(
            "gc_cycles_total",
            "GC cycles this node ran as the group's leader (SPEC §3.8).",
            &group,
            *cycles as f64,
        );
        f.counter(
            "gc_expired_total",
            "Entities removed by this node's GC transactions (ExpireEntity with status Expired).",
            &group,
            *expired as f64,
        );
    }
    for (group, checks, issues) in &core.integrity_checks {
        let group = [("group", group.to_string())];
        f.counter(
            "integrity_checks_total",
            "Scopes checked by the background integrity check (SPEC §9.7; not in SPEC §11.3).",
            &group,
            *checks as f64,
        );
        f.counter(
            "integrity_issues_total",
            "Issues the background integrity check found (SPEC §9.7; not in SPEC §11.3).",
            &group,
            *issues as f64,
        );
    }
}

/// A group's blocks proposed here, and its block rounds by why they closed.
fn add_round_closes(f: &mut Families, g: &GroupCounterSnapshot) {
    let group = [("group", g.group.to_string())];
    f.counter("raft_proposals_total", "Blocks proposed by this node as leader.", &group, g.proposals as f64);
    f.counter(
        "eager_commits_total",
        "Rounds closed because the queue was empty (eager).",
        &group,
        g.eager_commits as f64,
    );
    f.counter(
        "timeout_commits_total",
        "Rounds closed by batch_max_delay_ms.",
        &group,
        g.timeout_commits as f64,
    );
    f.counter("size_commits_total", "Rounds closed full (batch_max_size).", &group, g.size_commits as f64);
}

/// A group's block rounds: size, wait, state-root time and tree nodes hashed per block.
fn add_round_timings(f: &mut Families, g: &GroupCounterSnapshot) {
    let group = [("group", g.group.to_string())];
    f.histogram(
        "batch_size",
        "Transactions per block round.",
        &group,
        &g.batch_size,
        1.0,
        COUNT_BUCKETS,
        mean_sum(&g.batch_size, 1.0),
    );
    f.histogram(
        "batch_wait_ms",
        "Wait of a round's oldest transaction before its block was drafted, in ms.",
        &group,
        &g.batch_wait_us,
        1e-3,
        MS_BUCKETS,
        mean_sum(&g.batch_wait_us, 1e-3),
    );
    f.histogram(
        "state_root_computation_duration_seconds",
        "Time a block waited for its state trees (sparse Merkle roots).",
        &group,
        &g.state_root_us,
        1e-6,
        SECONDS_BUCKETS,
        mean_sum(&g.state_root_us, 1e-6),
    );
    f.histogram(
        "state_nodes_hashed_per_block",
        "State-tree nodes (leaves and internal) hashed to build a proposed block's trees.",
        &group,
        &g.nodes_hashed,
        1.0,
        NODES_BUCKETS,
        mean_sum(&g.nodes_hashed, 1.0),
    );
}

/// A group's snapshots: how many were written, the last one's size, and the time to create
/// and to install or restore one.
fn add_snapshot_counters(f: &mut Families, g: &GroupCounterSnapshot) {
    let group = [("group", g.group.to_string())];
    f.counter("snapshots_created_total", "Snapshot files written.", &group, g.snapshots_created as f64);
    f.gauge(
        "snapshot_size_bytes",
        "Size of the last snapshot file written.",
        &group,
        g.snapshot_bytes_last as f64,
    );
    f.histogram(
        "snapshot_create_seconds",
        "Time to take a snapshot (checkpoint, build, write, fsync).",
        &group,
        &g.snapshot_create_us,
        1e-6,
        SECONDS_BUCKETS,
        mean_sum(&g.snapshot_create_us, 1e-6),
    );
    f.histogram(
        "snapshot_restore_seconds",
        "Time to install a snapshot from the leader (verify, write, load, checkpoint) or \
         restore one at open (read, decode, verify).",
        &group,
        &g.snapshot_restore_us,
        1e-6,
        SECONDS_BUCKETS,
        mean_sum(&g.snapshot_restore_us, 1e-6),
    );
}

fn add_scopes(f: &mut Families, cores: &[CoreSnapshot]) {
    let mut counts = [0u64; 3];
    for core in cores {
        for (total, n) in counts.iter_mut().zip(core.health_counts) {
            *total += n;
        }
        for s in &core.scopes {
            let scope = [("namespace", s.namespace.to_string()), ("vault", s.vault.to_string())];
            f.gauge("chain_height", "Vault height.", &scope, s.height as f64);
            f.gauge("chain_tip_age_seconds", "Seconds since the vault's last block.", &scope, s.tip_age_secs);
            f.gauge("state_tree_keys", "Committed rows (state tree leaves).", &scope, s.keys as f64);
            f.counter(
                "vault_recovery_attempts_total",
                "Recovery attempts of the vault on this node since it started.",
                &scope,
                s.recovery_attempts_total as f64,
            );
            f.counter(
                "vault_recovery_success_total",
                "Recoveries of the vault on this node that ended Healthy, since it started.",
                &scope,
                s.recovery_successes_total as f64,
            );
            f.gauge(
                "vault_recovery_exhausted",
                "1 if the vault's recovery gave up.",
                &scope,
                if s.recovery_exhausted { 1.0 } else { 0.0 },
            );
        }
    }
    for state in [HealthState::Healthy, HealthState::Diverged, HealthState::Recovering] {
        f.gauge(
            "vault_health",
            "Local scopes in each health state.",
            &[("state", state.label().to_string())],
            counts[state as usize] as f64,
        );
    }
    let total: u64 = counts.iter().sum();
    let ratio = if total == 0 { 1.0 } else { counts[0] as f64 / total as f64 };
    f.gauge("vault_health_ratio", "Healthy local scopes / all local scopes (1.0 when none).", &[], ratio);
}

fn add_core_gauges(f: &mut Families, cores: &[CoreSnapshot]) {
    let mut connections = 0;
    for core in cores {
        let label = [("core", core.core.to_string())];
        let c = &core.counters;
        f.counter(
            "idempotency_cache_hits_total",
            "Retries answered from the idempotency cache.",
            &label,
            c.idem_hits as f64,
        );
        f.counter(
            "idempotency_cache_misses_total",
            "Duplicate sequences not in the cache.",
            &label,
            c.idem_misses as f64,
        );
        f.counter(
            "idempotency_cache_evictions_total",
            "Entries evicted from the idempotency cache.",
            &label,
            c.idem_evictions as f64,
        );
        f.counter(
            "connection_handoffs_total",
            "Client connections this core took over from the core that accepted them, by their namespace hint (D53).",
            &label,
            c.connection_handoffs_in as f64,
        );
        f.gauge(
            "idempotency_cache_size",
            "Entries in the core's idempotency cache.",
            &label,
            core.idem_size as f64,
        );
        let busy = match c.busy_window {
            Some(window) if !window.is_zero() => (core.busy.as_secs_f64() / window.as_secs_f64()).min(1.0),
            _ => 0.0,
        };
        f.gauge(
            "core_busy_ratio",
            "Share of time the core's executor ran tasks since the previous scrape.",
            &label,
            busy,
        );
        f.gauge("core_groups", "Raft groups hosted on the core.", &label, core.groups.len() as f64);
        f.gauge(
            "core_connections",
            "Open connections served by the core (after any hand-over, D53).",
            &label,
            c.connections_open as f64,
        );
        connections += c.connections_open;
    }
    f.gauge("active_connections", "Open client and peer connections.", &[], connections as f64);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Buckets are cumulative at the given bounds, and the text parses back with the values set.
    #[test]
    fn t01_histogram_buckets() {
        let mut h = ledger_shard::metrics::histogram();
        h.record(50).unwrap(); // 50 µs
        h.record(2_000).unwrap(); // 2 ms
        h.record(2_000_000).unwrap(); // 2 s
        let mut f = Families::default();
        f.histogram("x_seconds", "help", &[("op", "write".into())], &h, 1e-6, SECONDS_BUCKETS, 2.00205);
        let text = f.encode();
        assert!(text.contains("x_seconds_bucket{op=\"write\",le=\"0.0001\"} 1"), "{text}");
        assert!(text.contains("x_seconds_bucket{op=\"write\",le=\"0.0025\"} 2"), "{text}");
        assert!(text.contains("x_seconds_bucket{op=\"write\",le=\"2.5\"} 3"), "{text}");
        assert!(text.contains("x_seconds_count{op=\"write\"} 3"), "{text}");
        assert!(text.contains("# TYPE x_seconds histogram"), "{text}");
    }

    /// One core's counters: two operations, one group's rounds, codecs, proofs and a 10 s
    /// busy window.
    fn sample_counters(core: u16) -> ledger_shard::metrics::CounterSnapshot {
        use ledger_shard::metrics::{CodecKind, CommitReason, CoreMetrics};
        let ms = Duration::from_millis;
        let mut m = CoreMetrics::default();
        let now = std::time::Instant::now();
        let k = u64::from(core) + 1;
        m.request_done("write", "ok", now, ms(3 * k));
        m.request_done("write", "unavailable", now, ms(7));
        m.request_done("read", "ok", now, Duration::from_micros(40 * k));
        m.block_applied(ms(4 * k));
        m.wire_frame(true, 300, Duration::from_micros(12));
        m.wire_frame(false, 5000, Duration::from_micros(30 * k));
        m.codec(CodecKind::Log, true, 700, Duration::from_micros(9));
        m.codec(CodecKind::Snapshot, false, 70_000, ms(2));
        m.proof_generated(ProofKind::State, Duration::from_micros(150 * k));
        let group = 2 * core as u32;
        m.round_closed(group, CommitReason::Eager, 3, ms(k));
        m.round_closed(group, CommitReason::Size, 100, ms(8));
        m.round_closed(group, CommitReason::Timeout, 12 * k as usize, ms(20));
        m.block_proposed(group, ms(2 * k), 240 * k);
        m.snapshot_created(group, 123_456 * k, ms(90));
        m.snapshot_restored(group, ms(400 * k));
        m.idem_hits = 5 * k;
        m.idem_misses = 2;
        m.idem_evictions = k;
        m.connections_open = 3 + k as i64;
        m.connection_handoffs_in = 4;
        m.busy_since = Some(now);
        m.snapshot(now + Duration::from_secs(10))
    }

    /// One core hosting a group it leads and a group it follows, with two scopes.
    fn sample_core(core: u16) -> CoreSnapshot {
        use ledger_shard::metrics::ScopeSnapshot;
        let group = 2 * core as u32;
        let k = u64::from(core) + 1;
        let led = GroupSnapshot {
            group,
            term: 4 * k,
            last_log_index: 120 * k,
            applied_index: 118 * k,
            commit_index: 119 * k,
            leader: true,
            current_leader: Some(1),
            replication: vec![(2, 3 * k), (3, 0)],
            local_lag: 2,
            leader_changes: k,
            pending: 7 * k,
            group_height: 60 * k,
            blocks_per_second: 2.5 * k as f64,
            failure: None,
        };
        let followed = GroupSnapshot {
            group: group + 1,
            term: 5 * k,
            applied_index: 100 * k,
            leader: false,
            current_leader: Some(2),
            replication: Vec::new(),
            local_lag: 5,
            failure: Some("stopped".into()),
            ..led
        };
        let scope = |vault, health| ScopeSnapshot {
            namespace: 1,
            vault,
            group,
            height: 10 + vault as u64,
            tip_age_secs: 1.5 * k as f64,
            keys: 42 * k,
            health,
            recovery_attempts_total: 1,
            recovery_successes_total: 0,
            recovery_exhausted: health == HealthState::Recovering,
        };
        CoreSnapshot {
            core,
            counters: sample_counters(core),
            busy: Duration::from_secs(2),
            groups: vec![led, followed],
            scopes: vec![
                scope(7 + 2 * i64::from(core), HealthState::Healthy),
                scope(8 + 2 * i64::from(core), HealthState::Recovering),
            ],
            health_counts: [3, k - 1, 1],
            idem_size: 9 * k,
            closing: false,
            divergences: vec![(group, k)],
            determinism_bugs: vec![(group + 1, 2 * k)],
            integrity_checks: vec![(group, 6 * k, k)],
            gc: vec![(group, 3 * k, 11 * k)],
        }
    }

    /// The whole exposition of two cores, byte for byte as it was before `add_requests` and
    /// `add_groups` were split into steps (families, series order, labels, HELP and TYPE).
    #[test]
    fn t02_core_families_text() {
        let cores = [sample_core(0), sample_core(1)];
        let mut f = Families::default();
        add_core_families(&mut f, &cores, 1, Duration::from_secs(30));
        let text = f.encode();
        // Line by line first, so that a failure names the first line that differs.
        for (i, (got, want)) in text.lines().zip(CORE_FAMILIES_TEXT.lines()).enumerate() {
            assert_eq!(got, want, "line {}", i + 1);
        }
        assert_eq!(text, CORE_FAMILIES_TEXT);
    }

    /// `t02`'s expected exposition, captured from the code before the split.
    const CORE_FAMILIES_TEXT: &str = r#"# HELP active_connections Open client and peer connections.
# TYPE active_connections gauge
active_connections 9
# HELP batch_size Transactions per block round.
# TYPE batch_size histogram
batch_size_bucket{group="0",le="1"} 0
batch_size_bucket{group="0",le="2"} 0
batch_size_bucket{group="0",le="5"} 1
batch_size_bucket{group="0",le="10"} 1
batch_size_bucket{group="0",le="20"} 2
batch_size_bucket{group="0",le="50"} 2
batch_size_bucket{group="0",le="100"} 3
batch_size_bucket{group="0",le="200"} 3
batch_size_bucket{group="0",le="500"} 3
batch_size_bucket{group="0",le="1000"} 3
batch_size_bucket{group="0",le="10000"} 3
batch_size_bucket{group="0",le="+Inf"} 3
batch_size_sum{group="0"} 115
batch_size_count{group="0"} 3
batch_size_bucket{group="2",le="1"} 0
batch_size_bucket{group="2",le="2"} 0
batch_size_bucket{group="2",le="5"} 1
batch_size_bucket{group="2",le="10"} 1
batch_size_bucket{group="2",le="20"} 1
batch_size_bucket{group="2",le="50"} 2
batch_size_bucket{group="2",le="100"} 3
batch_size_bucket{group="2",le="200"} 3
batch_size_bucket{group="2",le="500"} 3
batch_size_bucket{group="2",le="1000"} 3
batch_size_bucket{group="2",le="10000"} 3
batch_size_bucket{group="2",le="+Inf"} 3
batch_size_sum{group="2"} 127
batch_size_count{group="2"} 3
# HELP batch_wait_ms Wait of a round's oldest transaction before its block was drafted, in ms.
# TYPE batch_wait_ms histogram
batch_wait_ms_bucket{group="0",le="0.1"} 0
batch_wait_ms_bucket{group="0",le="0.5"} 0
batch_wait_ms_bucket{group="0",le="1"} 1
batch_wait_ms_bucket{group="0",le="2"} 1
batch_wait_ms_bucket{group="0",le="5"} 1
batch_wait_ms_bucket{group="0",le="10"} 2
batch_wait_ms_bucket{group="0",le="20"} 2
batch_wait_ms_bucket{group="0",le="50"} 3
batch_wait_ms_bucket{group="0",le="100"} 3
batch_wait_ms_bucket{group="0",le="500"} 3
batch_wait_ms_bucket{group="0",le="1000"} 3
batch_wait_ms_bucket{group="0",le="+Inf"} 3
batch_wait_ms_sum{group="0"} 29.01
batch_wait_ms_count{group="0"} 3
batch_wait_ms_bucket{group="2",le="0.1"} 0
batch_wait_ms_bucket{group="2",le="0.5"} 0
batch_wait_ms_bucket{group="2",le="1"} 0
batch_wait_ms_bucket{group="2",le="2"} 1
batch_wait_ms_bucket{group="2",le="5"} 1
batch_wait_ms_bucket{group="2",le="10"} 2
batch_wait_ms_bucket{group="2",le="20"} 2
batch_wait_ms_bucket{group="2",le="50"} 3
batch_wait_ms_bucket{group="2",le="100"} 3
batch_wait_ms_bucket{group="2",le="500"} 3
batch_wait_ms_bucket{group="2",le="1000"} 3
batch_wait_ms_bucket{group="2",le="+Inf"} 3
batch_wait_ms_sum{group="2"} 30.009999999999998
batch_wait_ms_count{group="2"} 3
# HELP blocks_per_second Group blocks applied per second since the last scrape.
# TYPE blocks_per_second gauge
blocks_per_second{group="0"} 2.5
blocks_per_second{group="1"} 2.5
blocks_per_second{group="2"} 5
blocks_per_second{group="3"} 5
# HELP chain_height Vault height.
# TYPE chain_height gauge
chain_height{namespace="1",vault="7"} 17
chain_height{namespace="1",vault="8"} 18
chain_height{namespace="1",vault="9"} 19
chain_height{namespace="1",vault="10"} 20
# HELP chain_tip_age_seconds Seconds since the vault's last block.
# TYPE chain_tip_age_seconds gauge
chain_tip_age_seconds{namespace="1",vault="7"} 1.5
chain_tip_age_seconds{namespace="1",vault="8"} 1.5
chain_tip_age_seconds{namespace="1",vault="9"} 3
chain_tip_age_seconds{namespace="1",vault="10"} 3
# HELP connection_handoffs_total Client connections this core took over from the core that accepted them, by their namespace hint (D53).
# TYPE connection_handoffs_total counter
connection_handoffs_total{core="0"} 4
connection_handoffs_total{core="1"} 4
# HELP core_busy_ratio Share of time the core's executor ran tasks since the previous scrape.
# TYPE core_busy_ratio gauge
core_busy_ratio{core="0"} 0.2
core_busy_ratio{core="1"} 0.2
# HELP core_connections Open connections served by the core (after any hand-over, D53).
# TYPE core_connections gauge
core_connections{core="0"} 4
core_connections{core="1"} 5
# HELP core_groups Raft groups hosted on the core.
# TYPE core_groups gauge
core_groups{core="0"} 2
core_groups{core="1"} 2
# HELP determinism_bug_total Recoveries whose replay did not reproduce the chain.
# TYPE determinism_bug_total counter
determinism_bug_total{group="1"} 2
determinism_bug_total{group="3"} 4
# HELP eager_commits_total Rounds closed because the queue was empty (eager).
# TYPE eager_commits_total counter
eager_commits_total{group="0"} 1
eager_commits_total{group="2"} 1
# HELP gc_cycles_total GC cycles this node ran as the group's leader (SPEC §3.8).
# TYPE gc_cycles_total counter
gc_cycles_total{group="0"} 3
gc_cycles_total{group="2"} 6
# HELP gc_expired_total Entities removed by this node's GC transactions (ExpireEntity with status Expired).
# TYPE gc_expired_total counter
gc_expired_total{group="0"} 11
gc_expired_total{group="2"} 22
# HELP group_failed 1 if the group failed to open or stopped on an error here.
# TYPE group_failed gauge
group_failed{group="0"} 0
group_failed{group="1"} 1
group_failed{group="2"} 0
group_failed{group="3"} 1
# HELP group_height Height of the last applied group block.
# TYPE group_height gauge
group_height{group="0"} 60
group_height{group="1"} 60
group_height{group="2"} 120
group_height{group="3"} 120
# HELP idempotency_cache_evictions_total Entries evicted from the idempotency cache.
# TYPE idempotency_cache_evictions_total counter
idempotency_cache_evictions_total{core="0"} 1
idempotency_cache_evictions_total{core="1"} 2
# HELP idempotency_cache_hits_total Retries answered from the idempotency cache.
# TYPE idempotency_cache_hits_total counter
idempotency_cache_hits_total{core="0"} 5
idempotency_cache_hits_total{core="1"} 10
# HELP idempotency_cache_misses_total Duplicate sequences not in the cache.
# TYPE idempotency_cache_misses_total counter
idempotency_cache_misses_total{core="0"} 2
idempotency_cache_misses_total{core="1"} 2
# HELP idempotency_cache_size Entries in the core's idempotency cache.
# TYPE idempotency_cache_size gauge
idempotency_cache_size{core="0"} 9
idempotency_cache_size{core="1"} 18
# HELP integrity_checks_total Scopes checked by the background integrity check (SPEC §9.7; not in SPEC §11.3).
# TYPE integrity_checks_total counter
integrity_checks_total{group="0"} 6
integrity_checks_total{group="2"} 12
# HELP integrity_issues_total Issues the background integrity check found (SPEC §9.7; not in SPEC §11.3).
# TYPE integrity_issues_total counter
integrity_issues_total{group="0"} 1
integrity_issues_total{group="2"} 2
# HELP merkle_proof_generation_seconds Time to build a Merkle proof: a transaction's inclusion proof in its block (tx), a key's state-tree proof (state), the headers of a chain proof (chain).
# TYPE merkle_proof_generation_seconds histogram
merkle_proof_generation_seconds_bucket{kind="tx",le="0.0001"} 0
merkle_proof_generation_seconds_bucket{kind="tx",le="0.00025"} 0
merkle_proof_generation_seconds_bucket{kind="tx",le="0.0005"} 0
merkle_proof_generation_seconds_bucket{kind="tx",le="0.001"} 0
merkle_proof_generation_seconds_bucket{kind="tx",le="0.0025"} 0
merkle_proof_generation_seconds_bucket{kind="tx",le="0.005"} 0
merkle_proof_generation_seconds_bucket{kind="tx",le="0.01"} 0
merkle_proof_generation_seconds_bucket{kind="tx",le="0.025"} 0
merkle_proof_generation_seconds_bucket{kind="tx",le="0.05"} 0
merkle_proof_generation_seconds_bucket{kind="tx",le="0.1"} 0
merkle_proof_generation_seconds_bucket{kind="tx",le="0.25"} 0
merkle_proof_generation_seconds_bucket{kind="tx",le="0.5"} 0
merkle_proof_generation_seconds_bucket{kind="tx",le="1"} 0
merkle_proof_generation_seconds_bucket{kind="tx",le="2.5"} 0
merkle_proof_generation_seconds_bucket{kind="tx",le="5"} 0
merkle_proof_generation_seconds_bucket{kind="tx",le="10"} 0
merkle_proof_generation_seconds_bucket{kind="tx",le="30"} 0
merkle_proof_generation_seconds_bucket{kind="tx",le="60"} 0
merkle_proof_generation_seconds_bucket{kind="tx",le="+Inf"} 0
merkle_proof_generation_seconds_sum{kind="tx"} 0
merkle_proof_generation_seconds_count{kind="tx"} 0
merkle_proof_generation_seconds_bucket{kind="state",le="0.0001"} 0
merkle_proof_generation_seconds_bucket{kind="state",le="0.00025"} 1
merkle_proof_generation_seconds_bucket{kind="state",le="0.0005"} 2
merkle_proof_generation_seconds_bucket{kind="state",le="0.001"} 2
merkle_proof_generation_seconds_bucket{kind="state",le="0.0025"} 2
merkle_proof_generation_seconds_bucket{kind="state",le="0.005"} 2
merkle_proof_generation_seconds_bucket{kind="state",le="0.01"} 2
merkle_proof_generation_seconds_bucket{kind="state",le="0.025"} 2
merkle_proof_generation_seconds_bucket{kind="state",le="0.05"} 2
merkle_proof_generation_seconds_bucket{kind="state",le="0.1"} 2
merkle_proof_generation_seconds_bucket{kind="state",le="0.25"} 2
merkle_proof_generation_seconds_bucket{kind="state",le="0.5"} 2
merkle_proof_generation_seconds_bucket{kind="state",le="1"} 2
merkle_proof_generation_seconds_bucket{kind="state",le="2.5"} 2
merkle_proof_generation_seconds_bucket{kind="state",le="5"} 2
merkle_proof_generation_seconds_bucket{kind="state",le="10"} 2
merkle_proof_generation_seconds_bucket{kind="state",le="30"} 2
merkle_proof_generation_seconds_bucket{kind="state",le="60"} 2
merkle_proof_generation_seconds_bucket{kind="state",le="+Inf"} 2
merkle_proof_generation_seconds_sum{kind="state"} 0.00045
merkle_proof_generation_seconds_count{kind="state"} 2
merkle_proof_generation_seconds_bucket{kind="chain",le="0.0001"} 0
merkle_proof_generation_seconds_bucket{kind="chain",le="0.00025"} 0
merkle_proof_generation_seconds_bucket{kind="chain",le="0.0005"} 0
merkle_proof_generation_seconds_bucket{kind="chain",le="0.001"} 0
merkle_proof_generation_seconds_bucket{kind="chain",le="0.0025"} 0
merkle_proof_generation_seconds_bucket{kind="chain",le="0.005"} 0
merkle_proof_generation_seconds_bucket{kind="chain",le="0.01"} 0
merkle_proof_generation_seconds_bucket{kind="chain",le="0.025"} 0
merkle_proof_generation_seconds_bucket{kind="chain",le="0.05"} 0
merkle_proof_generation_seconds_bucket{kind="chain",le="0.1"} 0
merkle_proof_generation_seconds_bucket{kind="chain",le="0.25"} 0
merkle_proof_generation_seconds_bucket{kind="chain",le="0.5"} 0
merkle_proof_generation_seconds_bucket{kind="chain",le="1"} 0
merkle_proof_generation_seconds_bucket{kind="chain",le="2.5"} 0
merkle_proof_generation_seconds_bucket{kind="chain",le="5"} 0
merkle_proof_generation_seconds_bucket{kind="chain",le="10"} 0
merkle_proof_generation_seconds_bucket{kind="chain",le="30"} 0
merkle_proof_generation_seconds_bucket{kind="chain",le="60"} 0
merkle_proof_generation_seconds_bucket{kind="chain",le="+Inf"} 0
merkle_proof_generation_seconds_sum{kind="chain"} 0
merkle_proof_generation_seconds_count{kind="chain"} 0
# HELP raft_apply_index Last applied log index.
# TYPE raft_apply_index gauge
raft_apply_index{group="0"} 118
raft_apply_index{group="1"} 100
raft_apply_index{group="2"} 236
raft_apply_index{group="3"} 200
# HELP raft_commit_index Committed log index (leader: held by a majority of voters; follower: applied).
# TYPE raft_commit_index gauge
raft_commit_index{group="0"} 119
raft_commit_index{group="1"} 119
raft_commit_index{group="2"} 238
raft_commit_index{group="3"} 238
# HELP raft_last_log_index Last log index appended here.
# TYPE raft_last_log_index gauge
raft_last_log_index{group="0"} 120
raft_last_log_index{group="1"} 120
raft_last_log_index{group="2"} 240
raft_last_log_index{group="3"} 240
# HELP raft_leader 1 if this node leads the group.
# TYPE raft_leader gauge
raft_leader{group="0"} 1
raft_leader{group="1"} 0
raft_leader{group="2"} 1
raft_leader{group="3"} 0
# HELP raft_leader_changes_total Leader changes seen by this node (sampled at scrapes).
# TYPE raft_leader_changes_total counter
raft_leader_changes_total{group="0"} 1
raft_leader_changes_total{group="1"} 1
raft_leader_changes_total{group="2"} 2
raft_leader_changes_total{group="3"} 2
# HELP raft_proposals_pending Transactions queued for the next block.
# TYPE raft_proposals_pending gauge
raft_proposals_pending{group="0"} 7
raft_proposals_pending{group="1"} 7
raft_proposals_pending{group="2"} 14
raft_proposals_pending{group="3"} 14
# HELP raft_proposals_total Blocks proposed by this node as leader.
# TYPE raft_proposals_total counter
raft_proposals_total{group="0"} 1
raft_proposals_total{group="2"} 1
# HELP raft_replication_lag Blocks (log entries) behind: leader: its last index minus the follower's matched index; follower: entries received and not yet applied.
# TYPE raft_replication_lag gauge
raft_replication_lag{group="0",follower="2"} 3
raft_replication_lag{group="0",follower="3"} 0
raft_replication_lag{group="1",follower="1"} 5
raft_replication_lag{group="2",follower="2"} 6
raft_replication_lag{group="2",follower="3"} 0
raft_replication_lag{group="3",follower="1"} 5
# HELP raft_term Current Raft term.
# TYPE raft_term gauge
raft_term{group="0"} 4
raft_term{group="1"} 5
raft_term{group="2"} 8
raft_term{group="3"} 10
# HELP read_latency_ms Read latency (client-observed at the router), last 60 s quantiles.
# TYPE read_latency_ms summary
read_latency_ms{quantile="0.5"} 0.04
read_latency_ms{quantile="0.95"} 0.08
read_latency_ms{quantile="0.99"} 0.08
read_latency_ms_sum 0.12
read_latency_ms_count 2
# HELP reads_per_second Reads answered per second over the last 60 s.
# TYPE reads_per_second gauge
reads_per_second 0.06666666666666667
# HELP request_latency_p50 Request latency quantile over the last 60 s, in ms.
# TYPE request_latency_p50 gauge
request_latency_p50{op="read"} 0.04
request_latency_p50{op="write"} 6.003
request_latency_p50{op="all"} 3.001
# HELP request_latency_p99 Request latency quantile over the last 60 s, in ms.
# TYPE request_latency_p99 gauge
request_latency_p99{op="read"} 0.08
request_latency_p99{op="write"} 7.003
request_latency_p99{op="all"} 7.003
# HELP request_latency_p999 Request latency quantile over the last 60 s, in ms.
# TYPE request_latency_p999 gauge
request_latency_p999{op="read"} 0.08
request_latency_p999{op="write"} 7.003
request_latency_p999{op="all"} 7.003
# HELP request_latency_seconds Request latency from admission on the connection to the reply being written.
# TYPE request_latency_seconds histogram
request_latency_seconds_bucket{op="read",le="0.0001"} 2
request_latency_seconds_bucket{op="read",le="0.00025"} 2
request_latency_seconds_bucket{op="read",le="0.0005"} 2
request_latency_seconds_bucket{op="read",le="0.001"} 2
request_latency_seconds_bucket{op="read",le="0.0025"} 2
request_latency_seconds_bucket{op="read",le="0.005"} 2
request_latency_seconds_bucket{op="read",le="0.01"} 2
request_latency_seconds_bucket{op="read",le="0.025"} 2
request_latency_seconds_bucket{op="read",le="0.05"} 2
request_latency_seconds_bucket{op="read",le="0.1"} 2
request_latency_seconds_bucket{op="read",le="0.25"} 2
request_latency_seconds_bucket{op="read",le="0.5"} 2
request_latency_seconds_bucket{op="read",le="1"} 2
request_latency_seconds_bucket{op="read",le="2.5"} 2
request_latency_seconds_bucket{op="read",le="5"} 2
request_latency_seconds_bucket{op="read",le="10"} 2
request_latency_seconds_bucket{op="read",le="30"} 2
request_latency_seconds_bucket{op="read",le="60"} 2
request_latency_seconds_bucket{op="read",le="+Inf"} 2
request_latency_seconds_sum{op="read"} 0.00012
request_latency_seconds_count{op="read"} 2
request_latency_seconds_bucket{op="write",le="0.0001"} 0
request_latency_seconds_bucket{op="write",le="0.00025"} 0
request_latency_seconds_bucket{op="write",le="0.0005"} 0
request_latency_seconds_bucket{op="write",le="0.001"} 0
request_latency_seconds_bucket{op="write",le="0.0025"} 0
request_latency_seconds_bucket{op="write",le="0.005"} 1
request_latency_seconds_bucket{op="write",le="0.01"} 4
request_latency_seconds_bucket{op="write",le="0.025"} 4
request_latency_seconds_bucket{op="write",le="0.05"} 4
request_latency_seconds_bucket{op="write",le="0.1"} 4
request_latency_seconds_bucket{op="write",le="0.25"} 4
request_latency_seconds_bucket{op="write",le="0.5"} 4
request_latency_seconds_bucket{op="write",le="1"} 4
request_latency_seconds_bucket{op="write",le="2.5"} 4
request_latency_seconds_bucket{op="write",le="5"} 4
request_latency_seconds_bucket{op="write",le="10"} 4
request_latency_seconds_bucket{op="write",le="30"} 4
request_latency_seconds_bucket{op="write",le="60"} 4
request_latency_seconds_bucket{op="write",le="+Inf"} 4
request_latency_seconds_sum{op="write"} 0.023
request_latency_seconds_count{op="write"} 4
# HELP requests_total Requests answered, by operation and status (router-observed).
# TYPE requests_total counter
requests_total{op="read",status="ok"} 2
requests_total{op="write",status="ok"} 2
requests_total{op="write",status="unavailable"} 2
# HELP serialization_bytes Bytes decoded or encoded: frame payloads, log entries, snapshot files.
# TYPE serialization_bytes histogram
serialization_bytes_bucket{direction="in",kind="wire",le="64"} 0
serialization_bytes_bucket{direction="in",kind="wire",le="256"} 0
serialization_bytes_bucket{direction="in",kind="wire",le="1024"} 2
serialization_bytes_bucket{direction="in",kind="wire",le="4096"} 2
serialization_bytes_bucket{direction="in",kind="wire",le="16384"} 2
serialization_bytes_bucket{direction="in",kind="wire",le="65536"} 2
serialization_bytes_bucket{direction="in",kind="wire",le="262144"} 2
serialization_bytes_bucket{direction="in",kind="wire",le="1048576"} 2
serialization_bytes_bucket{direction="in",kind="wire",le="4194304"} 2
serialization_bytes_bucket{direction="in",kind="wire",le="16777216"} 2
serialization_bytes_bucket{direction="in",kind="wire",le="+Inf"} 2
serialization_bytes_sum{direction="in",kind="wire"} 600
serialization_bytes_count{direction="in",kind="wire"} 2
serialization_bytes_bucket{direction="out",kind="wire",le="64"} 0
serialization_bytes_bucket{direction="out",kind="wire",le="256"} 0
serialization_bytes_bucket{direction="out",kind="wire",le="1024"} 0
serialization_bytes_bucket{direction="out",kind="wire",le="4096"} 0
serialization_bytes_bucket{direction="out",kind="wire",le="16384"} 2
serialization_bytes_bucket{direction="out",kind="wire",le="65536"} 2
serialization_bytes_bucket{direction="out",kind="wire",le="262144"} 2
serialization_bytes_bucket{direction="out",kind="wire",le="1048576"} 2
serialization_bytes_bucket{direction="out",kind="wire",le="4194304"} 2
serialization_bytes_bucket{direction="out",kind="wire",le="16777216"} 2
serialization_bytes_bucket{direction="out",kind="wire",le="+Inf"} 2
serialization_bytes_sum{direction="out",kind="wire"} 10004
serialization_bytes_count{direction="out",kind="wire"} 2
serialization_bytes_bucket{direction="in",kind="log",le="64"} 0
serialization_bytes_bucket{direction="in",kind="log",le="256"} 0
serialization_bytes_bucket{direction="in",kind="log",le="1024"} 0
serialization_bytes_bucket{direction="in",kind="log",le="4096"} 0
serialization_bytes_bucket{direction="in",kind="log",le="16384"} 0
serialization_bytes_bucket{direction="in",kind="log",le="65536"} 0
serialization_bytes_bucket{direction="in",kind="log",le="262144"} 0
serialization_bytes_bucket{direction="in",kind="log",le="1048576"} 0
serialization_bytes_bucket{direction="in",kind="log",le="4194304"} 0
serialization_bytes_bucket{direction="in",kind="log",le="16777216"} 0
serialization_bytes_bucket{direction="in",kind="log",le="+Inf"} 0
serialization_bytes_sum{direction="in",kind="log"} 0
serialization_bytes_count{direction="in",kind="log"} 0
serialization_bytes_bucket{direction="out",kind="log",le="64"} 0
serialization_bytes_bucket{direction="out",kind="log",le="256"} 0
serialization_bytes_bucket{direction="out",kind="log",le="1024"} 2
serialization_bytes_bucket{direction="out",kind="log",le="4096"} 2
serialization_bytes_bucket{direction="out",kind="log",le="16384"} 2
serialization_bytes_bucket{direction="out",kind="log",le="65536"} 2
serialization_bytes_bucket{direction="out",kind="log",le="262144"} 2
serialization_bytes_bucket{direction="out",kind="log",le="1048576"} 2
serialization_bytes_bucket{direction="out",kind="log",le="4194304"} 2
serialization_bytes_bucket{direction="out",kind="log",le="16777216"} 2
serialization_bytes_bucket{direction="out",kind="log",le="+Inf"} 2
serialization_bytes_sum{direction="out",kind="log"} 1400
serialization_bytes_count{direction="out",kind="log"} 2
serialization_bytes_bucket{direction="in",kind="snapshot",le="64"} 0
serialization_bytes_bucket{direction="in",kind="snapshot",le="256"} 0
serialization_bytes_bucket{direction="in",kind="snapshot",le="1024"} 0
serialization_bytes_bucket{direction="in",kind="snapshot",le="4096"} 0
serialization_bytes_bucket{direction="in",kind="snapshot",le="16384"} 0
serialization_bytes_bucket{direction="in",kind="snapshot",le="65536"} 0
serialization_bytes_bucket{direction="in",kind="snapshot",le="262144"} 2
serialization_bytes_bucket{direction="in",kind="snapshot",le="1048576"} 2
serialization_bytes_bucket{direction="in",kind="snapshot",le="4194304"} 2
serialization_bytes_bucket{direction="in",kind="snapshot",le="16777216"} 2
serialization_bytes_bucket{direction="in",kind="snapshot",le="+Inf"} 2
serialization_bytes_sum{direction="in",kind="snapshot"} 140000
serialization_bytes_count{direction="in",kind="snapshot"} 2
serialization_bytes_bucket{direction="out",kind="snapshot",le="64"} 0
serialization_bytes_bucket{direction="out",kind="snapshot",le="256"} 0
serialization_bytes_bucket{direction="out",kind="snapshot",le="1024"} 0
serialization_bytes_bucket{direction="out",kind="snapshot",le="4096"} 0
serialization_bytes_bucket{direction="out",kind="snapshot",le="16384"} 0
serialization_bytes_bucket{direction="out",kind="snapshot",le="65536"} 0
serialization_bytes_bucket{direction="out",kind="snapshot",le="262144"} 0
serialization_bytes_bucket{direction="out",kind="snapshot",le="1048576"} 0
serialization_bytes_bucket{direction="out",kind="snapshot",le="4194304"} 0
serialization_bytes_bucket{direction="out",kind="snapshot",le="16777216"} 0
serialization_bytes_bucket{direction="out",kind="snapshot",le="+Inf"} 0
serialization_bytes_sum{direction="out",kind="snapshot"} 0
serialization_bytes_count{direction="out",kind="snapshot"} 0
# HELP serialization_decode_seconds Time to validate and decode (rkyv): request frames (wire), log entries read back (log), snapshot files installed or restored (snapshot).
# TYPE serialization_decode_seconds histogram
serialization_decode_seconds_bucket{direction="in",kind="wire",le="0.0001"} 2
serialization_decode_seconds_bucket{direction="in",kind="wire",le="0.00025"} 2
serialization_decode_seconds_bucket{direction="in",kind="wire",le="0.0005"} 2
serialization_decode_seconds_bucket{direction="in",kind="wire",le="0.001"} 2
serialization_decode_seconds_bucket{direction="in",kind="wire",le="0.0025"} 2
serialization_decode_seconds_bucket{direction="in",kind="wire",le="0.005"} 2
serialization_decode_seconds_bucket{direction="in",kind="wire",le="0.01"} 2
serialization_decode_seconds_bucket{direction="in",kind="wire",le="0.025"} 2
serialization_decode_seconds_bucket{direction="in",kind="wire",le="0.05"} 2
serialization_decode_seconds_bucket{direction="in",kind="wire",le="0.1"} 2
serialization_decode_seconds_bucket{direction="in",kind="wire",le="0.25"} 2
serialization_decode_seconds_bucket{direction="in",kind="wire",le="0.5"} 2
serialization_decode_seconds_bucket{direction="in",kind="wire",le="1"} 2
serialization_decode_seconds_bucket{direction="in",kind="wire",le="2.5"} 2
serialization_decode_seconds_bucket{direction="in",kind="wire",le="5"} 2
serialization_decode_seconds_bucket{direction="in",kind="wire",le="10"} 2
serialization_decode_seconds_bucket{direction="in",kind="wire",le="30"} 2
serialization_decode_seconds_bucket{direction="in",kind="wire",le="60"} 2
serialization_decode_seconds_bucket{direction="in",kind="wire",le="+Inf"} 2
serialization_decode_seconds_sum{direction="in",kind="wire"} 0.000024
serialization_decode_seconds_count{direction="in",kind="wire"} 2
serialization_decode_seconds_bucket{direction="in",kind="log",le="0.0001"} 0
serialization_decode_seconds_bucket{direction="in",kind="log",le="0.00025"} 0
serialization_decode_seconds_bucket{direction="in",kind="log",le="0.0005"} 0
serialization_decode_seconds_bucket{direction="in",kind="log",le="0.001"} 0
serialization_decode_seconds_bucket{direction="in",kind="log",le="0.0025"} 0
serialization_decode_seconds_bucket{direction="in",kind="log",le="0.005"} 0
serialization_decode_seconds_bucket{direction="in",kind="log",le="0.01"} 0
serialization_decode_seconds_bucket{direction="in",kind="log",le="0.025"} 0
serialization_decode_seconds_bucket{direction="in",kind="log",le="0.05"} 0
serialization_decode_seconds_bucket{direction="in",kind="log",le="0.1"} 0
serialization_decode_seconds_bucket{direction="in",kind="log",le="0.25"} 0
serialization_decode_seconds_bucket{direction="in",kind="log",le="0.5"} 0
serialization_decode_seconds_bucket{direction="in",kind="log",le="1"} 0
serialization_decode_seconds_bucket{direction="in",kind="log",le="2.5"} 0
serialization_decode_seconds_bucket{direction="in",kind="log",le="5"} 0
serialization_decode_seconds_bucket{direction="in",kind="log",le="10"} 0
serialization_decode_seconds_bucket{direction="in",kind="log",le="30"} 0
serialization_decode_seconds_bucket{direction="in",kind="log",le="60"} 0
serialization_decode_seconds_bucket{direction="in",kind="log",le="+Inf"} 0
serialization_decode_seconds_sum{direction="in",kind="log"} 0
serialization_decode_seconds_count{direction="in",kind="log"} 0
serialization_decode_seconds_bucket{direction="in",kind="snapshot",le="0.0001"} 0
serialization_decode_seconds_bucket{direction="in",kind="snapshot",le="0.00025"} 0
serialization_decode_seconds_bucket{direction="in",kind="snapshot",le="0.0005"} 0
serialization_decode_seconds_bucket{direction="in",kind="snapshot",le="0.001"} 0
serialization_decode_seconds_bucket{direction="in",kind="snapshot",le="0.0025"} 2
serialization_decode_seconds_bucket{direction="in",kind="snapshot",le="0.005"} 2
serialization_decode_seconds_bucket{direction="in",kind="snapshot",le="0.01"} 2
serialization_decode_seconds_bucket{direction="in",kind="snapshot",le="0.025"} 2
serialization_decode_seconds_bucket{direction="in",kind="snapshot",le="0.05"} 2
serialization_decode_seconds_bucket{direction="in",kind="snapshot",le="0.1"} 2
serialization_decode_seconds_bucket{direction="in",kind="snapshot",le="0.25"} 2
serialization_decode_seconds_bucket{direction="in",kind="snapshot",le="0.5"} 2
serialization_decode_seconds_bucket{direction="in",kind="snapshot",le="1"} 2
serialization_decode_seconds_bucket{direction="in",kind="snapshot",le="2.5"} 2
serialization_decode_seconds_bucket{direction="in",kind="snapshot",le="5"} 2
serialization_decode_seconds_bucket{direction="in",kind="snapshot",le="10"} 2
serialization_decode_seconds_bucket{direction="in",kind="snapshot",le="30"} 2
serialization_decode_seconds_bucket{direction="in",kind="snapshot",le="60"} 2
serialization_decode_seconds_bucket{direction="in",kind="snapshot",le="+Inf"} 2
serialization_decode_seconds_sum{direction="in",kind="snapshot"} 0.004
serialization_decode_seconds_count{direction="in",kind="snapshot"} 2
# HELP serialization_encode_seconds Time to encode (rkyv): response frames (wire), log entries appended (log), snapshot files written (snapshot).
# TYPE serialization_encode_seconds histogram
serialization_encode_seconds_bucket{direction="out",kind="wire",le="0.0001"} 2
serialization_encode_seconds_bucket{direction="out",kind="wire",le="0.00025"} 2
serialization_encode_seconds_bucket{direction="out",kind="wire",le="0.0005"} 2
serialization_encode_seconds_bucket{direction="out",kind="wire",le="0.001"} 2
serialization_encode_seconds_bucket{direction="out",kind="wire",le="0.0025"} 2
serialization_encode_seconds_bucket{direction="out",kind="wire",le="0.005"} 2
serialization_encode_seconds_bucket{direction="out",kind="wire",le="0.01"} 2
serialization_encode_seconds_bucket{direction="out",kind="wire",le="0.025"} 2
serialization_encode_seconds_bucket{direction="out",kind="wire",le="0.05"} 2
serialization_encode_seconds_bucket{direction="out",kind="wire",le="0.1"} 2
serialization_encode_seconds_bucket{direction="out",kind="wire",le="0.25"} 2
serialization_encode_seconds_bucket{direction="out",kind="wire",le="0.5"} 2
serialization_encode_seconds_bucket{direction="out",kind="wire",le="1"} 2
serialization_encode_seconds_bucket{direction="out",kind="wire",le="2.5"} 2
serialization_encode_seconds_bucket{direction="out",kind="wire",le="5"} 2
serialization_encode_seconds_bucket{direction="out",kind="wire",le="10"} 2
serialization_encode_seconds_bucket{direction="out",kind="wire",le="30"} 2
serialization_encode_seconds_bucket{direction="out",kind="wire",le="60"} 2
serialization_encode_seconds_bucket{direction="out",kind="wire",le="+Inf"} 2
serialization_encode_seconds_sum{direction="out",kind="wire"} 0.00009
serialization_encode_seconds_count{direction="out",kind="wire"} 2
serialization_encode_seconds_bucket{direction="out",kind="log",le="0.0001"} 2
serialization_encode_seconds_bucket{direction="out",kind="log",le="0.00025"} 2
serialization_encode_seconds_bucket{direction="out",kind="log",le="0.0005"} 2
serialization_encode_seconds_bucket{direction="out",kind="log",le="0.001"} 2
serialization_encode_seconds_bucket{direction="out",kind="log",le="0.0025"} 2
serialization_encode_seconds_bucket{direction="out",kind="log",le="0.005"} 2
serialization_encode_seconds_bucket{direction="out",kind="log",le="0.01"} 2
serialization_encode_seconds_bucket{direction="out",kind="log",le="0.025"} 2
serialization_encode_seconds_bucket{direction="out",kind="log",le="0.05"} 2
serialization_encode_seconds_bucket{direction="out",kind="log",le="0.1"} 2
serialization_encode_seconds_bucket{direction="out",kind="log",le="0.25"} 2
serialization_encode_seconds_bucket{direction="out",kind="log",le="0.5"} 2
serialization_encode_seconds_bucket{direction="out",kind="log",le="1"} 2
serialization_encode_seconds_bucket{direction="out",kind="log",le="2.5"} 2
serialization_encode_seconds_bucket{direction="out",kind="log",le="5"} 2
serialization_encode_seconds_bucket{direction="out",kind="log",le="10"} 2
serialization_encode_seconds_bucket{direction="out",kind="log",le="30"} 2
serialization_encode_seconds_bucket{direction="out",kind="log",le="60"} 2
serialization_encode_seconds_bucket{direction="out",kind="log",le="+Inf"} 2
serialization_encode_seconds_sum{direction="out",kind="log"} 0.000018
serialization_encode_seconds_count{direction="out",kind="log"} 2
serialization_encode_seconds_bucket{direction="out",kind="snapshot",le="0.0001"} 0
serialization_encode_seconds_bucket{direction="out",kind="snapshot",le="0.00025"} 0
serialization_encode_seconds_bucket{direction="out",kind="snapshot",le="0.0005"} 0
serialization_encode_seconds_bucket{direction="out",kind="snapshot",le="0.001"} 0
serialization_encode_seconds_bucket{direction="out",kind="snapshot",le="0.0025"} 0
serialization_encode_seconds_bucket{direction="out",kind="snapshot",le="0.005"} 0
serialization_encode_seconds_bucket{direction="out",kind="snapshot",le="0.01"} 0
serialization_encode_seconds_bucket{direction="out",kind="snapshot",le="0.025"} 0
serialization_encode_seconds_bucket{direction="out",kind="snapshot",le="0.05"} 0
serialization_encode_seconds_bucket{direction="out",kind="snapshot",le="0.1"} 0
serialization_encode_seconds_bucket{direction="out",kind="snapshot",le="0.25"} 0
serialization_encode_seconds_bucket{direction="out",kind="snapshot",le="0.5"} 0
serialization_encode_seconds_bucket{direction="out",kind="snapshot",le="1"} 0
serialization_encode_seconds_bucket{direction="out",kind="snapshot",le="2.5"} 0
serialization_encode_seconds_bucket{direction="out",kind="snapshot",le="5"} 0
serialization_encode_seconds_bucket{direction="out",kind="snapshot",le="10"} 0
serialization_encode_seconds_bucket{direction="out",kind="snapshot",le="30"} 0
serialization_encode_seconds_bucket{direction="out",kind="snapshot",le="60"} 0
serialization_encode_seconds_bucket{direction="out",kind="snapshot",le="+Inf"} 0
serialization_encode_seconds_sum{direction="out",kind="snapshot"} 0
serialization_encode_seconds_count{direction="out",kind="snapshot"} 0
# HELP size_commits_total Rounds closed full (batch_max_size).
# TYPE size_commits_total counter
size_commits_total{group="0"} 1
size_commits_total{group="2"} 1
# HELP snapshot_create_seconds Time to take a snapshot (checkpoint, build, write, fsync).
# TYPE snapshot_create_seconds histogram
snapshot_create_seconds_bucket{group="0",le="0.0001"} 0
snapshot_create_seconds_bucket{group="0",le="0.00025"} 0
snapshot_create_seconds_bucket{group="0",le="0.0005"} 0
snapshot_create_seconds_bucket{group="0",le="0.001"} 0
snapshot_create_seconds_bucket{group="0",le="0.0025"} 0
snapshot_create_seconds_bucket{group="0",le="0.005"} 0
snapshot_create_seconds_bucket{group="0",le="0.01"} 0
snapshot_create_seconds_bucket{group="0",le="0.025"} 0
snapshot_create_seconds_bucket{group="0",le="0.05"} 0
snapshot_create_seconds_bucket{group="0",le="0.1"} 1
snapshot_create_seconds_bucket{group="0",le="0.25"} 1
snapshot_create_seconds_bucket{group="0",le="0.5"} 1
snapshot_create_seconds_bucket{group="0",le="1"} 1
snapshot_create_seconds_bucket{group="0",le="2.5"} 1
snapshot_create_seconds_bucket{group="0",le="5"} 1
snapshot_create_seconds_bucket{group="0",le="10"} 1
snapshot_create_seconds_bucket{group="0",le="30"} 1
snapshot_create_seconds_bucket{group="0",le="60"} 1
snapshot_create_seconds_bucket{group="0",le="+Inf"} 1
snapshot_create_seconds_sum{group="0"} 0.090016
snapshot_create_seconds_count{group="0"} 1
snapshot_create_seconds_bucket{group="2",le="0.0001"} 0
snapshot_create_seconds_bucket{group="2",le="0.00025"} 0
snapshot_create_seconds_bucket{group="2",le="0.0005"} 0
snapshot_create_seconds_bucket{group="2",le="0.001"} 0
snapshot_create_seconds_bucket{group="2",le="0.0025"} 0
snapshot_create_seconds_bucket{group="2",le="0.005"} 0
snapshot_create_seconds_bucket{group="2",le="0.01"} 0
snapshot_create_seconds_bucket{group="2",le="0.025"} 0
snapshot_create_seconds_bucket{group="2",le="0.05"} 0
snapshot_create_seconds_bucket{group="2",le="0.1"} 1
snapshot_create_seconds_bucket{group="2",le="0.25"} 1
snapshot_create_seconds_bucket{group="2",le="0.5"} 1
snapshot_create_seconds_bucket{group="2",le="1"} 1
snapshot_create_seconds_bucket{group="2",le="2.5"} 1
snapshot_create_seconds_bucket{group="2",le="5"} 1
snapshot_create_seconds_bucket{group="2",le="10"} 1
snapshot_create_seconds_bucket{group="2",le="30"} 1
snapshot_create_seconds_bucket{group="2",le="60"} 1
snapshot_create_seconds_bucket{group="2",le="+Inf"} 1
snapshot_create_seconds_sum{group="2"} 0.090016
snapshot_create_seconds_count{group="2"} 1
# HELP snapshot_restore_seconds Time to install a snapshot from the leader (verify, write, load, checkpoint) or restore one at open (read, decode, verify).
# TYPE snapshot_restore_seconds histogram
snapshot_restore_seconds_bucket{group="0",le="0.0001"} 0
snapshot_restore_seconds_bucket{group="0",le="0.00025"} 0
snapshot_restore_seconds_bucket{group="0",le="0.0005"} 0
snapshot_restore_seconds_bucket{group="0",le="0.001"} 0
snapshot_restore_seconds_bucket{group="0",le="0.0025"} 0
snapshot_restore_seconds_bucket{group="0",le="0.005"} 0
snapshot_restore_seconds_bucket{group="0",le="0.01"} 0
snapshot_restore_seconds_bucket{group="0",le="0.025"} 0
snapshot_restore_seconds_bucket{group="0",le="0.05"} 0
snapshot_restore_seconds_bucket{group="0",le="0.1"} 0
snapshot_restore_seconds_bucket{group="0",le="0.25"} 0
snapshot_restore_seconds_bucket{group="0",le="0.5"} 1
snapshot_restore_seconds_bucket{group="0",le="1"} 1
snapshot_restore_seconds_bucket{group="0",le="2.5"} 1
snapshot_restore_seconds_bucket{group="0",le="5"} 1
snapshot_restore_seconds_bucket{group="0",le="10"} 1
snapshot_restore_seconds_bucket{group="0",le="30"} 1
snapshot_restore_seconds_bucket{group="0",le="60"} 1
snapshot_restore_seconds_bucket{group="0",le="+Inf"} 1
snapshot_restore_seconds_sum{group="0"} 0.39999999999999997
snapshot_restore_seconds_count{group="0"} 1
snapshot_restore_seconds_bucket{group="2",le="0.0001"} 0
snapshot_restore_seconds_bucket{group="2",le="0.00025"} 0
snapshot_restore_seconds_bucket{group="2",le="0.0005"} 0
snapshot_restore_seconds_bucket{group="2",le="0.001"} 0
snapshot_restore_seconds_bucket{group="2",le="0.0025"} 0
snapshot_restore_seconds_bucket{group="2",le="0.005"} 0
snapshot_restore_seconds_bucket{group="2",le="0.01"} 0
snapshot_restore_seconds_bucket{group="2",le="0.025"} 0
snapshot_restore_seconds_bucket{group="2",le="0.05"} 0
snapshot_restore_seconds_bucket{group="2",le="0.1"} 0
snapshot_restore_seconds_bucket{group="2",le="0.25"} 0
snapshot_restore_seconds_bucket{group="2",le="0.5"} 0
snapshot_restore_seconds_bucket{group="2",le="1"} 1
snapshot_restore_seconds_bucket{group="2",le="2.5"} 1
snapshot_restore_seconds_bucket{group="2",le="5"} 1
snapshot_restore_seconds_bucket{group="2",le="10"} 1
snapshot_restore_seconds_bucket{group="2",le="30"} 1
snapshot_restore_seconds_bucket{group="2",le="60"} 1
snapshot_restore_seconds_bucket{group="2",le="+Inf"} 1
snapshot_restore_seconds_sum{group="2"} 0.7999999999999999
snapshot_restore_seconds_count{group="2"} 1
# HELP snapshot_size_bytes Size of the last snapshot file written.
# TYPE snapshot_size_bytes gauge
snapshot_size_bytes{group="0"} 123456
snapshot_size_bytes{group="2"} 246912
# HELP snapshots_created_total Snapshot files written.
# TYPE snapshots_created_total counter
snapshots_created_total{group="0"} 1
snapshots_created_total{group="2"} 1
# HELP state_nodes_hashed_per_block State-tree nodes (leaves and internal) hashed to build a proposed block's trees.
# TYPE state_nodes_hashed_per_block histogram
state_nodes_hashed_per_block_bucket{group="0",le="10"} 0
state_nodes_hashed_per_block_bucket{group="0",le="30"} 0
state_nodes_hashed_per_block_bucket{group="0",le="100"} 0
state_nodes_hashed_per_block_bucket{group="0",le="300"} 1
state_nodes_hashed_per_block_bucket{group="0",le="1000"} 1
state_nodes_hashed_per_block_bucket{group="0",le="3000"} 1
state_nodes_hashed_per_block_bucket{group="0",le="10000"} 1
state_nodes_hashed_per_block_bucket{group="0",le="30000"} 1
state_nodes_hashed_per_block_bucket{group="0",le="100000"} 1
state_nodes_hashed_per_block_bucket{group="0",le="300000"} 1
state_nodes_hashed_per_block_bucket{group="0",le="1000000"} 1
state_nodes_hashed_per_block_bucket{group="0",le="+Inf"} 1
state_nodes_hashed_per_block_sum{group="0"} 240
state_nodes_hashed_per_block_count{group="0"} 1
state_nodes_hashed_per_block_bucket{group="2",le="10"} 0
state_nodes_hashed_per_block_bucket{group="2",le="30"} 0
state_nodes_hashed_per_block_bucket{group="2",le="100"} 0
state_nodes_hashed_per_block_bucket{group="2",le="300"} 0
state_nodes_hashed_per_block_bucket{group="2",le="1000"} 1
state_nodes_hashed_per_block_bucket{group="2",le="3000"} 1
state_nodes_hashed_per_block_bucket{group="2",le="10000"} 1
state_nodes_hashed_per_block_bucket{group="2",le="30000"} 1
state_nodes_hashed_per_block_bucket{group="2",le="100000"} 1
state_nodes_hashed_per_block_bucket{group="2",le="300000"} 1
state_nodes_hashed_per_block_bucket{group="2",le="1000000"} 1
state_nodes_hashed_per_block_bucket{group="2",le="+Inf"} 1
state_nodes_hashed_per_block_sum{group="2"} 480
state_nodes_hashed_per_block_count{group="2"} 1
# HELP state_root_computation_duration_seconds Time a block waited for its state trees (sparse Merkle roots).
# TYPE state_root_computation_duration_seconds histogram
state_root_computation_duration_seconds_bucket{group="0",le="0.0001"} 0
state_root_computation_duration_seconds_bucket{group="0",le="0.00025"} 0
state_root_computation_duration_seconds_bucket{group="0",le="0.0005"} 0
state_root_computation_duration_seconds_bucket{group="0",le="0.001"} 0
state_root_computation_duration_seconds_bucket{group="0",le="0.0025"} 1
state_root_computation_duration_seconds_bucket{group="0",le="0.005"} 1
state_root_computation_duration_seconds_bucket{group="0",le="0.01"} 1
state_root_computation_duration_seconds_bucket{group="0",le="0.025"} 1
state_root_computation_duration_seconds_bucket{group="0",le="0.05"} 1
state_root_computation_duration_seconds_bucket{group="0",le="0.1"} 1
state_root_computation_duration_seconds_bucket{group="0",le="0.25"} 1
state_root_computation_duration_seconds_bucket{group="0",le="0.5"} 1
state_root_computation_duration_seconds_bucket{group="0",le="1"} 1
state_root_computation_duration_seconds_bucket{group="0",le="2.5"} 1
state_root_computation_duration_seconds_bucket{group="0",le="5"} 1
state_root_computation_duration_seconds_bucket{group="0",le="10"} 1
state_root_computation_duration_seconds_bucket{group="0",le="30"} 1
state_root_computation_duration_seconds_bucket{group="0",le="60"} 1
state_root_computation_duration_seconds_bucket{group="0",le="+Inf"} 1
state_root_computation_duration_seconds_sum{group="0"} 0.002
state_root_computation_duration_seconds_count{group="0"} 1
state_root_computation_duration_seconds_bucket{group="2",le="0.0001"} 0
state_root_computation_duration_seconds_bucket{group="2",le="0.00025"} 0
state_root_computation_duration_seconds_bucket{group="2",le="0.0005"} 0
state_root_computation_duration_seconds_bucket{group="2",le="0.001"} 0
state_root_computation_duration_seconds_bucket{group="2",le="0.0025"} 0
state_root_computation_duration_seconds_bucket{group="2",le="0.005"} 1
state_root_computation_duration_seconds_bucket{group="2",le="0.01"} 1
state_root_computation_duration_seconds_bucket{group="2",le="0.025"} 1
state_root_computation_duration_seconds_bucket{group="2",le="0.05"} 1
state_root_computation_duration_seconds_bucket{group="2",le="0.1"} 1
state_root_computation_duration_seconds_bucket{group="2",le="0.25"} 1
state_root_computation_duration_seconds_bucket{group="2",le="0.5"} 1
state_root_computation_duration_seconds_bucket{group="2",le="1"} 1
state_root_computation_duration_seconds_bucket{group="2",le="2.5"} 1
state_root_computation_duration_seconds_bucket{group="2",le="5"} 1
state_root_computation_duration_seconds_bucket{group="2",le="10"} 1
state_root_computation_duration_seconds_bucket{group="2",le="30"} 1
state_root_computation_duration_seconds_bucket{group="2",le="60"} 1
state_root_computation_duration_seconds_bucket{group="2",le="+Inf"} 1
state_root_computation_duration_seconds_sum{group="2"} 0.004001
state_root_computation_duration_seconds_count{group="2"} 1
# HELP state_root_divergence_total Scopes found diverged when applying (SPEC §8.4).
# TYPE state_root_divergence_total counter
state_root_divergence_total{group="0"} 1
state_root_divergence_total{group="2"} 2
# HELP state_tree_keys Committed rows (state tree leaves).
# TYPE state_tree_keys gauge
state_tree_keys{namespace="1",vault="7"} 42
state_tree_keys{namespace="1",vault="8"} 42
state_tree_keys{namespace="1",vault="9"} 84
state_tree_keys{namespace="1",vault="10"} 84
# HELP timeout_commits_total Rounds closed by batch_max_delay_ms.
# TYPE timeout_commits_total counter
timeout_commits_total{group="0"} 1
timeout_commits_total{group="2"} 1
# HELP vault_health Local scopes in each health state.
# TYPE vault_health gauge
vault_health{state="healthy"} 6
vault_health{state="diverged"} 1
vault_health{state="recovering"} 2
# HELP vault_health_ratio Healthy local scopes / all local scopes (1.0 when none).
# TYPE vault_health_ratio gauge
vault_health_ratio 0.6666666666666666
# HELP vault_recovery_attempts_total Recovery attempts of the vault on this node since it started.
# TYPE vault_recovery_attempts_total counter
vault_recovery_attempts_total{namespace="1",vault="7"} 1
vault_recovery_attempts_total{namespace="1",vault="8"} 1
vault_recovery_attempts_total{namespace="1",vault="9"} 1
vault_recovery_attempts_total{namespace="1",vault="10"} 1
# HELP vault_recovery_exhausted 1 if the vault's recovery gave up.
# TYPE vault_recovery_exhausted gauge
vault_recovery_exhausted{namespace="1",vault="7"} 0
vault_recovery_exhausted{namespace="1",vault="8"} 1
vault_recovery_exhausted{namespace="1",vault="9"} 0
vault_recovery_exhausted{namespace="1",vault="10"} 1
# HELP vault_recovery_success_total Recoveries of the vault on this node that ended Healthy, since it started.
# TYPE vault_recovery_success_total counter
vault_recovery_success_total{namespace="1",vault="7"} 0
vault_recovery_success_total{namespace="1",vault="8"} 0
vault_recovery_success_total{namespace="1",vault="9"} 0
vault_recovery_success_total{namespace="1",vault="10"} 0
# HELP write_latency_ms Write latency including batch wait (router-observed), last 60 s quantiles.
# TYPE write_latency_ms summary
write_latency_ms{quantile="0.5"} 6.003
write_latency_ms{quantile="0.95"} 7.003
write_latency_ms{quantile="0.99"} 7.003
write_latency_ms_sum 23
write_latency_ms_count 4
# HELP write_raft_latency_ms Block latency from proposal to applied, last 60 s quantiles.
# TYPE write_raft_latency_ms summary
write_raft_latency_ms{quantile="0.5"} 4.001
write_raft_latency_ms{quantile="0.95"} 8.003
write_raft_latency_ms{quantile="0.99"} 8.003
write_raft_latency_ms_sum 12
write_raft_latency_ms_count 2
# HELP writes_per_second Writes answered per second over the last 60 s.
# TYPE writes_per_second gauge
writes_per_second 0.13333333333333333
"#;
}
