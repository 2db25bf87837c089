//! `ledger watch`: follows a scope's chain with `WatchBlocks` (SPEC §5.1 item 5) and prints one
//! line per block as it arrives (height, block hash, state root; one JSON object per line with
//! `--json`) until Ctrl-C, `--count` blocks, or the stream ends. A stream the server ends with
//! `ResourceExhausted` (this terminal fell behind) is resubscribed from the last height + 1.

use crate::cli::render::{self, hex};
use crate::cli::CliError;
use ledger_core::types::BlockAnnouncement;
use ledger_wire::client::{Client, StreamNext};
use ledger_wire::error::ClientError;
use ledger_wire::messages::StatusCode;
use serde_json::json;

/// Resubscriptions after `ResourceExhausted` before the command gives up.
const RESUBSCRIBE_MAX: u32 = 10;

/// What to watch and how to print it.
pub struct WatchArgs {
    pub namespace_id: i64,
    pub vault_id: Option<i64>,
    /// First height; `None` = the block after the current tip (new blocks only).
    pub from: Option<u64>,
    /// Stop after this many blocks.
    pub count: Option<u64>,
    pub json: bool,
}

/// Runs the watch; returns when `count` blocks were printed or the stream ended.
pub async fn run(client: &Client, args: WatchArgs) -> Result<(), CliError> {
    let mut next_height = match args.from {
        Some(height) => height,
        None => client.get_tip(args.namespace_id, args.vault_id).await?.height + 1,
    };
    let mut printed = 0u64;
    let mut resubscribed = 0u32;
    loop {
        if args.count.is_some_and(|count| printed >= count) {
            return Ok(());
        }
        let mut stream = client.watch_blocks(args.namespace_id, args.vault_id, next_height).await?;
        let status = loop {
            if args.count.is_some_and(|count| printed >= count) {
                stream.cancel().await?;
                return Ok(());
            }
            match stream.next().await {
                Ok(StreamNext::Block(block)) => {
                    print_block(&block, args.json);
                    next_height = block.height + 1;
                    printed += 1;
                }
                Ok(StreamNext::End(status)) => break status,
                Err(ClientError::Status { code: StatusCode::ResourceExhausted, .. }) => {
                    break ledger_wire::messages::Status::exhausted("client buffer overflowed");
                }
                Err(e) => return Err(e.into()),
            }
        };
        match status.code {
            StatusCode::ResourceExhausted if resubscribed < RESUBSCRIBE_MAX => {
                resubscribed += 1;
                eprintln!(
                    "ledger: fell behind ({}); resubscribing from height {next_height}",
                    status.message
                );
            }
            StatusCode::Cancelled => return Ok(()),
            _ => return Err(CliError::new(1, format!("stream ended: {status}"))),
        }
    }
}

fn print_block(block: &BlockAnnouncement, json_mode: bool) {
    if json_mode {
        let value = json!({
            "namespace_id": block.namespace_id,
            "vault_id": block.vault_id,
            "height": block.height,
            "block_hash": hex(&block.block_hash),
            "state_root": hex(&block.state_root),
            "timestamp": render::timestamp(&block.timestamp),
        });
        super::out::line(value);
    } else {
        super::out::line(format_args!(
            "{} {} {}",
            block.height,
            hex(&block.block_hash),
            hex(&block.state_root)
        ));
    }
}
