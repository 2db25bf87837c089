//! The server side of TLS (D43): with a TLS configuration, each accepted socket completes a
//! rustls handshake, bounded by `handshake_timeout` (D46), before `connection.rs` serves it;
//! without one the socket is served as it is. A failed or slow handshake closes that socket and
//! frees its slot, nothing else.

use crate::admission::Slot;
use crate::auth::AuthState;
use crate::connection::{self, Connections};
use crate::dispatch::Dispatcher;
use crate::listener::RouterSettings;
use futures::future::Either;
use futures_rustls::TlsAcceptor;
use glommio::net::TcpStream;
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
        return connection::serve_connection(stream, settings, dispatcher, connections, slot, auth).await;
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
