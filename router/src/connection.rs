//! One client or peer connection (SPEC §4.1–4.3): the Hello handshake, then a read loop that
//! decodes `RequestBatch` frames and dispatches each envelope, and a write task that coalesces
//! the replies arriving from any core into `ResponseBatch` frames (out of order, as they come).
//! Framing or protocol errors get a `Goaway` and close this connection only.

use crate::auth::{access_of, Access, AuthState, Credential};
use crate::constants::{
    CONTROL_QUEUE_MAX, PONGS_QUEUED_MAX, READ_CHUNK_BYTES, RESPONSES_PER_FRAME_MAX, SERVER_VERSION,
};
use crate::dispatch::{answer, Dispatcher};
use crate::listener::RouterSettings;
use crate::streams::{encode_stream_events, release, OpenStreams};
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use futures::FutureExt;
use ledger_shard::read::watch::StreamEvent;
use ledger_shard::Caller;
use ledger_wire::codec::{archived_len, encode_frame, encode_frame_limited, Frame, FrameBudget, FrameReader};
use ledger_wire::frame::FrameKind;
use ledger_wire::messages::*;
use std::cell::Cell;
use std::ops::ControlFlow;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

/// Frames the read loop asks the write task to send besides responses.
pub enum Control {
    HelloAck(HelloAck),
    Pong(u64),
    /// Sent last; the write task closes the connection after it.
    Goaway(Goaway),
    /// Node shutdown: write the replies still owed (bounded by `SHUTDOWN_DRAIN`), then
    /// `Goaway{Shutdown}` and close.
    Shutdown,
}

/// How long a shutting-down connection keeps writing owed replies before its Goaway.
const SHUTDOWN_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The control channels of this core's open connections, so that a node shutdown can tell each
/// client `Goaway{Shutdown}` (SPEC §11.7).
#[derive(Default)]
pub struct Connections {
    controls: std::cell::RefCell<Vec<flume::Sender<Control>>>,
    shutting_down: Cell<bool>,
    live: Cell<usize>,
}

/// Counts a connection as live until dropped.
struct LiveGuard(Rc<Connections>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live.set(self.0.live.get().saturating_sub(1));
    }
}

impl Connections {
    fn register(&self, control: flume::Sender<Control>) {
        let mut controls = self.controls.borrow_mut();
        controls.retain(|c| !c.is_disconnected());
        controls.push(control);
    }

    /// Connections still open on this core.
    pub fn live(&self) -> usize {
        self.live.get()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.get()
    }

    /// Stops new requests on every connection and starts their Goaway{Shutdown}.
    pub fn shutdown_all(&self) {
        self.shutting_down.set(true);
        for control in self.controls.borrow_mut().drain(..) {
            // Never full: see CONTROL_QUEUE_MAX.
            let _ = control.try_send(Control::Shutdown);
        }
    }
}

