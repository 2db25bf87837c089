//! The connection side of `WatchBlocks` streams (SPEC §4.3, §5.1 item 5): opening a stream on
//! the core that owns its scope, answering `CancelStream` and routing it to that core, encoding
//! the `StreamItem`/`StreamEnd` frames the cores send, and cancelling every open stream when the
//! connection closes. A stream request gets no `ResponseEnvelope`; a refused one ends at once
//! with a `StreamEnd`.
//!
//! The shard bounds each stream's backlog (watch.rs). This side releases one unit of a stream's
//! `buffered` counter per `StreamItem` once the frame has been written to the socket, so a client
//! that stops reading fills the socket, then the buffer, and its stream ends.

use crate::constants::{STREAM_END_MESSAGE_CHARS_MAX, STREAM_EVENTS_PER_WRITE_MAX};
use crate::dispatch::Dispatcher;
use ledger_core::types::CoreId;
use ledger_shard::read::watch::{StreamEvent, StreamKey, StreamSender, WatchRequest};
use ledger_wire::codec::encode_frame_limited;
use ledger_wire::frame::FrameKind;
use ledger_wire::messages::{Response, ResponseEnvelope, Status, StreamEnd};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Node-wide connection numbers: with the request id they name a stream on any core.
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// One connection's open streams: request id → the core serving it. Shared by the read loop
/// (opens, cancels) and the write task (forgets a stream once its `StreamEnd` is written).
pub struct OpenStreams {
    connection: u64,
    cores: RefCell<HashMap<u64, CoreId>>,
}

impl Default for OpenStreams {
    fn default() -> Self {
        OpenStreams { connection: NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed), cores: RefCell::default() }
    }
}

impl OpenStreams {
    pub fn len(&self) -> usize {
        self.cores.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn key(&self, request_id: u64) -> StreamKey {
        StreamKey { connection: self.connection, request_id }
    }

    /// Opens the stream `request_id`. `others_outstanding` counts this connection's requests
    /// awaiting a response, which share the `requests_max_concurrent` bound with open streams
    /// (on a client's connection; `from_peer`: a node relays it, D91).
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        &self,
        dispatcher: &Dispatcher,
        sink: &StreamSender,
        request_id: u64,
        namespace_id: i64,
        vault_id: Option<i64>,
        start_height: u64,
        refusal: Option<Status>,
        others_outstanding: usize,
        requests_max_concurrent: usize,
        from_peer: bool,
    ) {
        let key = self.key(request_id);
        // A refusal of a stream that never opened must not touch the table (the id may name
        // another, open stream), so it is written as `Refused`, not as an `End` of that stream.
        let refused = |status: Status| {
            let _ = sink.send(StreamEvent::Refused(StreamEnd { request_id, status }));
        };
        if let Some(status) = refusal {
            return refused(status);
        }
        if self.cores.borrow().contains_key(&request_id) {
            return refused(Status::invalid(format!("request id {request_id} already names an open stream")));
        }
        // A node relaying its clients' streams (D91) is bounded by their limits.
        if !from_peer && others_outstanding + self.len() >= requests_max_concurrent {
            return refused(Status::exhausted(format!(
                "more than {requests_max_concurrent} requests and streams open on this connection"
            )));
        }
        if start_height == 0 {
            return refused(Status::invalid("start_height must be at least 1"));
        }
        let watch = WatchRequest { key, namespace_id, vault_id, start_height, sink: sink.clone(), from_peer };
        // No await between the send and the insert: the write task cannot see this stream's
        // end before the table knows the stream.
        if let Some(core) = dispatcher.dispatch_watch(watch).await {
            self.cores.borrow_mut().insert(request_id, core);
        }
    }

    /// Answers `CancelStream` (always with the empty response) and asks the serving core to end
    /// the stream with `StreamEnd{Cancelled}`; an unknown id changes nothing (SPEC §5.1 item 5).
    pub fn cancel(
        &self,
        dispatcher: &Dispatcher,
        replies: &flume::Sender<ResponseEnvelope>,
        request_id: u64,
        stream: u64,
    ) {
        let core = self.cores.borrow().get(&stream).copied();
        if let Some(core) = core {
            dispatcher.cancel_stream(core, self.key(stream));
        }
        let _ = replies.send(ResponseEnvelope {
            request_id,
            result: Ok(Response::CancelStream),
            leader_hint: None,
        });
    }

