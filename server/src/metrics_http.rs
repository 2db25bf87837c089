//! The metrics/health HTTP endpoint (SPEC §11.3–§11.5) on a plain thread, off the cores:
//! `GET /metrics` (Prometheus text 0.0.4, encoded by metrics_text.rs), `GET /health` (JSON
//! `{status, details}`, 503 when Unavailable) and `GET /ready` (200 once group 0 has a leader).
//! It reaches the cores only through their inbox channels: a scrape sends `ShardMsg::Metrics` to
//! every core and merges the snapshots they return.

use crate::metrics_text::{add_core_families, Families};
use ledger_shard::maintenance::reopen::StorageCounters;
use ledger_shard::metrics::CoreSnapshot;
use ledger_shard::ShardMsg;
use ledger_wire::messages::{HealthStatus, Request, RequestEnvelope, Response};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a scrape or health check waits for each core.
const CORE_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// Request header lines read at most (the endpoint needs only the request line).
const HEADER_LINES_MAX: usize = 100;
/// Disk usage above which the node is Degraded (SPEC §11.5).
const DISK_USAGE_DEGRADED: f64 = 0.9;

/// What the endpoint needs besides the cores.
pub struct MetricsSettings {
    pub node_id: u64,
    pub data_dir: PathBuf,
    /// SPEC §11.5: a hosted group whose local lag exceeds this makes the node Degraded.
    pub health_lag_threshold_blocks: u64,
    pub storage: Arc<StorageCounters>,
}

/// Binds `addr` and serves on a background thread; returns the bound address.
pub fn start(
    addr: &str,
    cores: Vec<flume::Sender<ShardMsg>>,
    settings: MetricsSettings,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    let started = Instant::now();
    std::thread::Builder::new().name("metrics-http".into()).spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = handle(stream, &cores, &settings, started);
        }
    })?;
    Ok(bound)
}