/// Serves one connection on `stream`: a plain TCP socket, or a TLS stream over one
/// (tls_accept.rs). Generic rather than boxed so the plain path stays as it was.
pub async fn serve_connection<S>(
    stream: S,
    settings: Arc<RouterSettings>,
    dispatcher: Rc<Dispatcher>,
    connections: Rc<Connections>,
    slot: crate::admission::Slot,
    auth: Rc<AuthState>,
) where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    // Held until the connection ends: the node's count of open connections (D46).
    let _slot = slot;
    let (reader, writer) = stream.split();
    let (control_tx, control_rx) = flume::bounded::<Control>(CONTROL_QUEUE_MAX);
    if connections.is_shutting_down() {
        let _ = control_tx.try_send(Control::Shutdown);
    }
    connections.register(control_tx.clone());
    connections.live.set(connections.live.get() + 1);
    let _live = LiveGuard(connections.clone());
    let _counted = crate::observe::OpenConnection::count();
    let inflight = Rc::new(crate::observe::InFlight::new(dispatcher.throttle().clone()));
    // Unbounded, and bounded all the same: every reply answers one request the read loop
    // admitted, it admits one only while `outstanding` + open streams < requests_max_concurrent,
    // and `outstanding` drops only once the write loop has taken the reply off this channel and
    // encoded it. So at most `requests_max_concurrent` replies are ever queued here. (A bounded
    // channel would not add safety: shards answer with `try_send`, and a reply refused for a
    // full channel would leave its request unanswered forever.)
    let (reply_tx, reply_rx) = flume::unbounded::<ResponseEnvelope>();
    // Unbounded, bounded by construction too: open streams count against
    // `requests_max_concurrent` (read loop), and each stream ends itself with ResourceExhausted
    // once `stream_buffer` of its items wait unsent (shard/src/watch.rs), so at most
    // requests_max_concurrent × (stream_buffer + 1) events are queued here.
    let (stream_tx, stream_rx) = flume::unbounded::<StreamEvent>();
    let streams = Rc::new(OpenStreams::default());
    let outstanding = Rc::new(Cell::new(0usize));
    let write_side = WriteSide {
        writer,
        max_frame_bytes: settings.max_frame_bytes,
        control: control_rx,
        replies: reply_rx,
        outstanding: outstanding.clone(),
        streams: stream_rx,
        open: streams.clone(),
        inflight: inflight.clone(),
        out: Vec::with_capacity(64 * 1024),
        written: Vec::new(),
        control_open: true,
        drain_deadline: None,
        carried: None,
    };
    let writer_task = glommio::spawn_local(write_side.run()).detach();
    let mut session = Session {
        reader,
        frames: FrameReader::new(settings.max_frame_bytes),
        chunk: vec![0u8; READ_CHUNK_BYTES],
        pending: Vec::new(),
        settings,
        streams: streams.clone(),
        stream_tx,
        inflight,
        auth,
    };
    let mut writer_task = writer_task;
    let ended = {
        let run = session.run(&dispatcher, &connections, &control_tx, &reply_tx, &outstanding);
        futures::pin_mut!(run);
        match futures::future::select(run, &mut writer_task).await {
            futures::future::Either::Left((goaway, _)) => Some(goaway),
            // The write side ended first (it sent a Goaway, or the socket failed): the
            // connection is over, and dropping the read loop cancels its pending read.
            futures::future::Either::Right(_) => None,
        }
    };
    if let Some(goaway) = ended {
        if let Some(goaway) = goaway {
            let _ = control_tx.try_send(Control::Goaway(goaway));
        }
        drop(control_tx);
        drop(reply_tx);
        let _ = writer_task.await;
    }
    // Whatever ended the connection, its streams end with it.
    streams.cancel_all(&dispatcher);
}

struct Session<S> {
    reader: ReadHalf<S>,
    frames: FrameReader,
    chunk: Vec<u8>,
    /// Bytes read but not yet consumed by the frame reader.
    pending: Vec<u8>,
    settings: Arc<RouterSettings>,
    /// This connection's open streams; while any is open the connection is not idle.
    streams: Rc<OpenStreams>,
    stream_tx: flume::Sender<StreamEvent>,
    /// When each outstanding request was admitted (observe.rs).
    inflight: Rc<crate::observe::InFlight>,
    /// This core's `auth_tokens` (D42).
    auth: Rc<AuthState>,
}

/// What the client's Hello settled for the rest of the connection.
struct Greeting {
    /// Requests on a peer connection were sent on by another node (D30).
    peer: bool,
    /// The node a peer connection speaks for (`None` on a client connection).
    peer_node: Option<u64>,
    /// The token the Hello presented, checked again on every request (D42).
    credential: Credential,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Runs the connection; returns the Goaway to send, or `None` when the peer just closed.
    async fn run(
        &mut self,
        dispatcher: &Dispatcher,
        connections: &Connections,
        control: &flume::Sender<Control>,
        replies: &flume::Sender<ResponseEnvelope>,
        outstanding: &Cell<usize>,
    ) -> Option<Goaway> {
        let hello = match self.await_hello().await {
            ControlFlow::Continue(hello) => hello,
            ControlFlow::Break(ended) => return ended,
        };
        let mut greeting = match self.accept_hello(hello, control) {
            ControlFlow::Continue(greeting) => greeting,
            ControlFlow::Break(ended) => return ended,
        };
        loop {
            let frame = match self.next_frame().await {
                Ok(Some(frame)) => frame,
                Ok(None) => return None,
                Err(goaway) => return Some(goaway),
            };
            let next = match frame.kind() {
                FrameKind::RequestBatch => {
                    self.serve_request_batch(
                        frame,
                        &mut greeting,
                        dispatcher,
                        connections,
                        replies,
                        outstanding,
                    )
                    .await
                }
                FrameKind::Ping => answer_ping(&frame, control),
                FrameKind::Goaway => return None,
                other => {
                    return Some(goaway(
                        GoawayCode::ProtocolError,
                        &format!("a client may not send {} frames", other.name()),
                    ))
                }
            };
            if let ControlFlow::Break(ended) = next {
                return ended;
            }
        }
    }

