//! The `ledger` subcommands of verifiable reads: `get --verify` (verified read, checked before
//! printing), `blocks FROM TO` (a block range) and `verify FILE` (the offline check of either
//! command's `--json` output). JSON forms and checks live in `verify.rs`.

use super::render::{hex, text_or_hex};
use super::verify::{blocks_json, verified_read_json, verify_file, VerifiedReadView};
use super::CliError;
use ledger_core::constants::BLOCK_RANGE_MAX;
use ledger_core::hash::block_hash;
use ledger_core::verify::TrustedBlock;
use ledger_wire::client::{verify_read_response, Client, VerifiedReadOptions};
use ledger_wire::messages::{Request, Response};

fn unexpected(response: &Response) -> CliError {
    CliError::new(1, format!("unexpected response: {response:?}"))
}

/// `ledger get --verify`: a verified read, checked here; prints the value (exit 1 when the key
/// is provably absent) or, with `--json`, the whole verified response (exit 0 either way).
pub async fn get(
    client: &Client,
    namespace_id: i64,
    vault_id: Option<i64>,
    key: &str,
    at_height: Option<u64>,
    trusted_height: Option<u64>,
    json_mode: bool,
) -> Result<(), CliError> {
    let trusted = match trusted_height {
        None => None,
        Some(height) => {
            // Trust on first use: the file records the trusted hash, so a third party can
            // compare it with one it already holds.
            let response = client.call(Request::GetBlock { namespace_id, vault_id, height }).await?;
            let Response::GetBlock { block, .. } = response else { return Err(unexpected(&response)) };
            Some(TrustedBlock::of(&block.header))
        }
    };
    let options = VerifiedReadOptions { at_height, trusted, consistency: None };
    let read = client.verified_read_unchecked(namespace_id, vault_id, key, options).await?;
    let historical = at_height.is_some_and(|h| h > 0);
    verify_read_response(key, &read, historical, trusted.as_ref())
        .map_err(|e| CliError::new(1, format!("proof invalid: {e}")))?;
    if json_mode {
        let view = VerifiedReadView {
            namespace_id,
            vault_id,
            key,
            at_height: at_height.filter(|h| *h > 0),
            value: read.value.as_deref(),
            entity: read.entity.as_ref(),
            block_height: read.block_height,
            header: &read.block_header,
            state_proof: &read.state_proof,
            chain_proof: read.chain_proof.as_ref(),
            trusted,
        };
        super::out::line(verified_read_json(&view));
        return Ok(());
    }
    match &read.value {
        Some(value) => {
            super::out::line(text_or_hex(value));
            Ok(())
        }
        None => Err(CliError::new(
            1,
            format!("key {key:?} not found (absence verified at height {})", read.block_height),
        )),
    }
}

/// `ledger blocks FROM TO`: fetched in `GetBlockRange` pages of at most `BLOCK_RANGE_MAX`.
pub async fn blocks(
    client: &Client,
    namespace_id: i64,
    vault_id: Option<i64>,
    from: u64,
    to: u64,
    json_mode: bool,
) -> Result<(), CliError> {
    if from > to {
        return Err(CliError::new(2, "FROM is greater than TO"));
    }
    let mut all = Vec::new();
    let mut start = from;
    let mut tip = 0;
    while start <= to {
        let end = to.min(start.saturating_add(BLOCK_RANGE_MAX - 1));
        let request = Request::GetBlockRange { namespace_id, vault_id, start_height: start, end_height: end };
        let response = client.call(request).await?;
        let Response::GetBlockRange { blocks, current_tip } = response else {
            return Err(unexpected(&response));
        };
        tip = current_tip;
        let got = blocks.len() as u64;
        all.extend(blocks);
        if got < end - start + 1 || end == u64::MAX {
            break;
        }
        start = end + 1;
    }
    if json_mode {
        super::out::line(blocks_json(namespace_id, vault_id, &all, tip));
    } else {
        for b in &all {
            super::out::line(format_args!(
                "{}\t{}\t{} txs\troot {}",
                b.header.height,
                hex(&block_hash(&b.header)),
                b.transactions.len(),
                hex(&b.header.state_root)
            ));
        }
    }
    Ok(())
}

/// `ledger verify FILE`: `ok` (or `{"ok": true, ...}`), else the first failure and exit 1.
pub fn offline(file: &str, json_mode: bool) -> Result<(), CliError> {
    match verify_file(file) {
        Ok(summary) => {
            if json_mode {
                super::out::line(serde_json::json!({"ok": true, "summary": summary}));
            } else {
                super::out::line("ok");
            }
            Ok(())
        }
        Err(failure) => Err(CliError::new(1, format!("verification failed: {failure}"))),
    }
}
