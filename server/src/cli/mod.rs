//! Shared pieces of the `ledger` and `ledger-admin` command-line tools: connecting, resolving a
//! namespace given by id or name, printing hashes and records, and mapping errors to one line.

pub mod gc_cmd;
pub mod logs;
pub mod ops_cmd;
pub mod out;
pub mod render;
pub mod tls_args;
pub mod verify;
pub mod verify_cmd;
pub mod watch;

use ledger_wire::client::{Client, ClientOptions};
use ledger_wire::error::ClientError;
use ledger_wire::messages::NamespaceSelector;

/// A CLI failure: one line for stderr and the exit code.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub exit_code: u8,
}

impl CliError {
    pub fn new(exit_code: u8, message: impl Into<String>) -> Self {
        CliError { message: message.into(), exit_code }
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        let exit_code = if e.is_connection_lost() { 3 } else { 1 };
        CliError::new(exit_code, e.to_string())
    }
}

/// Connects with a bounded timeout; an unreachable node is exit code 3 (SPEC §11.2).
pub async fn connect(addr: &str, options: ClientOptions) -> Result<Client, CliError> {
    Client::connect(addr, options).await.map_err(|e| CliError::new(3, format!("cannot reach {addr}: {e}")))
}

/// Connects to the first of `addrs` (comma-separated) that answers, then to the nodes of the
/// cache at `cache`, which it keeps up to date (SPEC §10.3, D76); none answering is exit code 3.
pub async fn connect_any(
    addrs: &str,
    cache: Option<&std::path::Path>,
    options: ClientOptions,
) -> Result<Client, CliError> {
    let configured: Vec<String> =
        addrs.split(',').map(str::trim).filter(|a| !a.is_empty()).map(String::from).collect();
    Client::connect_any(&configured, cache, options)
        .await
        .map_err(|e| CliError::new(3, format!("cannot reach {addrs} or a cached node: {e}")))
}

/// The token secret of `--token-file` / `LEDGER_TOKEN_FILE`, if given; an unreadable or empty
/// file is a usage error (exit 2).
pub fn credential(token_file: Option<&std::path::Path>) -> Result<Option<String>, CliError> {
    token_file
        .map(|path| ledger_wire::client::read_token_file(path).map_err(|message| CliError::new(2, message)))
        .transpose()
}

/// Accepts a numeric namespace id or a namespace name.
pub async fn namespace_id(client: &Client, namespace: &str) -> Result<i64, CliError> {
    if let Ok(id) = namespace.parse::<i64>() {
        return Ok(id);
    }
    let info = client.get_namespace(NamespaceSelector::Name(namespace.to_string())).await?;
    Ok(info.namespace_id)
}

/// Runs a CLI's async body on a current-thread runtime: `Ok(code)` exits with it, an error
/// prints one line `{tool}: {message}` on stderr and exits with its code.
pub fn run_main(
    tool: &str,
    body: impl std::future::Future<Output = Result<u8, CliError>>,
) -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{tool}: cannot start runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(body) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("{tool}: {}", e.message);
            std::process::ExitCode::from(e.exit_code)
        }
    }
}

/// Current Unix time in seconds.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