    /// Reads the connection's first frame, which must come within `handshake_timeout`.
    /// `Break` ends the connection: `None` when the peer closed, else the Goaway to send.
    async fn await_hello(&mut self) -> ControlFlow<Option<Goaway>, Frame> {
        // A socket that never says Hello holds a connection slot: it gets handshake_timeout.
        let first =
            glommio::timer::timeout(self.settings.handshake_timeout, async { Ok(self.next_frame().await) });
        match first.await {
            Ok(Ok(Some(frame))) => ControlFlow::Continue(frame),
            Ok(Ok(None)) => ControlFlow::Break(None),
            Ok(Err(goaway)) => ControlFlow::Break(Some(goaway)),
            Err(_) => {
                let secs = self.settings.handshake_timeout.as_secs_f64();
                ControlFlow::Break(Some(goaway(
                    GoawayCode::Idle,
                    &format!("no Hello within the handshake timeout ({secs} s)"),
                )))
            }
        }
    }

    /// Checks that the first frame is a Hello this server speaks, queues the `HelloAck`, and
    /// returns what the Hello settled; `Break` carries the Goaway that refuses it.
    fn accept_hello(
        &self,
        hello: Frame,
        control: &flume::Sender<Control>,
    ) -> ControlFlow<Option<Goaway>, Greeting> {
        if hello.kind() != FrameKind::Hello {
            return ControlFlow::Break(Some(goaway(
                GoawayCode::ProtocolError,
                "the first frame must be Hello",
            )));
        }
        let mut hello: Hello = match hello.decode::<Hello>() {
            Ok(hello) => hello,
            Err(e) => return ControlFlow::Break(Some(goaway(e.goaway_code(), &e.to_string()))),
        };
        if hello.protocol_version != PROTOCOL_VERSION {
            return ControlFlow::Break(Some(goaway(
                GoawayCode::UnsupportedVersion,
                &format!(
                    "protocol version {} is not supported (this server speaks 1)",
                    hello.protocol_version
                ),
            )));
        }
        // Requests on a peer connection were sent on by another node (D30); a peer proves it is
        // one with the peer token, a client with its own (D42). Only the secret's hash is kept.
        let peer = hello.role == Role::Peer;
        let credential = Credential::new(hello.credential.take().as_deref(), &self.auth);
        let peer_node = if peer { hello.node_id } else { None };
        // Never full: see CONTROL_QUEUE_MAX.
        let _ = control.try_send(Control::HelloAck(HelloAck {
            protocol_version: PROTOCOL_VERSION,
            node_id: self.settings.node_id,
            cluster_id: Some(self.settings.node_id),
            max_frame_bytes: self.settings.max_frame_bytes,
            max_batch_items: self.settings.max_batch_items,
            server_version: SERVER_VERSION.to_string(),
        }));
        ControlFlow::Continue(Greeting { peer, peer_node, credential })
    }

    /// Decodes a `RequestBatch` frame and serves its envelopes in order; `Break` ends the
    /// connection (a malformed batch, or a peer cut off by the test partition switch).
    async fn serve_request_batch(
        &self,
        frame: Frame,
        greeting: &mut Greeting,
        dispatcher: &Dispatcher,
        connections: &Connections,
        replies: &flume::Sender<ResponseEnvelope>,
        outstanding: &Cell<usize>,
    ) -> ControlFlow<Option<Goaway>> {
        let batch = self.decode_request_batch(&frame)?;
        // The test partition switch: a cut-off peer's frames vanish with its link.
        if greeting.peer_node.is_some_and(|node| self.settings.faults.is_partitioned(node)) {
            return ControlFlow::Break(None);
        }
        for envelope in batch.items {
            self.serve_envelope(envelope, greeting, dispatcher, connections, replies, outstanding).await;
        }
        ControlFlow::Continue(())
    }

