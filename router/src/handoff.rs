//! Serving a client connection on the core that owns its namespace (D53). Every core accepts
//! from the node's one socket (D26), so a connection lands on any core, and each request of a
//! namespace owned elsewhere crosses cores twice (to the group's core and back with the reply).
//! A client that names the namespace it will mostly use in its Hello (`namespace_hint`) is
//! handed, before anything is read from it, to the core that owns that namespace's group: the
//! accepting core peeks at the Hello, and passes a duplicate of the socket's descriptor and the
//! connection's slot to that core's listener, which serves it from the Hello on.
//!
//! Only a plain-TCP client connection with a whole Hello in its first bytes is handed over (a
//! TLS session, a peer, an admin, no hint, an unknown namespace or anything unexpected is served
//! where it was accepted). Routing never depends on it: any request works on any core.

use crate::admission::Slot;
use crate::constants::{HELLO_PEEK_BYTES, HELLO_PEEK_PAUSE, HELLO_PEEK_TRIES, HELLO_PEEK_WAIT};
use crate::dispatch::Dispatcher;
use crate::listener::RouterSettings;
use glommio::net::TcpStream;
use ledger_wire::codec::FrameReader;
use ledger_wire::frame::FrameKind;
use ledger_wire::messages::{Hello, Role};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

/// A connection on its way to the core that will serve it.
pub struct Handoff {
    pub fd: OwnedFd,
    pub slot: Slot,
}

/// Where an accepted connection is served.
pub enum Placed {
    /// Here, with its slot.
    Here(TcpStream, Slot),
    /// On another core, which now owns it.
    HandedOff,
}

/// Hands `stream` to the core owning its Hello's namespace hint, or gives it back.
pub async fn place(
    stream: TcpStream,
    slot: Slot,
    settings: &RouterSettings,
    dispatcher: &Dispatcher,
) -> Placed {
    let Some(namespace) = peek_hint(&stream, settings.max_frame_bytes).await else {
        return Placed::Here(stream, slot);
    };
    let Some(core) = dispatcher.core_of_namespace(namespace).await else {
        return Placed::Here(stream, slot);
    };
    if core == dispatcher.core() {
        return Placed::Here(stream, slot);
    }
    // SAFETY: the descriptor belongs to `stream`, which is alive for this call.
    let fd = match unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) }.try_clone_to_owned() {
        Ok(fd) => fd,
        Err(_) => return Placed::Here(stream, slot),
    };
    match dispatcher.hand_off(core, Handoff { fd, slot }) {
        Ok(()) => {
            // Closes this core's descriptor only; the socket lives on in the duplicate.
            drop(stream);
            Placed::HandedOff
        }
        // The other core is gone (shutdown): the duplicate closed with it, serve it here.
        Err(Handoff { slot, .. }) => Placed::Here(stream, slot),
    }
}

/// The namespace hint of a client's Hello, if its first bytes hold one whole and valid.
async fn peek_hint(stream: &TcpStream, max_frame_bytes: u32) -> Option<i64> {
    let mut buf = vec![0u8; HELLO_PEEK_BYTES];
    for attempt in 0..HELLO_PEEK_TRIES {
        if attempt > 0 {
            glommio::timer::sleep(HELLO_PEEK_PAUSE).await;
        }
        // A socket that says nothing is served here, where the handshake timeout applies.
        let n = glommio::timer::timeout(HELLO_PEEK_WAIT, async { stream.peek(&mut buf).await }).await.ok()?;
        if n == 0 {
            return None;
        }
        let mut input: &[u8] = &buf[..n];
        match FrameReader::new(max_frame_bytes).read_from(&mut input) {
            Ok(Some(frame)) => return hint_of(&frame),
            Ok(None) if n < HELLO_PEEK_BYTES => continue,
            _ => return None,
        }
    }
    None
}

fn hint_of(frame: &ledger_wire::codec::Frame) -> Option<i64> {
    if frame.kind() != FrameKind::Hello {
        return None;
    }
    let hello: Hello = frame.decode::<Hello>().ok()?;
    (hello.role == Role::Client).then_some(hello.namespace_hint).flatten()
}
