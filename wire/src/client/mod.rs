//! The async client library (feature `client`, tokio): one TCP connection per `Client`, shared by
//! any number of concurrent callers. Requests are pipelined (ids chosen here, responses matched by
//! id in any order) and coalesced by the writer task into `RequestBatch` frames (SPEC §4.3).
//! `WriteSession` adds the idempotent-write rules of SPEC §6.4 on top.
//!
//! Layout: `conn` owns the socket tasks and the pending-call table; `ops` holds typed
//! convenience calls; `session` holds `WriteSession` and `RetryPolicy`.

mod bootstrap;
mod conn;
mod ops;
mod routes;
mod session;
mod stream;
mod verified;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;

use crate::constants::{
    CALL_TIMEOUT_MS_DEFAULT, CLIENT_QUEUE_CAPACITY, CONNECT_TIMEOUT_MS_DEFAULT, MAX_BATCH_ITEMS_DEFAULT,
    MAX_FRAME_BYTES_DEFAULT, MAX_OUTSTANDING_DEFAULT,
};
use crate::error::ClientError;
use crate::messages::{HelloAck, Request, RequestEnvelope, Response, Role};

pub use bootstrap::NodeCache;
use conn::{Answer, Limits, Outgoing, PendingGuard, Shared};
pub use routes::LeaderRoute;
use routes::Routes;
pub use session::{RetryPolicy, WriteOutcome, WriteSession};
pub use stream::{BlockStream, StreamNext};
pub use verified::{verify_read_response, verify_write_success, VerifiedRead, VerifiedReadOptions};

/// How a `Client` connects and behaves. `Debug` never shows the credential.
#[derive(Clone)]
pub struct ClientOptions {
    /// `Client` or `Admin` (SPEC §4.1); `Peer` is for node-to-node traffic.
    pub role: Role,
    /// Sent in `Hello`; shows up in server logs.
    pub client_name: String,
    /// Token secret, when the cluster has `auth_tokens` configured.
    pub credential: Option<String>,
    /// Bound on TCP connect plus the Hello/HelloAck exchange.
    pub connect_timeout: Duration,
    /// Default deadline of one call (also sent to the server as `deadline_ms`).
    pub call_timeout: Duration,
    /// Most envelopes per `RequestBatch`; the effective value is also capped by `HelloAck`.
    pub max_batch_items: u32,
    /// Largest payload accepted from the server during the handshake; afterwards the larger of
    /// this and the `max_frame_bytes` the server announced (it never sends more than that).
    pub max_frame_bytes: u32,
    /// Most calls in flight on this connection (the server rejects more with `ResourceExhausted`).
    pub max_outstanding: usize,
    /// Learn each namespace's leader from the hints of forwarded answers and send its writes
    /// and linearizable reads there directly (D33). Harmless on a single node (nothing is
    /// forwarded, so nothing is learned).
    pub follow_leaders: bool,
    /// Connect over TLS (D43); `None` = plain TCP.
    pub tls: Option<ClientTls>,
    /// Sent in `Hello`: the namespace this connection will mostly serve, so that the node can
    /// serve it on the core that owns that namespace (D53). Every request still works on any
    /// connection.
    pub namespace_hint: Option<i64>,
    /// Other nodes of the cluster (`ip:port`): when this connection's node is gone,
    /// `reconnect` tries them in order after it (D78). `connect_any` fills it with its
    /// candidates.
    pub fallback_addrs: Vec<String>,
}

/// How a `Client` speaks TLS: whom it trusts, what it presents, and which name it checks.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// Trusted CAs and, for mutual TLS, the client's own certificate (`crate::tls`).
    pub config: Arc<rustls::ClientConfig>,
    /// The name the server's certificate must carry; `None` = the IP address connected to
    /// (so each node of a cluster, leaders reached by `follow_leaders` included, is checked
    /// against its own address).
    pub server_name: Option<rustls::pki_types::ServerName<'static>>,
}

impl ClientTls {
    /// Trusts the CA certificates of the PEM file `ca`; presents `identity` (certificate chain
    /// and key PEM files) when the server requires a client certificate.
    pub fn from_files(
        ca: &std::path::Path,
        identity: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Result<ClientTls, crate::tls::TlsError> {
        Ok(ClientTls { config: Arc::new(crate::tls::client_config(ca, identity)?), server_name: None })
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            role: Role::Client,
            client_name: format!("ledger-wire/{}", env!("CARGO_PKG_VERSION")),
            credential: None,
            connect_timeout: Duration::from_millis(CONNECT_TIMEOUT_MS_DEFAULT),
            call_timeout: Duration::from_millis(CALL_TIMEOUT_MS_DEFAULT),
            max_batch_items: MAX_BATCH_ITEMS_DEFAULT,
            max_frame_bytes: MAX_FRAME_BYTES_DEFAULT,
            max_outstanding: MAX_OUTSTANDING_DEFAULT,
            follow_leaders: true,
            tls: None,
            namespace_hint: None,
            fallback_addrs: Vec::new(),
        }
    }
}