    /// Decodes a `RequestBatch` (counted in the wire metrics) and checks it holds
    /// 1..=`max_batch_items` envelopes; `Break` carries the Goaway for a batch that does not.
    #[inline]
    fn decode_request_batch(&self, frame: &Frame) -> ControlFlow<Option<Goaway>, RequestBatch> {
        let decode_started = std::time::Instant::now();
        let batch = match frame.decode::<RequestBatch>() {
            Ok(batch) => batch,
            Err(e) => return ControlFlow::Break(Some(goaway(e.goaway_code(), &e.to_string()))),
        };
        let decoded = (frame.payload.len(), decode_started.elapsed());
        ledger_shard::metrics::with(|m| m.wire_frame(true, decoded.0, decoded.1));
        if batch.items.is_empty() || batch.items.len() > self.settings.max_batch_items as usize {
            return ControlFlow::Break(Some(goaway(
                GoawayCode::ProtocolError,
                &format!(
                    "a RequestBatch holds 1..={} envelopes, got {}",
                    self.settings.max_batch_items,
                    batch.items.len()
                ),
            )));
        }
        ControlFlow::Continue(batch)
    }

    /// Serves one envelope: opens its stream, or answers it here (refused, or a stream
    /// cancelled), or sends it on to the core that serves it.
    async fn serve_envelope(
        &self,
        envelope: RequestEnvelope,
        greeting: &mut Greeting,
        dispatcher: &Dispatcher,
        connections: &Connections,
        replies: &flume::Sender<ResponseEnvelope>,
        outstanding: &Cell<usize>,
    ) {
        let peer = greeting.peer;
        // Checked on every request: the table may have changed since the last.
        let access = if peer { Access::Peer } else { access_of(&envelope.request) };
        let authorized =
            greeting.credential.check(&self.auth, access).map(|token| token.map(|token| token.id.clone()));
        if let Request::WatchBlocks { namespace_id, vault_id, start_height } = envelope.request {
            let refusal = if connections.is_shutting_down() {
                Some(Status::unavailable("node is shutting down"))
            } else {
                authorized.err()
            };
            self.streams
                .open(
                    dispatcher,
                    &self.stream_tx,
                    envelope.request_id,
                    namespace_id,
                    vault_id,
                    start_height,
                    refusal,
                    outstanding.get(),
                    self.settings.requests_max_concurrent,
                    peer,
                )
                .await;
            return;
        }
        outstanding.set(outstanding.get() + 1);
        self.inflight.start(&envelope);
        let token_id = match self.admit(&envelope, authorized, peer, connections, outstanding) {
            Ok(token_id) => token_id,
            Err(status) => {
                answer(replies, envelope.request_id, status);
                return;
            }
        };
        if let Request::CancelStream { request_id: stream } = envelope.request {
            self.streams.cancel(dispatcher, replies, envelope.request_id, stream);
            return;
        }
        self.send_on(envelope, peer, token_id, dispatcher, replies).await;
    }

    /// Sends an admitted request on to the core that serves it, unless it is answered here: a
    /// caller it may not name, or (client writes) a namespace this core knows is over its rate
    /// limit.
    async fn send_on(
        &self,
        mut envelope: RequestEnvelope,
        peer: bool,
        token_id: Option<Arc<str>>,
        dispatcher: &Dispatcher,
        replies: &flume::Sender<ResponseEnvelope>,
    ) {
        let caller = match self.caller_of(&mut envelope, peer, token_id) {
            Ok(caller) => caller,
            Err(status) => {
                answer(replies, envelope.request_id, status);
                return;
            }
        };
        if !peer && refused_here(dispatcher, &self.inflight, replies, &envelope, &caller) {
            return;
        }
        dispatcher.dispatch(envelope, replies, peer, caller).await;
    }

