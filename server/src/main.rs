//! `ledger-server`: runs one node. Exit codes: 0 clean shutdown, 1 runtime error, 2 bad
//! configuration, 3 data directory locked (SPEC §9.6 step 1).

use clap::Parser;
use ledger_server::config::{Config, ConfigLayer};
use ledger_server::node::{run_node, NodeError};
use std::process::ExitCode;

/// mimalloc: the state tree allocates and frees many small nodes per block (path copying), and
/// glibc malloc showed up as ~25% of a write profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = match Config::resolve(ConfigLayer::parse()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("ledger-server: {e}");
            return ExitCode::from(2);
        }
    };
    match run_node(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ NodeError::DataDir(ledger_server::data_dir::DataDirError::Locked(_))) => {
            eprintln!("ledger-server: {e}");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("ledger-server: {e}");
            ExitCode::from(1)
        }
    }
}
