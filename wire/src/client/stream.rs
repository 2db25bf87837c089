//! `WatchBlocks` streams on a `Client` (SPEC §4.3, §5.1 item 5): `Client::watch_blocks` opens
//! one and returns a `BlockStream`, whose `next` yields the block announcements in height order
//! and finally the server's `StreamEnd` status. The reader task routes `StreamItem`/`StreamEnd`
//! frames here by request id (`StreamTable`).
//!
//! An open stream holds one of the connection's in-flight permits (the server counts streams
//! against `requests_max_concurrent`). Items wait in a per-stream queue until `next` takes them;
//! a consumer that lets more than `CLIENT_STREAM_BUFFER_MAX` pile up loses the stream with
//! `ResourceExhausted`, like a slow client does on the server. Dropping an unfinished stream
//! cancels it on the server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::conn::Outgoing;
use super::Client;
use crate::constants::CLIENT_STREAM_BUFFER_MAX;
use crate::error::ClientError;
use crate::messages::{
    Request, RequestEnvelope, Response, Status, StatusCode, StreamEnd, StreamItem, StreamPayload,
};
use ledger_core::types::BlockAnnouncement;

/// What `BlockStream::next` yields while the connection lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamNext {
    /// The next block, exactly one height above the previous one.
    Block(BlockAnnouncement),
    /// The stream is over: `Cancelled` after `cancel`, `ResourceExhausted` for a client that
    /// fell behind (resubscribe from the last height + 1), `Unavailable` on shutdown or an
    /// unhealthy scope, or the reason the server refused it.
    End(Status),
}

enum Event {
    Item(BlockAnnouncement),
    End(Status),
    /// The connection closed, or the consumer fell `CLIENT_STREAM_BUFFER_MAX` items behind.
    Failed(ClientError),
}

struct Slot {
    events: mpsc::UnboundedSender<Event>,
    queued: Arc<AtomicUsize>,
}

/// The connection's open streams by request id (filled by `watch_blocks`, fed by the reader).
#[derive(Default)]
pub(super) struct StreamTable {
    slots: Mutex<HashMap<u64, Slot>>,
}

impl StreamTable {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Slot>> {
        // Each operation is a single map call, so a poisoned lock is still consistent.
        self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn open(
        &self,
        request_id: u64,
    ) -> Result<(mpsc::UnboundedReceiver<Event>, Arc<AtomicUsize>), ClientError> {
        let (events, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let slot = Slot { events, queued: Arc::clone(&queued) };
        if self.lock().insert(request_id, slot).is_some() {
            return Err(ClientError::Protocol(format!("request id {request_id} reused")));
        }
        Ok((rx, queued))
    }

    fn forget(&self, request_id: u64) {
        self.lock().remove(&request_id);
    }

    /// A `StreamItem` frame arrived; items of unknown (dropped) streams are ignored.
    pub(super) fn item(&self, item: StreamItem) {
        let StreamPayload::Block(block) = item.item;
        let mut slots = self.lock();
        let Some(slot) = slots.get(&item.request_id) else { return };
        let delivered = if slot.queued.load(Ordering::Acquire) >= CLIENT_STREAM_BUFFER_MAX {
            let status = Status::exhausted(format!(
                "more than {CLIENT_STREAM_BUFFER_MAX} stream items waiting for the consumer"
            ));
            let _ = slot.events.send(Event::Failed(status.into()));
            false
        } else {
            slot.queued.fetch_add(1, Ordering::AcqRel);
            slot.events.send(Event::Item(block)).is_ok()
        };
        if !delivered {
            slots.remove(&item.request_id);
        }
    }

    /// A `StreamEnd` frame arrived.
    pub(super) fn end(&self, end: StreamEnd) {
        if let Some(slot) = self.lock().remove(&end.request_id) {
            let _ = slot.events.send(Event::End(end.status));
        }
    }

    /// The connection is gone: every open stream fails with `reason`.
    pub(super) fn close(&self, reason: &ClientError) {
        for (_, slot) in self.lock().drain() {
            let _ = slot.events.send(Event::Failed(reason.clone()));
        }
    }
}

/// An open `WatchBlocks` stream; see the module docs.
pub struct BlockStream {
    client: Client,
    request_id: u64,
    events: mpsc::UnboundedReceiver<Event>,
    queued: Arc<AtomicUsize>,
    /// Held while the stream is open on the server.
    permit: Option<OwnedSemaphorePermit>,
    /// What every `next` after the last event returns.
    finished: Option<Result<StreamNext, ClientError>>,
}

impl std::fmt::Debug for BlockStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockStream").field("request_id", &self.request_id).finish_non_exhaustive()
    }
}