    /// The token id a request (not a stream) runs under, or the status that refuses it on this
    /// connection, checked in this order: node shutting down, credential refused, a peer call on
    /// a client connection, too many requests and streams outstanding.
    // The refusal is answered as the wire `Status` at once; boxing it would only allocate.
    #[allow(clippy::result_large_err)]
    #[inline]
    fn admit(
        &self,
        envelope: &RequestEnvelope,
        authorized: Result<Option<Arc<str>>, Status>,
        peer: bool,
        connections: &Connections,
        outstanding: &Cell<usize>,
    ) -> Result<Option<Arc<str>>, Status> {
        if connections.is_shutting_down() {
            return Err(Status::unavailable("node is shutting down"));
        }
        let token_id = authorized?;
        if !peer && matches!(envelope.request, Request::Peer(_)) {
            return Err(Status::new(
                StatusCode::PermissionDenied,
                "peer calls are only accepted on a connection whose Hello says Role::Peer",
            ));
        }
        // Open streams count as outstanding requests (SPEC §4.1). A peer's
        // requests are bounded by its own clients' limits and by the cores'
        // inboxes, which refuse work when full.
        if !peer && outstanding.get() + self.streams.len() > self.settings.requests_max_concurrent {
            return Err(ledger_wire::messages::Status::exhausted(format!(
                "more than {} requests and streams outstanding on this connection",
                self.settings.requests_max_concurrent
            )));
        }
        Ok(token_id)
    }

    /// Who sent `envelope` and its deadline (SPEC §4.1): the client's `deadline_ms` (0 = none)
    /// capped by `requests_timeout`. The credential is the connection's token id (`token_id`),
    /// or on a peer connection the client's the forwarding node names; only a peer may name one.
    // The refusal is answered as the wire `Status` at once; boxing it would only allocate.
    #[allow(clippy::result_large_err)]
    fn caller_of(
        &self,
        envelope: &mut RequestEnvelope,
        peer: bool,
        token_id: Option<Arc<str>>,
    ) -> Result<Caller, Status> {
        let on_behalf_of = envelope.on_behalf_of.take();
        if on_behalf_of.is_some() && !peer {
            return Err(Status::new(
                StatusCode::PermissionDenied,
                "on_behalf_of is set only by nodes forwarding a request (Role::Peer connections)",
            ));
        }
        let timeout = match envelope.deadline_ms {
            0 => self.settings.requests_timeout,
            ms => self.settings.requests_timeout.min(std::time::Duration::from_millis(u64::from(ms))),
        };
        let deadline = std::time::Instant::now() + timeout;
        let credential_id = if peer { on_behalf_of.map(Into::into) } else { token_id };
        Ok(Caller { credential_id, deadline })
    }

    /// Reads until one whole frame is available. `Ok(None)` = clean close between frames.
    async fn next_frame(&mut self) -> Result<Option<Frame>, Goaway> {
        loop {
            if !self.pending.is_empty() {
                let mut input: &[u8] = &self.pending;
                let result = self.frames.read_from(&mut input);
                let consumed = self.pending.len() - input.len();
                self.pending.drain(..consumed);
                match result {
                    Ok(Some(frame)) => return Ok(Some(frame)),
                    Ok(None) => {}
                    Err(e) => return Err(goaway(e.goaway_code(), &e.to_string())),
                }
            }
            let read = glommio::timer::timeout(self.settings.idle_timeout, async {
                self.reader.read(&mut self.chunk).await.map_err(glommio::GlommioError::from)
            })
            .await;
            match read {
                Ok(0) => {
                    return match self.frames.finish() {
                        Ok(()) => Ok(None),
                        Err(e) => Err(goaway(e.goaway_code(), &e.to_string())),
                    }
                }
                Ok(n) => self.pending.extend_from_slice(&self.chunk[..n]),
                // A client watching a stream may have nothing to send for a long time.
                Err(glommio::GlommioError::TimedOut(_)) if !self.streams.is_empty() => {}
                Err(glommio::GlommioError::TimedOut(_)) => {
                    return Err(goaway(GoawayCode::Idle, "idle timeout"));
                }
                Err(_) => return Ok(None),
            }
        }
    }
}

