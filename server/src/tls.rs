//! The node's TLS material (D43), loaded once at start from the `tls_*` settings: the server
//! configuration its listener uses for clients and peers alike, and the client configuration it
//! dials other nodes with (their certificates checked against `tls_ca`, this node's own
//! certificate presented for mutual TLS).

use crate::config::TlsFiles;
use ledger_wire::tls::{client_config, server_config, TlsError};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct NodeTls {
    pub server: Arc<rustls::ServerConfig>,
    /// `None` when no CA for other nodes is configured (a single node only, `Config::check`).
    pub peer: Option<Arc<rustls::ClientConfig>>,
}

impl NodeTls {
    pub fn load(files: &TlsFiles) -> Result<NodeTls, TlsError> {
        let server = Arc::new(server_config(&files.cert, &files.key, files.client_ca.as_deref())?);
        let identity = Some((files.cert.as_path(), files.key.as_path()));
        let peer = match &files.peer_ca {
            Some(ca) => Some(Arc::new(client_config(ca, identity)?)),
            None => None,
        };
        Ok(NodeTls { server, peer })
    }
}
