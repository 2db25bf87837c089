//! Coordinated bootstrap (SPEC §10.2, `bootstrap_expect = N ≥ 2`): a fresh node answers
//! `GetNodeInfo` on its listening socket while it polls `--peers` until N distinct nodes (itself
//! included) have answered. Every node then derives the same plan from the same answers: the
//! lowest node id initializes `_system`, and the number of data groups and their replication
//! factor are that node's `initial_groups` (by default its cores × `groups_per_core`, D79) and
//! `replication_factor` (SPEC §10.5, D90). Plain threads and blocking sockets: this runs
//! before any executor exists. With TLS configured (D43) both sides speak it, as the node's
//! listener and peer connections do.

use crate::config::Config;
use crate::tls::NodeTls;
use ledger_router::auth::{hash_secret, AuthTable};
use ledger_shard::peer::credential::PeerCredential;
use ledger_wire::codec::{encode_frame_to_vec, Frame, FrameReader};
use ledger_wire::frame::FrameKind;
use ledger_wire::messages::{
    Hello, HelloAck, Request, RequestBatch, RequestEnvelope, Response, ResponseBatch, ResponseEnvelope, Role,
    Status, StatusCode, PROTOCOL_VERSION,
};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const IO_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(
        "bootstrap: only {found} of the {expected} expected nodes answered within {secs} s (seen: {seen}); \
         check --peers and that every node is started with --bootstrap-expect {expected}"
    )]
    Timeout { expected: u32, found: usize, secs: u64, seen: String },
    #[error("bootstrap: more than {expected} nodes answered ({seen}): --bootstrap-expect is too small")]
    TooMany { expected: u32, seen: String },
    #[error("bootstrap: cannot serve discovery: {0}")]
    Io(#[from] std::io::Error),
}

/// What one node said about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAnswer {
    pub node_id: u64,
    pub address: String,
    pub cores: u16,
    pub is_cluster_member: bool,
    /// The groups it hosts (empty while it bootstraps).
    pub groups: Vec<u32>,
    /// The data groups it would start the cluster with (D79).
    pub data_groups: u32,
    /// The replication factor it would start the cluster with (SPEC §10.5).
    pub replication_factor: u32,
}

/// The agreed result: every member with its address, the initializer, and its data groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreed {
    pub members: BTreeMap<u64, String>,
    pub initializer: u64,
    /// The initializer's `initial_groups` (its cores × groups_per_core by default): every
    /// node creates these (SPEC §10.5, D79).
    pub data_groups: u32,
    /// The initializer's `replication_factor`: the voters of each data group (SPEC §10.5).
    pub replication_factor: u32,
}

/// Answers discovery on `listener` and polls the peers until `config.bootstrap_expect` nodes
/// are known. `me` is this node's own answer.
pub fn coordinate(
    listener: &TcpListener,
    config: &Config,
    me: NodeAnswer,
    tls: Option<&NodeTls>,
) -> Result<Agreed, BootstrapError> {
    let stop = Arc::new(AtomicBool::new(false));
    let responder = {
        let listener = listener.try_clone()?;
        let stop = stop.clone();
        let me = me.clone();
        let auth = config.auth_tokens.table();
        let server_tls = tls.map(|tls| tls.server.clone());
        std::thread::Builder::new()
            .name("bootstrap-discovery".into())
            .spawn(move || answer_discovery(listener, me, stop, auth, server_tls))?
    };
    let result = poll_peers(config, &me, tls);
    stop.store(true, Ordering::Release);
    let _ = responder.join();
    result
}

fn poll_peers(config: &Config, me: &NodeAnswer, tls: Option<&NodeTls>) -> Result<Agreed, BootstrapError> {
    let expected = config.bootstrap_expect;
    let deadline = Instant::now() + Duration::from_secs(config.bootstrap_timeout_secs);
    let mut known: BTreeMap<u64, NodeAnswer> = BTreeMap::from([(me.node_id, me.clone())]);
    let credential = config.auth_tokens.peer_secret();
    let discovery = crate::discovery::Discovery::from_config(config);
    loop {
        for peer in &discovery.candidates() {
            if let Ok(answer) = ask_node_info(peer, credential.as_deref(), tls) {
                known.insert(answer.node_id, answer);
            }
        }
        let seen =
            || known.values().map(|n| format!("{}@{}", n.node_id, n.address)).collect::<Vec<_>>().join(", ");
        if known.len() > expected as usize {
            return Err(BootstrapError::TooMany { expected, seen: seen() });
        }
        if known.len() == expected as usize {
            return Ok(agree(&known));
        }
        if Instant::now() >= deadline {
            return Err(BootstrapError::Timeout {
                expected,
                found: known.len(),
                secs: config.bootstrap_timeout_secs,
                seen: seen(),
            });
        }
        ledger_shard::event!(info, "bootstrap_waiting", expected, found = known.len(), nodes = %seen());
        std::thread::sleep(Duration::from_secs(config.bootstrap_poll_secs));
    }
}

