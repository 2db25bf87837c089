//! The outbound peer connections of one core (SPEC §5.6, §10.9; D30). Each core keeps at most one
//! TCP connection to each other node, shared by every group of the core and by the requests it
//! forwards, so a node holds `cores` connections to a peer whatever its number of groups.
//! Calls are pipelined: a writer task packs whatever is queued (heartbeats and appends of many
//! groups, forwarded requests) into one `RequestBatch` frame, and a reader task matches the
//! `ResponseBatch` items back to their callers by request id.

use crate::constants::{
    PEER_BATCH_ITEMS_MAX, PEER_CONNECT_TIMEOUT, PEER_RECONNECT_BACKOFF, PEER_TLS_HANDSHAKE_TIMEOUT,
    PEER_UNREACHABLE_EVENT_INTERVAL,
};
use futures::channel::{mpsc, oneshot};
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use futures::StreamExt;
use glommio::net::TcpStream;
use ledger_wire::codec::{archived_len, encode_frame_to_vec, FrameBudget, FrameReader};
use ledger_wire::frame::FrameKind;
use ledger_wire::messages::{
    Hello, HelloAck, Request, RequestBatch, RequestEnvelope, Response, ResponseBatch, Role, Status,
    StatusCode, StreamEnd, StreamItem, PROTOCOL_VERSION,
};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a call to a peer got no answer from it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// No connection could be made (refused, timed out, handshake failed) or it is backing off.
    #[error("node {node} at {addr} is unreachable: {reason}")]
    Unreachable { node: u64, addr: String, reason: String },
    #[error("node {node} did not answer within {ms} ms")]
    Timeout { node: u64, ms: u128 },
    /// The connection broke after the request was queued: it may or may not have been handled.
    #[error("connection to node {node} closed before it answered")]
    Closed { node: u64 },
    /// A request too large for any frame (never sent).
    #[error("request to node {node} does not fit in a frame")]
    TooLarge { node: u64 },
}

type Pending = HashMap<u64, (u64, oneshot::Sender<Result<Response, Status>>)>;

/// What a stream opened at a peer (`PeerPool::open_stream`) receives.
#[derive(Debug)]
pub enum PeerStreamEvent {
    Item(StreamItem),
    /// The peer ended the stream (its `StreamEnd`); nothing follows.
    End(Status),
}

/// Open streams by request id: the link generation they were opened on and their receiver.
type OpenStreams = HashMap<u64, (u64, flume::Sender<PeerStreamEvent>)>;

#[derive(Debug)]
enum Link {
    Down { retry_at: Option<Instant>, reason: String },
    Up { generation: u64, outbox: mpsc::UnboundedSender<(RequestEnvelope, usize)> },
}

/// One core's connection to one peer node.
#[derive(Debug)]
struct PeerConn {
    node: u64,
    addr: String,
    self_id: u64,
    max_frame_bytes: u32,
    credential: std::sync::Arc<super::credential::PeerCredential>,
    tls: Option<Arc<rustls::ClientConfig>>,
    link: RefCell<Link>,
    connecting: futures::lock::Mutex<()>,
    generation: Cell<u64>,
    next_id: Cell<u64>,
    pending: RefCell<Pending>,
    /// Streams this core opened at the peer (WatchBlocks relayed for a group this node is
    /// outside of, `read/watch_proxy.rs`), fed by the read task.
    streams: RefCell<OpenStreams>,
    /// When this core last recorded `node_unreachable` for the node (at most one per
    /// `PEER_UNREACHABLE_EVENT_INTERVAL`, so a node that stays down cannot flood the event log),
    /// and whether it has connected since.
    unreachable_event_at: Cell<Option<Instant>>,
}

/// The peer connections of one core, keyed by node id.
#[derive(Debug)]
pub struct PeerPool {
    self_id: u64,
    max_frame_bytes: u32,
    faults: std::sync::Arc<crate::faults::Faults>,
    credential: std::sync::Arc<super::credential::PeerCredential>,
    /// Peers are dialled over TLS with this configuration (D43), else over plain TCP.
    tls: Option<Arc<rustls::ClientConfig>>,
    conns: RefCell<HashMap<u64, Rc<PeerConn>>>,
}

impl PeerPool {
    pub fn new(config: &crate::config::ShardConfig) -> Rc<PeerPool> {
        Rc::new(PeerPool {
            self_id: config.node_id,
            max_frame_bytes: config.max_frame_bytes,
            faults: config.faults.clone(),
            credential: config.peer_credential.clone(),
            tls: config.peer_tls.clone(),
            conns: RefCell::new(HashMap::new()),
        })
    }

