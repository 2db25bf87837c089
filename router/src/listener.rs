//! One listener per core, all on the node's one listening socket (`listen_socket.rs`, D26): the
//! node binds it and hands each core a duplicate, each core accepts from the shared queue, and
//! each connection is served entirely by the core that accepted it.

use crate::connection::Connections;
use crate::dispatch::Dispatcher;
use futures::FutureExt;
use glommio::net::TcpListener;
use ledger_core::types::{CoreId, GroupId};
use ledger_shard::ShardMsg;
use std::collections::BTreeMap;
use std::os::unix::io::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// How long a stopping listener waits for its connections to write their Goaway and close.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(6);

/// Node-wide router settings (SPEC §4.1, §4.3, §11.1).
#[derive(Debug, Clone)]
pub struct RouterSettings {
    pub node_id: u64,
    pub max_frame_bytes: u32,
    pub max_batch_items: u32,
    pub requests_max_concurrent: usize,
    pub idle_timeout: Duration,
    /// The longest a request may wait to be served (`requests_timeout_secs`, SPEC §4.1); a
    /// client's own deadline can only shorten it.
    pub requests_timeout: Duration,
    /// A new connection's Hello must arrive within this (D46).
    pub handshake_timeout: Duration,
    /// Open connections of the whole node, shared by every core's listener (D46).
    pub connection_slots: Arc<crate::admission::ConnectionSlots>,
    /// The node's fault switch (peer connections from a partitioned node are dropped).
    pub faults: std::sync::Arc<ledger_shard::faults::Faults>,
    /// Serve every connection, clients and peers alike, over TLS (D43); `None` = plain TCP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Client write transactions per second per namespace (`rate_limit_rps`, 0 = off): the
    /// pace of the refusals a router makes itself (D47).
    pub rate_limit_rps: u32,
}

/// What one core's router needs: the inboxes of every core and the placement table.
pub struct RouterContext {
    pub core: CoreId,
    pub settings: Arc<RouterSettings>,
    pub cores: Vec<flume::Sender<ShardMsg>>,
    pub placement: Arc<BTreeMap<GroupId, CoreId>>,
    /// The `auth_tokens` at start (D42); `ListenerControl::Auth` replaces it.
    pub auth: Arc<crate::auth::AuthTable>,
    /// Every core's listener, indexed by core: where a connection goes to be served on the core
    /// that owns its namespace (D53).
    pub listeners: Vec<flume::Sender<ListenerControl>>,
}

/// Commands from the node to a core's listener.
pub enum ListenerControl {
    /// Start accepting on this handle of the node's listening socket.
    Listen(std::net::TcpListener),
    /// Stop accepting (shutdown).
    Stop,
    /// New `auth_tokens` (SIGHUP): every connection checks its next request against them.
    Auth(Arc<crate::auth::AuthTable>),
    /// Serve this connection, accepted by another core, here (D53).
    Adopt(crate::handoff::Handoff),
}

/// Waits for `Listen`, then accepts until `Stop`.
pub async fn serve(context: RouterContext, control: flume::Receiver<ListenerControl>) {
    let auth = Rc::new(crate::auth::AuthState::new(context.auth.clone()));
    let settings = context.settings.clone();
    let dispatcher = Rc::new(Dispatcher::new(context));
    let connections = Rc::new(Connections::default());
    let adopt = |handoff: crate::handoff::Handoff| {
        glommio::spawn_local(crate::tls_accept::serve_adopted(
            handoff,
            settings.clone(),
            dispatcher.clone(),
            connections.clone(),
            auth.clone(),
        ))
        .detach();
    };
    let listener = loop {
        match control.recv_async().await {
            Ok(ListenerControl::Listen(socket)) => {
                let fd = socket.into_raw_fd();
                // SAFETY: `into_raw_fd` handed over the only owner of a bound, listening TCP socket
                // descriptor (a duplicate per core); the glommio listener owns and closes it now.
                break unsafe { TcpListener::from_raw_fd(fd) };
            }
            Ok(ListenerControl::Auth(table)) => auth.replace(table),
            Ok(ListenerControl::Adopt(handoff)) => adopt(handoff),
            Ok(ListenerControl::Stop) | Err(_) => return,
        }
    };
    loop {
        futures::select! {
            accepted = listener.accept().fuse() => match accepted {
                Ok(stream) => match settings.connection_slots.try_acquire() {
                    Some(slot) => {
                        glommio::spawn_local(crate::tls_accept::serve_accepted(
                            stream,
                            settings.clone(),
                            dispatcher.clone(),
                            connections.clone(),
                            slot,
                            auth.clone(),
                        ))
                        .detach();
                    }
                    None => {
                        let max = settings.connection_slots.max();
                        let (tls, wait) = (settings.tls.clone(), settings.handshake_timeout);
                        glommio::spawn_local(crate::admission::refuse(stream, max, tls, wait)).detach();
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                }
            },
            command = control.recv_async().fuse() => match command {
                Ok(ListenerControl::Listen(_)) => {}
                Ok(ListenerControl::Auth(table)) => auth.replace(table),
                Ok(ListenerControl::Adopt(handoff)) => adopt(handoff),
                Ok(ListenerControl::Stop) | Err(_) => break,
            },
        }
    }
    // Drop this core's handle first so it takes no new connection (the socket closes with the
    // last core's handle), then tell the open ones.
    drop(listener);
    connections.shutdown_all();
    let deadline = std::time::Instant::now() + SHUTDOWN_WAIT;
    while connections.live() > 0 && std::time::Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}