/// Join mode (`bootstrap_expect = 0`, SPEC §10.2): waits until a member of the cluster answers
/// and returns the groups it hosts, which this node will host too once an operator (or
/// `ledger-admin join`) adds it; it never initializes a group itself.
pub fn find_cluster(config: &Config, tls: Option<&NodeTls>) -> Result<Vec<u32>, BootstrapError> {
    let deadline = Instant::now() + Duration::from_secs(config.bootstrap_timeout_secs);
    let credential = config.auth_tokens.peer_secret();
    let discovery = crate::discovery::Discovery::from_config(config);
    loop {
        let candidates = discovery.candidates();
        for peer in &candidates {
            if let Ok(answer) = ask_node_info(peer, credential.as_deref(), tls) {
                if answer.is_cluster_member && !answer.groups.is_empty() {
                    // SPEC §10.3: on reaching a node, learn the others it knows.
                    if let Ok(Ok(Response::GetPeers { peers, .. })) = call_once(
                        peer,
                        Request::GetPeers { max_peers: 0 },
                        IO_TIMEOUT,
                        credential.as_deref(),
                        tls,
                    ) {
                        discovery.remember(&peers);
                    }
                    return Ok(answer.groups);
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(BootstrapError::Timeout {
                expected: 1,
                found: 0,
                secs: config.bootstrap_timeout_secs,
                seen: format!("no cluster member among {candidates:?} (peers, peer cache, discovery_domain)"),
            });
        }
        ledger_shard::event!(info, "join_waiting", candidates = ?candidates);
        std::thread::sleep(Duration::from_secs(config.bootstrap_poll_secs));
    }
}

/// The plan every node derives from the same set of answers.
pub fn agree(known: &BTreeMap<u64, NodeAnswer>) -> Agreed {
    let members = known.iter().map(|(id, n)| (*id, n.address.clone())).collect();
    let (initializer, data_groups, replication_factor) =
        known.iter().next().map(|(id, n)| (*id, n.data_groups, n.replication_factor)).unwrap_or((0, 1, 0));
    Agreed { members, initializer, data_groups: data_groups.max(1), replication_factor }
}

/// Serves `Hello` + `GetNodeInfo` (anything else: `Unavailable`) until `stop`.
fn answer_discovery(
    listener: TcpListener,
    me: NodeAnswer,
    stop: Arc<AtomicBool>,
    auth: AuthTable,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = serve_one(stream, &me, &stop, &auth, tls.as_ref());
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// A blocking socket, plain or TLS.
trait Io: Read + Write {}
impl<T: Read + Write> Io for T {}

/// Answers `GetNodeInfo` on one connection; with `auth_tokens`, only to the peer token (D42).
fn serve_one(
    stream: TcpStream,
    me: &NodeAnswer,
    stop: &AtomicBool,
    auth: &AuthTable,
    tls: Option<&Arc<rustls::ServerConfig>>,
) -> std::io::Result<()> {
    let mut authenticated = !auth.enabled();
    let mut stream = open_stream(stream, tls)?;
    let mut frames = FrameReader::new(1024 * 1024);
    let mut buf = vec![0u8; 16 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let idle_until = Instant::now() + IO_TIMEOUT;
    while !stop.load(Ordering::Acquire) && Instant::now() < idle_until {
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                continue
            }
            Err(e) => return Err(e),
        };
        pending.extend_from_slice(&buf[..n]);
        loop {
            let mut input: &[u8] = &pending;
            let frame = frames.read_from(&mut input).map_err(std::io::Error::other)?;
            let consumed = pending.len() - input.len();
            pending.drain(..consumed);
            let Some(frame) = frame else { break };
            let out = match frame.kind() {
                FrameKind::Hello => answer_hello(&frame, me, auth, &mut authenticated)?,
                FrameKind::RequestBatch => answer_request_batch(&frame, me, authenticated)?,
                _ => return Ok(()),
            };
            stream.write_all(&out)?;
            stream.flush()?;
        }
    }
    Ok(())
}

/// `stream` made blocking, with a short read timeout (so that `stop` is seen) and a write
/// timeout, and wrapped in a server session when TLS is on.
fn open_stream(stream: TcpStream, tls: Option<&Arc<rustls::ServerConfig>>) -> std::io::Result<Box<dyn Io>> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    // The handshake happens on the first read, within the same idle bound as the frames.
    let stream: Box<dyn Io> = match tls {
        Some(config) => {
            let session = rustls::ServerConnection::new(config.clone()).map_err(std::io::Error::other)?;
            Box::new(rustls::StreamOwned::new(session, stream))
        }
        None => Box::new(stream),
    };
    Ok(stream)
}

/// The encoded `HelloAck` to a `Hello` frame; a `Hello` with the peer token sets
/// `authenticated`.
fn answer_hello(
    frame: &Frame,
    me: &NodeAnswer,
    auth: &AuthTable,
    authenticated: &mut bool,
) -> std::io::Result<Vec<u8>> {
    let hello: Hello = frame.decode().map_err(std::io::Error::other)?;
    let token = hello.credential.as_deref().and_then(|secret| auth.find(&hash_secret(secret)));
    *authenticated |= token.is_some_and(|token| token.peer);
    encode_frame_to_vec(
        FrameKind::HelloAck,
        &HelloAck {
            protocol_version: PROTOCOL_VERSION,
            node_id: me.node_id,
            cluster_id: None,
            max_frame_bytes: 1024 * 1024,
            max_batch_items: 16,
            server_version: env!("CARGO_PKG_VERSION").to_string(),
        },
    )
    .map_err(std::io::Error::other)
}

/// The encoded answers to a `RequestBatch` frame: `GetNodeInfo` gets this node's answer once
/// `authenticated`, anything else `Unavailable`.
fn answer_request_batch(frame: &Frame, me: &NodeAnswer, authenticated: bool) -> std::io::Result<Vec<u8>> {
    let batch: RequestBatch = frame.decode().map_err(std::io::Error::other)?;
    let items = batch
        .items
        .into_iter()
        .map(|e| ResponseEnvelope {
            request_id: e.request_id,
            leader_hint: None,
            result: match e.request {
                _ if !authenticated => Err(Status::new(
                    StatusCode::Unauthenticated,
                    "bootstrap discovery answers the cluster's peer token only",
                )),
                Request::GetNodeInfo => Ok(Response::GetNodeInfo {
                    node_id: me.node_id,
                    address: me.address.clone(),
                    is_cluster_member: false,
                    term: 0,
                    cores: me.cores,
                    groups: Vec::new(),
                    draining: false,
                    data_groups: me.data_groups,
                    replication_factor: me.replication_factor,
                }),
                _ => Err(Status::unavailable("this node is bootstrapping its cluster")),
            },
        })
        .collect();
    encode_frame_to_vec(FrameKind::ResponseBatch, &ResponseBatch { items }).map_err(std::io::Error::other)
}

/// One `GetNodeInfo` round trip to `addr` over a fresh connection.
pub fn ask_node_info(
    addr: &str,
    credential: Option<&str>,
    tls: Option<&NodeTls>,
) -> Result<NodeAnswer, String> {
    match call_once(addr, Request::GetNodeInfo, IO_TIMEOUT, credential, tls)? {
        Ok(Response::GetNodeInfo {
            node_id,
            address,
            cores,
            is_cluster_member,
            groups,
            data_groups,
            replication_factor,
            ..
        }) => Ok(NodeAnswer {
            node_id,
            address,
            cores,
            is_cluster_member,
            groups,
            data_groups,
            replication_factor,
        }),
        Ok(_) => Err("unexpected answer".into()),
        Err(status) => Err(status.to_string()),
    }
}

/// A joining node asks to be added (SPEC §10.6: it calls `JoinCluster` on its peers every
/// `bootstrap_poll_secs` until one accepts), on a thread of its own so the node serves
/// meanwhile. Stops once a member has added it to every group.
pub fn join_by_itself(
    discovery: crate::discovery::Discovery,
    node_id: u64,
    address: String,
    poll: Duration,
    credential: Arc<PeerCredential>,
    tls: Option<NodeTls>,
) {
    let run = move || loop {
        for peer in &discovery.candidates() {
            let request = Request::JoinCluster { node_id, address: address.clone() };
            match call_once(peer, request, JOIN_TIMEOUT, credential.get().as_deref(), tls.as_ref()) {
                Ok(Ok(Response::JoinCluster { groups })) => {
                    ledger_shard::event!(info, "joined", node = node_id, via = %peer, groups = groups.len());
                    return;
                }
                Ok(other) => {
                    ledger_shard::event!(warn, "join_refused", node = node_id, via = %peer, answer = ?other)
                }
                Err(e) => {
                    ledger_shard::event!(warn, "join_unreachable", node = node_id, via = %peer, error = ?e)
                }
            }
        }
        std::thread::sleep(poll);
    };
    if let Err(e) = std::thread::Builder::new().name("join-cluster".into()).spawn(run) {
        ledger_shard::event!(error, "join_thread_failed", error = %e);
    }
}

/// Longest a `JoinCluster` may take: catching the node up in every group.
const JOIN_TIMEOUT: Duration = Duration::from_secs(300);

/// One request over a fresh peer-role connection; the outer error is the transport's.
/// `credential`: the peer token's secret (D42).
fn call_once(
    addr: &str,
    request: Request,
    timeout: Duration,
    credential: Option<&str>,
    tls: Option<&NodeTls>,
) -> Result<Result<Response, Status>, String> {
    let target = addr.to_socket_addrs().map_err(|e| e.to_string())?.next().ok_or("unresolvable address")?;
    let stream = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    let mut stream: Box<dyn Io> = match tls {
        Some(tls) => {
            let config = tls.peer.clone().ok_or("TLS without a CA for the other nodes (tls_ca)")?;
            let name = ledger_wire::tls::server_name(addr).map_err(|e| e.to_string())?;
            let session = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
            Box::new(rustls::StreamOwned::new(session, stream))
        }
        None => Box::new(stream),
    };
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        role: Role::Client,
        node_id: None,
        client_name: "ledger-bootstrap".into(),
        credential: credential.map(str::to_string),
        namespace_hint: None,
    };
    let batch = RequestBatch {
        items: vec![RequestEnvelope { request_id: 1, deadline_ms: 0, on_behalf_of: None, request }],
    };
    let mut out = encode_frame_to_vec(FrameKind::Hello, &hello).map_err(|e| e.to_string())?;
    out.extend(encode_frame_to_vec(FrameKind::RequestBatch, &batch).map_err(|e| e.to_string())?);
    stream.write_all(&out).map_err(|e| e.to_string())?;
    stream.flush().map_err(|e| e.to_string())?;
    let mut frames = FrameReader::new(16 * 1024 * 1024);
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let mut input: &[u8] = &pending;
        let frame = frames.read_from(&mut input).map_err(|e| e.to_string())?;
        let consumed = pending.len() - input.len();
        pending.drain(..consumed);
        if let Some(frame) = frame {
            match frame.kind() {
                FrameKind::HelloAck => continue,
                FrameKind::ResponseBatch => {
                    let batch: ResponseBatch = frame.decode().map_err(|e| e.to_string())?;
                    let Some(first) = batch.items.into_iter().next() else {
                        return Err("empty answer".into());
                    };
                    return Ok(first.result);
                }
                other => return Err(format!("unexpected {} frame", other.name())),
            }
        }
        let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed".into());
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t01_every_node_derives_the_same_plan() {
        let answers = |order: &[u64]| {
            order
                .iter()
                .map(|id| {
                    let address = format!("127.0.0.1:{id}");
                    let answer = NodeAnswer {
                        node_id: *id,
                        address,
                        cores: 1,
                        is_cluster_member: false,
                        groups: Vec::new(),
                        data_groups: *id as u32,
                        replication_factor: *id as u32 / 5,
                    };
                    (*id, answer)
                })
                .collect::<BTreeMap<_, _>>()
        };
        let a = agree(&answers(&[30, 10, 20]));
        let b = agree(&answers(&[20, 30, 10]));
        assert_eq!(a, b);
        assert_eq!(a.initializer, 10);
        assert_eq!(a.data_groups, 10, "the initializer's data groups");
        assert_eq!(a.replication_factor, 2, "the initializer's replication factor");
        assert_eq!(a.members.len(), 3);
    }
}
