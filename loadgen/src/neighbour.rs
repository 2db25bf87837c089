//! The noisy-neighbour scenario (`--noisy-neighbour`, SPEC §8.9, issue 17 item 3): two
//! namespaces on the same cluster. The quiet one (`loadgen-0`) runs the `--mix` from
//! `--connections × --pipeline` workers (open loop at `--rate`, or closed loop); the noisy one
//! (`loadgen-1`) is flooded with single writes by `--noisy-connections × --pipeline` workers that
//! neither retry nor back off. The quiet load runs twice, alone and then beside the flood (each
//! phase with its own warm-up), and the report puts its latencies side by side with their ratio.

use crate::cli::Args;
use crate::error::LoadgenError;
use crate::exec::Executor;
use crate::mix::{Mix, OpKind};
use crate::preload::{preload, PreloadPlan};
use crate::run::{connect_n, drive, run_id};
use crate::scopes::{ensure_scopes, Scope};
use crate::stats::Recorder;
use crate::timeline::{Schedule, Timeline};
use crate::workload::{Shape, Workload};
use ledger_wire::Client;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Pause between "every worker is ready" and the phase's start.
const START_DELAY: Duration = Duration::from_millis(20);

/// What the scenario measured.
pub struct NeighbourOutput {
    pub quiet: Scope,
    pub noisy: Scope,
    /// The quiet namespace's load alone.
    pub alone: Recorder,
    /// The same load beside the flood.
    pub shared: Recorder,
    /// The flood (writes only).
    pub flood: Recorder,
}

/// One group of workers of a phase.
struct Crowd<'a> {
    clients: &'a [Client],
    scope: Scope,
    mix: Mix,
    /// Total ops/s of the crowd (open loop); `None` = closed loop.
    rate: Option<f64>,
    paced: bool,
    tag: &'static str,
}

/// Runs both phases; progress goes to stderr.
pub async fn run(args: &Args) -> Result<NeighbourOutput, LoadgenError> {
    let run_id = run_id();
    let quiet_clients = connect_n(args, args.connections).await?;
    let noisy_clients = connect_n(args, args.noisy_connections).await?;
    let scopes = ensure_scopes(&quiet_clients[0], 2, 1).await?;
    let (quiet, noisy) = (scopes[0], scopes[1]);
    eprintln!(
        "ledger-loadgen: noisy neighbour: quiet namespace {} (vault {}), noisy namespace {} (vault {}); preloading {} keys in the quiet one",
        quiet.namespace_id, quiet.vault_id, noisy.namespace_id, noisy.vault_id, args.key_space
    );
    let plan = PreloadPlan {
        key_space: args.key_space,
        value_size: args.value_size,
        seed: args.seed,
        client_id_prefix: format!("{run_id}-preload"),
    };
    preload(&quiet_clients, &[quiet], plan).await?;
    let flood_mix = Mix::parse("write=1")?;
    let quiet_crowd = |tag| Crowd {
        clients: &quiet_clients,
        scope: quiet,
        mix: args.mix,
        rate: args.open_loop().then_some(args.rate as f64),
        paced: true,
        tag,
    };
    eprintln!("ledger-loadgen: phase 1: the quiet namespace alone");
    let mut alone = phase(args, &format!("{run_id}-alone"), vec![quiet_crowd("q")]).await?;
    eprintln!("ledger-loadgen: phase 2: the quiet namespace beside the flood");
    let flood =
        Crowd { clients: &noisy_clients, scope: noisy, mix: flood_mix, rate: None, paced: false, tag: "n" };
    let mut shared = phase(args, &format!("{run_id}-shared"), vec![quiet_crowd("q"), flood]).await?;
    let flood = shared.pop().unwrap_or_default();
    Ok(NeighbourOutput {
        quiet,
        noisy,
        alone: alone.pop().unwrap_or_default(),
        shared: shared.pop().unwrap_or_default(),
        flood,
    })
}