impl ClientOptions {
    /// Defaults with the `Admin` role (for `ledger-admin`).
    pub fn admin() -> Self {
        ClientOptions { role: Role::Admin, ..ClientOptions::default() }
    }
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("role", &self.role)
            .field("client_name", &self.client_name)
            .field("credential", &self.credential.as_ref().map(|_| "<redacted>"))
            .field("namespace_hint", &self.namespace_hint)
            .field("connect_timeout", &self.connect_timeout)
            .field("call_timeout", &self.call_timeout)
            .field("max_batch_items", &self.max_batch_items)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("max_outstanding", &self.max_outstanding)
            .field("follow_leaders", &self.follow_leaders)
            .field("fallback_addrs", &self.fallback_addrs)
            .finish()
    }
}

/// The token secret in `path` (`--token-file`, `LEDGER_TOKEN_FILE`): the file's text without
/// surrounding whitespace. The error names the file, never its contents.
pub fn read_token_file(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("token file {}: {e}", path.display()))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(format!("token file {} is empty", path.display()));
    }
    Ok(secret.to_string())
}
/// A started connection: its shared table, its writer's queue and its two socket tasks.
type Started = (Arc<Shared>, mpsc::Sender<Outgoing>, [JoinHandle<()>; 2]);

/// Per-call overrides.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallOptions {
    /// Deadline of this call; `None` = `ClientOptions::call_timeout`.
    pub timeout: Option<Duration>,
}

/// A connection to one node. Cheap to clone; all clones share the connection. When the last
/// clone is dropped the socket tasks stop.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    queue: mpsc::Sender<Outgoing>,
    permits: Arc<Semaphore>,
    next_request_id: AtomicU64,
    hello_ack: HelloAck,
    peer_addr: SocketAddr,
    options: ClientOptions,
    /// Leaders learned and side connections to them (`follow_leaders`).
    routes: Option<Arc<Routes>>,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("peer_addr", &self.inner.peer_addr).finish_non_exhaustive()
    }
}

