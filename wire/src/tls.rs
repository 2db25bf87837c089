//! TLS material (feature `tls`, D43): PEM files read into rustls server and client
//! configurations, shared by the node (its listener, its peer connections, its bootstrap calls)
//! and by the client library. Every configuration uses rustls's `ring` provider explicitly, so no
//! process-wide default provider has to be installed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Why TLS material could not be loaded or assembled.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("{path}: no certificate in the file")]
    NoCertificate { path: PathBuf },
    #[error("{path}: a CA certificate is not usable: {message}")]
    BadCa { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    #[error("{addr:?} has no host to check the server certificate against")]
    NoHost { addr: String },
}

/// ring rather than aws-lc-rs: no C/CMake build of aws-lc on every machine (D43). rustls
/// 0.23.48 deprecates ring's provider only for its lack of post-quantum key exchange.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate of a PEM file, in file order (leaf first for a chain).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |message: String| TlsError::Pem { path: path.to_path_buf(), message };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_path_buf() });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| TlsError::Pem { path: path.to_path_buf(), message: format!("private key: {e}") })
}

/// The CA certificates of a PEM file as a trust store.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::BadCa { path: path.to_path_buf(), message: e.to_string() })?;
    }
    Ok(roots)
}

/// A node's server side: its certificate chain and key; with `client_ca`, mutual TLS (every
/// client, peers included, must present a certificate signed by that CA).
pub fn server_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<ServerConfig, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), provider())
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    Ok(builder.with_single_cert(load_certs(cert)?, load_key(key)?)?)
}

/// A client side trusting the CAs of `ca`, presenting `identity` (certificate chain, key) when
/// the server asks for one.
pub fn client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(load_roots(ca)?);
    Ok(match identity {
        Some((cert, key)) => builder.with_client_auth_cert(load_certs(cert)?, load_key(key)?)?,
        None => builder.with_no_client_auth(),
    })
}

/// The name a server's certificate is checked against when it is dialled at `addr`
/// (`host:port`, `[v6]:port` or a bare host): an IP address or a DNS name.
pub fn server_name(addr: &str) -> Result<ServerName<'static>, TlsError> {
    let no_host = || TlsError::NoHost { addr: addr.to_string() };
    let host = if let Some(rest) = addr.strip_prefix('[') {
        rest.split(']').next().ok_or_else(no_host)?
    } else if addr.matches(':').count() == 1 {
        addr.split(':').next().ok_or_else(no_host)?
    } else {
        addr
    };
    if host.is_empty() {
        return Err(no_host());
    }
    ServerName::try_from(host.to_string()).map_err(|_| no_host())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn t01_server_name_takes_the_host_of_an_address() {
        let ip = |s: &str| ServerName::IpAddress(s.parse::<std::net::IpAddr>().unwrap().into());
        assert_eq!(server_name("127.0.0.1:50051").unwrap(), ip("127.0.0.1"));
        assert_eq!(server_name("[::1]:50051").unwrap(), ip("::1"));
        assert_eq!(server_name("::1").unwrap(), ip("::1"));
        assert_eq!(
            server_name("ledger-1.internal:50051").unwrap(),
            ServerName::try_from("ledger-1.internal").unwrap()
        );
        assert!(server_name(":50051").is_err());
    }

    #[test]
    fn t02_missing_or_empty_files_are_named_errors() {
        let dir = std::env::temp_dir().join(format!("ledger-wire-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not pem\n").unwrap();
        assert!(matches!(load_certs(&empty), Err(TlsError::NoCertificate { .. })));
        assert!(matches!(load_key(&empty), Err(TlsError::Pem { .. })));
        let missing = dir.join("missing.pem");
        let error = load_certs(&missing).unwrap_err().to_string();
        assert!(error.contains("missing.pem"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
