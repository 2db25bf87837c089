//! The router's errors. The request path answers with wire statuses instead (SPEC §4.5); what
//! lives here is what stops a node from serving at all.

use std::net::SocketAddr;

/// Why the node could not take its listen address (SPEC §4.1, §11.1 `listen_addr`).
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot resolve listen address {addr}: {source}")]
    Resolve {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("listen address {addr} resolves to no address")]
    Unresolved { addr: String },
    /// Another process listens on the address (and still did after the wait for a killed
    /// predecessor's socket to close, which `ListenSocket::claim` announces on stderr).
    #[error("address {addr} is already in use by another process")]
    InUse { addr: SocketAddr },
    #[error("cannot {what} {addr}: {source}")]
    Socket {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}
