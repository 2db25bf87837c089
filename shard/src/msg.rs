//! Messages a core shard receives on its bounded flume inbox (SPEC §8.1, §10.9). The router and
//! other cores are the only senders; nothing else crosses between cores.

use crate::reply::ReplySender;
use ledger_core::types::GroupId;
use ledger_wire::messages::RequestEnvelope;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Who sent a request and until when answering it is worth anything (SPEC §4.1). Built by the
/// router when it admits the request; travels with it to the leader when it is forwarded.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The id of the `auth_tokens` entry the client's connection authenticated with (or that a
    /// peer forwarded the request for). The actor of its writes is `client:{credential_id}`;
    /// `None` (no auth configured) makes it `client:{client_id}`.
    pub credential_id: Option<Arc<str>>,
    /// `min(client deadline, requests_timeout_secs)` from admission: a request still queued
    /// then is dropped with `DeadlineExceeded`.
    pub deadline: Instant,
}

impl Caller {
    /// A request the server makes of itself (health probes, tests): no credential.
    pub fn internal(timeout: Duration) -> Caller {
        Caller { credential_id: None, deadline: Instant::now() + timeout }
    }

    /// Time left before the deadline (zero once it has passed).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    pub fn expired(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// The actor a write of `client_id` is recorded with (SPEC §4.1): never the client's say.
    pub fn actor(&self, client_id: &str) -> String {
        match &self.credential_id {
            Some(credential) => format!("client:{credential}"),
            None => format!("client:{client_id}"),
        }
    }
}

pub enum ShardMsg {
    /// A request for a group owned by this core (reads, writes, scope admin like GetVault).
    /// `forwarded`: it came from another node, which found this one the group's leader; it is
    /// answered here, never forwarded again (peer/forward.rs).
    Group { group: GroupId, envelope: RequestEnvelope, reply: ReplySender, forwarded: bool, caller: Caller },
    /// Node-level and registry requests (namespace/vault lifecycle, ListVaults, GetNodeInfo,
    /// HealthCheck); the router sends them to core 0, which owns group 0.
    Admin { envelope: RequestEnvelope, reply: ReplySender, forwarded: bool, caller: Caller },
    /// Router → core 0: which group hosts this namespace? `Ok(None)` = unknown or deleted; an
    /// error when that could not be confirmed (no leader reachable).
    ResolveNamespace {
        namespace_id: i64,
        reply: futures::channel::oneshot::Sender<Result<Option<GroupId>, ledger_wire::messages::Status>>,
    },
    /// Core → core calls that are not client requests (scope creation in a data group, ListVaults
    /// fan-out, ...). Defined by the shard crate.
    Internal(crate::admin::internal::InternalMsg),
    /// Router → the core owning the scope's group: open a `WatchBlocks` stream (SPEC §5.1
    /// item 5). It gets no `ResponseEnvelope`: everything goes to `watch.sink`.
    Watch { group: GroupId, watch: crate::read::watch::WatchRequest },
    /// Router → the core serving a stream: end it with `StreamEnd{Cancelled}` (`CancelStream`,
    /// or its connection closed). Unknown streams are ignored.
    CancelStream { key: crate::read::watch::StreamKey },
    /// The metrics endpoint → every core: this core's metrics snapshot (SPEC §11.3; scrape.rs).
    Metrics { reply: flume::Sender<crate::metrics::CoreSnapshot> },
    /// Stop: finish in-flight work, checkpoint durably, then return from `Shard::run`.
    Shutdown { done: futures::channel::oneshot::Sender<()> },
}
