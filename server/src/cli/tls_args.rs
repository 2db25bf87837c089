//! The TLS flags shared by `ledger` and `ledger-admin` (D43): without `--tls-ca` they speak
//! plain TCP, as before.

use super::CliError;
use ledger_wire::client::ClientTls;
use rustls::pki_types::ServerName;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// Connect over TLS, trusting the CA certificates of this PEM file.
    #[arg(long, global = true, env = "LEDGER_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, for a node that requires one (mutual TLS).
    #[arg(long, global = true, env = "LEDGER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, global = true, env = "LEDGER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Name the node's certificate must carry (default: the host of --addr when it is a DNS
    /// name, else the IP address connected to).
    #[arg(long, global = true, env = "LEDGER_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
}

impl TlsArgs {
    /// The client's TLS settings for a node at `addr`, or `None` without `--tls-ca`. A file
    /// that cannot be read is a usage error (exit 2).
    pub fn client_tls(&self, addr: &str) -> Result<Option<ClientTls>, CliError> {
        let Some(ca) = &self.tls_ca else {
            if self.tls_cert.is_some() {
                return Err(CliError::new(2, "--tls-cert needs --tls-ca"));
            }
            return Ok(None);
        };
        let identity = self.tls_cert.as_deref().zip(self.tls_key.as_deref());
        let mut tls = ClientTls::from_files(ca, identity).map_err(|e| CliError::new(2, e.to_string()))?;
        tls.server_name = match &self.tls_server_name {
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|e| CliError::new(2, format!("--tls-server-name {name:?}: {e}")))?,
            ),
            None => match ledger_wire::tls::server_name(addr) {
                Ok(name @ ServerName::DnsName(_)) => Some(name),
                _ => None,
            },
        };
        Ok(Some(tls))
    }
}