impl Client {
    /// Connects, sets `TCP_NODELAY`, exchanges Hello/HelloAck and starts the socket tasks.
    pub async fn connect<A: ToSocketAddrs>(addr: A, options: ClientOptions) -> Result<Client, ClientError> {
        let started = Instant::now();
        let connect = async {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let peer_addr = stream.peer_addr()?;
            Ok::<_, ClientError>((stream, peer_addr))
        };
        let connected = match tokio::time::timeout(options.connect_timeout, connect).await {
            Ok(result) => result?,
            Err(_) => return Err(ClientError::Timeout { elapsed_ms: elapsed_ms(started) }),
        };
        let (stream, peer_addr) = connected;
        let left = options.connect_timeout.saturating_sub(started.elapsed());
        let (hello_ack, tasks) = match &options.tls {
            // Plain TCP keeps tokio's lock-free owned halves.
            None => Client::start(stream, TcpStream::into_split, &options, left, started).await?,
            Some(tls) => {
                let name = tls
                    .server_name
                    .clone()
                    .unwrap_or_else(|| rustls::pki_types::ServerName::IpAddress(peer_addr.ip().into()));
                let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config));
                let stream = match tokio::time::timeout(left, connector.connect(name, stream)).await {
                    Ok(result) => result?,
                    Err(_) => return Err(ClientError::Timeout { elapsed_ms: elapsed_ms(started) }),
                };
                let left = options.connect_timeout.saturating_sub(started.elapsed());
                Client::start(stream, tokio::io::split, &options, left, started).await?
            }
        };
        let (shared, queue, tasks) = tasks;
        let routes = options.follow_leaders.then(|| Arc::new(Routes::new(peer_addr, &options)));
        Ok(Client {
            inner: Arc::new(Inner {
                shared,
                queue,
                permits: Arc::new(Semaphore::new(options.max_outstanding.max(1))),
                next_request_id: AtomicU64::new(1),
                hello_ack,
                peer_addr,
                options,
                routes,
                tasks,
            }),
        })
    }

    /// The Hello/HelloAck exchange on `stream` (plain or TLS) within `left`, then the socket
    /// tasks on the two halves `split` makes of it.
    async fn start<S, R, W>(
        mut stream: S,
        split: impl FnOnce(S) -> (R, W),
        options: &ClientOptions,
        left: Duration,
        started: Instant,
    ) -> Result<(HelloAck, Started), ClientError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
        R: tokio::io::AsyncRead + Unpin + Send + 'static,
        W: tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (hello_ack, mut reader, leftover) =
            match tokio::time::timeout(left, conn::handshake(&mut stream, options)).await {
                Ok(result) => result?,
                Err(_) => return Err(ClientError::Timeout { elapsed_ms: elapsed_ms(started) }),
            };
        let limits = Limits::negotiate(options, &hello_ack);
        reader.set_max_frame_bytes(Limits::receive_max(options, &hello_ack));
        let shared = Arc::new(Shared::default());
        let (queue, queue_rx) = mpsc::channel(CLIENT_QUEUE_CAPACITY);
        let (read_half, write_half) = split(stream);
        let writer = tokio::spawn(conn::writer_loop(write_half, queue_rx, Arc::clone(&shared), limits));
        let reader =
            tokio::spawn(conn::reader_loop(read_half, reader, leftover, Arc::clone(&shared), queue.clone()));
        Ok((hello_ack, (shared, queue, [writer, reader])))
    }

    /// A new connection with the same options: to the same node, else to the first of
    /// `fallback_addrs` that answers (D78). Fails with the last error when none does.
    pub async fn reconnect(&self) -> Result<Client, ClientError> {
        let options = &self.inner.options;
        let mut last = match Client::connect(self.inner.peer_addr, options.clone()).await {
            Ok(client) => return Ok(client),
            Err(e) => e,
        };
        let own = self.inner.peer_addr.to_string();
        for addr in options.fallback_addrs.iter().filter(|a| **a != own) {
            match Client::connect(addr.as_str(), options.clone()).await {
                Ok(client) => return Ok(client),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// What the server announced in `HelloAck`.
    pub fn hello_ack(&self) -> &HelloAck {
        &self.inner.hello_ack
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.inner.peer_addr
    }

    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// The error every call fails with once the connection is gone; `None` while it is usable.
    pub fn closed_reason(&self) -> Option<ClientError> {
        self.inner.shared.closed_reason()
    }

    /// Fails all pending calls with `Closed` and stops the socket tasks.
    pub fn close(&self) {
        self.inner.shared.close(ClientError::Closed { reason: "closed by the client".to_string() });
        for task in &self.inner.tasks {
            task.abort();
        }
    }

    /// Sends one request with the default deadline.
    pub async fn call(&self, request: Request) -> Result<Response, ClientError> {
        self.call_with(request, CallOptions::default()).await
    }

    /// The leader this client learned for `namespace_id`'s group, when it is not the node this
    /// client is connected to (`follow_leaders`).
    pub fn learned_leader(&self, namespace_id: i64) -> Option<LeaderRoute> {
        self.inner.routes.as_ref()?.leader_of(namespace_id)
    }

    /// How many calls went to a learned leader over a side connection rather than this one.
    pub fn routed_calls(&self) -> u64 {
        self.inner.routes.as_ref().map_or(0, |r| r.routed())
    }

    /// Sends one request. A transport `Status` becomes `ClientError::Status`; the deadline
    /// covers waiting for an in-flight slot, the round trip and the server's work. With
    /// `follow_leaders`, a leader-only request for a namespace whose leader was learned goes to
    /// that leader directly.
    pub async fn call_with(&self, request: Request, options: CallOptions) -> Result<Response, ClientError> {
        let routed = self.inner.routes.as_ref().and_then(|routes| {
            let namespace_id = request.leader_namespace()?;
            let (side, route) = routes.client_for(namespace_id)?;
            Some((routes, namespace_id, side, route))
        });
        if let Some((routes, namespace_id, side, route)) = routed {
            routes.count_routed();
            let (result, hint) = side.call_answer(request, options).await;
            if let Err(error) = &result {
                routes.on_side_error(namespace_id, &route, error);
            }
            if let Some(hint) = hint {
                routes.learn(namespace_id, hint);
            }
            return result;
        }
        let namespace_id = request.leader_namespace();
        let (result, hint) = self.call_answer(request, options).await;
        if let (Some(routes), Some(namespace_id), Some(hint)) = (&self.inner.routes, namespace_id, hint) {
            routes.learn(namespace_id, hint);
        }
        result
    }

    /// One call on this connection, with the leader hint its answer carried.
    async fn call_answer(&self, request: Request, options: CallOptions) -> Answer {
        let timeout = options.timeout.unwrap_or(self.inner.options.call_timeout);
        let started = Instant::now();
        let call = async {
            let _permit = self.inner.permits.acquire().await.map_err(|_| self.lost())?;
            let (guard, reply) = self.enqueue(request, timeout.saturating_sub(started.elapsed())).await?;
            let answer = reply.await.map_err(|_| self.lost())?;
            drop(guard);
            Ok::<_, ClientError>(answer)
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => (Err(error), None),
            Err(_) => (Err(ClientError::Timeout { elapsed_ms: elapsed_ms(started) }), None),
        }
    }

    /// `call` for a request that is safe to repeat (a read or lookup; writes go through
    /// `WriteSession`, which keeps their sequence): a retryable failure (`Unavailable`,
    /// `DeadlineExceeded`, `ResourceExhausted`, a timeout) is retried after `policy`'s jittered
    /// exponential backoff, at most `policy.max_attempts` attempts in all. A lost connection is
    /// returned at once, since only the caller can replace it (`reconnect`).
    pub async fn call_idempotent(
        &self,
        request: Request,
        policy: &RetryPolicy,
    ) -> Result<Response, ClientError> {
        let mut rng: Option<rand::rngs::StdRng> = None;
        let mut attempt = 0u32;
        loop {
            let error = match self.call(request.clone()).await {
                Ok(response) => return Ok(response),
                Err(error) => error,
            };
            attempt += 1;
            let lost = error.is_connection_lost() || self.closed_reason().is_some();
            if !error.is_retryable() || lost || attempt >= policy.max_attempts.max(1) {
                return Err(error);
            }
            let rng = rng.get_or_insert_with(rand::SeedableRng::from_entropy);
            tokio::time::sleep(policy.delay(attempt - 1, rng)).await;
        }
    }

    /// Sends many independent requests at once (they leave in as few frames as the batch limit
    /// allows) and returns their results in request order. The deadline applies to the whole call.
    pub async fn call_batch(&self, requests: Vec<Request>) -> Vec<Result<Response, ClientError>> {
        self.call_batch_with(requests, CallOptions::default()).await
    }

    /// `call_batch` with per-call options.
    pub async fn call_batch_with(
        &self,
        requests: Vec<Request>,
        options: CallOptions,
    ) -> Vec<Result<Response, ClientError>> {
        let timeout = options.timeout.unwrap_or(self.inner.options.call_timeout);
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started) + timeout;
        let chunk_len = self.inner.options.max_outstanding.max(1);
        let mut results = Vec::with_capacity(requests.len());
        let mut requests = requests.into_iter().peekable();
        while requests.peek().is_some() {
            let chunk: Vec<Request> = requests.by_ref().take(chunk_len).collect();
            let chunk_results = self.call_chunk(chunk, deadline, timeout, started).await;
            results.extend(chunk_results);
        }
        results
    }

    /// One chunk of at most `max_outstanding` requests: enqueue all, then collect all.
    async fn call_chunk(
        &self,
        chunk: Vec<Request>,
        deadline: tokio::time::Instant,
        timeout: Duration,
        started: Instant,
    ) -> Vec<Result<Response, ClientError>> {
        let count = chunk.len();
        let permits = u32::try_from(count).unwrap_or(u32::MAX);
        let permit = match tokio::time::timeout_at(deadline, self.inner.permits.acquire_many(permits)).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return vec![Err(self.lost()); count],
            Err(_) => return vec![Err(ClientError::Timeout { elapsed_ms: elapsed_ms(started) }); count],
        };
        let mut waiting = Vec::with_capacity(count);
        for request in chunk {
            waiting.push(self.enqueue(request, timeout.saturating_sub(started.elapsed())).await);
        }
        let mut results = Vec::with_capacity(count);
        for entry in waiting {
            let result = match entry {
                Err(e) => Err(e),
                Ok((guard, reply)) => {
                    let result = match tokio::time::timeout_at(deadline, reply).await {
                        Ok(Ok((result, _hint))) => result,
                        Ok(Err(_)) => Err(self.lost()),
                        Err(_) => Err(ClientError::Timeout { elapsed_ms: elapsed_ms(started) }),
                    };
                    drop(guard);
                    result
                }
            };
            results.push(result);
        }
        drop(permit);
        results
    }

    /// Registers a pending call and hands its envelope to the writer task.
    async fn enqueue(
        &self,
        request: Request,
        remaining: Duration,
    ) -> Result<(PendingGuard, oneshot::Receiver<Answer>), ClientError> {
        let request_id = self.inner.next_request_id.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply_rx) = oneshot::channel();
        self.inner.shared.register(request_id, reply_tx)?;
        let guard = PendingGuard::new(Arc::clone(&self.inner.shared), request_id);
        let deadline_ms = u32::try_from(remaining.as_millis()).unwrap_or(u32::MAX).max(1);
        let envelope = RequestEnvelope { request_id, deadline_ms, on_behalf_of: None, request };
        self.inner.queue.send(Outgoing::Request(envelope)).await.map_err(|_| self.lost())?;
        Ok((guard, reply_rx))
    }

    /// The error for a call that lost its connection.
    fn lost(&self) -> ClientError {
        self.inner
            .shared
            .closed_reason()
            .unwrap_or_else(|| ClientError::Closed { reason: "connection task stopped".to_string() })
    }
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
