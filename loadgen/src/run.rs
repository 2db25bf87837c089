//! One load run end to end: connect, set up scopes, preload, start `connections × pipeline`
//! workers together, let them run through warm-up and the measured window, and merge what they
//! recorded. Worker `w` (connection `w / pipeline`) draws its operations from `Workload(seed, w)`
//! and writes under client id `<run id>-w<w>`. A watchdog stops the run with an error when every
//! request has failed for `ALL_FAILING_WINDOW`.

use crate::cli::Args;
use crate::conn_slot::{watch_all_failing, ConnSlot, Health};
use crate::constants::ALL_FAILING_WINDOW;
use crate::error::LoadgenError;
use crate::exec::{Executor, Success};
use crate::mix::OpKind;
use crate::preload::{preload, PreloadPlan};
use crate::scopes::{ensure_scopes, Scope};
use crate::stats::Recorder;
use crate::timeline::{Schedule, Timeline};
use crate::workload::{Shape, Workload};
use ledger_wire::{Client, ClientOptions, ClientTls};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Delay between "all workers ready" and `t0`, so every worker is parked on the start signal.
const START_DELAY: Duration = Duration::from_millis(20);

/// What a run produced.
pub struct RunOutput {
    pub stats: Recorder,
    pub scopes: Vec<Scope>,
    pub measured: Duration,
}

/// A run id unique enough to keep client ids of different runs apart (sequences are per id).
pub fn run_id() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("lg-{:x}-{:x}", std::process::id(), nanos & 0xffff_ffff_ffff)
}

async fn connect_all(args: &Args) -> Result<Vec<Client>, LoadgenError> {
    connect_n(args, args.connections).await
}

/// `count` connections, spread over `--addr` round-robin.
pub async fn connect_n(args: &Args, count: u64) -> Result<Vec<Client>, LoadgenError> {
    connect_hinted(args, count, |_| None).await
}

/// [`connect_n`], connection `c` naming namespace `hint(c)` in its Hello (D53).
async fn connect_hinted(
    args: &Args,
    count: u64,
    hint: impl Fn(u64) -> Option<i64>,
) -> Result<Vec<Client>, LoadgenError> {
    let credential = match &args.token_file {
        Some(path) => Some(ledger_wire::client::read_token_file(path).map_err(LoadgenError::TokenFile)?),
        None => None,
    };
    // Each node's certificate is checked against the IP address connected to.
    let tls = match &args.tls_ca {
        Some(ca) => {
            let identity = args.tls_cert.as_deref().zip(args.tls_key.as_deref());
            Some(ClientTls::from_files(ca, identity)?)
        }
        None => None,
    };
    let options = ClientOptions {
        credential,
        client_name: format!("ledger-loadgen/{}", env!("CARGO_PKG_VERSION")),
        follow_leaders: args.routing == crate::cli::Routing::Leader,
        tls,
        ..ClientOptions::default()
    };
    let mut clients = Vec::new();
    for c in 0..count {
        let addr = &args.addr.0[usize::try_from(c).unwrap_or(0) % args.addr.0.len()];
        let options = ClientOptions { namespace_hint: hint(c), ..options.clone() };
        let client = Client::connect(addr.as_str(), options)
            .await
            .map_err(|source| LoadgenError::Connect { addr: addr.clone(), source })?;
        clients.push(client);
    }
    Ok(clients)
}

/// Performs the run described by `args`; progress goes to stderr.
pub async fn run(args: &Args) -> Result<RunOutput, LoadgenError> {
    let run_id = run_id();
    let (clients, scopes) = connect_with_scopes(args).await?;
    preload_scopes(args, &clients, &scopes, &run_id).await?;

    let scopes = Arc::new(scopes);
    let (start_tx, start_rx) = watch::channel::<Option<Timeline>>(None);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<Result<(), LoadgenError>>(64);
    let health = Arc::new(Health::default());
    let shared = WorkerShared {
        run_id: &run_id,
        scopes: &scopes,
        health: &health,
        start_rx: &start_rx,
        ready_tx: &ready_tx,
    };
    let tasks = spawn_workers(args, &clients, shared).await;
    drop(ready_tx);
    wait_until_ready(&mut ready_rx, &tasks).await?;
    start_workers(args, &start_tx, tasks.len());
    let stats = collect_stats(tasks, &health).await?;
    Ok(RunOutput { stats, scopes: scopes.to_vec(), measured: args.duration })
}

