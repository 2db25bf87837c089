//! Certificates generated at test time with rcgen (D43), written as PEM files in a temporary
//! directory: a CA and a node certificate for `127.0.0.1` / `localhost` signed by it (used for
//! both TLS server and client auth, as a node presents it to its peers), a client certificate,
//! and an unrelated CA that signs nothing the servers trust.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// PEM files of one test PKI.
pub struct TestPki {
    _dir: tempfile::TempDir,
    /// The CA that signed `node_cert` and `client_cert`.
    pub ca: PathBuf,
    pub node_cert: PathBuf,
    pub node_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A self-signed CA that signed nothing here (a client trusting it must refuse the node).
    pub other_ca: PathBuf,
    /// A client certificate signed by `other_ca` (a node requiring `ca` must refuse it).
    pub stranger_cert: PathBuf,
    pub stranger_key: PathBuf,
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn leaf_params(name: &str, sans: &[&str]) -> CertificateParams {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans).expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write PEM file");
    path
}

impl TestPki {
    pub fn generate() -> TestPki {
        let dir = crate::temp_dir("pki");
        let ca = CertifiedIssuer::self_signed(ca_params("ledger test CA"), KeyPair::generate().expect("key"))
            .expect("CA");
        let other =
            CertifiedIssuer::self_signed(ca_params("unrelated CA"), KeyPair::generate().expect("key"))
                .expect("other CA");
        let leaf = |name: &str, sans: &[&str], issuer: &CertifiedIssuer<'_, KeyPair>| {
            let key = KeyPair::generate().expect("key");
            let cert = leaf_params(name, sans).signed_by(&key, issuer).expect("sign");
            (cert.pem(), key.serialize_pem())
        };
        let (node_cert, node_key) = leaf("ledger node", &["127.0.0.1", "localhost"], &ca);
        let (client_cert, client_key) = leaf("ledger client", &[], &ca);
        let (stranger_cert, stranger_key) = leaf("stranger", &[], &other);
        let path = dir.path();
        TestPki {
            ca: write(path, "ca.pem", &ca.pem()),
            node_cert: write(path, "node.pem", &node_cert),
            node_key: write(path, "node.key", &node_key),
            client_cert: write(path, "client.pem", &client_cert),
            client_key: write(path, "client.key", &client_key),
            other_ca: write(path, "other-ca.pem", &other.pem()),
            stranger_cert: write(path, "stranger.pem", &stranger_cert),
            stranger_key: write(path, "stranger.key", &stranger_key),
            _dir: dir,
        }
    }

    /// `ledger-server` flags for TLS with the node certificate; with `mutual`, clients and
    /// peers must present a certificate signed by `ca` (and peers are checked against it too).
    pub fn server_flags(&self, mutual: bool) -> Vec<String> {
        let mut flags = vec![
            "--tls-cert".to_string(),
            self.node_cert.display().to_string(),
            "--tls-key".to_string(),
            self.node_key.display().to_string(),
        ];
        let ca_flag = if mutual { "--tls-client-ca" } else { "--tls-ca" };
        flags.extend([ca_flag.to_string(), self.ca.display().to_string()]);
        flags
    }

    /// Client options trusting `ca` (no client certificate).
    pub fn client_options(&self) -> ledger_wire::ClientOptions {
        self.options_with(&self.ca, None)
    }

    /// Client options trusting `ca` and presenting the client certificate signed by it.
    pub fn client_options_with_cert(&self) -> ledger_wire::ClientOptions {
        self.options_with(&self.ca, Some((&self.client_cert, &self.client_key)))
    }

    /// Client options trusting `ca`, presenting `identity`.
    pub fn options_with(&self, ca: &Path, identity: Option<(&Path, &Path)>) -> ledger_wire::ClientOptions {
        let tls = ledger_wire::ClientTls::from_files(ca, identity).expect("client TLS config");
        ledger_wire::ClientOptions { tls: Some(tls), ..ledger_wire::ClientOptions::default() }
    }
}
