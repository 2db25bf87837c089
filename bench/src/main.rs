//! `ledger-bench`: micro-benchmarks of the hot paths (SPEC §11.8) — hashes, state-root updates and
//! proofs at 1 M rows, the rkyv frame codec, redb block apply — and the inputs of a write's latency
//! budget: the fsync cost of a directory's disk and a loopback round trip. Each bench prints one
//! line with per-iteration p50/p99/p99.9/max (HDR histogram, ns) and throughput at p50. Method and
//! how to read the lines: docs/benchmarks.md.

mod bench_budget;
mod bench_codec;
mod bench_hash;
mod bench_idem;
mod bench_redb;
mod bench_tree;
mod constants;
mod error;
mod fixtures;
mod harness;

use clap::Parser;
use constants::{QUICK_DIVISOR, TREE_ROWS_FULL, TREE_ROWS_QUICK};
use error::BenchError;
use harness::Outcome;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Micro-benchmarks of Ledger's hot paths.
#[derive(Debug, Clone, Parser)]
#[command(name = "ledger-bench", version, about)]
pub struct Options {
    /// Run only benches whose name contains NAME (e.g. hash, state_root, codec/decode, redb).
    #[arg(long, value_name = "NAME")]
    pub filter: Option<String>,
    /// Timed iterations (samples) per bench, overriding each bench's default.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub iterations: Option<u64>,
    /// Smaller state tree (100 k rows) and a tenth of the default iterations.
    #[arg(long)]
    pub quick: bool,
    /// Rows of the state benches' scope (default 1 M, or 100 k with --quick); e.g. 1000 to compare
    /// the state tree's write cost in a small vault with a large one.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rows: Option<u64>,
    /// Directory of the fsync benches' files (default: the system temp directory); put it on the
    /// data directory's disk. Without --filter it runs only the latency-budget benches (fsync/…
    /// and net/…).
    #[arg(long, value_name = "DIR", value_parser = existing_dir)]
    pub fsync_dir: Option<PathBuf>,
    /// Print the bench names and exit.
    #[arg(long)]
    pub list: bool,
}

impl Options {
    /// Whether bench `name` passes `--filter` (or, without one, `--fsync-dir`'s selection).
    pub fn selects(&self, name: &str) -> bool {
        match (&self.filter, &self.fsync_dir) {
            (Some(filter), _) => name.contains(filter.as_str()),
            (None, Some(_)) => bench_budget::NAMES.contains(&name),
            (None, None) => true,
        }
    }

    /// Directory of the fsync benches' files.
    pub fn fsync_dir(&self) -> PathBuf {
        self.fsync_dir.clone().unwrap_or_else(std::env::temp_dir)
    }

    /// Samples for a bench whose default is `default`.
    pub fn samples(&self, default: u64) -> u64 {
        match (self.iterations, self.quick) {
            (Some(n), _) => n,
            (None, true) => (default / QUICK_DIVISOR).max(10),
            (None, false) => default,
        }
    }

    /// Rows of the state tree.
    pub fn tree_rows(&self) -> u64 {
        if let Some(rows) = self.rows {
            rows
        } else if self.quick {
            TREE_ROWS_QUICK
        } else {
            TREE_ROWS_FULL
        }
    }

    /// Every bench name, in run order.
    pub fn all_names(&self) -> Vec<String> {
        let mut names: Vec<String> = bench_hash::NAMES.iter().map(|s| s.to_string()).collect();
        names.extend(bench_tree::names(self.tree_rows()));
        names.extend(bench_codec::NAMES.iter().map(|s| s.to_string()));
        names.extend(bench_redb::NAMES.iter().map(|s| s.to_string()));
        names.extend(bench_idem::NAMES.iter().map(|s| s.to_string()));
        names.extend(bench_budget::NAMES.iter().map(|s| s.to_string()));
        names
    }
}

/// `--fsync-dir` takes a directory that exists: the benches create their files inside it.
fn existing_dir(arg: &str) -> Result<PathBuf, String> {
    if Path::new(arg).is_dir() {
        Ok(PathBuf::from(arg))
    } else {
        Err(format!("{arg} is not an existing directory"))
    }
}

fn machine_line() -> String {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                let (k, v) = line.split_once(':')?;
                (k.trim() == "model name").then(|| v.trim().to_string())
            })
        })
        .unwrap_or_else(|| "unknown".to_string());
    let profile =
        if cfg!(debug_assertions) { "debug build (numbers are not representative)" } else { "release build" };
    format!("machine: {cpus} cpu(s), {model}; {profile}")
}

fn run(options: &Options) -> Result<usize, BenchError> {
    let mut count = 0usize;
    let mut print = |outcome: Outcome| {
        println!("{}", outcome.line());
        count += 1;
    };
    bench_hash::run(options, &mut print);
    bench_tree::run(options, &mut print);
    bench_codec::run(options, &mut print)?;
    bench_redb::run(options, &mut print)?;
    bench_idem::run(options, &mut print);
    bench_budget::run(options, &mut print)?;
    Ok(count)
}

