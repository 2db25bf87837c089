//! The node's one listening socket (SPEC §4.1: one listening socket per node). The node binds it
//! before its cores start, without SO_REUSEPORT, so the kernel refuses the address to any other
//! process, and every core accepts from a duplicate of it. Per-core SO_REUSEPORT sockets could
//! not be kept to one process: any process of the same user may join their group, and the kernel
//! then splits clients between two databases (D26).

use crate::constants::{LISTEN_BACKLOG, LISTEN_IN_USE_POLL};
use crate::error::ListenError;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The node's address, bound but not yet listening: no other process can listen on it, and
/// clients are still refused (not queued) while the node opens its groups.
pub struct ListenSocket {
    socket: Socket,
    local: SocketAddr,
}

impl ListenSocket {
    /// Binds `addr` (port 0: the OS chooses a port). While the address is in use the bind is
    /// retried for up to `in_use_wait`, long enough for a killed predecessor's socket to close;
    /// a live holder keeps it, and the result is [`ListenError::InUse`].
    pub fn claim(addr: &str, in_use_wait: Duration) -> Result<ListenSocket, ListenError> {
        let target = resolve(addr)?;
        let deadline = Instant::now() + in_use_wait;
        let mut waiting = false;
        loop {
            match bind(target) {
                Ok(socket) => return ListenSocket::bound(socket, target),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    if Instant::now() >= deadline {
                        return Err(ListenError::InUse { addr: target });
                    }
                    if !waiting {
                        tracing::warn!(
                            "address {target} is in use; waiting up to {in_use_wait:?} for it to be released"
                        );
                        waiting = true;
                    }
                    std::thread::sleep(LISTEN_IN_USE_POLL);
                }
                Err(source) => return Err(ListenError::Socket { what: "bind", addr: target, source }),
            }
        }
    }

    fn bound(socket: Socket, target: SocketAddr) -> Result<ListenSocket, ListenError> {
        let local = socket
            .local_addr()
            .map_err(|source| ListenError::Socket {
                what: "read the bound address of",
                addr: target,
                source,
            })?
            .as_socket()
            .ok_or(ListenError::Unresolved { addr: target.to_string() })?;
        Ok(ListenSocket { socket, local })
    }

    /// The bound address, with the OS-chosen port when port 0 was asked for.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Starts listening and returns `cores` handles of the one socket (at least one), one per
    /// core; they share its accept queue.
    pub fn listen(self, cores: usize) -> Result<Vec<std::net::TcpListener>, ListenError> {
        let addr = self.local;
        let failed = |what| move |source| ListenError::Socket { what, addr, source };
        // glommio's accept first tries a direct accept4, setting O_NONBLOCK around it and
        // restoring the flags after. The flags belong to the socket all cores share, so on a
        // blocking socket one core could restore "blocking" while another is inside accept4,
        // stalling that core's executor until a client connects. Non-blocking from the start,
        // the toggle changes nothing; glommio's io_uring accepts wait for a client either way.
        self.socket.set_nonblocking(true).map_err(failed("make non-blocking"))?;
        match self.socket.listen(LISTEN_BACKLOG) {
            Ok(()) => {}
            // Two nodes may bind the address at the same instant (SO_REUSEADDR lets sockets that
            // are not yet listening share it); the kernel lets only the first one listen.
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Err(ListenError::InUse { addr }),
            Err(source) => return Err(failed("listen on")(source)),
        }
        let mut handles = Vec::with_capacity(cores.max(1));
        for _ in 1..cores {
            handles.push(self.socket.try_clone().map_err(failed("duplicate the socket of"))?.into());
        }
        handles.push(self.socket.into());
        Ok(handles)
    }
}

fn resolve(addr: &str) -> Result<SocketAddr, ListenError> {
    addr.to_socket_addrs()
        .map_err(|source| ListenError::Resolve { addr: addr.to_string(), source })?
        .next()
        .ok_or_else(|| ListenError::Unresolved { addr: addr.to_string() })
}

fn bind(target: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(target), Type::STREAM, Some(Protocol::TCP))?;
    // SO_REUSEADDR lets a restart bind beside the previous run's TIME_WAIT connections; it never
    // lets two listening sockets share an address. SO_REUSEPORT, deliberately unset, would.
    socket.set_reuse_address(true)?;
    socket.bind(&SockAddr::from(target))?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A listener like the one each core bound before D26 (glommio's `TcpListener::bind`).
    fn reuseport_listener(addr: SocketAddr) -> Socket {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        socket.set_reuse_port(true).unwrap();
        socket.bind(&SockAddr::from(addr)).unwrap();
        socket.listen(LISTEN_BACKLOG).unwrap();
        socket
    }

    #[test]
    fn t01_an_address_held_by_a_listener_is_refused() {
        // Proves the claim is exclusive against both kinds of holder: a plain listener (another
        // node after D26) and an SO_REUSEPORT listener of this same user (a node from before
        // D26), which the kernel lets a second SO_REUSEPORT socket join but not ours.
        let first = ListenSocket::claim("127.0.0.1:0", Duration::ZERO).unwrap();
        let addr = first.local_addr();
        assert_ne!(addr.port(), 0);
        let _listening = first.listen(2).unwrap();
        let refused = ListenSocket::claim(&addr.to_string(), Duration::ZERO);
        assert!(matches!(refused, Err(ListenError::InUse { addr: a }) if a == addr), "{:?}", refused.err());

        let holder = reuseport_listener("127.0.0.1:0".parse().unwrap());
        let addr = holder.local_addr().unwrap().as_socket().unwrap();
        let refused = ListenSocket::claim(&addr.to_string(), Duration::ZERO);
        assert!(matches!(refused, Err(ListenError::InUse { .. })), "{:?}", refused.err());
        let message = refused.err().unwrap().to_string();
        assert!(message.contains(&addr.to_string()), "{message}");
    }

    #[test]
    fn t02_two_nodes_binding_at_once_cannot_both_listen() {
        // Proves the race between two starting nodes is closed: both may bind before either
        // listens (SO_REUSEADDR), but only the first to listen gets the address.
        let first = ListenSocket::claim("127.0.0.1:0", Duration::ZERO).unwrap();
        let addr = first.local_addr();
        let second = ListenSocket::claim(&addr.to_string(), Duration::ZERO).unwrap();
        let _listening = first.listen(1).unwrap();
        let refused = second.listen(1);
        assert!(matches!(refused, Err(ListenError::InUse { .. })), "{:?}", refused.err());
    }

    #[test]
    fn t03_a_claim_waits_for_a_closing_holder() {
        // Proves the bounded wait: an address whose listener closes 300 ms later (as a killed
        // node's does once its io_uring is gone) is taken, and the core handles all share one
        // socket, so a client's connection is accepted by whichever of them asks.
        let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = holder.local_addr().unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(holder);
        });
        let claimed = ListenSocket::claim(&addr.to_string(), Duration::from_secs(5)).unwrap();
        release.join().unwrap();
        assert_eq!(claimed.local_addr(), addr);
        let handles = claimed.listen(3).unwrap();
        assert_eq!(handles.len(), 3);
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let accepted = loop {
            if let Some(stream) = handles.iter().find_map(|h| h.accept().ok()) {
                break stream;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(accepted.0.local_addr().unwrap(), addr);
    }
}