    pub fn self_id(&self) -> u64 {
        self.self_id
    }

    pub fn max_frame_bytes(&self) -> u32 {
        self.max_frame_bytes
    }

    fn conn(&self, node: u64, addr: &str) -> Rc<PeerConn> {
        let mut conns = self.conns.borrow_mut();
        if let Some(c) = conns.get(&node) {
            if c.addr == addr {
                return c.clone();
            }
        }
        // New node, or it moved: a fresh connection (the old one ends with its last user).
        let c = Rc::new(PeerConn {
            node,
            addr: addr.to_string(),
            self_id: self.self_id,
            max_frame_bytes: self.max_frame_bytes,
            credential: self.credential.clone(),
            tls: self.tls.clone(),
            link: RefCell::new(Link::Down { retry_at: None, reason: String::new() }),
            connecting: futures::lock::Mutex::new(()),
            generation: Cell::new(0),
            next_id: Cell::new(1),
            pending: RefCell::new(HashMap::new()),
            streams: RefCell::new(HashMap::new()),
            unreachable_event_at: Cell::new(None),
        });
        conns.insert(node, c.clone());
        c
    }

    /// Sends `request` to `node` (at `addr`) and waits up to `timeout` for its answer. `Ok` holds
    /// the node's own answer, error statuses included.
    pub async fn call(
        &self,
        node: u64,
        addr: &str,
        request: ledger_wire::messages::Request,
        timeout: Duration,
    ) -> Result<Result<Response, Status>, PeerError> {
        self.call_for(node, addr, request, timeout, None).await
    }

    /// `call` on behalf of a client: `on_behalf_of` is the credential id it authenticated with,
    /// which the receiving leader records as the actor (SPEC §4.1). The envelope's deadline is
    /// `timeout`, so the leader drops the request if it is still queued by then.
    pub async fn call_for(
        &self,
        node: u64,
        addr: &str,
        request: ledger_wire::messages::Request,
        timeout: Duration,
        on_behalf_of: Option<String>,
    ) -> Result<Result<Response, Status>, PeerError> {
        if self.faults.is_partitioned(node) {
            let reason = "partitioned by the test fault switch".to_string();
            return Err(PeerError::Unreachable { node, addr: addr.to_string(), reason });
        }
        let conn = self.conn(node, addr);
        let deadline = glommio::timer::Timer::new(timeout);
        let deadline_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX).max(1);
        let call = conn.call(request, deadline_ms, on_behalf_of);
        futures::pin_mut!(call);
        match futures::future::select(call, deadline).await {
            futures::future::Either::Left((result, _)) => result,
            futures::future::Either::Right(_) => Err(PeerError::Timeout { node, ms: timeout.as_millis() }),
        }
    }

    /// Opens a stream (`WatchBlocks`) at `node`, connecting first if needed (within `timeout`).
    /// Its items arrive through the returned `PeerStream`, which buffers at most `buffer` of
    /// them: a reader that falls further behind, or a link that breaks, ends it (`next` gives
    /// `None`). Dropping it before its end cancels it at the peer.
    pub async fn open_stream(
        &self,
        node: u64,
        addr: &str,
        request: Request,
        buffer: usize,
        timeout: Duration,
    ) -> Result<PeerStream, PeerError> {
        if self.faults.is_partitioned(node) {
            let reason = "partitioned by the test fault switch".to_string();
            return Err(PeerError::Unreachable { node, addr: addr.to_string(), reason });
        }
        let conn = self.conn(node, addr);
        let link = conn.link();
        futures::pin_mut!(link);
        let (generation, outbox) =
            match futures::future::select(link, glommio::timer::Timer::new(timeout)).await {
                futures::future::Either::Left((link, _)) => link?,
                futures::future::Either::Right(_) => {
                    return Err(PeerError::Timeout { node, ms: timeout.as_millis() })
                }
            };
        let id = conn.next_id.get();
        conn.next_id.set(id + 1);
        // A stream has no deadline of its own: it lasts until it ends or is cancelled.
        let envelope = RequestEnvelope { request_id: id, deadline_ms: 0, on_behalf_of: None, request };
        let len = archived_len(&envelope).map_err(|_| PeerError::TooLarge { node })?;
        if !FrameBudget::fits_alone(self.max_frame_bytes, len) {
            return Err(PeerError::TooLarge { node });
        }
        let (tx, rx) = flume::bounded(buffer.max(1));
        conn.streams.borrow_mut().insert(id, (generation, tx));
        let stream = PeerStream { conn: conn.clone(), id, events: rx, ended: false, ended_by_peer: false };
        if outbox.unbounded_send((envelope, len)).is_err() {
            return Err(PeerError::Closed { node });
        }
        Ok(stream)
    }
}