/// Runs the crowds together through one warm-up and measured window; one `Recorder` per crowd.
async fn phase(args: &Args, id: &str, crowds: Vec<Crowd<'_>>) -> Result<Vec<Recorder>, LoadgenError> {
    let (start_tx, start_rx) = tokio::sync::watch::channel::<Option<Timeline>>(None);
    let mut per_crowd = Vec::new();
    for crowd in &crowds {
        let scopes = Arc::new(vec![crowd.scope]);
        let shape =
            Shape { scopes: 1, key_space: args.key_space, batch_items: args.batch_items, mix: crowd.mix };
        let mut tasks = Vec::new();
        for (c, client) in crowd.clients.iter().enumerate() {
            let schedule =
                crowd.rate.map(|rate| Arc::new(Schedule::new(rate / crowd.clients.len().max(1) as f64)));
            let conn = Arc::new(crate::conn_slot::ConnSlot::new(c, client.clone()));
            for slot in 0..args.pipeline {
                let worker = c as u64 * args.pipeline + slot;
                let mut executor = Executor::new(
                    Arc::clone(&conn),
                    Arc::clone(&scopes),
                    format!("{id}-{}{worker}", crowd.tag),
                    args.consistency.to_wire(),
                    usize::try_from(args.value_size).unwrap_or(usize::MAX),
                    args.seed ^ worker,
                    Arc::new(crate::conn_slot::Health::default()),
                )
                .await;
                if !crowd.paced {
                    executor = executor.unpaced();
                }
                executor
                    .prepare_writes()
                    .await
                    .map_err(|source| LoadgenError::Setup { step: "syncing sequences".into(), source })?;
                let workload = Workload::new(args.seed, worker, shape);
                let (schedule, mut start_rx) = (schedule.clone(), start_rx.clone());
                tasks.push(tokio::spawn(async move {
                    let timeline = match start_rx.wait_for(Option::is_some).await {
                        Ok(t) => (*t).unwrap_or_else(|| unreachable!("waited for Some")),
                        Err(_) => return Recorder::new(),
                    };
                    drive(executor, workload, timeline, schedule.as_deref()).await
                }));
            }
        }
        per_crowd.push(tasks);
    }
    let _ = start_tx.send(Some(Timeline::new(Instant::now() + START_DELAY, args.warmup, args.duration)));
    let mut out = Vec::new();
    for tasks in per_crowd {
        let mut stats = Recorder::new();
        for task in tasks {
            let recorded = task.await.map_err(|e| LoadgenError::Worker { message: e.to_string() })?;
            stats.merge(&recorded);
        }
        out.push(stats);
    }
    Ok(out)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The text report: the quiet namespace's latencies alone and beside the flood per operation,
/// the p99 ratio, and what the flood got.
pub fn to_text(args: &Args, out: &NeighbourOutput, machine: &crate::machine::MachineInfo) -> String {
    let mut s = String::new();
    let secs = args.duration.as_secs_f64();
    let mode =
        if args.open_loop() { format!("open loop at {} ops/s", args.rate) } else { "closed loop".into() };
    let _ = writeln!(
        s,
        "ledger-loadgen noisy neighbour: quiet namespace {} ({} conn × {} pipeline, {}, mix {}), noisy namespace {} ({} conn × {} pipeline, closed-loop writes, no retry, no backoff); each phase {} measured after {} warm-up; latencies in ms",
        out.quiet.namespace_id,
        args.connections,
        args.pipeline,
        mode,
        args.mix,
        out.noisy.namespace_id,
        args.noisy_connections,
        args.pipeline,
        crate::duration::format_duration(args.duration),
        crate::duration::format_duration(args.warmup),
    );
    let _ = writeln!(
        s,
        "{:<14} {:<7} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "phase", "op", "count", "ops/s", "p50", "p99", "p99.9", "max", "errors"
    );
    let mut row = |phase: &str, kind: OpKind, rec: &Recorder| {
        let st = rec.op(kind);
        let h = &st.latency_us;
        let _ = writeln!(
            s,
            "{:<14} {:<7} {:>9} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8}",
            phase,
            kind.name(),
            st.ok_count(),
            st.ok_count() as f64 / secs,
            ms(h.value_at_quantile(0.50)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            ms(h.max()),
            st.error_count()
        );
    };
    for kind in args.mix.active() {
        row("quiet alone", kind, &out.alone);
        row("quiet+flood", kind, &out.shared);
    }
    row("flood", OpKind::Write, &out.flood);
    for kind in args.mix.active() {
        let (a, b) = (
            out.alone.op(kind).latency_us.value_at_quantile(0.99),
            out.shared.op(kind).latency_us.value_at_quantile(0.99),
        );
        if a > 0 {
            let _ =
                writeln!(s, "quiet {} p99 beside the flood: {:.2}x alone", kind.name(), b as f64 / a as f64);
        }
    }
    for (phase, rec) in [("quiet alone", &out.alone), ("quiet+flood", &out.shared), ("flood", &out.flood)] {
        for kind in OpKind::ALL {
            let st = rec.op(kind);
            if !st.errors.is_empty() {
                let codes: Vec<String> = st.errors.iter().map(|(c, n)| format!("{c}={n}")).collect();
                let _ = writeln!(s, "errors {phase} {}: {}", kind.name(), codes.join(", "));
            }
        }
    }
    let _ = writeln!(s, "machine: {} cpu(s), {}", machine.cpus, machine.model);
    s
}
