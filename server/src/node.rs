//! Starting and stopping one node (SPEC §9.6, §10.9, §11.7): lock the data directory, claim the
//! listen address, load or plan the group placement, start one pinned glommio executor per core
//! running its shard and its router, listen once every shard is ready, serve until
//! SIGINT/SIGTERM, then shut the shards down (each checkpoints durably) and release the lock.

use crate::config::Config;
use crate::data_dir::{DataDir, DataDirError};
use crate::metrics_http;
use crate::node_placement::place_groups;
use glommio::{CpuSet, LocalExecutorBuilder, Placement, PoolPlacement};
use ledger_core::types::{CoreId, GroupId};
use ledger_router::constants::LISTEN_IN_USE_WAIT;
use ledger_router::{ListenError, ListenSocket, ListenerControl, RouterContext, RouterSettings};
use ledger_shard::config::{ClusterPlan, HelperHooks};
use ledger_shard::events::{EventBounds, EventLog};
use ledger_shard::peer::credential::PeerCredential;
use ledger_shard::storage::sim_disk::{CutMode, SimDisk};
use ledger_shard::{ShardConfig, ShardMsg, ShardSpec};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How long a shutdown waits for the shards to checkpoint (SPEC §11.7: in-flight ≤ 10 s).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a stopping cluster node may spend handing its leaderships over (SPEC §11.7).
const STEP_DOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long it may wait for `_system` to record that its stop is planned (D74): a cluster
/// stopped whole has no `_system` quorum left for the last nodes, which should not wait long.
const STOP_NOTICE_TIMEOUT: Duration = Duration::from_secs(3);
/// Exit code of a test server whose simulated power was cut (SIGUSR2, D89): 128 + SIGKILL, as if
/// it had been killed.
pub const POWER_CUT_EXIT_CODE: i32 = 137;
/// How long startup waits for every shard to open its groups and elect itself.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("cannot start executor for core {core}: {message}")]
    Executor { core: usize, message: String },
    #[error("core {0} failed to start (see the log above)")]
    ShardStart(usize),
    #[error("timed out waiting for core {0} to start")]
    StartTimeout(usize),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(transparent)]
    Bootstrap(#[from] crate::bootstrap::BootstrapError),
    #[error("metrics endpoint {addr}: {source}")]
    Metrics { addr: String, source: std::io::Error },
    /// A group's Raft log lives in the log of the core that owns it (D38): a node cannot start
    /// with fewer cores than its data directory has groups placed on.
    #[error("moving group {group}'s Raft log from core {from} to core {to} failed: {source}")]
    GroupMove { group: u32, from: u16, to: u16, source: ledger_shard::ShardError },
    #[error("setting aside the logs of vanished cores failed: {0}")]
    GroupMoveCleanup(String),
    #[error("event log in node.redb: {0}")]
    Events(#[source] ledger_shard::ShardError),
    #[error("TLS: {0}")]
    Tls(#[from] ledger_wire::tls::TlsError),
}

/// The open event log, attached to the process's event layer; detached, written and synced when
/// the node stops, however it stops (its writes are not synced one by one, D39).
struct EventsOpen(Arc<EventLog>);

impl Drop for EventsOpen {
    fn drop(&mut self) {
        ledger_shard::events::attach(None);
        self.0.close();
    }
}

pub fn run_node(config: Config) -> Result<(), NodeError> {
    run_node_with(config, HelperHooks::default(), None)
}

/// Reads `auth_tokens` again from the node's configuration sources (SIGHUP, D42).
pub type ReloadTokens = Box<dyn Fn() -> Result<crate::config::AuthTokens, String>>;

/// [`run_node`] with `helper_hooks` run at the start and end of the state-tree threads (the
/// binary turns its node-block allocator cache on there and hands the cached blocks back at the
/// end, see `node_alloc.rs`). On SIGHUP, `reload` gives the new `auth_tokens`.
pub fn run_node_with(
    config: Config,
    helper_hooks: HelperHooks,
    reload: Option<ReloadTokens>,
) -> Result<(), NodeError> {
    install_fail_stop_panic_hook();
    let signals = block_termination_signals(config.test_sim_disk != "off");
    // Unreadable TLS files stop the node before it takes anything.
    let tls = config.tls.as_ref().map(crate::tls::NodeTls::load).transpose()?;
    let dir = DataDir::open(&config.data_dir)?;
    let events =
        EventsOpen(EventLog::open(dir.node_db(), EventBounds::default()).map_err(NodeError::Events)?);
    ledger_shard::events::attach(Some(events.0.clone()));
    // The address is claimed before any work on the groups, so that a second server on it stops
    // here (D26); clients are refused, not queued, until the listen below.
    let socket = ListenSocket::claim(&config.listen_addr, LISTEN_IN_USE_WAIT)?;
    let listen_addr = socket.local_addr();
    let advertise_addr = config.advertise_addr.clone().unwrap_or_else(|| listen_addr.to_string());
    let mut socket = Some(socket);
    let placed = place_groups(&config, &dir, &mut socket, &advertise_addr, tls.as_ref())?;
    let placement = Arc::new(placed.placement);
    let cluster = placed.plan.map(|p| ClusterPlan {
        members: p.members.into_iter().collect(),
        initializer: p.initializer,
        replication_factor: p.replication_factor,
    });

    let shard_config =
        Arc::new(shard_config(&config, &dir, &advertise_addr, helper_hooks, cluster, &events, tls.as_ref()));
    let settings = Arc::new(router_settings(&config, dir.node_id, &shard_config, tls.as_ref()));
    let auth = Arc::new(config.auth_tokens.table());
    let (cores, ready) = start_cores(&config, &shard_config, &settings, &auth, &placement)?;
    wait_until_ready(ready)?;
    start_listening(placed.early_listeners, socket, &cores.controls)?;
    let metrics = start_metrics(&config, &dir, &cores.inbox_senders, &shard_config)?;
    announce(&config, &dir, listen_addr, metrics);

    if placed.join_after_start {
        crate::bootstrap::join_by_itself(
            crate::discovery::Discovery::from_config(&config),
            dir.node_id,
            advertise_addr.clone(),
            Duration::from_secs(config.bootstrap_poll_secs),
            shard_config.peer_credential.clone(),
            tls.clone(),
        );
    }
    let signal = loop {
        match wait_for_signal(&signals) {
            libc::SIGHUP => reload_tokens(reload.as_deref(), &cores.controls, &shard_config.peer_credential),
            libc::SIGUSR2 => {
                if let Some(disk) = &shard_config.sim_disk {
                    cut_power(disk);
                }
            }
            signal => break signal,
        }
    };
    ledger_shard::event!(info, "node_stopping", signal, "received a termination signal; shutting down");
    shut_down(&shard_config, dir.node_id, cores);
    drop(events);
    drop(dir);
    Ok(())
}

/// The shards' settings, from the node's configuration.
fn shard_config(
    config: &Config,
    dir: &DataDir,
    advertise_addr: &str,
    helper_hooks: HelperHooks,
    cluster: Option<ClusterPlan>,
    events: &EventsOpen,
    tls: Option<&crate::tls::NodeTls>,
) -> ShardConfig {
    ShardConfig {
        node_id: dir.node_id,
        advertise_addr: advertise_addr.to_string(),
        data_dir: dir.root.clone(),
        batch_max_size: config.batch_max_size,
        blocks_in_flight_max: ledger_shard::constants::BLOCKS_IN_FLIGHT_MAX,
        pipeline_tree_changes_min: ledger_shard::constants::PIPELINE_TREE_CHANGES_MIN,
        batch_max_delay_ms: config.batch_max_delay_ms,
        batch_eager_commit: config.batch_eager_commit,
        batch_fill_wait_us: config.batch_fill_wait_us,
        max_ops_per_tx: config.max_ops_per_tx,
        idempotency_cache_entries: config.idempotency_cache_entries,
        rate_limit_rps: config.rate_limit_rps,
        raft_heartbeat_ms: config.raft_heartbeat_ms,
        raft_election_min_ms: config.raft_election_min_ms,
        raft_election_max_ms: config.raft_election_max_ms,
        groups_per_core: config.groups_per_core,
        stream_buffer: config.stream_buffer,
        snapshot_interval_blocks: config.snapshot_interval_blocks,
        snapshot_interval_secs: config.snapshot_interval_secs,
        snapshots_keep: config.snapshots_keep,
        raft_snapshot_logs: config.raft_snapshot_logs,
        raft_log_keep: config.raft_log_keep,
        retention_interval_secs: config.retention_interval_secs,
        helper_hooks,
        tree_thread_min_leaves: ledger_shard::constants::TREE_THREAD_MIN_LEAVES,
        tree_thread_min_changes: ledger_shard::constants::TREE_THREAD_MIN_CHANGES,
        faults: {
            let faults = Arc::new(ledger_shard::faults::Faults::default());
            if config.test_faults {
                faults.enable_peer_faults();
                faults.arm_crash_marker(dir.root.join(ledger_shard::faults::CRASH_MARKER_FILE));
            }
            faults
        },
        storage_counters: Default::default(),
        max_frame_bytes: config.max_frame_bytes,
        cluster,
        replication_factor: config.replication_factor,
        forward_timeout: Duration::from_secs(config.requests_timeout_secs),
        checkpoint_interval_ms: ledger_shard::constants::CHECKPOINT_INTERVAL_MS,
        journal_merge_rows_min: ledger_shard::constants::JOURNAL_MERGE_ROWS_MIN,
        vault_auto_recovery: config.vault_auto_recovery,
        integrity_interval_secs: config.integrity_interval_secs,
        gc_interval_secs: config.gc_interval_secs,
        node_heartbeat_timeout_secs: config.node_heartbeat_timeout_secs,
        replica_release_secs: config.replica_release_secs,
        leader_balance_interval_secs: config.leader_balance_interval_secs,
        learner_cache_ttl: Duration::from_secs(config.learner_cache_ttl_secs),
        learner_refresh: Duration::from_millis(config.learner_refresh_interval_ms),
        discovery_cache_path: Some(config.discovery_cache_path.clone()),
        sim_disk: sim_disk(config),
        events: Some(events.0.clone()),
        peer_credential: Arc::new(PeerCredential::new(config.auth_tokens.peer_secret())),
        peer_tls: tls.and_then(|tls| tls.peer.clone()),
    }
}

/// The routers' settings, from the node's configuration.
fn router_settings(
    config: &Config,
    node_id: u64,
    shard_config: &ShardConfig,
    tls: Option<&crate::tls::NodeTls>,
) -> RouterSettings {
    RouterSettings {
        node_id,
        max_frame_bytes: config.max_frame_bytes,
        max_batch_items: config.max_batch_items,
        requests_max_concurrent: config.requests_max_concurrent,
        idle_timeout: Duration::from_secs(config.idle_timeout_secs),
        requests_timeout: Duration::from_secs(config.requests_timeout_secs),
        handshake_timeout: Duration::from_secs(config.handshake_timeout_secs),
        connection_slots: ledger_router::admission::ConnectionSlots::new(config.max_connections),
        faults: shard_config.faults.clone(),
        tls: tls.map(|tls| tls.server.clone()),
        rate_limit_rps: config.rate_limit_rps,
    }
}

/// The running cores: their inboxes, listener controls and executors.
struct Cores {
    inbox_senders: Vec<flume::Sender<ShardMsg>>,
    controls: Vec<flume::Sender<ListenerControl>>,
    executors: Vec<glommio::ExecutorJoinHandle<()>>,
}

/// A shard's signal that it has opened its groups.
type Ready = futures::channel::oneshot::Receiver<()>;

/// Starts one executor per core, each running its shard (the groups `placement` gives it) and its
/// router; the cores, and their shards' ready signals.
fn start_cores(
    config: &Config,
    shard_config: &Arc<ShardConfig>,
    settings: &Arc<RouterSettings>,
    auth: &Arc<ledger_router::auth::AuthTable>,
    placement: &Arc<BTreeMap<GroupId, CoreId>>,
) -> Result<(Cores, Vec<Ready>), NodeError> {
    let (inbox_senders, inboxes): (Vec<_>, Vec<_>) =
        (0..config.cores).map(|_| flume::bounded::<ShardMsg>(config.core_queue_capacity)).unzip();
    let mut ready_receivers = Vec::new();
    // Every core's listener control, made first: each router may hand a connection to any core's
    // listener (D53).
    let (controls, mut control_receivers): (Vec<_>, Vec<_>) = (0..config.cores)
        .map(|_| flume::unbounded::<ListenerControl>())
        .map(|(tx, rx)| (tx, Some(rx)))
        .unzip();
    let mut executors = Vec::new();
    // Helper threads run on every CPU the process may use (D20); None (the mask unreadable, or
    // glommio not knowing those CPUs) leaves glommio's default, the shard's own CPU.
    let helper_cpus = ledger_shard::helper_threads::process_cpus().ok().and_then(|cpus| {
        let set = CpuSet::online().ok()?.filter(|location| cpus.contains(&location.cpu));
        (!set.is_empty()).then_some(set)
    });
    for (index, inbox) in inboxes.into_iter().enumerate() {
        let core = CoreId(index as u16);
        let (ready_tx, ready_rx) = futures::channel::oneshot::channel();
        ready_receivers.push(ready_rx);
        let control_rx = control_receivers[index].take().ok_or(NodeError::ShardStart(index))?;
        let spec = ShardSpec {
            core,
            config: shard_config.clone(),
            groups: placement.iter().filter(|(_, c)| **c == core).map(|(g, _)| *g).collect(),
            inbox,
            cores: inbox_senders.clone(),
            placement: placement.clone(),
            ready: ready_tx,
        };
        let router = RouterContext {
            core,
            settings: settings.clone(),
            cores: inbox_senders.clone(),
            placement: placement.clone(),
            auth: auth.clone(),
            listeners: controls.clone(),
        };
        let builder = executor_builder(config, index, helper_cpus.as_ref());
        let handle = builder
            .spawn(move || async move {
                // This thread lives as long as the node and frees and allocates the state trees'
                // nodes: keep the freed ones at hand (node_alloc.rs).
                crate::node_alloc::cache_this_thread();
                let shard = glommio::spawn_local(async move {
                    if let Err(e) = ledger_shard::run_shard(spec).await {
                        ledger_shard::event!(error, "core_failed", core = index, error = %e);
                    }
                });
                ledger_router::serve(router, control_rx).await;
                shard.await;
            })
            .map_err(|e| NodeError::Executor { core: index, message: e.to_string() })?;
        executors.push(handle);
    }
    Ok((Cores { inbox_senders, controls, executors }, ready_receivers))
}

/// Core `index`'s executor: pinned (unless pinning is off), its blocking pool on the helper CPUs,
/// spinning before it parks when asked to (D10).
fn executor_builder(config: &Config, index: usize, helper_cpus: Option<&CpuSet>) -> LocalExecutorBuilder {
    let mut builder = LocalExecutorBuilder::new(if config.cpu_pinning {
        Placement::Fixed(config.cpu_list[index])
    } else {
        Placement::Unbound
    })
    .name(&format!("core-{index}"));
    if let Some(cpus) = helper_cpus {
        // The blocking pool (checkpoint writes, snapshot and integrity work) would otherwise
        // share the shard's pinned CPU (D20).
        builder = builder.blocking_thread_pool_placement(PoolPlacement::Fenced(1, cpus.clone()));
    }
    if config.spin_before_park_us > 0 {
        builder = builder.spin_before_park(Duration::from_micros(config.spin_before_park_us));
    }
    builder
}

/// Waits for every shard to have opened its groups.
fn wait_until_ready(ready: Vec<Ready>) -> Result<(), NodeError> {
    let deadline = std::time::Instant::now() + STARTUP_TIMEOUT;
    for (index, ready) in ready.into_iter().enumerate() {
        match wait_oneshot(ready, deadline) {
            Some(Ok(())) => {}
            Some(Err(_)) => return Err(NodeError::ShardStart(index)),
            None => return Err(NodeError::StartTimeout(index)),
        }
    }
    Ok(())
}

/// Every core accepts from its own handle of the one socket (D26): the listeners a fresh cluster
/// member opened early, or the claimed socket's now.
fn start_listening(
    early_listeners: Option<Vec<std::net::TcpListener>>,
    socket: Option<ListenSocket>,
    controls: &[flume::Sender<ListenerControl>],
) -> Result<(), NodeError> {
    let listeners = match (early_listeners, socket) {
        (Some(listeners), _) => listeners,
        (None, Some(socket)) => socket.listen(controls.len())?,
        (None, None) => return Err(NodeError::ShardStart(0)),
    };
    for (index, (control, listener)) in controls.iter().zip(listeners).enumerate() {
        control.send(ListenerControl::Listen(listener)).map_err(|_| NodeError::ShardStart(index))?;
    }
    Ok(())
}

/// The metrics endpoint, if configured; its bound address.
fn start_metrics(
    config: &Config,
    dir: &DataDir,
    inbox_senders: &[flume::Sender<ShardMsg>],
    shard_config: &ShardConfig,
) -> Result<Option<std::net::SocketAddr>, NodeError> {
    let Some(addr) = &config.metrics_addr else { return Ok(None) };
    let settings = metrics_http::MetricsSettings {
        node_id: dir.node_id,
        data_dir: dir.root.clone(),
        health_lag_threshold_blocks: config.health_lag_threshold_blocks,
        storage: shard_config.storage_counters.clone(),
    };
    metrics_http::start(addr, inbox_senders.to_vec(), settings)
        .map(Some)
        .map_err(|source| NodeError::Metrics { addr: addr.clone(), source })
}

/// The line scripts and tests wait for on stdout, and the `node_started` event.
fn announce(
    config: &Config,
    dir: &DataDir,
    listen_addr: std::net::SocketAddr,
    metrics: Option<std::net::SocketAddr>,
) {
    println!(
        "ledger-server node {} listening on {} (metrics {}) with {} cores, data in {}",
        dir.node_id,
        listen_addr,
        metrics.as_ref().map(|m| m.to_string()).unwrap_or_else(|| "off".into()),
        config.cores,
        dir.root.display()
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    ledger_shard::event!(
        info,
        "node_started",
        node = dir.node_id,
        address = %listen_addr,
        cores = config.cores,
        version = env!("CARGO_PKG_VERSION")
    );
}

/// Stops the node: a cluster member hands its leaderships over first; then the listeners stop,
/// every shard checkpoints and stops, and the executors end.
fn shut_down(shard_config: &ShardConfig, node_id: u64, cores: Cores) {
    let Cores { inbox_senders, controls, executors } = cores;
    if shard_config.cluster.is_some() {
        // Before the listeners stop: closing them closes the peer connections too, and the
        // hand-over needs them (the successor's votes and appends arrive on them).
        step_down(&inbox_senders, node_id);
        if shard_config.node_heartbeat_timeout_secs > 0 {
            say_stopping(&inbox_senders, node_id);
        }
    }
    for control in &controls {
        let _ = control.send(ListenerControl::Stop);
    }
    let deadline = std::time::Instant::now() + SHUTDOWN_TIMEOUT;
    let mut done = Vec::new();
    for sender in &inbox_senders {
        let (tx, rx) = futures::channel::oneshot::channel();
        if sender.send(ShardMsg::Shutdown { done: tx }).is_ok() {
            done.push(rx);
        }
    }
    let mut all_done = true;
    for rx in done {
        if wait_oneshot(rx, deadline).is_none() {
            tracing::warn!("a core did not finish shutting down in time");
            all_done = false;
        }
    }
    drop(inbox_senders);
    // Each executor ends once its connections have said Goaway and its shard has stopped.
    if all_done {
        for handle in executors {
            let _ = handle.join();
        }
    }
}

/// Asks core 0 `request` as the node itself (`forwarded`: answered there, never sent on) and
/// waits at most `timeout`; `None` when no answer came in time.
fn ask_core0(
    inbox_senders: &[flume::Sender<ShardMsg>],
    request: ledger_wire::messages::Request,
    forwarded: bool,
    timeout: Duration,
) -> Option<ledger_wire::messages::ResponseEnvelope> {
    let core0 = inbox_senders.first()?;
    let (reply, answers) = flume::bounded(1);
    let envelope =
        ledger_wire::messages::RequestEnvelope { request_id: 0, deadline_ms: 0, on_behalf_of: None, request };
    let caller = ledger_shard::msg::Caller::internal(timeout);
    core0.send(ShardMsg::Admin { envelope, reply, forwarded, caller }).ok()?;
    answers.recv_timeout(timeout).ok()
}

/// SPEC §11.7: a cluster node steps down from the groups it leads before it closes them, so
/// that their writes pause for a hand-over rather than an election timeout. Bounded: a node
/// whose peers are gone gives up after `STEP_DOWN_TIMEOUT` and closes anyway.
fn step_down(inbox_senders: &[flume::Sender<ShardMsg>], node_id: u64) {
    let request =
        ledger_wire::messages::Request::TransferLeadership { node_id, group_id: None, successor: None };
    match ask_core0(inbox_senders, request, true, STEP_DOWN_TIMEOUT).as_ref().map(|answer| &answer.result) {
        Some(Ok(ledger_wire::messages::Response::TransferLeadership { moved, not_moved })) => {
            ledger_shard::event!(info, "stepped_down", node = node_id, moved = ?moved, not_moved = ?not_moved)
        }
        other => ledger_shard::event!(warn, "step_down_failed", node = node_id, answer = ?other),
    }
}

/// Tells `_system`'s leader (through core 0, which forwards) that this stop is planned, so that
/// the node is not removed for its silence (SPEC §10.6 removes *unexpected* losses, D74).
/// Best effort and bounded; skipped when silent nodes are never removed.
fn say_stopping(inbox_senders: &[flume::Sender<ShardMsg>], node_id: u64) {
    let request = ledger_wire::messages::Request::NodeStopping { node_id };
    match ask_core0(inbox_senders, request, false, STOP_NOTICE_TIMEOUT).as_ref().map(|answer| &answer.result)
    {
        Some(Ok(_)) => {}
        other => ledger_shard::event!(warn, "stop_not_recorded", node = node_id, answer = ?other),
    }
}

/// SIGHUP: hands the re-read `auth_tokens` to every core's listener and to the peer pools
/// (D42). A configuration that no longer loads keeps the tokens in force.
fn reload_tokens(
    reload: Option<&dyn Fn() -> Result<crate::config::AuthTokens, String>>,
    controls: &[flume::Sender<ListenerControl>],
    peer_credential: &PeerCredential,
) {
    let Some(reload) = reload else {
        ledger_shard::event!(warn, "auth_reload_failed", error = "no configuration source to re-read");
        return;
    };
    match reload() {
        Ok(tokens) => {
            let table = Arc::new(tokens.table());
            for control in controls {
                let _ = control.send(ListenerControl::Auth(table.clone()));
            }
            peer_credential.set(tokens.peer_secret());
            ledger_shard::event!(
                info,
                "auth_reloaded",
                tokens = tokens.0.len(),
                ids = ?tokens,
                "auth_tokens re-read on SIGHUP"
            );
        }
        Err(error) => ledger_shard::event!(
            error,
            "auth_reload_failed",
            error = %error,
            "SIGHUP: the configuration does not load; the tokens in force stay"
        ),
    }
}

/// Waits for a oneshot from a plain thread, polling so that a deadline applies.
fn wait_oneshot<T>(
    mut rx: futures::channel::oneshot::Receiver<T>,
    deadline: std::time::Instant,
) -> Option<Result<T, futures::channel::oneshot::Canceled>> {
    loop {
        match rx.try_recv() {
            Ok(Some(value)) => return Some(Ok(value)),
            Ok(None) => {}
            Err(canceled) => return Some(Err(canceled)),
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A panic on any core is a shard crash: the node stops at once (SPEC §10.8 fail-stop) and
/// recovers from disk on restart.
fn install_fail_stop_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        if ledger_shard::isolation::is_catching() {
            // A broken invariant while applying one group's entry: `isolation::catch` fails
            // only that group or scope (D27); the node goes on.
            eprintln!("ledger-server: the panic above fails one group or scope, not the node");
            return;
        }
        eprintln!("ledger-server: fatal: a thread panicked; aborting (fail-stop)");
        std::process::abort();
    }));
}

/// Blocks SIGINT/SIGTERM (stop), SIGHUP (re-read the tokens) and, on a simulated disk, SIGUSR2
/// (cut the power, D89) in this thread before any executor thread exists, so every thread
/// inherits the mask and only `wait_for_signal` receives them.
fn block_termination_signals(power_cut: bool) -> libc::sigset_t {
    // SAFETY: plain libc signal-set manipulation on a local, zero-initialised sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        if power_cut {
            libc::sigaddset(&mut set, libc::SIGUSR2);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// The simulated disk of a test server (`test_sim_disk`, D89): `drop` keeps what was synced when
/// the power goes, `lying` (the canary) nothing.
fn sim_disk(config: &Config) -> Option<Arc<SimDisk>> {
    let disk = match config.test_sim_disk.as_str() {
        "drop" => SimDisk::new(0, CutMode::DropUnsynced),
        "lying" => {
            let disk = SimDisk::new(0, CutMode::DropUnsynced);
            disk.ignore_syncs(true);
            disk
        }
        _ => return None,
    };
    ledger_shard::event!(
        warn,
        "sim_disk",
        mode = config.test_sim_disk.as_str(),
        "groups run on a simulated disk in memory; SIGUSR2 cuts the power (test servers only)"
    );
    Some(disk)
}

/// SIGUSR2 on a simulated disk: the power goes now. The disk keeps what it made durable, that
/// image is written to the real files, and the process ends at once, running nothing else (the
/// next start reads the image from the real disk).
fn cut_power(disk: &SimDisk) -> ! {
    disk.cut_now();
    let code = match disk.write_out() {
        Ok(()) => POWER_CUT_EXIT_CODE,
        Err(e) => {
            eprintln!("power cut: writing the durable image failed: {e}");
            1
        }
    };
    // SAFETY: ends the process without running destructors or atexit handlers, as a power cut
    // would; nothing after this point may run.
    unsafe { libc::_exit(code) }
}

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut signal: libc::c_int = 0;
    // SAFETY: `set` is a valid, initialised signal set; `signal` is a valid out-pointer.
    unsafe {
        libc::sigwait(set, &mut signal);
    }
    signal
}
