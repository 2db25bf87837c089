//! `ledger-loadgen`: drives a Ledger cluster over the native protocol with a seeded read/write/list
//! mix from `connections × pipeline` workers and reports throughput, latency percentiles (HDR
//! histograms) and error counts per operation (SPEC §11.8; method in docs/benchmarks.md).

mod cli;
mod codes;
mod conn_slot;
mod constants;
mod duration;
mod error;
mod exec;
mod hdr_out;
mod machine;
mod mix;
mod neighbour;
mod preload;
mod report;
mod run;
mod scopes;
mod stats;
mod timeline;
mod workload;

use clap::Parser;
use cli::{Args, ReportFormat};
use error::LoadgenError;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = args.validate() {
        clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{e}\n")).exit();
    }
    match run_and_report(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ledger-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_and_report(args: &Args) -> Result<(), LoadgenError> {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(LoadgenError::Runtime)?;
    if args.noisy_neighbour {
        let output = runtime.block_on(neighbour::run(args))?;
        print_report(&neighbour::to_text(args, &output, &machine::MachineInfo::detect()));
        return Ok(());
    }
    let output = runtime.block_on(run::run(args))?;
    let machine = machine::MachineInfo::detect();
    let scopes: Vec<(i64, i64)> = output.scopes.iter().map(|s| (s.namespace_id, s.vault_id)).collect();
    let report = report::Report {
        args,
        machine: &machine,
        measured: output.measured,
        stats: &output.stats,
        scopes: &scopes,
    };
    match args.report {
        ReportFormat::Json => print_report(&format!("{}\n", report.to_json())),
        ReportFormat::Text => print_report(&report.to_text()),
    }
    if let Some(path) = &args.hdr_out {
        hdr_out::write(path, &output.stats, &args.mix, args.warmup, output.measured)?;
    }
    Ok(())
}

/// Writes the report to stdout; a reader that has gone away (`ledger-loadgen ... | head`) ends
/// the program quietly, as with any Unix tool, instead of a panic in `print!`.
fn print_report(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("ledger-loadgen: cannot write the report: {e}");
            std::process::exit(1);
        }
    }
}
