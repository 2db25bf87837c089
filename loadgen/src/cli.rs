//! The command line of `ledger-loadgen` (SPEC §11.8), parsed with clap. Values that clap cannot
//! check by type (durations, the mix, address lists) go through this crate's parsers, so a bad
//! value is rejected before anything connects, with a message naming the flag and the fix.

use crate::constants::{
    BATCH_ITEMS_MAX, CONNECTIONS_MAX, KEY_SPACE_MAX, PIPELINE_MAX, SCOPES_PER_AXIS_MAX, VALUE_SIZE_MAX,
};
use crate::duration::parse_duration;
use crate::error::ArgError;
use crate::mix::Mix;
use clap::{Parser, ValueEnum};
use ledger_core::types::ReadConsistency;
use std::path::PathBuf;
use std::time::Duration;

/// Load generator for a Ledger cluster over the native protocol.
#[derive(Debug, Clone, Parser)]
#[command(name = "ledger-loadgen", version, about)]
pub struct Args {
    /// Server addresses; connections are spread over them round-robin.
    #[arg(long, default_value = "127.0.0.1:50051", value_parser = parse_addrs)]
    pub addr: AddrList,
    /// Namespaces to create (or reuse) and spread the load over.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=SCOPES_PER_AXIS_MAX as u64))]
    pub namespaces: u64,
    /// Vaults per namespace.
    #[arg(long = "vaults-per-ns", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=SCOPES_PER_AXIS_MAX as u64))]
    pub vaults_per_ns: u64,
    /// Pin connection c's workers to scope c mod the scope count, and name that scope's namespace
    /// in the connection's Hello, so a node serves it on the core owning that namespace (D53).
    #[arg(long = "scope-per-connection")]
    pub scope_per_connection: bool,
    /// TCP connections; each carries `--pipeline` workers, every worker with its own client id.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=CONNECTIONS_MAX as u64))]
    pub connections: u64,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=PIPELINE_MAX as u64))]
    pub pipeline: u64,
    /// Operations per write transaction (client batching); 1 = single writes.
    #[arg(long = "batch-items", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=BATCH_ITEMS_MAX as u64))]
    pub batch_items: u64,
    /// Measured run time after the warm-up (e.g. 60s, 5m).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Warm-up before measuring; its results are discarded.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Target total operations per second (open loop, coordinated-omission corrected); 0 = closed loop.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Operation weights, e.g. read=90,write=10,verified=0,list=0.
    #[arg(long, default_value = "read=90,write=10,verified=0,list=0", value_parser = Mix::parse)]
    pub mix: Mix,
    /// Keys per vault; preloaded before the run so that reads hit.
    #[arg(long = "key-space", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=KEY_SPACE_MAX as u64))]
    pub key_space: u64,
    /// Bytes per written value.
    #[arg(long = "value-size", default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=VALUE_SIZE_MAX as u64))]
    pub value_size: u64,
    /// Consistency of reads and lists.
    #[arg(long, value_enum, default_value_t = Consistency::Eventual)]
    pub consistency: Consistency,
    /// Output format of the report on stdout.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub report: ReportFormat,
    /// Also write the measured histograms to FILE (HdrHistogram interval log, one tagged entry per op).
    #[arg(long = "hdr-out", value_name = "FILE")]
    pub hdr_out: Option<PathBuf>,
    /// Seed of the workload: the same seed gives the same operation sequence per worker.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Send writes and linearizable reads to the leader each connection learned (default), or
    /// only to the `--addr` node of the connection, which forwards them (`forward`).
    #[arg(long, value_enum, default_value_t = Routing::Leader)]
    pub routing: Routing,
    /// Noisy-neighbour scenario (SPEC §8.9): the load above runs on namespace loadgen-0, first
    /// alone, then beside a flood of writes to loadgen-1 that neither retries nor backs off; the
    /// text report compares the quiet namespace's latencies (--namespaces and --vaults-per-ns
    /// are ignored).
    #[arg(long = "noisy-neighbour")]
    pub noisy_neighbour: bool,
    /// Connections of the flood in --noisy-neighbour, each with --pipeline workers.
    #[arg(long = "noisy-connections", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=CONNECTIONS_MAX as u64))]
    pub noisy_connections: u64,
    /// File holding the token secret, when the server has `auth_tokens` (SPEC §4.1).
    #[arg(long, env = "LEDGER_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Connect over TLS, trusting the CA certificates of this PEM file (D43).
    #[arg(long, env = "LEDGER_TLS_CA", value_name = "PATH")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, for nodes that require one (mutual TLS).
    #[arg(long, env = "LEDGER_TLS_CERT", value_name = "PATH", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "LEDGER_TLS_KEY", value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// Read consistency as spelled on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Consistency {
    Eventual,
    Linearizable,
}

impl Consistency {
    pub fn to_wire(self) -> ReadConsistency {
        match self {
            Consistency::Eventual => ReadConsistency::Eventual,
            Consistency::Linearizable => ReadConsistency::Linearizable,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Consistency::Eventual => "eventual",
            Consistency::Linearizable => "linearizable",
        }
    }
}

/// `--routing leader|forward`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Routing {
    Leader,
    Forward,
}

/// `--report json|text`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Json,
    Text,
}

/// One or more `HOST:PORT` addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrList(pub Vec<String>);

