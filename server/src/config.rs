//! Server configuration (SPEC §11.1): CLI flag > environment `INFERADB__LEDGER__{KEY}` > TOML file
//! (`--config PATH`, default `./inferadb-ledger.toml` if present) > built-in default. Every key
//! is optional at each layer; `Config::resolve` merges them. Unknown TOML keys are an error.

use clap::Parser;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// One optional value per key; the same struct is parsed from flags/env and from TOML.
#[derive(Parser, Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
#[command(name = "ledger-server", version, about = "Ledger: a replicated, verifiable ledger server")]
pub struct ConfigLayer {
    /// TOML configuration file (default ./inferadb-ledger.toml if it exists).
    #[arg(long, env = "INFERADB__LEDGER__CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Client + peer TCP endpoint.
    #[arg(long, env = "INFERADB__LEDGER__LISTEN_ADDR")]
    pub listen_addr: Option<String>,
    /// Address peers use (defaults to the bound listen address).
    #[arg(long, env = "INFERADB__LEDGER__ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// Data directory (SPEC §9.1).
    #[arg(long, env = "INFERADB__LEDGER__DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Cluster size to wait for before bootstrapping (SPEC §10.2): 1 = a single node; N ≥ 2 =
    /// wait until N nodes of `--peers` (this one included) answer, then form one cluster.
    #[arg(long, env = "INFERADB__LEDGER__BOOTSTRAP_EXPECT")]
    pub bootstrap_expect: Option<u32>,
    /// Addresses of the other nodes, comma-separated (this node's own may be listed too).
    #[arg(long, env = "INFERADB__LEDGER__PEERS")]
    pub peers: Option<String>,
    /// Seconds between discovery rounds while bootstrapping (SPEC §10.2).
    #[arg(long, env = "INFERADB__LEDGER__BOOTSTRAP_POLL_SECS")]
    pub bootstrap_poll_secs: Option<u64>,
    /// Give up bootstrapping after this many seconds without the expected nodes.
    #[arg(long, env = "INFERADB__LEDGER__BOOTSTRAP_TIMEOUT_SECS")]
    pub bootstrap_timeout_secs: Option<u64>,
    /// In join mode (`--bootstrap-expect 0`), ask the peers to add this node until one does
    /// (SPEC §10.6); `false` waits for an operator's `ledger-admin join`.
    #[arg(long, env = "INFERADB__LEDGER__JOIN_BY_ITSELF")]
    pub join_by_itself: Option<bool>,
    /// Accept fault-injection requests (`SetPartition`): for tests only, never in production.
    #[arg(long, env = "INFERADB__LEDGER__TEST_FAULTS")]
    pub test_faults: Option<bool>,
    /// Transactions per block at most (SPEC §8.3).
    #[arg(long, env = "INFERADB__LEDGER__BATCH_MAX_SIZE")]
    pub batch_max_size: Option<usize>,
    /// Longest wait of the first transaction of a round before the block closes.
    #[arg(long, env = "INFERADB__LEDGER__BATCH_MAX_DELAY_MS")]
    pub batch_max_delay_ms: Option<u64>,
    /// Close a round as soon as the queue is empty.
    #[arg(long, env = "INFERADB__LEDGER__BATCH_EAGER_COMMIT")]
    pub batch_eager_commit: Option<bool>,
    /// Outstanding requests per connection.
    #[arg(long, env = "INFERADB__LEDGER__REQUESTS_MAX_CONCURRENT")]
    pub requests_max_concurrent: Option<usize>,
    /// Default request deadline.
    #[arg(long, env = "INFERADB__LEDGER__REQUESTS_TIMEOUT_SECS")]
    pub requests_timeout_secs: Option<u64>,
    /// Prometheus + health HTTP endpoint, or `off`.
    #[arg(long, env = "INFERADB__LEDGER__METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// Number of core shards (default: all available CPUs).
    #[arg(long, env = "INFERADB__LEDGER__CORES")]
    pub cores: Option<usize>,
    /// CPUs to pin the shards to, e.g. `2-9,12` (default `0..cores`).
    #[arg(long, env = "INFERADB__LEDGER__CPU_LIST")]
    pub cpu_list: Option<String>,
    /// Pin each shard to its CPU.
    #[arg(long, env = "INFERADB__LEDGER__CPU_PINNING")]
    pub cpu_pinning: Option<bool>,
    /// Bound of each core's inbox channel.
    #[arg(long, env = "INFERADB__LEDGER__CORE_QUEUE_CAPACITY")]
    pub core_queue_capacity: Option<usize>,
    /// Busy-poll this long before an idle executor parks (0 = off); for dedicated hosts.
    #[arg(long, env = "INFERADB__LEDGER__SPIN_BEFORE_PARK_US")]
    pub spin_before_park_us: Option<u64>,
    #[arg(long, env = "INFERADB__LEDGER__MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<u32>,
    #[arg(long, env = "INFERADB__LEDGER__MAX_BATCH_ITEMS")]
    pub max_batch_items: Option<u32>,
    #[arg(long, env = "INFERADB__LEDGER__IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,
    #[arg(long, env = "INFERADB__LEDGER__MAX_OPS_PER_TX")]
    pub max_ops_per_tx: Option<usize>,
    #[arg(long, env = "INFERADB__LEDGER__IDEMPOTENCY_CACHE_ENTRIES")]
    pub idempotency_cache_entries: Option<usize>,
    #[arg(long, env = "INFERADB__LEDGER__GROUPS_PER_CORE")]
    pub groups_per_core: Option<u32>,
    #[arg(long, env = "INFERADB__LEDGER__RAFT_HEARTBEAT_MS")]
    pub raft_heartbeat_ms: Option<u64>,
    #[arg(long, env = "INFERADB__LEDGER__RAFT_ELECTION_MIN_MS")]
    pub raft_election_min_ms: Option<u64>,
    #[arg(long, env = "INFERADB__LEDGER__RAFT_ELECTION_MAX_MS")]
    pub raft_election_max_ms: Option<u64>,
    /// Snapshot a group every N group blocks (SPEC §9.4; 0 = not on block count).
    #[arg(long, env = "INFERADB__LEDGER__SNAPSHOT_INTERVAL_BLOCKS")]
    pub snapshot_interval_blocks: Option<u64>,
    /// Snapshot a group that applied something at least this often (0 = never on time).
    #[arg(long, env = "INFERADB__LEDGER__SNAPSHOT_INTERVAL_SECS")]
    pub snapshot_interval_secs: Option<u64>,
    /// Snapshot files kept per group.
    #[arg(long, env = "INFERADB__LEDGER__SNAPSHOTS_KEEP")]
    pub snapshots_keep: Option<usize>,
    /// openraft snapshots a group (the SPEC §9.4 snapshot file) after this many log entries since
    /// the last one, then purges the log behind it (D31).
    #[arg(long, env = "INFERADB__LEDGER__RAFT_SNAPSHOT_LOGS")]
    pub raft_snapshot_logs: Option<u64>,
    /// Log entries kept behind a snapshot for lagging followers (`raft_log_keep`, SPEC §9.4).
    #[arg(long, env = "INFERADB__LEDGER__RAFT_LOG_KEEP")]
    pub raft_log_keep: Option<u64>,
    /// Period of the body-compaction pass over Compacted vaults (SPEC §9.5).
    #[arg(long, env = "INFERADB__LEDGER__RETENTION_INTERVAL_SECS")]
    pub retention_interval_secs: Option<u64>,
    /// Items buffered per WatchBlocks stream; a client that falls further behind gets
    /// `StreamEnd{ResourceExhausted}` (SPEC §4.3).
    #[arg(long, env = "INFERADB__LEDGER__STREAM_BUFFER")]
    pub stream_buffer: Option<usize>,
    /// error | warn | info | debug
    #[arg(long, env = "INFERADB__LEDGER__LOG_LEVEL")]
    pub log_level: Option<String>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen_addr: String,
    pub advertise_addr: Option<String>,
    pub data_dir: PathBuf,
    pub bootstrap_expect: u32,
    pub peers: Vec<String>,
    pub bootstrap_poll_secs: u64,
    pub bootstrap_timeout_secs: u64,
    pub test_faults: bool,
    pub join_by_itself: bool,
    pub batch_max_size: usize,
    pub batch_max_delay_ms: u64,
    pub batch_eager_commit: bool,
    pub requests_max_concurrent: usize,
    pub requests_timeout_secs: u64,
    pub metrics_addr: Option<String>,
    pub cores: usize,
    pub cpu_list: Vec<usize>,
    pub cpu_pinning: bool,
    pub core_queue_capacity: usize,
    pub spin_before_park_us: u64,
    pub max_frame_bytes: u32,
    pub max_batch_items: u32,
    pub idle_timeout_secs: u64,
    pub max_ops_per_tx: usize,
    pub idempotency_cache_entries: usize,
    pub groups_per_core: u32,
    pub raft_heartbeat_ms: u64,
    pub raft_election_min_ms: u64,
    pub raft_election_max_ms: u64,
    pub snapshot_interval_blocks: u64,
    pub snapshot_interval_secs: u64,
    pub snapshots_keep: usize,
    pub raft_snapshot_logs: u64,
    pub raft_log_keep: u64,
    pub retention_interval_secs: u64,
    pub stream_buffer: usize,
    pub log_level: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("invalid value for {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

macro_rules! pick {
    ($flags:expr, $file:expr, $field:ident, $default:expr) => {
        $flags.$field.clone().or($file.$field.clone()).unwrap_or_else(|| $default)
    };
}

impl Config {
    /// Merges flags/env over the TOML file over defaults, then checks the values.
    pub fn resolve(flags: ConfigLayer) -> Result<Config, ConfigError> {
        let file = load_file(flags.config.as_deref())?;
        let available = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let cores = pick!(flags, file, cores, available);
        if cores == 0 || cores > 256 {
            return Err(ConfigError::Invalid { key: "cores", message: format!("{cores} is not in 1..=256") });
        }
        let cpu_list = match flags.cpu_list.clone().or(file.cpu_list.clone()) {
            Some(text) => parse_cpu_list(&text)?,
            None => (0..cores).collect(),
        };
        if cpu_list.len() < cores {
            return Err(ConfigError::Invalid {
                key: "cpu_list",
                message: format!("{} CPUs listed for {cores} cores", cpu_list.len()),
            });
        }
        let metrics_addr = pick!(flags, file, metrics_addr, "127.0.0.1:9090".to_string());
        let config = Config {
            listen_addr: pick!(flags, file, listen_addr, "127.0.0.1:50051".to_string()),
            advertise_addr: flags.advertise_addr.clone().or(file.advertise_addr.clone()),
            data_dir: pick!(flags, file, data_dir, PathBuf::from("./ledger-data")),
            bootstrap_expect: pick!(flags, file, bootstrap_expect, 1),
            peers: pick!(flags, file, peers, String::new())
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect(),
            bootstrap_poll_secs: pick!(flags, file, bootstrap_poll_secs, 2),
            bootstrap_timeout_secs: pick!(flags, file, bootstrap_timeout_secs, 60),
            test_faults: pick!(flags, file, test_faults, false),
            join_by_itself: pick!(flags, file, join_by_itself, true),
            batch_max_size: pick!(flags, file, batch_max_size, 100),
            batch_max_delay_ms: pick!(flags, file, batch_max_delay_ms, 10),
            batch_eager_commit: pick!(flags, file, batch_eager_commit, true),
            requests_max_concurrent: pick!(flags, file, requests_max_concurrent, 100),
            requests_timeout_secs: pick!(flags, file, requests_timeout_secs, 30),
            metrics_addr: if metrics_addr == "off" { None } else { Some(metrics_addr) },
            cores,
            cpu_list: cpu_list.into_iter().take(cores).collect(),
            cpu_pinning: pick!(flags, file, cpu_pinning, true),
            core_queue_capacity: pick!(flags, file, core_queue_capacity, 8192),
            spin_before_park_us: pick!(flags, file, spin_before_park_us, 0),
            max_frame_bytes: pick!(flags, file, max_frame_bytes, 16 * 1024 * 1024),
            max_batch_items: pick!(flags, file, max_batch_items, 1024),
            idle_timeout_secs: pick!(flags, file, idle_timeout_secs, 300),
            max_ops_per_tx: pick!(flags, file, max_ops_per_tx, 10_000),
            idempotency_cache_entries: pick!(flags, file, idempotency_cache_entries, 100_000),
            groups_per_core: pick!(flags, file, groups_per_core, 1),
            raft_heartbeat_ms: pick!(flags, file, raft_heartbeat_ms, 50),
            raft_election_min_ms: pick!(flags, file, raft_election_min_ms, 150),
            raft_election_max_ms: pick!(flags, file, raft_election_max_ms, 300),
            snapshot_interval_blocks: pick!(flags, file, snapshot_interval_blocks, 10_000),
            snapshot_interval_secs: pick!(flags, file, snapshot_interval_secs, 3600),
            snapshots_keep: pick!(flags, file, snapshots_keep, 3),
            raft_snapshot_logs: pick!(flags, file, raft_snapshot_logs, 10_000),
            raft_log_keep: pick!(flags, file, raft_log_keep, 1000),
            retention_interval_secs: pick!(flags, file, retention_interval_secs, 300),
            stream_buffer: pick!(flags, file, stream_buffer, 1024),
            log_level: pick!(flags, file, log_level, "info".to_string()),
        };
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| Err(ConfigError::Invalid { key, message: message.to_string() });
        if self.bootstrap_expect == 0 && self.peers.is_empty() {
            return invalid(
                "peers",
                "join mode (bootstrap_expect 0) needs a cluster member's address in --peers",
            );
        }
        if self.bootstrap_expect > 5 {
            return invalid("bootstrap_expect", "at most 5 initial voters (SPEC §10.4)");
        }
        if self.bootstrap_expect >= 2 && self.peers.is_empty() {
            return invalid("peers", "bootstrap_expect >= 2 needs the other nodes' addresses in --peers");
        }
        if self.bootstrap_poll_secs == 0 || self.bootstrap_timeout_secs == 0 {
            return invalid("bootstrap_poll_secs", "bootstrap intervals must be at least 1 second");
        }
        if self.batch_max_size == 0 {
            return invalid("batch_max_size", "must be at least 1");
        }
        if self.requests_max_concurrent == 0 || self.core_queue_capacity == 0 {
            return invalid("requests_max_concurrent", "bounds must be at least 1");
        }
        if self.max_frame_bytes < ledger_wire::constants::MAX_FRAME_BYTES_MIN {
            return invalid("max_frame_bytes", "must be at least 1024");
        }
        if self.max_batch_items == 0 {
            return invalid("max_batch_items", "must be at least 1");
        }
        if self.stream_buffer == 0 {
            return invalid("stream_buffer", "must be at least 1");
        }
        if self.raft_snapshot_logs == 0 {
            return invalid("raft_snapshot_logs", "must be at least 1");
        }
        if self.snapshots_keep == 0 || self.retention_interval_secs == 0 {
            return invalid(
                "snapshots_keep",
                "snapshots_keep and retention_interval_secs must be at least 1",
            );
        }
        if self.raft_election_min_ms >= self.raft_election_max_ms
            || self.raft_heartbeat_ms >= self.raft_election_min_ms
        {
            return invalid("raft_election_min_ms", "need heartbeat < election min < election max");
        }
        Ok(())
    }
}

fn load_file(path: Option<&Path>) -> Result<ConfigLayer, ConfigError> {
    let (path, required) = match path {
        Some(path) => (path.to_path_buf(), true),
        None => (PathBuf::from("./inferadb-ledger.toml"), false),
    };
    if !required && !path.exists() {
        return Ok(ConfigLayer::default());
    }
    let text =
        std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse { path, source: Box::new(source) })
}

/// Parses `2-9,12` into `[2, 3, …, 9, 12]`.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, ConfigError> {
    let bad = |message: String| ConfigError::Invalid { key: "cpu_list", message };
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let first: usize = first.parse().map_err(|_| bad(format!("{part:?} is not a CPU or range")))?;
        let last: usize = last.parse().map_err(|_| bad(format!("{part:?} is not a CPU or range")))?;
        if first > last {
            return Err(bad(format!("range {part:?} is reversed")));
        }
        cpus.extend(first..=last);
    }
    if cpus.is_empty() {
        return Err(bad("empty CPU list".into()));
    }
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Ranges and single CPUs combine in order; malformed text is rejected.
    #[test]
    fn t01_cpu_list_parses_ranges() {
        assert_eq!(parse_cpu_list("2-4,7").unwrap(), vec![2, 3, 4, 7]);
        assert_eq!(parse_cpu_list("0").unwrap(), vec![0]);
        assert!(parse_cpu_list("4-2").is_err());
        assert!(parse_cpu_list("x").is_err());
        assert!(parse_cpu_list("").is_err());
    }

    /// Flags win over the file, the file over defaults; unknown TOML keys fail.
    #[test]
    fn t02_layers_merge_in_precedence_order() {
        let dir = tempfile_dir();
        let path = dir.join("c.toml");
        std::fs::write(&path, "batch_max_size = 7\nlisten_addr = \"127.0.0.1:1\"\ncores = 1\n").unwrap();
        let flags = ConfigLayer { config: Some(path.clone()), batch_max_size: Some(9), ..Default::default() };
        let config = Config::resolve(flags).unwrap();
        assert_eq!(config.batch_max_size, 9);
        assert_eq!(config.listen_addr, "127.0.0.1:1");
        assert_eq!(config.batch_max_delay_ms, 10);
        std::fs::write(&path, "no_such_key = 1\n").unwrap();
        let flags = ConfigLayer { config: Some(path), ..Default::default() };
        assert!(matches!(Config::resolve(flags), Err(ConfigError::Parse { .. })));
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ledger-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
