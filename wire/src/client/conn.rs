//! The socket side of a `Client`: the Hello/HelloAck handshake, the writer task (coalesces queued
//! requests into `RequestBatch` frames), the reader task (matches `ResponseBatch` envelopes to
//! pending calls by request id, and hands stream frames to `stream.rs`) and the pending-call table they share. A Goaway, a socket error
//! or a protocol error closes the table: every pending and later call fails with that error.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Notify};

use super::ClientOptions;
use crate::codec::{deserialize, encode_frame, encode_frame_limited, Frame, FrameReader};
use crate::constants::{CLIENT_READ_BUFFER_BYTES, MAX_FRAME_BYTES_DEFAULT};
use crate::error::{ClientError, CodecError};
use crate::frame::FrameKind;
use crate::messages::{
    Goaway, Hello, HelloAck, Ping, RequestBatch, RequestEnvelope, Response, ResponseBatch, Status, StreamEnd,
    StreamItem, PROTOCOL_VERSION,
};

/// Bytes of encoded frames the writer gathers before it writes them out.
const WRITE_COALESCE_BYTES_MAX: usize = 1024 * 1024;

/// A call's result and, when the node forwarded it, the leader that answered (D33).
pub(super) type Answer = (Result<Response, ClientError>, Option<(u64, String)>);

type Reply = oneshot::Sender<Answer>;

/// What callers (and the reader, for Pong) hand to the writer task.
#[derive(Debug)]
pub(super) enum Outgoing {
    Request(RequestEnvelope),
    Pong(u64),
}

/// Send-side limits after the handshake.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub max_batch_items: usize,
    pub max_frame_bytes: u32,
}

impl Limits {
    /// The largest payload this client accepts once the server has announced its limit: the
    /// server never sends frames above what it announced (it bounds its response batches by it),
    /// so a client whose own option is smaller still accepts them rather than dropping the
    /// connection on a large reply.
    pub fn receive_max(options: &ClientOptions, ack: &HelloAck) -> u32 {
        options.max_frame_bytes.max(ack.max_frame_bytes)
    }

    pub fn negotiate(options: &ClientOptions, ack: &HelloAck) -> Limits {
        let server_items = if ack.max_batch_items == 0 { u32::MAX } else { ack.max_batch_items };
        let server_bytes =
            if ack.max_frame_bytes == 0 { MAX_FRAME_BYTES_DEFAULT } else { ack.max_frame_bytes };
        Limits {
            max_batch_items: options.max_batch_items.min(server_items).max(1) as usize,
            max_frame_bytes: server_bytes,
        }
    }
}

#[derive(Default)]
struct Table {
    pending: HashMap<u64, Reply>,
    closed: Option<ClientError>,
}