/// Parses `A[,B...]`, each `HOST:PORT` with a numeric port.
pub fn parse_addrs(input: &str) -> Result<AddrList, ArgError> {
    let mut addrs = Vec::new();
    for part in input.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let valid = match part.rsplit_once(':') {
            Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
            None => false,
        };
        if !valid {
            return Err(ArgError::Address { input: part.to_string() });
        }
        addrs.push(part.to_string());
    }
    if addrs.is_empty() {
        return Err(ArgError::AddressEmpty);
    }
    Ok(AddrList(addrs))
}

impl Args {
    /// Checks that need more than one flag.
    pub fn validate(&self) -> Result<(), ArgError> {
        if self.duration.is_zero() {
            return Err(ArgError::DurationZero);
        }
        if self.batch_items > self.key_space {
            return Err(ArgError::BatchExceedsKeySpace {
                batch_items: self.batch_items,
                key_space: self.key_space,
            });
        }
        Ok(())
    }

    /// True when `--rate` asks for an open loop.
    pub fn open_loop(&self) -> bool {
        self.rate > 0
    }

    /// Number of concurrent workers: `connections × pipeline`.
    pub fn workers(&self) -> u64 {
        self.connections * self.pipeline
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::mix::OpKind;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("ledger-loadgen").chain(args.iter().copied()))
    }

    #[test]
    fn t20_defaults_match_the_spec() {
        // Proves that with no flags the documented defaults apply (SPEC §11.8).
        let args = parse(&[]).unwrap();
        assert_eq!(args.addr, AddrList(vec!["127.0.0.1:50051".into()]));
        assert_eq!(args.duration, Duration::from_secs(60));
        assert_eq!(args.warmup, Duration::from_secs(10));
        assert_eq!(args.rate, 0);
        assert!(!args.open_loop());
        assert_eq!(args.mix.weight(OpKind::Read), 90);
        assert_eq!(args.mix.weight(OpKind::Write), 10);
        assert_eq!(args.batch_items, 1);
        assert_eq!(args.consistency, Consistency::Eventual);
        assert_eq!(args.report, ReportFormat::Text);
        assert_eq!(args.hdr_out, None);
        assert!(args.validate().is_ok());
    }

    #[test]
    fn t21_every_flag_parses() {
        // Proves each SPEC §11.8 flag is accepted under its exact name and lands in its field.
        let args = parse(&[
            "--addr",
            "10.0.0.1:7000,node-b:7001",
            "--namespaces",
            "2",
            "--vaults-per-ns",
            "3",
            "--connections",
            "16",
            "--pipeline",
            "32",
            "--batch-items",
            "100",
            "--duration",
            "1m",
            "--warmup",
            "5s",
            "--rate",
            "20000",
            "--mix",
            "read=50,write=30,verified=10,list=10",
            "--key-space",
            "1000000",
            "--value-size",
            "256",
            "--consistency",
            "linearizable",
            "--report",
            "json",
            "--hdr-out",
            "/tmp/x.hdr",
            "--seed",
            "42",
        ])
        .unwrap();
        assert_eq!(args.addr.0, vec!["10.0.0.1:7000".to_string(), "node-b:7001".to_string()]);
        assert_eq!((args.namespaces, args.vaults_per_ns, args.connections, args.pipeline), (2, 3, 16, 32));
        assert_eq!(args.batch_items, 100);
        assert_eq!(args.duration, Duration::from_secs(60));
        assert_eq!(args.warmup, Duration::from_secs(5));
        assert_eq!(args.rate, 20_000);
        assert!(args.open_loop());
        assert_eq!(args.mix.weight(OpKind::Verified), 10);
        assert_eq!((args.key_space, args.value_size, args.seed), (1_000_000, 256, 42));
        assert_eq!(args.consistency, Consistency::Linearizable);
        assert_eq!(args.report, ReportFormat::Json);
        assert_eq!(args.hdr_out, Some(PathBuf::from("/tmp/x.hdr")));
        assert_eq!(args.workers(), 16 * 32);
    }

    #[test]
    fn t22_bad_values_are_rejected_with_clear_messages() {
        // Proves bad input fails at parse time and the message names the flag and what is wrong.
        let cases: &[(&[&str], &str)] = &[
            (&["--duration", "10x"], "--duration"),
            (&["--warmup", "soon"], "expected a number with unit"),
            (&["--mix", "read=90,scan=10"], "unknown operation \"scan\""),
            (&["--mix", "read=0"], "all zero"),
            (&["--addr", "localhost"], "expected HOST:PORT"),
            (&["--addr", "h:99999"], "expected HOST:PORT"),
            (&["--connections", "0"], "--connections"),
            (&["--consistency", "strong"], "linearizable"),
            (&["--report", "xml"], "json"),
            (&["--key-space=-5"], "--key-space"),
            (&["--pipeline", "1000"], "--pipeline"),
            (&["--unknown-flag"], "--unknown-flag"),
        ];
        for (argv, needle) in cases {
            let message = parse(argv).unwrap_err().to_string();
            assert!(message.contains(needle), "{argv:?}: {message:?} lacks {needle:?}");
        }
    }

    #[test]
    fn t23_cross_flag_checks() {
        // Proves a batch larger than the key space is refused (a tx writes distinct keys).
        let args = parse(&["--batch-items", "10", "--key-space", "5"]).unwrap();
        assert_eq!(args.validate(), Err(ArgError::BatchExceedsKeySpace { batch_items: 10, key_space: 5 }));
        let args = parse(&["--duration", "0s"]).unwrap();
        assert_eq!(args.validate(), Err(ArgError::DurationZero));
    }
}