/// A stream open at a peer (`PeerPool::open_stream`).
pub struct PeerStream {
    conn: Rc<PeerConn>,
    id: u64,
    events: flume::Receiver<PeerStreamEvent>,
    /// `next` returned its last event.
    ended: bool,
    /// The peer sent its `StreamEnd`: nothing to cancel.
    ended_by_peer: bool,
}

impl PeerStream {
    /// The node the stream is open at.
    pub fn node(&self) -> u64 {
        self.conn.node
    }

    /// The next item or the peer's end; `None` once the link broke or this reader fell
    /// behind (the peer may have more: open the stream again from where it stopped).
    pub async fn next(&mut self) -> Option<PeerStreamEvent> {
        if self.ended {
            return None;
        }
        let event = self.events.recv_async().await.ok();
        match event {
            Some(PeerStreamEvent::Item(_)) => {}
            Some(PeerStreamEvent::End(_)) => {
                self.ended = true;
                self.ended_by_peer = true;
            }
            None => self.ended = true,
        }
        event
    }
}

impl Drop for PeerStream {
    fn drop(&mut self) {
        self.conn.streams.borrow_mut().remove(&self.id);
        if self.ended_by_peer {
            return;
        }
        // Cancelled here: the peer ends it (its `StreamEnd{Cancelled}` finds no reader) and
        // answers the cancel, which no call waits for.
        if let Some((_, outbox)) = self.conn.up() {
            let id = self.conn.next_id.get();
            self.conn.next_id.set(id + 1);
            let request = Request::CancelStream { request_id: self.id };
            let envelope = RequestEnvelope { request_id: id, deadline_ms: 0, on_behalf_of: None, request };
            if let Ok(len) = archived_len(&envelope) {
                let _ = outbox.unbounded_send((envelope, len));
            }
        }
    }
}

/// Removes a call's pending entry when the call ends early (timeout, caller dropped).
struct PendingGuard<'a> {
    conn: &'a PeerConn,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.conn.pending.borrow_mut().remove(&self.id);
    }
}

impl PeerConn {
    async fn call(
        self: &Rc<Self>,
        request: ledger_wire::messages::Request,
        deadline_ms: u32,
        on_behalf_of: Option<String>,
    ) -> Result<Result<Response, Status>, PeerError> {
        let (generation, outbox) = self.link().await?;
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let envelope = RequestEnvelope { request_id: id, deadline_ms, on_behalf_of, request };
        let len = archived_len(&envelope).map_err(|_| PeerError::TooLarge { node: self.node })?;
        if !FrameBudget::fits_alone(self.max_frame_bytes, len) {
            return Err(PeerError::TooLarge { node: self.node });
        }
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(id, (generation, tx));
        let _guard = PendingGuard { conn: self.as_ref(), id };
        if outbox.unbounded_send((envelope, len)).is_err() {
            return Err(PeerError::Closed { node: self.node });
        }
        rx.await.map_err(|_| PeerError::Closed { node: self.node })
    }

    /// The live link, connecting first if there is none (one attempt at a time; after a failure
    /// callers fail fast until `PEER_RECONNECT_BACKOFF` has passed).
    async fn link(
        self: &Rc<Self>,
    ) -> Result<(u64, mpsc::UnboundedSender<(RequestEnvelope, usize)>), PeerError> {
        if let Some(up) = self.up() {
            return Ok(up);
        }
        let _one = self.connecting.lock().await;
        if let Some(up) = self.up() {
            return Ok(up);
        }
        if let Link::Down { retry_at: Some(at), reason } = &*self.link.borrow() {
            if Instant::now() < *at {
                return Err(self.unreachable(reason.clone()));
            }
        }
        match self.connect().await {
            Ok(up) => {
                if self.unreachable_event_at.take().is_some() {
                    crate::event!(info, "node_reachable", node = self.node, addr = %self.addr);
                }
                Ok(up)
            }
            Err(reason) => {
                let quiet = self
                    .unreachable_event_at
                    .get()
                    .is_some_and(|at| at.elapsed() < PEER_UNREACHABLE_EVENT_INTERVAL);
                if !quiet {
                    self.unreachable_event_at.set(Some(Instant::now()));
                    crate::event!(warn, "node_unreachable", node = self.node, addr = %self.addr, reason = %reason);
                }
                *self.link.borrow_mut() = Link::Down {
                    retry_at: Some(Instant::now() + PEER_RECONNECT_BACKOFF),
                    reason: reason.clone(),
                };
                Err(self.unreachable(reason))
            }
        }
    }