impl BlockStream {
    /// The request id naming this stream on its connection.
    pub fn request_id(&self) -> u64 {
        self.request_id
    }

    /// The next block, or the stream's end. After the end every call returns the end again.
    /// `Err` means the connection failed (or this consumer fell too far behind).
    pub async fn next(&mut self) -> Result<StreamNext, ClientError> {
        if let Some(finished) = &self.finished {
            return finished.clone();
        }
        let event = match self.events.recv().await {
            Some(event) => event,
            None => Event::Failed(ClientError::Closed { reason: "stream table dropped".to_string() }),
        };
        let result = match event {
            Event::Item(block) => {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                return Ok(StreamNext::Block(block));
            }
            Event::End(status) => Ok(StreamNext::End(status)),
            Event::Failed(error) => {
                // A local overflow leaves the stream open on the server: cancel it there.
                if matches!(&error, ClientError::Status { code: StatusCode::ResourceExhausted, .. }) {
                    self.client.send_cancel(self.request_id);
                }
                Err(error)
            }
        };
        self.permit = None;
        self.finished = Some(result.clone());
        result
    }

    /// Asks the server to end the stream; `next` then yields what was already sent and
    /// `End(Cancelled)`.
    pub async fn cancel(&self) -> Result<(), ClientError> {
        match self.client.call(Request::CancelStream { request_id: self.request_id }).await? {
            Response::CancelStream => Ok(()),
            other => Err(ClientError::Protocol(format!("unexpected response to CancelStream: {other:?}"))),
        }
    }
}

impl Drop for BlockStream {
    fn drop(&mut self) {
        if self.finished.is_none() {
            self.client.inner.shared.streams.forget(self.request_id);
            self.client.send_cancel(self.request_id);
        }
    }
}

impl Client {
    /// Opens a `WatchBlocks` stream of `(namespace_id, vault_id)` from `start_height` (≥ 1):
    /// archived blocks first, then live ones, strictly consecutive (SPEC §5.1 item 5). Refusals
    /// (bad start height, unknown scope, ...) arrive as the stream's `End` status.
    pub async fn watch_blocks(
        &self,
        namespace_id: i64,
        vault_id: Option<i64>,
        start_height: u64,
    ) -> Result<BlockStream, ClientError> {
        let permit = Arc::clone(&self.inner.permits).acquire_owned().await.map_err(|_| self.lost())?;
        let request_id = self.inner.next_request_id.fetch_add(1, Ordering::Relaxed);
        let (events, queued) = self.inner.shared.streams.open(request_id)?;
        // `Shared::close` marks the connection closed before it fails the open streams, so a
        // close racing with this open is seen here or reaches the new slot.
        if let Some(reason) = self.inner.shared.closed_reason() {
            self.inner.shared.streams.forget(request_id);
            return Err(reason);
        }
        let request = Request::WatchBlocks { namespace_id, vault_id, start_height };
        let envelope = RequestEnvelope { request_id, deadline_ms: 0, on_behalf_of: None, request };
        if self.inner.queue.send(Outgoing::Request(envelope)).await.is_err() {
            self.inner.shared.streams.forget(request_id);
            return Err(self.lost());
        }
        Ok(BlockStream {
            client: self.clone(),
            request_id,
            events,
            queued,
            permit: Some(permit),
            finished: None,
        })
    }

    /// Queues `CancelStream` without waiting for its (empty) answer, which the reader drops as
    /// an unknown id. Best effort: a full queue or a closed connection ends the stream anyway.
    fn send_cancel(&self, stream: u64) {
        let request_id = self.inner.next_request_id.fetch_add(1, Ordering::Relaxed);
        let envelope = RequestEnvelope {
            request_id,
            deadline_ms: 0,
            on_behalf_of: None,
            request: Request::CancelStream { request_id: stream },
        };
        let _ = self.inner.queue.try_send(Outgoing::Request(envelope));
    }
}