/// Queues the Pong for a Ping frame. `Break` carries the Goaway for a malformed Ping, or for a
/// client that leaves more than `PONGS_QUEUED_MAX` pongs unread: the control queue is bounded
/// (`CONTROL_QUEUE_MAX`) and must keep room for the Goaway.
#[inline]
fn answer_ping(frame: &Frame, control: &flume::Sender<Control>) -> ControlFlow<Option<Goaway>> {
    match frame.decode::<Ping>() {
        Ok(ping) => {
            if control.len() >= PONGS_QUEUED_MAX {
                return ControlFlow::Break(Some(goaway(
                    GoawayCode::ProtocolError,
                    &format!("more than {PONGS_QUEUED_MAX} pings unanswered: read the pongs"),
                )));
            }
            let _ = control.try_send(Control::Pong(ping.nonce));
            ControlFlow::Continue(())
        }
        Err(e) => ControlFlow::Break(Some(goaway(e.goaway_code(), &e.to_string()))),
    }
}

/// Refuses a client write of a namespace this core knows to be over its rate limit, without
/// the hop to the leader's core, and answers after the refusal's hold (D47). `false` = send it on.
fn refused_here(
    dispatcher: &Dispatcher,
    inflight: &crate::observe::InFlight,
    replies: &flume::Sender<ResponseEnvelope>,
    envelope: &RequestEnvelope,
    caller: &Caller,
) -> bool {
    let Some(namespace) = crate::throttle::write_namespace(&envelope.request) else {
        return false;
    };
    let Some(refused) = dispatcher.throttle().check(namespace, std::time::Instant::now()) else {
        return false;
    };
    ledger_shard::metrics::with(|m| m.rate_limited(namespace));
    // Only a leader's refusal teaches the throttle: learning from this one would extend it.
    inflight.refused_here(envelope.request_id);
    let hold = refused.hold.min(caller.remaining());
    let (replies, request_id) = (replies.clone(), envelope.request_id);
    if hold.is_zero() {
        answer(&replies, request_id, crate::throttle::refusal(namespace, hold));
    } else {
        glommio::spawn_local(async move {
            glommio::timer::sleep(hold).await;
            answer(&replies, request_id, crate::throttle::refusal(namespace, hold));
        })
        .detach();
    }
    true
}

fn goaway(code: GoawayCode, message: &str) -> Goaway {
    Goaway { code, message: message.chars().take(1024).collect() }
}

/// What a shutting-down connection still owes its client (one at a time, on the stack).
#[allow(clippy::large_enum_variant)]
enum Owed {
    Reply(ResponseEnvelope),
    Stream(StreamEvent),
}