    fn up(&self) -> Option<(u64, mpsc::UnboundedSender<(RequestEnvelope, usize)>)> {
        match &*self.link.borrow() {
            Link::Up { generation, outbox } if !outbox.is_closed() => Some((*generation, outbox.clone())),
            _ => None,
        }
    }

    fn unreachable(&self, reason: String) -> PeerError {
        PeerError::Unreachable { node: self.node, addr: self.addr.clone(), reason }
    }

    async fn connect(
        self: &Rc<Self>,
    ) -> Result<(u64, mpsc::UnboundedSender<(RequestEnvelope, usize)>), String> {
        let stream = TcpStream::connect_timeout(self.addr.as_str(), PEER_CONNECT_TIMEOUT)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let Some(config) = self.tls.clone() else {
            return self.start(stream).await;
        };
        // The peer's certificate must carry the host of its address, signed by a trusted CA;
        // this node presents its own certificate (mutual TLS, D43).
        let name = ledger_wire::tls::server_name(&self.addr).map_err(|e| format!("tls: {e}"))?;
        let handshake = futures_rustls::TlsConnector::from(config).connect(name, stream);
        futures::pin_mut!(handshake);
        match futures::future::select(handshake, glommio::timer::Timer::new(PEER_TLS_HANDSHAKE_TIMEOUT)).await
        {
            futures::future::Either::Left((Ok(tls), _)) => self.start(tls).await,
            futures::future::Either::Left((Err(e), _)) => Err(format!("tls handshake: {e}")),
            futures::future::Either::Right(_) => Err("tls handshake: timed out".to_string()),
        }
    }

    /// The Hello/HelloAck exchange on a connected `stream` (plain or TLS), then its tasks.
    async fn start<S>(
        self: &Rc<Self>,
        stream: S,
    ) -> Result<(u64, mpsc::UnboundedSender<(RequestEnvelope, usize)>), String>
    where
        S: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        let (mut reader, mut writer) = stream.split();
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            role: Role::Peer,
            node_id: Some(self.self_id),
            client_name: format!("ledger-node-{}", self.self_id),
            credential: self.credential.get(),
            namespace_hint: None,
        };
        let frame = encode_frame_to_vec(FrameKind::Hello, &hello).map_err(|e| format!("hello: {e}"))?;
        writer.write_all(&frame).await.map_err(|e| format!("hello: {e}"))?;
        writer.flush().await.map_err(|e| format!("hello: {e}"))?;
        let mut frames = FrameReader::new(self.max_frame_bytes);
        let mut rest = Vec::new();
        let ack = read_frame(&mut reader, &mut frames, &mut rest)
            .await
            .map_err(|e| format!("hello ack: {e}"))?
            .ok_or_else(|| "closed during the handshake".to_string())?;
        let ack: HelloAck = match ack.kind() {
            FrameKind::HelloAck => ack.decode().map_err(|e| format!("hello ack: {e}"))?,
            other => return Err(format!("expected HelloAck, got {}", other.name())),
        };
        if ack.node_id != self.node {
            return Err(format!("{} is node {}, not node {}", self.addr, ack.node_id, self.node));
        }
        let generation = self.generation.get() + 1;
        self.generation.set(generation);
        let (outbox, queued) = mpsc::unbounded();
        *self.link.borrow_mut() = Link::Up { generation, outbox: outbox.clone() };
        let batch_items = (ack.max_batch_items as usize).clamp(1, PEER_BATCH_ITEMS_MAX);
        let max_frame = ack.max_frame_bytes.min(self.max_frame_bytes);
        glommio::spawn_local(write_loop(writer, queued, batch_items, max_frame)).detach();
        glommio::spawn_local(read_loop(self.clone(), reader, frames, rest, generation)).detach();
        Ok((generation, outbox))
    }

    /// The link of `generation` broke: its calls are answered `Closed` (by dropping their
    /// senders), and the next call reconnects.
    fn link_lost(&self, generation: u64, reason: String) {
        let current = matches!(&*self.link.borrow(), Link::Up { generation: g, .. } if *g == generation);
        if current {
            *self.link.borrow_mut() = Link::Down { retry_at: None, reason };
        }
        self.pending.borrow_mut().retain(|_, (g, _)| *g != generation);
        self.streams.borrow_mut().retain(|_, (g, _)| *g != generation);
    }

    /// Hands a stream's item to its reader; a reader `buffer` items behind loses its stream.
    fn stream_item(&self, item: StreamItem) {
        let id = item.request_id;
        let mut streams = self.streams.borrow_mut();
        let Some((_, tx)) = streams.get(&id) else { return };
        if tx.try_send(PeerStreamEvent::Item(item)).is_err() {
            // Dropping the sender ends the reader once it has taken what is queued.
            streams.remove(&id);
        }
    }

    fn stream_end(&self, end: StreamEnd) {
        if let Some((_, tx)) = self.streams.borrow_mut().remove(&end.request_id) {
            let _ = tx.try_send(PeerStreamEvent::End(end.status));
        }
    }
}

