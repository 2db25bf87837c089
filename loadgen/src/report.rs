//! The run report: one JSON object (`--report json`, shape documented in docs/benchmarks.md) or a
//! text table (`--report text`). Both are built from the merged `Recorder` of the measured window
//! only; warm-up samples never reach it.

use crate::cli::Args;
use crate::duration::format_duration;
use crate::machine::MachineInfo;
use crate::mix::OpKind;
use crate::stats::{OpStats, Recorder};
use serde_json::{json, Map, Value};
use std::fmt::Write as _;
use std::time::Duration;

/// Quantiles reported per operation, with their JSON names.
pub const QUANTILES: [(&str, f64); 4] = [("p50", 0.50), ("p95", 0.95), ("p99", 0.99), ("p999", 0.999)];

/// Everything a report needs.
pub struct Report<'a> {
    pub args: &'a Args,
    pub machine: &'a MachineInfo,
    /// Length of the measured window (warm-up excluded).
    pub measured: Duration,
    pub stats: &'a Recorder,
    /// Scopes the run used, as `(namespace_id, vault_id)`.
    pub scopes: &'a [(i64, i64)],
}

fn per_second(count: u64, window: Duration) -> f64 {
    let secs = window.as_secs_f64();
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl Report<'_> {
    fn op_json(&self, kind: OpKind, stats: &OpStats) -> Value {
        let h = &stats.latency_us;
        let ok = stats.ok_count();
        let mut latency = Map::new();
        for (name, q) in QUANTILES {
            latency.insert(name.to_string(), json!(h.value_at_quantile(q)));
        }
        latency.insert("max".into(), json!(h.max()));
        latency.insert("mean".into(), json!(round2(h.mean())));
        let mut out = Map::new();
        out.insert("count".into(), json!(ok));
        out.insert("misses".into(), json!(stats.misses));
        out.insert("errors_total".into(), json!(stats.error_count()));
        out.insert("errors".into(), json!(stats.errors));
        out.insert("ops_per_s".into(), json!(round2(per_second(ok, self.measured))));
        if kind == OpKind::Write {
            out.insert("tx_per_s".into(), json!(round2(per_second(ok, self.measured))));
            let entities = ok.saturating_mul(self.args.batch_items);
            out.insert("entity_writes_per_s".into(), json!(round2(per_second(entities, self.measured))));
        }
        out.insert("latency_us".into(), Value::Object(latency));
        Value::Object(out)
    }

    /// The JSON report (one object).
    pub fn to_json(&self) -> Value {
        let a = self.args;
        let mut ops = Map::new();
        let (mut ok_total, mut err_total) = (0u64, 0u64);
        for kind in a.mix.active() {
            let stats = self.stats.op(kind);
            ok_total += stats.ok_count();
            err_total += stats.error_count();
            ops.insert(kind.name().into(), self.op_json(kind, stats));
        }
        let mix: Map<String, Value> =
            OpKind::ALL.iter().map(|k| (k.name().to_string(), json!(a.mix.weight(*k)))).collect();
        json!({
            "tool": "ledger-loadgen",
            "version": env!("CARGO_PKG_VERSION"),
            "machine": { "cpus": self.machine.cpus, "model": self.machine.model },
            "config": {
                "addr": a.addr.0,
                "namespaces": a.namespaces,
                "vaults_per_ns": a.vaults_per_ns,
                "connections": a.connections,
                "pipeline": a.pipeline,
                "batch_items": a.batch_items,
                "duration_s": a.duration.as_secs_f64(),
                "warmup_s": a.warmup.as_secs_f64(),
                "rate": a.rate,
                "mode": if a.open_loop() { "open" } else { "closed" },
                "mix": mix,
                "key_space": a.key_space,
                "value_size": a.value_size,
                "consistency": a.consistency.name(),
                "seed": a.seed,
                "routing": if a.routing == crate::cli::Routing::Leader { "leader" } else { "forward" },
            },
            "scopes": self.scopes.iter().map(|(ns, v)| json!([ns, v])).collect::<Vec<_>>(),
            "measured_s": self.measured.as_secs_f64(),
            "ops": ops,
            "total": {
                "count": ok_total,
                "errors_total": err_total,
                "ops_per_s": round2(per_second(ok_total, self.measured)),
            },
        })
    }

    /// The text report: a header, one row per operation, the error codes, and the machine line.
    pub fn to_text(&self) -> String {
        let a = self.args;
        let mut s = String::new();
        let mode =
            if a.open_loop() { format!("open loop at {} ops/s", a.rate) } else { "closed loop".into() };
        let _ = writeln!(
            s,
            "ledger-loadgen: {} scope(s), {} conn × {} pipeline, batch {}, {}, mix {}, {} keys × {} B, {}, seed {}, routing {}",
            self.scopes.len(),
            a.connections,
            a.pipeline,
            a.batch_items,
            mode,
            a.mix,
            a.key_space,
            a.value_size,
            a.consistency.name(),
            a.seed,
            if a.routing == crate::cli::Routing::Leader { "leader" } else { "forward" }
        );
        let _ = writeln!(
            s,
            "measured {} after {} warm-up (latencies in µs; successes only)",
            format_duration(self.measured),
            format_duration(a.warmup)
        );
        let _ = writeln!(
            s,
            "{:<9} {:>10} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>8}",
            "op", "count", "ops/s", "p50", "p95", "p99", "p99.9", "max", "entities/s", "errors"
        );
        for kind in a.mix.active() {
            let st = self.stats.op(kind);
            let h = &st.latency_us;
            let entities = if kind == OpKind::Write {
                format!("{:.0}", per_second(st.ok_count().saturating_mul(a.batch_items), self.measured))
            } else {
                "-".into()
            };
            let _ = writeln!(
                s,
                "{:<9} {:>10} {:>11.0} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>8}",
                kind.name(),
                st.ok_count(),
                per_second(st.ok_count(), self.measured),
                h.value_at_quantile(0.50),
                h.value_at_quantile(0.95),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max(),
                entities,
                st.error_count()
            );
        }
        for kind in a.mix.active() {
            let st = self.stats.op(kind);
            if st.misses > 0 {
                let _ = writeln!(s, "misses {}: {} (key absent or empty page)", kind.name(), st.misses);
            }
            if !st.errors.is_empty() {
                let codes: Vec<String> = st.errors.iter().map(|(c, n)| format!("{c}={n}")).collect();
                let _ = writeln!(s, "errors {}: {}", kind.name(), codes.join(", "));
            }
        }
        let _ = writeln!(s, "machine: {} cpu(s), {}", self.machine.cpus, self.machine.model);
        s
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    fn sample_args() -> Args {
        Args::try_parse_from(["ledger-loadgen", "--mix", "read=80,write=20", "--batch-items", "10"]).unwrap()
    }

    fn sample_stats() -> Recorder {
        let mut r = Recorder::new();
        for us in 1..=1000u64 {
            r.read.record_ok(Duration::from_micros(us));
        }
        for _ in 0..50 {
            r.write.record_ok(Duration::from_millis(4));
        }
        r.write.record_error("write:SequenceGap");
        r.read.misses = 4;
        r
    }

    #[test]
    fn t60_json_shape() {
        // Proves the JSON report has the documented keys and types, lists only mixed-in ops, and
        // derives entity writes/s from tx/s × batch-items.
        let args = sample_args();
        let machine = MachineInfo { cpus: 2, model: "Test CPU".into() };
        let stats = sample_stats();
        let report = Report {
            args: &args,
            machine: &machine,
            measured: Duration::from_secs(10),
            stats: &stats,
            scopes: &[(1, 2)],
        };
        let v = report.to_json();
        for key in ["tool", "version", "machine", "config", "scopes", "measured_s", "ops", "total"] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["machine"]["cpus"], 2);
        assert_eq!(v["config"]["mode"], "closed");
        assert_eq!(v["config"]["mix"]["read"], 80);
        assert_eq!(v["config"]["mix"]["list"], 0);
        let ops = v["ops"].as_object().unwrap();
        assert_eq!(ops.keys().collect::<Vec<_>>(), vec!["read", "write"]);
        let read = &v["ops"]["read"];
        assert_eq!(read["count"], 1000);
        assert_eq!(read["misses"], 4);
        assert_eq!(read["ops_per_s"], 100.0);
        for q in ["p50", "p95", "p99", "p999", "max", "mean"] {
            assert!(read["latency_us"][q].is_number(), "latency_us.{q}");
        }
        assert!((499..=501).contains(&read["latency_us"]["p50"].as_u64().unwrap()));
        assert!(read.get("entity_writes_per_s").is_none());
        let write = &v["ops"]["write"];
        assert_eq!(write["tx_per_s"], 5.0);
        assert_eq!(write["entity_writes_per_s"], 50.0);
        assert_eq!(write["errors"]["write:SequenceGap"], 1);
        assert_eq!(write["errors_total"], 1);
        assert_eq!(v["total"]["count"], 1050);
        assert_eq!(v["scopes"][0], json!([1, 2]));
        // One object on one line: it must survive a round trip through text.
        let line = serde_json::to_string(&v).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap(), v);
    }

    #[test]
    fn t61_text_names_the_machine_and_each_op() {
        // Proves the text report has a row per mixed-in op, the error codes and the machine line.
        let args = sample_args();
        let machine = MachineInfo { cpus: 2, model: "Test CPU".into() };
        let stats = sample_stats();
        let report = Report {
            args: &args,
            machine: &machine,
            measured: Duration::from_secs(10),
            stats: &stats,
            scopes: &[(1, 2)],
        };
        let text = report.to_text();
        assert!(text.lines().any(|l| l.starts_with("read ")));
        assert!(text.lines().any(|l| l.starts_with("write ")));
        assert!(!text.lines().any(|l| l.starts_with("list ")));
        assert!(text.contains("errors write: write:SequenceGap=1"));
        assert!(text.contains("misses read: 4"));
        assert!(text.contains("machine: 2 cpu(s), Test CPU"));
    }
}
