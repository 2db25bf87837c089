//! The node-wide bound on open connections (`max_connections`, D46). Every core's listener takes
//! a slot before it serves an accepted socket and the slot is given back when the connection
//! ends; a socket accepted with no slot free is told why (`Goaway{TooManyConnections}`) and
//! closed, so 10,000 idle sockets cost the node at most `max_connections` served connections.
//! The one counter is shared by the cores' listeners, touched once per connection opened or
//! closed, never per request.

use futures::io::AsyncWriteExt;
use glommio::net::TcpStream;
use ledger_wire::codec::encode_frame;
use ledger_wire::frame::FrameKind;
use ledger_wire::messages::{Goaway, GoawayCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a refusal may take to write before the socket is dropped anyway: a refused client
/// that does not read must not hold the task.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct ConnectionSlots {
    open: AtomicUsize,
    max: usize,
}

/// One open connection's slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot(Arc<ConnectionSlots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnectionSlots {
    pub fn new(max: usize) -> Arc<ConnectionSlots> {
        Arc::new(ConnectionSlots { open: AtomicUsize::new(0), max })
    }

    /// A slot, unless `max` connections are open already.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| (open < self.max).then_some(open + 1))
            .ok()
            .map(|_| Slot(self.clone()))
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// Refusals over TLS handshaking at once on one core; past this a refused socket is closed
/// without a word (D80): each costs a handshake, which a flood must not get for free.
const TLS_REFUSALS_MAX: usize = 8;

thread_local! {
    static TLS_REFUSALS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The `Goaway{TooManyConnections}` frame a refused socket is sent.
fn refusal_frame(max: usize) -> Option<Vec<u8>> {
    let goaway = Goaway {
        code: GoawayCode::TooManyConnections,
        message: format!(
            "this node already serves max_connections ({max}) connections; retry later, or raise \
             max_connections"
        ),
    };
    let mut out = Vec::new();
    encode_frame(FrameKind::Goaway, &goaway, &mut out).ok()?;
    Some(out)
}

/// Tells a socket accepted over the limit why it is closed, without reading from it. Over TLS
/// (`tls` set) the refusal follows a handshake bounded by `handshake_timeout`, since a TLS client
/// cannot read plain bytes (it would see a failed handshake, D80).
pub async fn refuse(
    stream: TcpStream,
    max: usize,
    tls: Option<Arc<rustls::ServerConfig>>,
    handshake_timeout: Duration,
) {
    let Some(out) = refusal_frame(max) else { return };
    let Some(config) = tls else {
        write_and_close(stream, &out).await;
        return;
    };
    if TLS_REFUSALS.with(|n| n.get()) >= TLS_REFUSALS_MAX {
        return;
    }
    TLS_REFUSALS.with(|n| n.set(n.get() + 1));
    let handshake = futures_rustls::TlsAcceptor::from(config).accept(stream);
    if let Ok(Ok(tls)) = glommio::timer::timeout(handshake_timeout, async { Ok(handshake.await) }).await {
        write_and_close(tls, &out).await;
    }
    TLS_REFUSALS.with(|n| n.set(n.get().saturating_sub(1)));
}

async fn write_and_close<S: futures::io::AsyncWrite + Unpin>(mut stream: S, out: &[u8]) {
    let _ = glommio::timer::timeout(REFUSAL_WRITE_TIMEOUT, async {
        let _ = stream.write_all(out).await;
        let _ = stream.close().await;
        Ok(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t01_slots_are_bounded_and_given_back() {
        let slots = ConnectionSlots::new(2);
        let a = slots.try_acquire().expect("first");
        let b = slots.try_acquire().expect("second");
        assert!(slots.try_acquire().is_none(), "a third slot over max 2");
        assert_eq!(slots.open(), 2);
        drop(a);
        let c = slots.try_acquire().expect("a slot freed by a closed connection");
        drop((b, c));
        assert_eq!(slots.open(), 0);
    }
}