/// Reads until one whole frame is buffered. `Ok(None)`: closed between frames.
async fn read_frame<S: AsyncRead + AsyncWrite + Unpin>(
    reader: &mut ReadHalf<S>,
    frames: &mut FrameReader,
    rest: &mut Vec<u8>,
) -> Result<Option<ledger_wire::codec::Frame>, String> {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if !rest.is_empty() {
            let mut input: &[u8] = rest;
            let result = frames.read_from(&mut input);
            let consumed = rest.len() - input.len();
            rest.drain(..consumed);
            match result {
                Ok(Some(frame)) => return Ok(Some(frame)),
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        let n = reader.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return frames.finish().map(|_| None).map_err(|e| e.to_string());
        }
        rest.extend_from_slice(&chunk[..n]);
    }
}

async fn read_loop<S: AsyncRead + AsyncWrite + Unpin>(
    conn: Rc<PeerConn>,
    mut reader: ReadHalf<S>,
    mut frames: FrameReader,
    mut rest: Vec<u8>,
    generation: u64,
) {
    let reason = loop {
        let frame = match read_frame(&mut reader, &mut frames, &mut rest).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break "closed by the peer".to_string(),
            Err(e) => break e,
        };
        match frame.kind() {
            FrameKind::ResponseBatch => match frame.decode::<ResponseBatch>() {
                Ok(batch) => {
                    let mut refused = false;
                    for item in batch.items {
                        // The peer no longer accepts the secret this link opened with (tokens
                        // rotated, D42): the next call reconnects with the current one.
                        refused |= matches!(&item.result, Err(s) if s.code == StatusCode::Unauthenticated);
                        let waiter = conn.pending.borrow_mut().remove(&item.request_id);
                        if let Some((_, tx)) = waiter {
                            let _ = tx.send(item.result);
                        }
                    }
                    if refused {
                        break "the peer refused this node's credential".to_string();
                    }
                }
                Err(e) => break format!("bad response batch: {e}"),
            },
            FrameKind::StreamItem => match frame.decode::<StreamItem>() {
                Ok(item) => conn.stream_item(item),
                Err(e) => break format!("bad stream item: {e}"),
            },
            FrameKind::StreamEnd => match frame.decode::<StreamEnd>() {
                Ok(end) => conn.stream_end(end),
                Err(e) => break format!("bad stream end: {e}"),
            },
            FrameKind::Goaway => break "goaway from the peer".to_string(),
            // Pongs and anything else a peer has no reason to send us are ignored.
            _ => {}
        }
    };
    conn.link_lost(generation, reason);
}

/// Packs queued requests into as few `RequestBatch` frames as their sizes allow.
async fn write_loop<S: AsyncRead + AsyncWrite + Unpin>(
    mut writer: WriteHalf<S>,
    mut queued: mpsc::UnboundedReceiver<(RequestEnvelope, usize)>,
    batch_items: usize,
    max_frame_bytes: u32,
) {
    let mut carry: Option<(RequestEnvelope, usize)> = None;
    loop {
        let first = match carry.take() {
            Some(item) => item,
            None => match queued.next().await {
                Some(item) => item,
                None => break,
            },
        };
        let mut budget = FrameBudget::new(max_frame_bytes);
        budget.try_add(first.1);
        let mut items = vec![first.0];
        while items.len() < batch_items {
            match queued.try_recv() {
                Ok((envelope, len)) => {
                    if budget.try_add(len) {
                        items.push(envelope);
                    } else {
                        carry = Some((envelope, len));
                        break;
                    }
                }
                _ => break,
            }
        }
        let Ok(frame) = encode_frame_to_vec(FrameKind::RequestBatch, &RequestBatch { items }) else {
            break;
        };
        // A TLS stream may keep part of a write buffered until flushed (a no-op on plain TCP).
        if writer.write_all(&frame).await.is_err() || writer.flush().await.is_err() {
            break;
        }
    }
    // The reader sees the close and fails the calls still pending.
    let _ = writer.close().await;
}