/// The connection's write task: writes control frames, coalesced response batches and stream
/// frames until the read side is done and every outstanding reply has been written (or the socket
/// fails). No frame it writes exceeds `max_frame_bytes`, the limit announced in `HelloAck` (SPEC
/// §3.6, §4.2). Holds what it carries from one frame to the next.
struct WriteSide<S> {
    writer: WriteHalf<S>,
    max_frame_bytes: u32,
    control: flume::Receiver<Control>,
    replies: flume::Receiver<ResponseEnvelope>,
    outstanding: Rc<Cell<usize>>,
    streams: flume::Receiver<StreamEvent>,
    open: Rc<OpenStreams>,
    inflight: Rc<crate::observe::InFlight>,
    out: Vec<u8>,
    /// Buffer counters of the stream items in `out`, released once `out` is on the socket.
    written: Vec<Arc<AtomicUsize>>,
    control_open: bool,
    drain_deadline: Option<std::time::Instant>,
    /// A reply that did not fit in the previous response frame; it opens the next one.
    carried: Option<ResponseEnvelope>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WriteSide<S> {
    /// The write task's loop: encode the next frames into `out`, write them, and stop after a
    /// Goaway or when there is nothing more to write.
    async fn run(mut self) {
        loop {
            self.out.clear();
            let closing = if let Some(reply) = self.carried.take() {
                self.encode_reply(reply);
                false
            } else if let Some(deadline) = self.drain_deadline {
                self.encode_while_draining(deadline).await
            } else if self.control_open {
                match self.encode_next_received().await {
                    ControlFlow::Continue(closing) => closing,
                    ControlFlow::Break(()) => return,
                }
            } else {
                match self.encode_reply_still_owed().await {
                    ControlFlow::Continue(()) => false,
                    ControlFlow::Break(()) => return,
                }
            };
            // A TLS stream may keep part of a write buffered until flushed (a no-op on plain TCP).
            if !self.out.is_empty()
                && (self.writer.write_all(&self.out).await.is_err() || self.writer.flush().await.is_err())
            {
                return;
            }
            release(&mut self.written);
            if closing {
                let _ = self.writer.flush().await;
                let _ = self.writer.close().await;
                return;
            }
        }
    }

    /// Encodes `reply` and the replies ready behind it into one frame; one that did not fit is
    /// carried to the next.
    fn encode_reply(&mut self, reply: ResponseEnvelope) {
        self.carried = encode_replies(
            reply,
            &self.replies,
            &mut self.out,
            &self.outstanding,
            self.max_frame_bytes,
            &self.inflight,
        );
    }

    /// Shutting down: encodes the next reply or stream event still owed, or once none is owed
    /// (or `deadline` has passed) the `Goaway{Shutdown}`; returns true for the Goaway.
    async fn encode_while_draining(&mut self, deadline: std::time::Instant) -> bool {
        // Shutting down: owed replies and stream ends first, then the Goaway.
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let next = if (self.outstanding.get() == 0 && self.open.is_empty()) || left.is_zero() {
            None
        } else {
            let closed = |_| glommio::GlommioError::Closed(glommio::ResourceType::Channel(()));
            glommio::timer::timeout(left, async {
                futures::select_biased! {
                    reply = self.replies.recv_async().fuse() => reply.map(Owed::Reply).map_err(closed),
                    event = self.streams.recv_async().fuse() => event.map(Owed::Stream).map_err(closed),
                }
            })
            .await
            .ok()
        };
        match next {
            Some(Owed::Reply(reply)) => {
                self.encode_reply(reply);
                false
            }
            Some(Owed::Stream(event)) => {
                encode_stream_events(
                    event,
                    &self.streams,
                    &mut self.out,
                    &mut self.written,
                    &self.open,
                    self.max_frame_bytes,
                );
                false
            }
            None => {
                let goaway = Goaway { code: GoawayCode::Shutdown, message: "node is shutting down".into() };
                encode_control(Control::Goaway(goaway), &mut self.out)
            }
        }
    }

    /// While the read side runs: waits for the next control frame, reply or stream event (in
    /// that order of preference) and encodes it. `Continue(true)` after a Goaway; `Break` when
    /// the replies or stream channel has closed (the connection is over).
    async fn encode_next_received(&mut self) -> ControlFlow<(), bool> {
        let mut closing = false;
        futures::select_biased! {
            message = self.control.recv_async().fuse() => match message {
                Ok(Control::Shutdown) => {
                    self.drain_deadline = Some(std::time::Instant::now() + SHUTDOWN_DRAIN);
                }
                Ok(message) => closing = encode_control(message, &mut self.out),
                Err(_) => self.control_open = false,
            },
            reply = self.replies.recv_async().fuse() => match reply {
                Ok(reply) => { self.carried = encode_replies(reply, &self.replies, &mut self.out, &self.outstanding, self.max_frame_bytes, &self.inflight); },
                Err(_) => return ControlFlow::Break(()),
            },
            event = self.streams.recv_async().fuse() => match event {
                Ok(event) => encode_stream_events(event, &self.streams, &mut self.out, &mut self.written, &self.open, self.max_frame_bytes),
                Err(_) => return ControlFlow::Break(()),
            },
        }
        ControlFlow::Continue(closing)
    }

    /// After the read side has ended: encodes the next reply still owed; `Break` once none is.
    async fn encode_reply_still_owed(&mut self) -> ControlFlow<()> {
        // The read side has ended: flush the replies still owed, then close.
        if self.outstanding.get() == 0 {
            return ControlFlow::Break(());
        }
        match self.replies.recv_async().await {
            Ok(reply) => {
                self.encode_reply(reply);
                ControlFlow::Continue(())
            }
            Err(_) => ControlFlow::Break(()),
        }
    }
}

/// Encodes a control frame; returns true when it is a Goaway (the last frame).
fn encode_control(message: Control, out: &mut Vec<u8>) -> bool {
    let (result, closing) = match message {
        Control::HelloAck(ack) => (encode_frame(FrameKind::HelloAck, &ack, out), false),
        Control::Pong(nonce) => (encode_frame(FrameKind::Pong, &Ping { nonce }, out), false),
        Control::Goaway(goaway) => (encode_frame(FrameKind::Goaway, &goaway, out), true),
        Control::Shutdown => return false,
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "cannot encode a control frame");
    }
    closing
}