/// The `--connections` clients and the scopes they write to, created if missing; with
/// `--scope-per-connection` the clients connect again, each naming its scope's namespace.
async fn connect_with_scopes(args: &Args) -> Result<(Vec<Client>, Vec<Scope>), LoadgenError> {
    let mut clients = connect_all(args).await?;
    let scopes = ensure_scopes(&clients[0], args.namespaces, args.vaults_per_ns).await?;
    if args.scope_per_connection {
        // Reconnected now that the namespaces' ids are known, each naming its connection's.
        let count = scopes.len() as u64;
        clients = connect_hinted(args, args.connections, |c| {
            scopes.get(usize::try_from(c % count).unwrap_or(0)).map(|s| s.namespace_id)
        })
        .await?;
    }
    Ok((clients, scopes))
}

/// Writes `--key-space` keys into every scope before the clock starts, saying so on stderr.
async fn preload_scopes(
    args: &Args,
    clients: &[Client],
    scopes: &[Scope],
    run_id: &str,
) -> Result<(), LoadgenError> {
    eprintln!("ledger-loadgen: {} scope(s) ready; preloading {} keys each", scopes.len(), args.key_space);
    let started = Instant::now();
    let plan = PreloadPlan {
        key_space: args.key_space,
        value_size: args.value_size,
        seed: args.seed,
        client_id_prefix: format!("{run_id}-preload"),
    };
    let keys = preload(clients, scopes, plan).await?;
    eprintln!("ledger-loadgen: preloaded {keys} keys in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// What every worker of a run shares: the run id, the scopes, the failure watch, and the
/// channels that say "ready" to the run and "start" to the workers.
struct WorkerShared<'a> {
    run_id: &'a str,
    scopes: &'a Arc<Vec<Scope>>,
    health: &'a Arc<Health>,
    start_rx: &'a watch::Receiver<Option<Timeline>>,
    ready_tx: &'a tokio::sync::mpsc::Sender<Result<(), LoadgenError>>,
}

/// Spawns `--pipeline` workers per client, worker `w` on connection `w / pipeline`, each with
/// its own executor and workload; with an open loop the workers of a connection share its
/// schedule.
async fn spawn_workers(
    args: &Args,
    clients: &[Client],
    shared: WorkerShared<'_>,
) -> Vec<tokio::task::JoinHandle<Recorder>> {
    let shape = Shape {
        scopes: shared.scopes.len() as u64,
        key_space: args.key_space,
        batch_items: args.batch_items,
        mix: args.mix,
    };
    let mut tasks = Vec::with_capacity(usize::try_from(args.workers()).unwrap_or(0));
    for (c, client) in clients.iter().enumerate() {
        let schedule =
            args.open_loop().then(|| Arc::new(Schedule::new(args.rate as f64 / args.connections as f64)));
        let conn = Arc::new(ConnSlot::new(c, client.clone()));
        for slot in 0..args.pipeline {
            let worker = c as u64 * args.pipeline + slot;
            let executor = Executor::new(
                Arc::clone(&conn),
                Arc::clone(shared.scopes),
                format!("{}-w{worker}", shared.run_id),
                args.consistency.to_wire(),
                usize::try_from(args.value_size).unwrap_or(usize::MAX),
                args.seed ^ worker,
                Arc::clone(shared.health),
            )
            .await;
            let workload = Workload::new(args.seed, worker, shape);
            let workload =
                if args.scope_per_connection { workload.pinned(c as u64 % shape.scopes) } else { workload };
            let writes = args.mix.weight(OpKind::Write) > 0;
            let (schedule, start_rx, ready_tx) =
                (schedule.clone(), shared.start_rx.clone(), shared.ready_tx.clone());
            tasks.push(tokio::spawn(worker_task(executor, workload, writes, schedule, start_rx, ready_tx)));
        }
    }
    tasks
}

/// One worker: gets its write sequences ready (if the mix writes), says so, waits for the
/// start signal, then drives its workload. A failed preparation is sent as the error instead.
async fn worker_task(
    mut executor: Executor,
    workload: Workload,
    writes: bool,
    schedule: Option<Arc<Schedule>>,
    mut start_rx: watch::Receiver<Option<Timeline>>,
    ready_tx: tokio::sync::mpsc::Sender<Result<(), LoadgenError>>,
) -> Recorder {
    if writes {
        if let Err(source) = executor.prepare_writes().await {
            let _ =
                ready_tx.send(Err(LoadgenError::Setup { step: "syncing sequences".into(), source })).await;
            return Recorder::new();
        }
    }
    let _ = ready_tx.send(Ok(())).await;
    drop(ready_tx);
    let timeline = match start_rx.wait_for(Option::is_some).await {
        Ok(t) => (*t).unwrap_or_else(|| unreachable!("waited for Some")),
        Err(_) => return Recorder::new(),
    };
    drive(executor, workload, timeline, schedule.as_deref()).await
}

/// Waits until every worker is ready; the first that failed to get ready aborts them all and
/// its error is the run's.
async fn wait_until_ready(
    ready_rx: &mut tokio::sync::mpsc::Receiver<Result<(), LoadgenError>>,
    tasks: &[tokio::task::JoinHandle<Recorder>],
) -> Result<(), LoadgenError> {
    while let Some(ready) = ready_rx.recv().await {
        if let Err(e) = ready {
            for task in tasks {
                task.abort();
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Sends the workers the timeline (warm-up, then the measured window) starting `START_DELAY`
/// from now, and says so on stderr.
fn start_workers(args: &Args, start_tx: &watch::Sender<Option<Timeline>>, workers: usize) {
    let timeline = Timeline::new(Instant::now() + START_DELAY, args.warmup, args.duration);
    let _ = start_tx.send(Some(timeline));
    eprintln!(
        "ledger-loadgen: {} worker(s) running: {} warm-up + {} measured",
        workers,
        crate::duration::format_duration(args.warmup),
        crate::duration::format_duration(args.duration)
    );
}

/// Merges what every worker recorded, unless the watchdog sees every request failing for
/// `ALL_FAILING_WINDOW` first: then the workers are aborted and the run fails.
async fn collect_stats(
    tasks: Vec<tokio::task::JoinHandle<Recorder>>,
    health: &Health,
) -> Result<Recorder, LoadgenError> {
    let aborts: Vec<_> = tasks.iter().map(|task| task.abort_handle()).collect();
    let workers = async {
        let mut stats = Recorder::new();
        for task in tasks {
            let recorded = task.await.map_err(|e| LoadgenError::Worker { message: e.to_string() })?;
            stats.merge(&recorded);
        }
        Ok::<_, LoadgenError>(stats)
    };
    let stats = tokio::select! {
        stats = workers => stats?,
        stop = watch_all_failing(health, ALL_FAILING_WINDOW) => {
            for abort in aborts {
                abort.abort();
            }
            return Err(LoadgenError::AllFailing {
                window_secs: stop.window.as_secs_f64(),
                failed: stop.failed,
                last_error: stop.last_error,
            });
        }
    };
    Ok(stats)
}

/// The loop of one worker: issue, time, record (measured window only), until the end.
pub async fn drive(
    mut executor: Executor,
    mut workload: Workload,
    timeline: Timeline,
    schedule: Option<&Schedule>,
) -> Recorder {
    let mut recorder = Recorder::new();
    executor.set_deadline(timeline.end);
    tokio::time::sleep_until(tokio::time::Instant::from_std(timeline.t0)).await;
    loop {
        let start = match schedule {
            Some(schedule) => {
                let due = schedule.claim(timeline.t0);
                if due >= timeline.end {
                    break;
                }
                tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
                due
            }
            None => {
                let now = Instant::now();
                if now >= timeline.end {
                    break;
                }
                now
            }
        };
        let op = workload.next_op();
        let result = executor.execute(&op).await;
        if timeline.is_measured(start) {
            let stats = recorder.op_mut(op.kind());
            match result {
                Ok(success) => {
                    stats.record_ok(start.elapsed());
                    if success == Success::Miss {
                        stats.misses += 1;
                    }
                }
                Err(code) => stats.record_error(&code),
            }
        }
    }
    recorder
}
