//! `ledger-server`: runs one node. Exit codes: 0 clean shutdown, 1 runtime error (among them
//! the listen address in use by another process), 2 bad configuration, 3 data directory locked
//! (SPEC §9.6 step 1).

use ledger_server::config::{Config, ConfigError};
use ledger_server::node::{run_node_with, NodeError, ReloadTokens};
use ledger_server::node_alloc::{cache_this_thread, release_this_thread, NodeCacheAlloc};
use ledger_shard::config::HelperHooks;
use std::process::ExitCode;

/// mimalloc: the state tree allocates and frees many small nodes per block (path copying), and
/// glibc malloc showed up as ~25% of a write profile. The cores' executors also keep freed tree
/// nodes at hand (`node_alloc.rs`).
#[global_allocator]
static GLOBAL: NodeCacheAlloc<mimalloc::MiMalloc> = NodeCacheAlloc { inner: mimalloc::MiMalloc };

/// `mi_option_purge_delay` (its index in mimalloc v3's `mi_option_e`; the sys crate names only the
/// older options). The test below checks the index against the option's default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never return freed pages to the OS (mimalloc's default purges them after 1 s). Every block frees
/// about as many state-tree nodes as it allocates, so purged pages were soon faulted back in and
/// zeroed by the kernel: ~7% of a 1 M-key write profile. A ledger node runs on a dedicated host and
/// keeps its peak footprint; an operator's `MIMALLOC_PURGE_DELAY` wins.
const PURGE_DELAY_MS: std::os::raw::c_long = -1;

fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one process-wide mimalloc option; mimalloc allows options to change at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
}

/// Hands a finishing thread's cached node blocks back to mimalloc.
fn release_node_blocks() {
    release_this_thread(&GLOBAL);
}

fn main() -> ExitCode {
    tune_allocator();
    let (args, vars): (Vec<_>, Vec<_>) = (std::env::args_os().collect(), std::env::vars_os().collect());
    let config = match Config::load(args.clone(), vars.clone()) {
        Ok(config) => config,
        // `--help`, `--version` (exit 0) and a malformed command line (exit 2), as clap prints them.
        Err(ConfigError::Args(e)) => e.exit(),
        Err(e) => {
            eprintln!("ledger-server: {e}");
            return ExitCode::from(2);
        }
    };
    ledger_server::logging::init(&config.log_level, config.log_format);
    // The state-tree threads allocate and free tree nodes all day, like the executors.
    let hooks = HelperHooks { on_start: Some(cache_this_thread), on_exit: Some(release_node_blocks) };
    // SIGHUP re-reads every source as at start and takes the new `auth_tokens` (D42).
    let reload: ReloadTokens = Box::new(move || {
        Config::load(args.clone(), vars.clone()).map(|config| config.auth_tokens).map_err(|e| e.to_string())
    });
    match run_node_with(config, hooks, Some(reload)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ NodeError::DataDir(ledger_server::data_dir::DataDirError::Locked(_))) => {
            tracing::error!("ledger-server: {e}");
            ExitCode::from(3)
        }
        Err(e) => {
            tracing::error!("ledger-server: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_delay_option_index_is_the_documented_one() {
        // SAFETY: reads one mimalloc option.
        let default = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(
            default, 1_000,
            "index {MI_OPTION_PURGE_DELAY} is not mi_option_purge_delay (default 1000 ms)"
        );
    }
}