/// Encodes `first` plus whatever other replies are already waiting into one `ResponseBatch`
/// frame of at most `max_frame_bytes`: each reply is measured (`archived_len`, no copy) before it
/// joins, and the first one that would cross the bound is returned, to open the next frame. A
/// reply too large for any frame is answered with `InvalidArgument` instead (SPEC §3.6: limits),
/// so the client learns why and the connection lives on.
fn encode_replies(
    first: ResponseEnvelope,
    replies: &flume::Receiver<ResponseEnvelope>,
    out: &mut Vec<u8>,
    outstanding: &Cell<usize>,
    max_frame_bytes: u32,
    inflight: &crate::observe::InFlight,
) -> Option<ResponseEnvelope> {
    let mut budget = FrameBudget::new(max_frame_bytes);
    let (first, len) = fit_frame(first, max_frame_bytes);
    let admitted = budget.try_add(len);
    assert!(admitted, "fit_frame returned a reply of {len} bytes that does not fit alone");
    let mut items = vec![first];
    let mut carried = None;
    while items.len() < RESPONSES_PER_FRAME_MAX {
        let Ok(reply) = replies.try_recv() else {
            break;
        };
        let (reply, len) = fit_frame(reply, max_frame_bytes);
        if !budget.try_add(len) {
            carried = Some(reply);
            break;
        }
        items.push(reply);
    }
    outstanding.set(outstanding.get().saturating_sub(items.len()));
    inflight.finish(&items);
    let batch = ResponseBatch { items };
    let (encode_started, bytes_before) = (std::time::Instant::now(), out.len());
    let encoded = encode_frame_limited(FrameKind::ResponseBatch, &batch, out, max_frame_bytes);
    let took = encode_started.elapsed();
    ledger_shard::metrics::with(|m| m.wire_frame(false, out.len().saturating_sub(bytes_before), took));
    if let Err(e) = encoded {
        // The budget bounds the encoding (wire codec t16), so this is a bug; the replies are
        // still owed, as errors.
        tracing::error!(error = %e, "cannot encode a response batch");
        let items = batch
            .items
            .into_iter()
            .map(|item| ResponseEnvelope {
                request_id: item.request_id,
                leader_hint: None,
                result: Err(Status::internal(format!("response could not be encoded: {e}"))),
            })
            .collect();
        let _ = encode_frame(FrameKind::ResponseBatch, &ResponseBatch { items }, out);
    }
    carried
}

/// `reply` and its archived length, or, when it cannot fit in a frame of `max_frame_bytes` by
/// itself (a `BatchRead` of many large values, a long block range), an `InvalidArgument` reply
/// in its place that says so.
fn fit_frame(reply: ResponseEnvelope, max_frame_bytes: u32) -> (ResponseEnvelope, usize) {
    let status = match archived_len(&reply) {
        Ok(len) if FrameBudget::fits_alone(max_frame_bytes, len) => return (reply, len),
        Ok(len) => Status::invalid(format!(
            "the result is {len} bytes encoded, more than max_frame_bytes ({max_frame_bytes}); \
             ask for less per request (fewer BatchRead keys, a shorter block range)"
        )),
        Err(e) => Status::internal(format!("response could not be encoded: {e}")),
    };
    let reply = ResponseEnvelope { request_id: reply.request_id, result: Err(status), leader_hint: None };
    match archived_len(&reply) {
        Ok(len) if FrameBudget::fits_alone(max_frame_bytes, len) => (reply, len),
        // Unreachable with the configured minimum of max_frame_bytes; an empty status is smaller.
        _ => {
            let reply = ResponseEnvelope {
                request_id: reply.request_id,
                leader_hint: None,
                result: Err(Status::invalid("result exceeds max_frame_bytes")),
            };
            let len = archived_len(&reply).unwrap_or(0);
            (reply, len)
        }
    }
}
