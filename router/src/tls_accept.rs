//! The server side of TLS (D43): with a TLS configuration, each accepted socket completes a
//! rustls handshake, bounded by `handshake_timeout` (D46), before `connection.rs` serves it;
//! without one the socket is served as it is. A failed or slow handshake closes that socket and
//! frees its slot, nothing else.

use crate::admission::Slot;
use crate::auth::AuthState;
use crate::connection::{self, Connections};
use crate::dispatch::Dispatcher;
use crate::handoff::{Handoff, Placed};
use crate::listener::RouterSettings;
use futures::future::Either;
use futures_rustls::TlsAcceptor;
use glommio::net::TcpStream;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::Arc;

/// Serves one accepted socket, over TLS when the node has a TLS configuration.
pub async fn serve_accepted(
    stream: TcpStream,
    settings: Arc<RouterSettings>,
    dispatcher: Rc<Dispatcher>,
    connections: Rc<Connections>,
    slot: Slot,
    auth: Rc<AuthState>,
) {
    let _ = stream.set_nodelay(true);
    let Some(config) = settings.tls.clone() else {
        // A plain client connection may belong on the core owning its namespace (D53).
        return match crate::handoff::place(stream, slot, &settings, &dispatcher).await {
            Placed::Here(stream, slot) => {
                connection::serve_connection(stream, settings, dispatcher, connections, slot, auth).await
            }
            Placed::HandedOff => {}
        };
    };
    let peer = stream.peer_addr().ok();
    // The TLS handshake holds the connection's slot, so it gets the Hello's bound too (D46).
    let handshake = TlsAcceptor::from(config).accept(stream);
    futures::pin_mut!(handshake);
    match futures::future::select(handshake, glommio::timer::Timer::new(settings.handshake_timeout)).await {
        Either::Left((Ok(tls), _)) => {
            connection::serve_connection(tls, settings, dispatcher, connections, slot, auth).await
        }
        // Dropping the stream closes the socket; rustls has already queued its alert, if any.
        Either::Left((Err(e), _)) => tracing::debug!(?peer, error = %e, "TLS handshake failed"),
        Either::Right(_) => tracing::debug!(?peer, "TLS handshake timed out"),
    }
}

/// Serves a plain-TCP connection another core accepted and handed to this one (D53), from its
/// Hello on.
pub async fn serve_adopted(
    handoff: Handoff,
    settings: Arc<RouterSettings>,
    dispatcher: Rc<Dispatcher>,
    connections: Rc<Connections>,
    auth: Rc<AuthState>,
) {
    let Handoff { fd, slot } = handoff;
    // SAFETY: `into_raw_fd` hands over the only owner of a connected TCP socket's descriptor
    // (the accepting core's duplicate); the glommio stream owns and closes it now.
    let stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
    ledger_shard::metrics::with(|m| m.connection_handoffs_in += 1);
    connection::serve_connection(stream, settings, dispatcher, connections, slot, auth).await
}
