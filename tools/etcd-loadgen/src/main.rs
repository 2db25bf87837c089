//! `etcd-loadgen`: the etcd side of `scripts/bench-vs-etcd.sh`. It puts 100-byte values to single
//! random keys of etcd v3 from `connections × pipeline` workers in a closed loop (each worker
//! sends its next put when the previous one is answered), for a warm-up and then a measured
//! window, and prints one line with throughput and latency percentiles (µs) — the same workload
//! shape as `ledger-loadgen --mix write=100 --batch-items 1`, so the two can be compared.
//!
//! Debian ships etcd without its `benchmark` tool, hence this one. It is not a member of the
//! project's workspace (see Cargo.toml).

mod cli;
mod load;
mod report;

use clap::Parser;
use cli::{Args, ReportFormat};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("etcd-loadgen: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let tally = match runtime.block_on(load::run(&args)) {
        Ok(tally) => tally,
        Err(e) => {
            eprintln!("etcd-loadgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let summary = report::Summary::new(&args, &tally);
    match args.report {
        ReportFormat::Text => println!("{}", summary.line()),
        ReportFormat::Json => println!("{}", summary.json()),
    }
    if let Some(error) = &tally.first_error {
        eprintln!("etcd-loadgen: {} failed put(s); the first: {error}", tally.errors);
    }
    if tally.count == 0 {
        eprintln!("etcd-loadgen: no put succeeded in the measured window");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
