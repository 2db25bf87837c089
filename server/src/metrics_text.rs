//! Turns the cores' metrics snapshots into the Prometheus text exposition (format 0.0.4, SPEC
//! §11.3) with the `prometheus` crate's data model and `TextEncoder` (D40): families are built
//! here at scrape time from plain numbers and hdrhistograms, so the cores never touch the crate.
//! Histograms become cumulative buckets at fixed bounds; summaries carry quantiles of the last
//! 60 s and cumulative counts and sums.

use hdrhistogram::Histogram;
use ledger_shard::metrics::{CodecSnapshot, CoreSnapshot, HealthState, LatencySnapshot, ProofKind};
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

fn add_requests(f: &mut Families, cores: &[CoreSnapshot], uptime: Duration) {
    let mut ops: BTreeMap<&'static str, (BTreeMap<&'static str, u64>, LatencySnapshot)> = BTreeMap::new();
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
    let mut all = LatencySnapshot::empty();
    let mut reads = LatencySnapshot::empty();
    let mut writes = LatencySnapshot::empty();
    for (op, (statuses, latency)) in &ops {
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
    add_quantile_gauges(f, "all", &all.window);
    f.summary_ms(
        "read_latency_ms",
        "Read latency (client-observed at the router), last 60 s quantiles.",
        &reads,
    );
    f.summary_ms(
        "write_latency_ms",
        "Write latency including batch wait (router-observed), last 60 s quantiles.",
        &writes,
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
    let window = uptime.as_secs_f64().clamp(1.0, WINDOW_SECS);
    f.gauge(
        "reads_per_second",
        "Reads answered per second over the last 60 s.",
        &[],
        reads.window.len() as f64 / window,
    );
    f.gauge(
        "writes_per_second",
        "Writes answered per second over the last 60 s.",
        &[],
        writes.window.len() as f64 / window,
    );
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
    let wire = CodecSnapshot {
        encode_us: encode.total,
        encode_sum_us: encode.sum_us,
        decode_us: decode.total,
        decode_sum_us: decode.sum_us,
        bytes_out_sum: mean_sum(&bytes_out, 1.0) as u64,
        bytes_out,
        bytes_in_sum: mean_sum(&bytes_in, 1.0) as u64,
        bytes_in,
    };
    let mut log = CodecSnapshot::empty();
    let mut snapshot = CodecSnapshot::empty();
    let mut proofs: Vec<(ProofKind, Histogram<u64>, u64)> =
        ProofKind::ALL.iter().map(|k| (*k, ledger_shard::metrics::histogram(), 0)).collect();
    for core in cores {
        log.merge(&core.counters.log_codec);
        snapshot.merge(&core.counters.snapshot_codec);
        for ((_, total, sum), (_, h, s)) in proofs.iter_mut().zip(&core.counters.proofs) {
            let _ = total.add(h);
            *sum += s;
        }
    }
    add_codec(f, "wire", &wire);
    add_codec(f, "log", &log);
    add_codec(f, "snapshot", &snapshot);
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

fn add_groups(f: &mut Families, cores: &[CoreSnapshot], node_id: u64) {
    for core in cores {
        for g in &core.groups {
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
            f.gauge(
                "raft_leader",
                "1 if this node leads the group.",
                &group,
                if g.leader { 1.0 } else { 0.0 },
            );
            let lag_help =
                "Blocks (log entries) behind: leader: its last index minus the follower's matched \
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
            f.gauge(
                "raft_proposals_pending",
                "Transactions queued for the next block.",
                &group,
                g.pending as f64,
            );
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
        for g in &core.counters.groups {
            let group = [("group", g.group.to_string())];
            f.counter(
                "raft_proposals_total",
                "Blocks proposed by this node as leader.",
                &group,
                g.proposals as f64,
            );
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
            f.counter(
                "size_commits_total",
                "Rounds closed full (batch_max_size).",
                &group,
                g.size_commits as f64,
            );
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
            f.counter(
                "snapshots_created_total",
                "Snapshot files written.",
                &group,
                g.snapshots_created as f64,
            );
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
    }
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
}