fn handle(
    mut stream: TcpStream,
    cores: &[flume::Sender<ShardMsg>],
    settings: &MetricsSettings,
    started: Instant,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    // Read the headers too: closing a socket with unread request bytes resets the connection
    // before the client has read the answer.
    let mut header = String::new();
    for _ in 0..HEADER_LINES_MAX {
        header.clear();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    let (status, content_type, body) = match path {
        "/health" => {
            let (health, details) = node_health(cores, settings);
            let code = if health == "unavailable" { "503 Service Unavailable" } else { "200 OK" };
            let details: Vec<String> =
                details.iter().map(|(k, v)| format!("{{\"{}\":\"{}\"}}", escape(k), escape(v))).collect();
            let body = format!("{{\"status\":\"{health}\",\"details\":[{}]}}\n", details.join(","));
            (code, "application/json", body)
        }
        "/ready" => {
            let snapshots = scrape(cores);
            let ready = snapshots
                .iter()
                .flat_map(|c| &c.groups)
                .any(|g| g.group == 0 && g.current_leader.is_some() && g.failure.is_none());
            if ready {
                ("200 OK", "text/plain", "ready\n".to_string())
            } else {
                (
                    "503 Service Unavailable",
                    "text/plain",
                    "not ready: group 0 has no leader here\n".to_string(),
                )
            }
        }
        "/metrics" => ("200 OK", prometheus::TEXT_FORMAT, render_metrics(cores, settings, started)),
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Every core's snapshot; a core that does not answer in time is left out (its queue depth
/// still shows it).
fn scrape(cores: &[flume::Sender<ShardMsg>]) -> Vec<CoreSnapshot> {
    let (reply, replies) = flume::bounded(cores.len().max(1));
    let asked =
        cores.iter().filter(|core| core.try_send(ShardMsg::Metrics { reply: reply.clone() }).is_ok()).count();
    drop(reply);
    let deadline = Instant::now() + CORE_ANSWER_TIMEOUT;
    let mut out = Vec::with_capacity(asked);
    while out.len() < asked {
        match replies.recv_deadline(deadline) {
            Ok(snapshot) => out.push(snapshot),
            Err(_) => break,
        }
    }
    out.sort_by_key(|s| s.core);
    out
}

/// SPEC §11.5: core 0's answer (groups without a leader, failed groups, unhealthy scopes), made
/// Degraded also by a hosted group's local lag over the threshold and by disk usage over 0.9.
fn node_health(
    cores: &[flume::Sender<ShardMsg>],
    settings: &MetricsSettings,
) -> (&'static str, Vec<(String, String)>) {
    let (mut status, mut details) = core0_health(cores);
    if status == "unavailable" {
        return (status, details);
    }
    let snapshots = scrape(cores);
    if snapshots.len() < cores.len() {
        return ("unavailable", vec![("node".into(), "a core did not answer within 2 s".into())]);
    }
    if snapshots.iter().any(|s| s.closing) {
        return ("unavailable", vec![("node".into(), "shutting down".into())]);
    }
    for g in snapshots.iter().flat_map(|s| &s.groups) {
        if g.local_lag > settings.health_lag_threshold_blocks {
            status = "degraded";
            details.push((
                format!("group {}", g.group),
                format!(
                    "{} entries not applied (health_lag_threshold_blocks {})",
                    g.local_lag, settings.health_lag_threshold_blocks
                ),
            ));
        }
    }
    if let Some(usage) = disk_usage_ratio(&settings.data_dir) {
        if usage > DISK_USAGE_DEGRADED {
            status = "degraded";
            details.push(("disk".into(), format!("{:.0}% used", usage * 100.0)));
        }
    }
    (status, details)
}

fn core0_health(cores: &[flume::Sender<ShardMsg>]) -> (&'static str, Vec<(String, String)>) {
    let Some(core0) = cores.first() else {
        return ("unavailable", vec![("node".into(), "no cores".into())]);
    };
    let (reply, replies) = flume::bounded(1);
    let envelope = RequestEnvelope {
        request_id: 0,
        deadline_ms: 0,
        on_behalf_of: None,
        request: Request::HealthCheck { namespace_id: None, vault_id: None },
    };
    if core0
        .try_send(ShardMsg::Admin {
            envelope,
            reply,
            forwarded: false,
            caller: ledger_shard::Caller::internal(CORE_ANSWER_TIMEOUT),
        })
        .is_err()
    {
        return ("unavailable", vec![("core_0".into(), "inbox full or closed".into())]);
    }
    match replies.recv_timeout(CORE_ANSWER_TIMEOUT) {
        Ok(envelope) => match envelope.result {
            Ok(Response::HealthCheck { status, details, .. }) => {
                let status = match status {
                    HealthStatus::Healthy => "healthy",
                    HealthStatus::Degraded => "degraded",
                    HealthStatus::Unavailable => "unavailable",
                };
                (status, details)
            }
            Ok(_) => ("unavailable", vec![("core_0".into(), "unexpected reply".into())]),
            Err(status) => ("unavailable", vec![("core_0".into(), status.to_string())]),
        },
        Err(_) => ("unavailable", vec![("core_0".into(), "no answer within 2 s".into())]),
    }
}

fn render_metrics(cores: &[flume::Sender<ShardMsg>], settings: &MetricsSettings, started: Instant) -> String {
    let snapshots = scrape(cores);
    let mut f = Families::default();
    add_core_families(&mut f, &snapshots, settings.node_id, started.elapsed());
    for (core, sender) in cores.iter().enumerate() {
        f.gauge(
            "core_queue_depth",
            "Messages waiting in a core's inbox.",
            &[("core", core.to_string())],
            sender.len() as f64,
        );
    }
    let storage = &settings.storage;
    f.counter(
        "storage_failures_total",
        "Groups taken out of service by a storage error (failed log write or checkpoints).",
        &[],
        storage.failures_total.load(Ordering::Relaxed) as f64,
    );
    f.gauge(
        "storage_groups_stopped",
        "Groups out of service on a storage error now (they reopen once the disk takes writes).",
        &[],
        storage.groups_stopped.load(Ordering::Relaxed) as f64,
    );
    f.counter(
        "storage_group_reopens_total",
        "Groups reopened after a storage error.",
        &[],
        storage.reopens_total.load(Ordering::Relaxed) as f64,
    );
    f.gauge(
        "process_uptime_seconds",
        "Seconds since the node started serving.",
        &[],
        started.elapsed().as_secs_f64(),
    );
    add_rate_limited(&mut f, &snapshots);
    let learner = |pick: fn(&CoreSnapshot) -> u64| snapshots.iter().map(pick).sum::<u64>() as f64;
    f.counter(
        "learner_refresh_total",
        "Routing answers a stale `_system` learner fetched from a voter (SPEC §10.4).",
        &[],
        learner(|c| c.counters.learner_refreshes),
    );
    f.counter(
        "learner_cache_stale_total",
        "Routing lookups on a `_system` learner whose copy was older than learner_cache_ttl_secs.",
        &[],
        learner(|c| c.counters.learner_cache_stale),
    );
    if let Some(usage) = disk_usage_ratio(&settings.data_dir) {
        f.gauge("disk_usage_ratio", "Used share of the file system holding the data directory.", &[], usage);
    }
    for (group, file, bytes) in storage_bytes(&settings.data_dir) {
        f.gauge(
            "storage_bytes",
            "Bytes on disk per group and file.",
            &[("group", group), ("file", file)],
            bytes as f64,
        );
    }
    f.encode()
}

/// `rate_limit_exceeded_total{namespace}` (SPEC §11.3): every namespace with a refusal on this
/// node, and every namespace with a labelled scope here (at 0), so that the family is there on a
/// node that serves traffic before anything was refused.
fn add_rate_limited(f: &mut Families, snapshots: &[CoreSnapshot]) {
    let mut counts: std::collections::BTreeMap<i64, u64> = std::collections::BTreeMap::new();
    for core in snapshots {
        for scope in &core.scopes {
            counts.entry(scope.namespace).or_default();
        }
        for (namespace, refused) in &core.counters.rate_limited {
            *counts.entry(*namespace).or_default() += refused;
        }
    }
    for (namespace, refused) in counts {
        f.counter(
            "rate_limit_exceeded_total",
            "Client writes refused by the per-namespace rate limit at this node (SPEC §8.9).",
            &[("namespace", namespace.to_string())],
            refused as f64,
        );
    }
}

/// Used share of the file system holding `dir` (statvfs), `None` if it cannot be read.
pub fn disk_usage_ratio(dir: &Path) -> Option<f64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and `stat` points to
    // writable memory of the struct's size, which statvfs fills in when it returns 0.
    let rc = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised `stat`.
    let stat = unsafe { stat.assume_init() };
    let total = stat.f_blocks as f64;
    if total == 0.0 {
        return None;
    }
    Some((total - stat.f_bfree as f64) / total)
}

/// `(group, file, bytes)` for the files of each group directory (its `snapshots/` summed as one)
/// and, as group `node`, the core logs and node.redb (SPEC §9.1 layout).
pub fn storage_bytes(data_dir: &Path) -> Vec<(String, String, u64)> {
    let mut out = Vec::new();
    if let Ok(groups) = std::fs::read_dir(data_dir.join("groups")) {
        for group_dir in groups.flatten() {
            let name = group_dir.file_name().to_string_lossy().to_string();
            let Some(id) = name.strip_prefix('g').and_then(|n| n.parse::<u32>().ok()) else { continue };
            let Ok(files) = std::fs::read_dir(group_dir.path()) else { continue };
            for file in files.flatten() {
                let bytes = tree_bytes(&file.path());
                out.push((id.to_string(), file.file_name().to_string_lossy().to_string(), bytes));
            }
        }
    }
    out.push(("node".into(), "log".into(), tree_bytes(&data_dir.join("log"))));
    out.push(("node".into(), "node.redb".into(), tree_bytes(&data_dir.join("node.redb"))));
    out.sort();
    out
}

/// Bytes of a file, or of every file under a directory.
fn tree_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path).map(|entries| entries.flatten().map(|e| tree_bytes(&e.path())).sum()).unwrap_or(0)
}

fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}