    /// The connection is closing: every core drops this connection's streams.
    pub fn cancel_all(&self, dispatcher: &Dispatcher) {
        let open: Vec<(u64, CoreId)> = self.cores.borrow_mut().drain().collect();
        for (request_id, core) in open {
            dispatcher.cancel_stream(core, self.key(request_id));
        }
    }

    /// Forgets a stream whose `StreamEnd` was written.
    fn ended(&self, request_id: u64) {
        self.cores.borrow_mut().remove(&request_id);
    }
}

/// Encodes `first` plus the stream events already waiting (up to `STREAM_EVENTS_PER_WRITE_MAX`),
/// one frame each, none above `max_frame_bytes`. `written` receives the counters to release once
/// `out` is on the socket.
pub fn encode_stream_events(
    first: StreamEvent,
    events: &flume::Receiver<StreamEvent>,
    out: &mut Vec<u8>,
    written: &mut Vec<Arc<AtomicUsize>>,
    open: &OpenStreams,
    max_frame_bytes: u32,
) {
    let mut next = Some(first);
    let mut count = 0;
    while let Some(event) = next.take() {
        let result = match event {
            // A v1 item is a fixed-size announcement far below the smallest frame limit (t01).
            StreamEvent::Item { item, buffered } => {
                written.push(buffered);
                encode_frame_limited(FrameKind::StreamItem, &item, out, max_frame_bytes)
            }
            StreamEvent::End(end) => {
                open.ended(end.request_id);
                encode_end(&end, out, max_frame_bytes)
            }
            StreamEvent::Refused(end) => encode_end(&end, out, max_frame_bytes),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot encode a stream frame");
        }
        count += 1;
        if count < STREAM_EVENTS_PER_WRITE_MAX {
            next = events.try_recv().ok();
        }
    }
}

/// Encodes a `StreamEnd`; a status message too long for the frame is cut to
/// `STREAM_END_MESSAGE_CHARS_MAX` characters, so the stream still ends with its code.
fn encode_end(
    end: &StreamEnd,
    out: &mut Vec<u8>,
    max_frame_bytes: u32,
) -> Result<ledger_wire::frame::FrameHeader, ledger_wire::CodecError> {
    match encode_frame_limited(FrameKind::StreamEnd, end, out, max_frame_bytes) {
        Err(ledger_wire::CodecError::EncodeTooLarge { .. }) => {
            let mut end = end.clone();
            end.status.message = end.status.message.chars().take(STREAM_END_MESSAGE_CHARS_MAX).collect();
            end.status.detail = None;
            encode_frame_limited(FrameKind::StreamEnd, &end, out, max_frame_bytes)
        }
        other => other,
    }
}

/// Releases the buffer units of items now written to the socket.
pub fn release(written: &mut Vec<Arc<AtomicUsize>>) {
    for buffered in written.drain(..) {
        buffered.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use ledger_core::types::{BlockAnnouncement, Timestamp};
    use ledger_wire::codec::archived_len;
    use ledger_wire::constants::MAX_FRAME_BYTES_MIN;
    use ledger_wire::messages::{StreamItem, StreamPayload};

    #[test]
    fn t01_a_stream_item_fits_the_smallest_frame_limit() {
        // Proves a v1 StreamItem (a fixed-size block announcement, no variable fields) is far
        // below the smallest max_frame_bytes a server accepts, so items never need splitting.
        let item = StreamItem {
            request_id: u64::MAX,
            item: StreamPayload::Block(BlockAnnouncement {
                namespace_id: i64::MAX,
                vault_id: i64::MAX,
                height: u64::MAX,
                block_hash: [0xff; 32],
                state_root: [0xff; 32],
                timestamp: Timestamp { secs: i64::MAX, nanos: u32::MAX },
            }),
        };
        let len = archived_len(&item).unwrap();
        assert!(len * 4 < MAX_FRAME_BYTES_MIN as usize, "{len}");
    }

    #[test]
    fn t02_a_stream_end_with_a_huge_message_is_cut_to_fit() {
        // Proves encode_end still ends a stream whose status message alone exceeds the frame
        // limit: the frame is written, under the limit, with the code intact.
        let end = StreamEnd { request_id: 9, status: Status::unavailable("x".repeat(10_000)) };
        let mut out = Vec::new();
        let header = encode_end(&end, &mut out, MAX_FRAME_BYTES_MIN).unwrap();
        assert!(header.payload_len <= MAX_FRAME_BYTES_MIN);
        assert_eq!(out.len(), header.frame_len());
    }
}
