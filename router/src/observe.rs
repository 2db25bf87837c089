//! Router-side request metrics (SPEC §11.3 `requests_total`, `request_latency_seconds`): each
//! connection remembers when it admitted a request and under which operation, and its write
//! task records the latency and status into the core's registry (`ledger_shard::metrics`) when
//! the reply goes out. Both halves run on the connection's core, so a `RefCell` map suffices; it
//! holds at most the connection's outstanding requests.

use crate::throttle::{retry_after, write_namespace, WriteThrottle};
use ledger_shard::metrics::{self, status_label};
use ledger_wire::messages::{RequestEnvelope, ResponseEnvelope};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

/// One admitted request: its operation, when, and the namespace of a client write.
struct Started {
    op: &'static str,
    at: Instant,
    write_namespace: Option<i64>,
}

pub struct InFlight {
    started: RefCell<HashMap<u64, Started>>,
    /// Where the leaders' rate-limit refusals seen here are remembered (D47).
    throttle: Rc<WriteThrottle>,
}

impl InFlight {
    pub fn new(throttle: Rc<WriteThrottle>) -> InFlight {
        InFlight { started: RefCell::new(HashMap::new()), throttle }
    }

    /// The request is admitted now (a reuse of a request id restarts its clock).
    pub fn start(&self, envelope: &RequestEnvelope) {
        let started = Started {
            op: envelope.request.op_name(),
            at: Instant::now(),
            write_namespace: write_namespace(&envelope.request),
        };
        self.started.borrow_mut().insert(envelope.request_id, started);
    }

    /// The router refused this request itself (D47): its answer teaches the throttle nothing.
    pub fn refused_here(&self, request_id: u64) {
        if let Some(entry) = self.started.borrow_mut().get_mut(&request_id) {
            entry.write_namespace = None;
        }
    }

    /// These replies are being written: record each request's latency and status, and any
    /// rate-limit refusal of a write.
    pub fn finish(&self, replies: &[ResponseEnvelope]) {
        let now = Instant::now();
        let mut started = self.started.borrow_mut();
        metrics::with(|m| {
            for reply in replies {
                if let Some(Started { op, at, write_namespace }) = started.remove(&reply.request_id) {
                    let status = status_label(reply.result.as_ref().map(|_| ()).map_err(|s| s.code));
                    m.request_done(op, status, now, now.saturating_duration_since(at));
                    if let (Some(namespace), Err(status)) = (write_namespace, &reply.result) {
                        if let Some(wait) = retry_after(status) {
                            self.throttle.learn(namespace, wait, now);
                        }
                    }
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