fn main() -> ExitCode {
    let options = Options::parse();
    if options.list {
        for name in options.all_names() {
            println!("{name}");
        }
        return ExitCode::SUCCESS;
    }
    println!("{}", machine_line());
    match run(&options) {
        Ok(0) => {
            eprintln!("ledger-bench: no bench matches the filter; see --list");
            ExitCode::FAILURE
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ledger-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn options(args: &[&str]) -> Options {
        Options::try_parse_from(std::iter::once("ledger-bench").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn t20_flags_and_filter() {
        // Proves --filter selects by substring, --iterations overrides, --quick shrinks.
        let o = options(&["--filter", "codec", "--iterations", "7"]);
        assert!(o.selects("codec/encode/1000req"));
        assert!(!o.selects("hash/tx"));
        assert_eq!(o.samples(2000), 7);
        let q = options(&["--quick"]);
        assert_eq!(q.samples(2000), 200);
        assert_eq!(q.samples(50), 10);
        assert_eq!(q.tree_rows(), TREE_ROWS_QUICK);
        assert!(options(&[]).all_names().contains(&"state_root/1M/k1000".to_string()));
        assert!(Options::try_parse_from(["ledger-bench", "--iterations", "0"]).is_err());
        let small = options(&["--rows", "1000", "--quick"]);
        assert_eq!(small.tree_rows(), 1000);
        assert!(small.all_names().contains(&"state_root/1k/k1".to_string()));
        assert!(Options::try_parse_from(["ledger-bench", "--rows", "0"]).is_err());
    }

    #[test]
    fn t22_tree_benches_run_at_a_small_size() {
        // Proves every state bench runs end to end on a 1000-row scope (one iteration each).
        let o = options(&["--iterations", "1", "--rows", "1000"]);
        let mut names = Vec::new();
        bench_tree::run(&o, &mut |outcome: Outcome| names.push(outcome.name));
        assert_eq!(names, bench_tree::names(1000));
    }

    #[test]
    fn t21_every_bench_runs_once_at_tiny_size() {
        // Proves each non-tree bench runs end to end and prints a line (one iteration each; the
        // tree benches need a large tree and are exercised by `ledger-bench --quick`).
        let o = options(&["--iterations", "1"]);
        let mut names = Vec::new();
        let mut collect = |outcome: Outcome| names.push(outcome.name);
        bench_hash::run(&o, &mut collect);
        bench_codec::run(&o, &mut collect).unwrap();
        bench_redb::run(&o, &mut collect).unwrap();
        bench_idem::run(&o, &mut collect);
        bench_budget::run(&o, &mut collect).unwrap();
        let mut expected: Vec<String> = bench_hash::NAMES.iter().map(|s| s.to_string()).collect();
        expected.extend(bench_codec::NAMES.iter().map(|s| s.to_string()));
        expected.extend(bench_redb::NAMES.iter().map(|s| s.to_string()));
        expected.extend(bench_idem::NAMES.iter().map(|s| s.to_string()));
        expected.extend(bench_budget::NAMES.iter().map(|s| s.to_string()));
        assert_eq!(names, expected);
    }

    #[test]
    fn t23_fsync_dir_selects_the_budget_benches() {
        // Proves --fsync-dir takes only an existing directory, places the fsync files there, runs
        // only the budget benches unless --filter says otherwise, and that those benches run end
        // to end in that directory (one sample each; nothing timed is asserted).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap();
        let o = options(&["--fsync-dir", path, "--iterations", "1"]);
        assert_eq!(o.fsync_dir(), dir.path());
        for name in bench_budget::NAMES {
            assert!(o.selects(name), "{name}");
        }
        assert!(!o.selects("hash/tx"));
        assert!(!o.selects("redb/apply_100tx/immediate"));
        let only_fsync = options(&["--fsync-dir", path, "--filter", "fsync/"]);
        assert!(only_fsync.selects("fsync/overwrite_4k"));
        assert!(!only_fsync.selects("net/loopback_rtt_64b"));
        assert!(options(&[]).selects("fsync/append_4k"));
        assert_eq!(options(&[]).fsync_dir(), std::env::temp_dir());
        let missing = dir.path().join("missing");
        let refused = Options::try_parse_from(["ledger-bench", "--fsync-dir", missing.to_str().unwrap()]);
        assert!(refused.is_err());
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(Options::try_parse_from(["ledger-bench", "--fsync-dir", file.to_str().unwrap()]).is_err());

        let mut names = Vec::new();
        bench_budget::run(&o, &mut |outcome: Outcome| {
            assert_eq!(outcome.ns.len(), 1);
            names.push(outcome.name);
        })
        .unwrap();
        assert_eq!(names, bench_budget::NAMES);
        // The bench files are temporary: only the one this test made is left.
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["file"]);
    }
}