/// Pending calls by request id, plus the reason the connection closed (if it did).
#[derive(Default)]
pub(super) struct Shared {
    table: Mutex<Table>,
    /// Wakes the writer task when the connection closes, so it drops (shuts down) its half.
    closed_signal: Notify,
    /// Open `WatchBlocks` streams (stream.rs).
    pub(super) streams: super::stream::StreamTable,
    /// Calls the last `ResponseBatch` answered (the writer's hint that callers are about to send).
    last_answered: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding this lock cannot leave the table inconsistent (each operation is
        // a single map call), so a poisoned lock is still safe to use.
        self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a pending call, unless the connection is already closed.
    pub fn register(&self, request_id: u64, reply: Reply) -> Result<(), ClientError> {
        let mut table = self.lock();
        if let Some(reason) = &table.closed {
            return Err(reason.clone());
        }
        if table.pending.insert(request_id, reply).is_some() {
            return Err(ClientError::Protocol(format!("request id {request_id} reused")));
        }
        Ok(())
    }

    /// Delivers a result; unknown ids (timed-out or cancelled calls) are ignored.
    pub fn complete(
        &self,
        request_id: u64,
        result: Result<Response, ClientError>,
        leader_hint: Option<(u64, String)>,
    ) {
        let reply = self.lock().pending.remove(&request_id);
        if let Some(reply) = reply {
            // The caller may have given up in the meantime; that is fine.
            let _ = reply.send((result, leader_hint));
        }
    }

    /// Whether more callers than one may be about to queue requests: other calls are in flight
    /// (a request is registered before it is queued), or the last answer released several.
    fn others_may_send(&self) -> bool {
        self.last_answered.load(Ordering::Relaxed) > 1 || self.lock().pending.len() > 1
    }

    pub fn remove(&self, request_id: u64) {
        self.lock().pending.remove(&request_id);
    }

    pub fn closed_reason(&self) -> Option<ClientError> {
        self.lock().closed.clone()
    }

    /// Marks the connection closed (the first reason wins) and fails every pending call.
    pub fn close(&self, reason: ClientError) {
        let (pending, reason) = {
            let mut table = self.lock();
            let reason = table.closed.get_or_insert(reason).clone();
            (std::mem::take(&mut table.pending), reason)
        };
        for (_, reply) in pending {
            let _ = reply.send((Err(reason.clone()), None));
        }
        self.streams.close(&reason);
        self.closed_signal.notify_waiters();
    }

    /// Completes once `close` has been called.
    pub async fn wait_closed(&self) {
        let notified = self.closed_signal.notified();
        tokio::pin!(notified);
        // Registering before checking the flag means a close between the two is not missed.
        notified.as_mut().enable();
        if self.lock().closed.is_some() {
            return;
        }
        notified.await;
    }
}

/// Removes a pending call when its caller stops waiting (timeout or drop).
pub(super) struct PendingGuard {
    shared: Arc<Shared>,
    request_id: u64,
}

impl PendingGuard {
    pub fn new(shared: Arc<Shared>, request_id: u64) -> Self {
        PendingGuard { shared, request_id }
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.shared.remove(self.request_id);
    }
}

/// Sends `Hello` and waits for `HelloAck`. Returns the ack, the frame reader and any bytes
/// that arrived after the ack.
pub(super) async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    options: &ClientOptions,
) -> Result<(HelloAck, FrameReader, Vec<u8>), ClientError> {
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        role: options.role,
        node_id: None,
        client_name: options.client_name.clone(),
        credential: options.credential.clone(),
        namespace_hint: options.namespace_hint,
    };
    let mut out: Vec<u8> = Vec::new();
    encode_frame(FrameKind::Hello, &hello, &mut out)?;
    stream.write_all(&out).await?;
    // A TLS stream may keep part of a write buffered until flushed (a no-op on plain TCP).
    stream.flush().await?;

    let mut reader = FrameReader::new(options.max_frame_bytes);
    let mut buf = vec![0u8; CLIENT_READ_BUFFER_BYTES];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(ClientError::Closed {
                reason: "server closed the connection during the handshake".into(),
            });
        }
        let mut input = &buf[..n];
        let Some(frame) = reader.read_from(&mut input)? else {
            continue;
        };
        let leftover = input.to_vec();
        match frame.kind() {
            FrameKind::HelloAck => {
                let ack = frame.decode::<HelloAck>()?;
                if ack.protocol_version != PROTOCOL_VERSION {
                    return Err(ClientError::Protocol(format!(
                        "server speaks protocol version {}",
                        ack.protocol_version
                    )));
                }
                return Ok((ack, reader, leftover));
            }
            FrameKind::Goaway => return Err(goaway_error(&frame)),
            other => return Err(ClientError::Protocol(format!("expected HelloAck, got {other}"))),
        }
    }
}

fn goaway_error(frame: &Frame) -> ClientError {
    match frame.decode::<Goaway>() {
        Ok(goaway) => ClientError::Goaway { code: goaway.code, message: goaway.message },
        Err(e) => ClientError::Protocol(format!("undecodable Goaway: {e}")),
    }
}

/// Drains the queue into frames: everything queued while the previous write was in progress
/// leaves together, as `RequestBatch` frames of at most `max_batch_items` envelopes.
pub(super) async fn writer_loop<W: AsyncWrite + Unpin>(
    mut socket: W,
    mut queue: mpsc::Receiver<Outgoing>,
    shared: Arc<Shared>,
    limits: Limits,
) {
    let mut out: Vec<u8> = Vec::new();
    let mut batch: Vec<RequestEnvelope> = Vec::new();
    loop {
        let first = tokio::select! {
            item = queue.recv() => match item {
                Some(item) => item,
                None => return,
            },
            () = shared.wait_closed() => return,
        };
        out.clear();
        // When other callers may be about to send, let the ones that are ready run first. A caller's send
        // wakes this task into the runtime's next slot, so without the yield every request left
        // in a write of its own (0.83 `sendto` per request at 256 in flight, a third of a load
        // generator's CPU); after it, the requests that one answered batch released leave
        // together. A lone call is not held back.
        if shared.others_may_send() {
            tokio::task::yield_now().await;
        }
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Outgoing::Request(envelope) => {
                    batch.push(envelope);
                    if batch.len() >= limits.max_batch_items {
                        encode_batch(std::mem::take(&mut batch), &mut out, &shared, limits);
                    }
                }
                Outgoing::Pong(nonce) => {
                    if let Err(e) = encode_frame(FrameKind::Pong, &Ping { nonce }, &mut out) {
                        shared.close(e.into());
                        return;
                    }
                }
            }
            if out.len() >= WRITE_COALESCE_BYTES_MAX {
                break;
            }
            next = queue.try_recv().ok();
        }
        encode_batch(std::mem::take(&mut batch), &mut out, &shared, limits);
        if out.is_empty() {
            continue;
        }
        if let Err(e) = socket.write_all(&out).await {
            shared.close(e.into());
            return;
        }
        // A TLS stream may keep part of a write buffered until flushed (a no-op on plain TCP).
        if let Err(e) = socket.flush().await {
            shared.close(e.into());
            return;
        }
    }
}

