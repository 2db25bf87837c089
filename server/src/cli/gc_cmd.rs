//! `ledger-admin force-gc [--namespace NS [--vault ID]]` (SPEC §11.2): one GC cycle now
//! (SPEC §3.8). With a namespace, of that scope (`--vault` absent or 0: the namespace scope), on
//! its group's leader wherever `--addr` points; without, of every group the node at `--addr`
//! leads (a node that leads none answers `FailedPrecondition`, exit 1). Prints the entities
//! expired and the scopes scanned; exit 1 if a scope's GC transaction did not commit.

use crate::cli::{out, CliError};
use ledger_wire::client::Client;
use ledger_wire::messages::{Request, Response};
use serde_json::json;

pub async fn force_gc(
    client: &Client,
    namespace_id: Option<i64>,
    vault: Option<i64>,
    json_out: bool,
) -> Result<u8, CliError> {
    let vault_id = vault.filter(|v| *v != 0);
    let response = client.call(Request::ForceGc { namespace_id, vault_id }).await?;
    let Response::ForceGc { success, message, expired_count, vaults_scanned } = response else {
        return Err(CliError::new(1, format!("unexpected response: {response:?}")));
    };
    if json_out {
        out::line(json!({
            "success": success, "message": message,
            "expired_count": expired_count, "vaults_scanned": vaults_scanned,
        }));
    } else {
        let mut text = format!("expired {expired_count}\nvaults_scanned {vaults_scanned}");
        if !message.is_empty() {
            text.push_str(&format!("\nmessage {message}"));
        }
        out::line(text);
    }
    Ok(if success { 0 } else { 1 })
}
