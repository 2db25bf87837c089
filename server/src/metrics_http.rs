//! The metrics/health HTTP endpoint (SPEC §11.3, §11.5) on a plain thread, off the cores:
//! `GET /metrics` (Prometheus text 0.0.4) and `GET /health` (JSON `{status, details}`, 503 when
//! Unavailable). It reaches the cores only through their inbox channels.

use ledger_shard::maintenance::reopen::StorageCounters;
use ledger_shard::ShardMsg;
use ledger_wire::messages::{HealthStatus, Request, RequestEnvelope, Response};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Binds `addr` and serves on a background thread; returns the bound address.
pub fn start(
    addr: &str,
    cores: Vec<flume::Sender<ShardMsg>>,
    storage: Arc<StorageCounters>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    let started = Instant::now();
    std::thread::Builder::new().name("metrics-http".into()).spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = handle(stream, &cores, &storage, started);
        }
    })?;
    Ok(bound)
}

fn handle(
    mut stream: TcpStream,
    cores: &[flume::Sender<ShardMsg>],
    storage: &StorageCounters,
    started: Instant,
) -> std::io::Result<()> {
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    let (status, content_type, body) = match path {
        "/health" => {
            let (health, details) = node_health(cores);
            let code = if health == "unavailable" { "503 Service Unavailable" } else { "200 OK" };
            let details: Vec<String> =
                details.iter().map(|(k, v)| format!("{{\"{}\":\"{}\"}}", escape(k), escape(v))).collect();
            let body = format!("{{\"status\":\"{health}\",\"details\":[{}]}}\n", details.join(","));
            (code, "application/json", body)
        }
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", render_metrics(cores, storage, started)),
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn node_health(cores: &[flume::Sender<ShardMsg>]) -> (&'static str, Vec<(String, String)>) {
    let Some(core0) = cores.first() else {
        return ("unavailable", vec![("node".into(), "no cores".into())]);
    };
    let (reply, replies) = flume::bounded(1);
    let envelope = RequestEnvelope {
        request_id: 0,
        deadline_ms: 0,
        request: Request::HealthCheck { namespace_id: None, vault_id: None },
    };
    if core0.try_send(ShardMsg::Admin { envelope, reply, forwarded: false }).is_err() {
        return ("unavailable", vec![("core_0".into(), "inbox full or closed".into())]);
    }
    match replies.recv_timeout(HEALTH_TIMEOUT) {
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

fn render_metrics(cores: &[flume::Sender<ShardMsg>], storage: &StorageCounters, started: Instant) -> String {
    let mut out = String::new();
    out.push_str("# HELP core_queue_depth Messages waiting in a core shard's inbox.\n");
    out.push_str("# TYPE core_queue_depth gauge\n");
    for (core, sender) in cores.iter().enumerate() {
        out.push_str(&format!("core_queue_depth{{core=\"{core}\"}} {}\n", sender.len()));
    }
    let storage_lines = [
        (
            "storage_failures_total",
            "counter",
            "Groups taken out of service by a storage error (failed log write or checkpoints).",
            storage.failures_total.load(Ordering::Relaxed) as i64,
        ),
        (
            "storage_groups_stopped",
            "gauge",
            "Groups out of service on a storage error now (they reopen once the disk takes writes).",
            storage.groups_stopped.load(Ordering::Relaxed),
        ),
        (
            "storage_group_reopens_total",
            "counter",
            "Groups reopened after a storage error.",
            storage.reopens_total.load(Ordering::Relaxed) as i64,
        ),
    ];
    for (name, kind, help, value) in storage_lines {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
    }
    out.push_str("# HELP process_uptime_seconds Seconds since the node started serving.\n");
    out.push_str("# TYPE process_uptime_seconds gauge\n");
    out.push_str(&format!("process_uptime_seconds {:.3}\n", started.elapsed().as_secs_f64()));
    out
}

fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}