/// Encodes one batch, halving it while it exceeds the server's frame limit. A single request
/// too large for a frame fails alone.
fn encode_batch(items: Vec<RequestEnvelope>, out: &mut Vec<u8>, shared: &Shared, limits: Limits) {
    if items.is_empty() {
        return;
    }
    let batch = RequestBatch { items };
    match encode_frame_limited(FrameKind::RequestBatch, &batch, out, limits.max_frame_bytes) {
        Ok(_) => {}
        Err(CodecError::EncodeTooLarge { .. }) if batch.items.len() > 1 => {
            let mut first = batch.items;
            let second = first.split_off(first.len() / 2);
            encode_batch(first, out, shared, limits);
            encode_batch(second, out, shared, limits);
        }
        Err(e) => {
            let error = match e {
                CodecError::EncodeTooLarge { len, max } => ClientError::RequestTooLarge { len, max },
                e => ClientError::Protocol(format!("cannot send request: {e}")),
            };
            for envelope in batch.items {
                shared.complete(envelope.request_id, Err(error.clone()), None);
            }
        }
    }
}

/// Reads frames until the connection ends, delivering responses to pending calls.
pub(super) async fn reader_loop<R: AsyncRead + Unpin>(
    mut socket: R,
    mut reader: FrameReader,
    leftover: Vec<u8>,
    shared: Arc<Shared>,
    queue: mpsc::Sender<Outgoing>,
) {
    let reason = read_frames(&mut socket, &mut reader, leftover, &shared, &queue).await;
    shared.close(reason);
}

async fn read_frames<R: AsyncRead + Unpin>(
    socket: &mut R,
    reader: &mut FrameReader,
    leftover: Vec<u8>,
    shared: &Shared,
    queue: &mpsc::Sender<Outgoing>,
) -> ClientError {
    let mut buf = leftover;
    let mut filled = buf.len();
    buf.resize(CLIENT_READ_BUFFER_BYTES.max(filled), 0);
    loop {
        let mut input = &buf[..filled];
        while !input.is_empty() {
            match reader.read_from(&mut input) {
                Ok(Some(frame)) => {
                    if let Err(reason) = handle_frame(&frame, shared, queue) {
                        return reason;
                    }
                }
                Ok(None) => {}
                Err(e) => return ClientError::Protocol(format!("bad frame from server: {e}")),
            }
        }
        filled = match socket.read(&mut buf).await {
            Ok(0) => {
                let reason = match reader.finish() {
                    Ok(()) => "server closed the connection".to_string(),
                    Err(e) => format!("server closed the connection mid-frame: {e}"),
                };
                return ClientError::Closed { reason };
            }
            Ok(n) => n,
            Err(e) => return e.into(),
        };
    }
}

/// Acts on one frame; an `Err` is the reason to close the connection.
fn handle_frame(frame: &Frame, shared: &Shared, queue: &mpsc::Sender<Outgoing>) -> Result<(), ClientError> {
    match frame.kind() {
        FrameKind::ResponseBatch => {
            let batch = frame.access::<ResponseBatch>()?;
            shared.last_answered.store(batch.items.len(), Ordering::Relaxed);
            for envelope in batch.items.iter() {
                let request_id = envelope.request_id.to_native();
                let result = deserialize::<Result<Response, Status>>(&envelope.result)?;
                let mut leader_hint = deserialize::<Option<(u64, String)>>(&envelope.leader_hint)?;
                if let Err(status) = &result {
                    leader_hint = leader_hint.or_else(|| status.leader_hint.clone());
                }
                shared.complete(request_id, result.map_err(ClientError::from), leader_hint);
            }
            Ok(())
        }
        FrameKind::Goaway => Err(goaway_error(frame)),
        FrameKind::Ping => {
            let ping = frame.access::<Ping>()?;
            // Dropping a Pong when the queue is full is harmless: the server only needs traffic.
            let _ = queue.try_send(Outgoing::Pong(ping.nonce.to_native()));
            Ok(())
        }
        FrameKind::StreamItem => {
            shared.streams.item(frame.decode::<StreamItem>()?);
            Ok(())
        }
        FrameKind::StreamEnd => {
            shared.streams.end(frame.decode::<StreamEnd>()?);
            Ok(())
        }
        FrameKind::Pong => Ok(()),
        FrameKind::Hello | FrameKind::HelloAck | FrameKind::RequestBatch => {
            Err(ClientError::Protocol(format!("unexpected {} frame from server", frame.kind())))
        }
    }
}
