//! Router-side request metrics (SPEC §11.3 `requests_total`, `request_latency_seconds`): each
//! connection remembers when it admitted a request and under which operation, and its write
//! task records the latency and status into the core's registry (`ledger_shard::metrics`) when
//! the reply goes out. Both halves run on the connection's core, so a `RefCell` map suffices; it
//! holds at most the connection's outstanding requests.

use ledger_shard::metrics::{self, status_label};
use ledger_wire::messages::{RequestEnvelope, ResponseEnvelope};
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Instant;

#[derive(Default)]
pub struct InFlight {
    started: RefCell<HashMap<u64, (&'static str, Instant)>>,
}

impl InFlight {
    /// The request is admitted now (a reuse of a request id restarts its clock).
    pub fn start(&self, envelope: &RequestEnvelope) {
        self.started.borrow_mut().insert(envelope.request_id, (envelope.request.op_name(), Instant::now()));
    }

    /// These replies are being written: record each request's latency and status.
    pub fn finish(&self, replies: &[ResponseEnvelope]) {
        let now = Instant::now();
        let mut started = self.started.borrow_mut();
        metrics::with(|m| {
            for reply in replies {
                if let Some((op, at)) = started.remove(&reply.request_id) {
                    let status = status_label(reply.result.as_ref().map(|_| ()).map_err(|s| s.code));
                    m.request_done(op, status, now, now.saturating_duration_since(at));
                }
            }
        });
    }
}

/// Counts a connection as open in the core's registry (`active_connections`) until dropped.
pub struct OpenConnection;

impl OpenConnection {
    pub fn count() -> Self {
        metrics::with(|m| m.connections_open += 1);
        OpenConnection
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::with(|m| m.connections_open -= 1);
    }
}
