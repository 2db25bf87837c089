//! Server configuration (SPEC §11.1): CLI flag > environment `INFERADB__LEDGER__{KEY}` > TOML file
//! (`--config PATH`, default `./inferadb-ledger.toml` if present) > built-in default. Each source
//! is read into a `ConfigLayer` (every key optional): flags and environment variables through the
//! same clap value parsers, the file through serde. `Config::resolve` merges the layers key by key
//! and checks the result. A file key or `INFERADB__LEDGER__*` variable that names no setting is an
//! error naming it, and so is a SPEC §11.1 key of a feature not built yet (`NOT_IMPLEMENTED`):
//! the operator learns that it would have no effect (D37). Every setting has one default, in
//! `defaults`, shown by `--help` and listed in docs/operations.md (a test keeps the three equal).

use clap::{Arg, CommandFactory, FromArgMatches, Parser};
use serde::Deserialize;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

pub use crate::auth_config::AuthTokens;

/// Prefix of the environment variables (SPEC §11.1): the key follows in upper case.
pub const ENV_PREFIX: &str = "INFERADB__LEDGER__";
/// The file read when no `--config` is given, if it exists (relative to the working directory).
pub const DEFAULT_FILE: &str = "./inferadb-ledger.toml";

/// SPEC §11.1 keys of features this server does not have yet, with what is missing. They are
/// rejected from every source rather than accepted and ignored (D37).
pub const NOT_IMPLEMENTED: &[(&str, &str)] = &[];

/// Built-in defaults (SPEC §11.1 unless noted), one per setting. `--help` and
/// docs/operations.md show them through `default_of`.
pub mod defaults {
    pub const LISTEN_ADDR: &str = "127.0.0.1:50051";
    pub const DATA_DIR: &str = "./ledger-data";
    pub const BOOTSTRAP_EXPECT: u32 = 1;
    pub const BOOTSTRAP_POLL_SECS: u64 = 2;
    pub const BOOTSTRAP_TIMEOUT_SECS: u64 = 60;
    pub const DISCOVERY_CACHE_TTL_SECS: u64 = 3600;
    /// The peer cache's file name in the data directory (SPEC §10.3).
    pub const DISCOVERY_CACHE_FILE: &str = "peers.cache";
    /// Not in SPEC §11.1: join mode's choice between asking and waiting (SPEC §10.6).
    pub const JOIN_BY_ITSELF: bool = true;
    /// Not in SPEC §11.1: the test fault switch.
    pub const TEST_FAULTS: bool = false;
    /// Not in SPEC §11.1: the simulated disk of the cluster power-cut tests (D89), off.
    pub const TEST_SIM_DISK: &str = "off";
    /// Not in SPEC §11.1: SPEC §9.9's automatic recovery of a Diverged vault.
    pub const VAULT_AUTO_RECOVERY: bool = true;
    pub const BATCH_MAX_SIZE: usize = 100;
    pub const BATCH_MAX_DELAY_MS: u64 = 10;
    pub const BATCH_EAGER_COMMIT: bool = true;
    /// Not in SPEC §11.1 (D51).
    pub const BATCH_FILL_WAIT_US: u64 = 200;
    pub const REQUESTS_MAX_CONCURRENT: usize = 100;
    pub const REQUESTS_TIMEOUT_SECS: u64 = 30;
    pub const METRICS_ADDR: &str = "127.0.0.1:9090";
    /// `metrics_addr` value that turns the endpoint off.
    pub const METRICS_OFF: &str = "off";
    pub const HEALTH_LAG_THRESHOLD_BLOCKS: u64 = 50;
    pub const CPU_PINNING: bool = true;
    pub const CORE_QUEUE_CAPACITY: usize = 8192;
    /// Not in SPEC §11.1 (D10).
    pub const SPIN_BEFORE_PARK_US: u64 = 0;
    pub const MAX_FRAME_BYTES: u32 = 16 * 1024 * 1024;
    pub const MAX_BATCH_ITEMS: u32 = 1024;
    pub const IDLE_TIMEOUT_SECS: u64 = 300;
    /// Not in SPEC §11.1 (D46): open client and peer connections per node at most.
    pub const MAX_CONNECTIONS: usize = 10_000;
    /// Not in SPEC §11.1 (D46): seconds a new connection has to complete its Hello.
    pub const HANDSHAKE_TIMEOUT_SECS: u64 = 10;
    pub const MAX_OPS_PER_TX: usize = 10_000;
    pub const IDEMPOTENCY_CACHE_ENTRIES: usize = 100_000;
    pub const RATE_LIMIT_RPS: u32 = 1000;
    pub const GROUPS_PER_CORE: u32 = 1;
    /// SPEC §10.5: each data group's voters (at most the cluster's size).
    pub const REPLICATION_FACTOR: u32 = 3;
    pub const RAFT_HEARTBEAT_MS: u64 = 50;
    pub const RAFT_ELECTION_MIN_MS: u64 = 150;
    pub const RAFT_ELECTION_MAX_MS: u64 = 300;
    pub const SNAPSHOT_INTERVAL_BLOCKS: u64 = 10_000;
    pub const SNAPSHOT_INTERVAL_SECS: u64 = 3600;
    pub const SNAPSHOTS_KEEP: usize = 3;
    /// Not in SPEC §11.1 (D31).
    pub const RAFT_SNAPSHOT_LOGS: u64 = 10_000;
    pub const RAFT_LOG_KEEP: u64 = 1000;
    /// Not in SPEC §11.1 (SPEC §9.5 names no period).
    pub const RETENTION_INTERVAL_SECS: u64 = 300;
    pub const INTEGRITY_INTERVAL_SECS: u64 = 3600;
    pub const GC_INTERVAL_SECS: u64 = 60;
    pub const NODE_HEARTBEAT_TIMEOUT_SECS: u64 = 30;
    /// Not in SPEC §11.1 (D92): how long a copy of a data group this node left is kept.
    pub const REPLICA_RELEASE_SECS: u64 = 60;
    /// Not in SPEC §11.1, which asks for periodic balancing and names no period (D70).
    pub const LEADER_BALANCE_INTERVAL_SECS: u64 = 30;
    pub const LEARNER_CACHE_TTL_SECS: u64 = 5;
    /// Bound on `initial_groups`: each group is a set of files and a Raft instance on every node.
    pub const INITIAL_GROUPS_MAX: u32 = 4096;
    pub const LEARNER_REFRESH_INTERVAL_MS: u64 = 1000;
    pub const STREAM_BUFFER: usize = 1024;
    pub const LOG_LEVEL: &str = "info";
    /// Not in SPEC §11.1 (which asks for JSON lines, §11.6; text is easier to read by eye).
    pub const LOG_FORMAT: super::LogFormat = super::LogFormat::Text;
}

/// How log lines are written to stderr (`log_format`).
#[derive(clap::ValueEnum, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line per event: time, level, target, message and `key=value` fields.
    Text,
    /// One JSON object per line.
    Json,
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// One optional value per setting; parsed from the flags, from the environment and from the TOML
/// file alike. The field name is the TOML key, the flag is `--` and the key with dashes, the
/// environment variable is `ENV_PREFIX` and the key in upper case.
#[derive(Parser, Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
#[command(name = "ledger-server", version, about = "Ledger: a replicated, verifiable ledger server")]
pub struct ConfigLayer {
    /// TOML configuration file; a key that names no setting is an error.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Client and peer TCP endpoint.
    #[arg(long)]
    pub listen_addr: Option<String>,
    /// Address other nodes use to reach this one (reported by GetNodeInfo); in a cluster it must
    /// be reachable by the peers.
    #[arg(long)]
    pub advertise_addr: Option<String>,
    /// PEM certificate chain of this node: with `tls_key`, clients and peers connect over TLS
    /// (D43). Its names must include the host part of the addresses clients and peers dial.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: every client and peer must present a certificate they signed
    /// (mutual TLS); also the CA peers are checked against unless `tls_ca` is set.
    #[arg(long)]
    pub tls_client_ca: Option<PathBuf>,
    /// PEM CA certificates this node trusts for the other nodes' certificates when it dials
    /// them; a TLS cluster needs it or `tls_client_ca`.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Data directory (SPEC §9.1).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Cluster size to wait for before bootstrapping (SPEC §10.2): 1 = a single node; N ≥ 2 =
    /// wait until N nodes of `--peers` (this one included) answer, then form one cluster; 0 =
    /// join mode (SPEC §10.6).
    #[arg(long)]
    pub bootstrap_expect: Option<u32>,
    /// Addresses of the other nodes, comma-separated (this node's own may be listed too); in the
    /// TOML file a string or an array of strings.
    #[arg(long)]
    #[serde(default, deserialize_with = "peers_from_toml")]
    pub peers: Option<String>,
    /// Seconds between discovery rounds while bootstrapping or joining (SPEC §10.2).
    #[arg(long)]
    pub bootstrap_poll_secs: Option<u64>,
    /// Give up bootstrapping or joining after this many seconds without the expected nodes.
    #[arg(long)]
    pub bootstrap_timeout_secs: Option<u64>,
    /// DNS name whose A/AAAA addresses, with this node's listen port, are tried after `peers`
    /// and the peer cache when bootstrapping or joining (SPEC §10.3).
    #[arg(long)]
    pub discovery_domain: Option<String>,
    /// Where a member keeps the other members' addresses for discovery (SPEC §10.3).
    #[arg(long)]
    pub discovery_cache_path: Option<PathBuf>,
    /// Peer cache entries older than this are tried only when nothing else is found.
    #[arg(long)]
    pub discovery_cache_ttl_secs: Option<u64>,
    /// In join mode (`--bootstrap-expect 0`), ask the peers to add this node until one does
    /// (SPEC §10.6); `false` waits for an operator's `ledger-admin join`.
    #[arg(long)]
    pub join_by_itself: Option<bool>,
    /// Accept fault-injection requests (`SetPartition`): for tests only, never in production.
    #[arg(long)]
    pub test_faults: Option<bool>,
    /// Run every group's redb files and Raft log on a simulated disk in memory, and cut the
    /// power on SIGUSR2 (D89): `drop` keeps only what was synced, `lying` keeps nothing (a disk
    /// that ignores fsync, the tests' canary), `off` is the real disk. Needs `--test-faults`.
    #[arg(long)]
    pub test_sim_disk: Option<String>,
    /// Rebuild a Diverged vault automatically (SPEC §9.9: at once, after 30 s, after 5 min);
    /// `false` leaves it to `ledger-admin recover-vault`.
    #[arg(long)]
    pub vault_auto_recovery: Option<bool>,
    /// Transactions per block at most (SPEC §8.3).
    #[arg(long)]
    pub batch_max_size: Option<usize>,
    /// Longest wait of a round's first transaction before the block closes, in ms (SPEC §8.3).
    #[arg(long)]
    pub batch_max_delay_ms: Option<u64>,
    /// Close a round as soon as the queue is empty (SPEC §8.3).
    #[arg(long)]
    pub batch_eager_commit: Option<bool>,
    /// With eager commit, how long a round may wait (µs) for as many writes as the group's last
    /// round took, when no block is in flight; stretched to the group's last block time, up to
    /// 2 ms, when that is longer (D51, D59; 0 = close at once).
    #[arg(long)]
    pub batch_fill_wait_us: Option<u64>,
    /// Outstanding requests and open streams per connection.
    #[arg(long)]
    pub requests_max_concurrent: Option<usize>,
    /// Seconds a write waits for its block to commit, and a forwarded request for the leader's
    /// answer, before `Unavailable`.
    #[arg(long)]
    pub requests_timeout_secs: Option<u64>,
    /// Prometheus `GET /metrics` and `GET /health` HTTP endpoint, or `off`.
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// `GET /health` says Degraded when a hosted group has more log entries than this not yet
    /// applied here (SPEC §11.5).
    #[arg(long)]
    pub health_lag_threshold_blocks: Option<u64>,
    /// Number of core shards.
    #[arg(long)]
    pub cores: Option<usize>,
    /// CPUs to pin the shards to, e.g. `2-9,12`.
    #[arg(long)]
    pub cpu_list: Option<String>,
    /// Pin each shard to its CPU.
    #[arg(long)]
    pub cpu_pinning: Option<bool>,
    /// Bound of each core's inbox channel; a full inbox answers `Busy`.
    #[arg(long)]
    pub core_queue_capacity: Option<usize>,
    /// Busy-poll this many µs before an idle executor parks (0 = off); for dedicated hosts (D10).
    #[arg(long)]
    pub spin_before_park_us: Option<u64>,
    /// Largest frame sent or accepted, in bytes, peers included (SPEC §4.2; at least 1024).
    #[arg(long)]
    pub max_frame_bytes: Option<u32>,
    /// Items per batch frame at most (SPEC §4.3).
    #[arg(long)]
    pub max_batch_items: Option<u32>,
    /// Seconds a connection may stay idle before it is closed (SPEC §4.3).
    #[arg(long)]
    pub idle_timeout_secs: Option<u64>,
    /// Open connections per node at most; more are refused with Goaway{TooManyConnections} (D46).
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Seconds a new connection has to send its Hello (and finish TLS) before it is closed (D46).
    #[arg(long)]
    pub handshake_timeout_secs: Option<u64>,
    /// Operations per transaction at most (SPEC §3.6).
    #[arg(long)]
    pub max_ops_per_tx: Option<usize>,
    /// Client sequence entries kept per group for idempotent retries (SPEC §6.2).
    #[arg(long)]
    pub idempotency_cache_entries: Option<usize>,
    /// Client write transactions per second per namespace, admitted at the group leader with
    /// bursts of twice that; more are refused with ResourceExhausted (SPEC §8.9; 0 = off).
    #[arg(long)]
    pub rate_limit_rps: Option<u32>,
    /// Data groups created per core at bootstrap (SPEC §10.5).
    #[arg(long)]
    pub groups_per_core: Option<u32>,
    /// Data groups a new cluster (or single node) starts with; default cores × groups_per_core
    /// of the bootstrapping node (SPEC §10.5).
    #[arg(long)]
    pub initial_groups: Option<u32>,
    /// Voters of each data group, chosen among the members by fewest hosted groups; capped at
    /// the cluster's size. The bootstrapping node's value holds for the cluster (SPEC §10.5).
    #[arg(long)]
    pub replication_factor: Option<u32>,
    /// Raft heartbeat interval, in ms.
    #[arg(long)]
    pub raft_heartbeat_ms: Option<u64>,
    /// Shortest Raft election timeout, in ms.
    #[arg(long)]
    pub raft_election_min_ms: Option<u64>,
    /// Longest Raft election timeout, in ms.
    #[arg(long)]
    pub raft_election_max_ms: Option<u64>,
    /// Snapshot a group every N group blocks (SPEC §9.4; 0 = not on block count).
    #[arg(long)]
    pub snapshot_interval_blocks: Option<u64>,
    /// Snapshot a group that applied something at least this often, in seconds (0 = never on
    /// time).
    #[arg(long)]
    pub snapshot_interval_secs: Option<u64>,
    /// Snapshot files kept per group.
    #[arg(long)]
    pub snapshots_keep: Option<usize>,
    /// openraft snapshots a group (the SPEC §9.4 snapshot file) after this many log entries since
    /// the last one, then purges the log behind it (D31).
    #[arg(long)]
    pub raft_snapshot_logs: Option<u64>,
    /// Log entries kept behind a snapshot for lagging followers (SPEC §9.4).
    #[arg(long)]
    pub raft_log_keep: Option<u64>,
    /// Period of the body-compaction pass over Compacted vaults, in seconds (SPEC §9.5).
    #[arg(long)]
    pub retention_interval_secs: Option<u64>,
    /// Period of the background quick integrity check of every vault (SPEC §9.7; 0 = off).
    #[arg(long)]
    pub integrity_interval_secs: Option<u64>,
    /// Period of the GC of expired entities by each group's leader (SPEC §3.8; 0 = off).
    #[arg(long)]
    pub gc_interval_secs: Option<u64>,
    /// Seconds without an answer to `_system`'s appends before its leader marks a member
    /// unavailable; after as long again it removes the member from every group, if the voters
    /// left keep a live quorum (SPEC §10.6; 0 = never).
    #[arg(long)]
    pub node_heartbeat_timeout_secs: Option<u64>,
    /// Seconds after `_system` lists a data group's members without this node before the node
    /// empties its copy of the group and frees its disk (its replica moved away, D92; 0 = keep).
    #[arg(long)]
    pub replica_release_secs: Option<u64>,
    /// Period of the `_system` leader's look at who leads each group: a move agreed by two looks
    /// in a row spreads leaderships (SPEC §10.5; 0 = off).
    #[arg(long)]
    pub leader_balance_interval_secs: Option<u64>,
    /// A `_system` learner answers routing lookups from its own copy while it heard from the
    /// leader within this many seconds, else it asks a voter (SPEC §10.4).
    #[arg(long)]
    pub learner_cache_ttl_secs: Option<u64>,
    /// How long a stale `_system` learner reuses a voter's answer for one namespace before it
    /// asks again (SPEC §10.4).
    #[arg(long)]
    pub learner_refresh_interval_ms: Option<u64>,
    /// Items buffered per WatchBlocks stream; a client that falls further behind gets
    /// `StreamEnd{ResourceExhausted}` (SPEC §4.3).
    #[arg(long)]
    pub stream_buffer: Option<usize>,
    /// Least severe level logged, or `tracing` filter directives (`info,ledger_shard=debug`);
    /// `RUST_LOG`, when set, replaces it.
    #[arg(long)]
    pub log_level: Option<String>,
    /// Log lines on stderr as `text` or `json` (one object per line).
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Tokens (SPEC §4.1, D42): file or environment only, never a flag (a flag's value shows in
    /// the process list). Parsed apart from the rest (`auth_config.rs`) so that no error quotes
    /// a secret.
    #[arg(skip)]
    #[serde(default, deserialize_with = "parsed_apart")]
    pub auth_tokens: Option<AuthTokens>,
}

/// `auth_tokens` is read from the file's table by `ConfigLayer::from_file`, not by serde.
fn parsed_apart<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<AuthTokens>, D::Error> {
    serde::de::IgnoredAny::deserialize(deserializer)?;
    Ok(None)
}

/// The key of the token table (not a flag, so not among `setting_keys`).
pub const AUTH_TOKENS: &str = "auth_tokens";

/// Reads `peers` from the TOML file as `"a,b"` or `["a", "b"]`.
fn peers_from_toml<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Peers {
        Joined(String),
        List(Vec<String>),
    }
    Ok(Some(match Peers::deserialize(deserializer)? {
        Peers::Joined(text) => text,
        Peers::List(list) => list.join(","),
    }))
}

/// A setting's default as `--help` and docs/operations.md show it.
#[derive(Debug, Clone, PartialEq)]
pub enum DefaultValue {
    /// The value itself, written as it would be given to the flag.
    Literal(String),
    /// A default that depends on the machine or on another setting, described.
    Derived(&'static str),
}

impl std::fmt::Display for DefaultValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DefaultValue::Literal(value) => f.write_str(value),
            DefaultValue::Derived(description) => f.write_str(description),
        }
    }
}

/// The default of `key`, or None if `key` is not a setting.
pub fn default_of(key: &str) -> Option<DefaultValue> {
    use defaults::*;
    fn literal(value: impl ToString) -> Option<DefaultValue> {
        Some(DefaultValue::Literal(value.to_string()))
    }
    let derived = |description| Some(DefaultValue::Derived(description));
    match key {
        "config" => derived("./inferadb-ledger.toml if it exists"),
        "listen_addr" => literal(LISTEN_ADDR),
        "advertise_addr" => derived("the listen address as bound"),
        "tls_cert" | "tls_key" => derived("none (plain TCP)"),
        "tls_client_ca" => derived("none (no client certificate asked)"),
        "tls_ca" => derived("tls_client_ca"),
        "data_dir" => literal(DATA_DIR),
        "discovery_domain" => derived("none (no DNS discovery)"),
        "discovery_cache_path" => derived("{data_dir}/peers.cache"),
        "discovery_cache_ttl_secs" => literal(DISCOVERY_CACHE_TTL_SECS),
        "bootstrap_expect" => literal(BOOTSTRAP_EXPECT),
        "peers" => derived("none"),
        "bootstrap_poll_secs" => literal(BOOTSTRAP_POLL_SECS),
        "bootstrap_timeout_secs" => literal(BOOTSTRAP_TIMEOUT_SECS),
        "join_by_itself" => literal(JOIN_BY_ITSELF),
        "test_faults" => literal(TEST_FAULTS),
        "test_sim_disk" => literal(TEST_SIM_DISK),
        "vault_auto_recovery" => literal(VAULT_AUTO_RECOVERY),
        "batch_max_size" => literal(BATCH_MAX_SIZE),
        "batch_max_delay_ms" => literal(BATCH_MAX_DELAY_MS),
        "batch_eager_commit" => literal(BATCH_EAGER_COMMIT),
        "batch_fill_wait_us" => literal(BATCH_FILL_WAIT_US),
        "requests_max_concurrent" => literal(REQUESTS_MAX_CONCURRENT),
        "requests_timeout_secs" => literal(REQUESTS_TIMEOUT_SECS),
        "metrics_addr" => literal(METRICS_ADDR),
        "health_lag_threshold_blocks" => literal(HEALTH_LAG_THRESHOLD_BLOCKS),
        "cores" => derived("all available CPUs"),
        "initial_groups" => derived("cores × groups_per_core"),
        "cpu_list" => derived("CPUs 0 to cores-1"),
        "cpu_pinning" => literal(CPU_PINNING),
        "core_queue_capacity" => literal(CORE_QUEUE_CAPACITY),
        "spin_before_park_us" => literal(SPIN_BEFORE_PARK_US),
        "max_frame_bytes" => literal(MAX_FRAME_BYTES),
        "max_batch_items" => literal(MAX_BATCH_ITEMS),
        "idle_timeout_secs" => literal(IDLE_TIMEOUT_SECS),
        "max_connections" => literal(MAX_CONNECTIONS),
        "handshake_timeout_secs" => literal(HANDSHAKE_TIMEOUT_SECS),
        "max_ops_per_tx" => literal(MAX_OPS_PER_TX),
        "idempotency_cache_entries" => literal(IDEMPOTENCY_CACHE_ENTRIES),
        "rate_limit_rps" => literal(RATE_LIMIT_RPS),
        "groups_per_core" => literal(GROUPS_PER_CORE),
        "replication_factor" => literal(REPLICATION_FACTOR),
        "raft_heartbeat_ms" => literal(RAFT_HEARTBEAT_MS),
        "raft_election_min_ms" => literal(RAFT_ELECTION_MIN_MS),
        "raft_election_max_ms" => literal(RAFT_ELECTION_MAX_MS),
        "snapshot_interval_blocks" => literal(SNAPSHOT_INTERVAL_BLOCKS),
        "snapshot_interval_secs" => literal(SNAPSHOT_INTERVAL_SECS),
        "snapshots_keep" => literal(SNAPSHOTS_KEEP),
        "raft_snapshot_logs" => literal(RAFT_SNAPSHOT_LOGS),
        "raft_log_keep" => literal(RAFT_LOG_KEEP),
        "retention_interval_secs" => literal(RETENTION_INTERVAL_SECS),
        "integrity_interval_secs" => literal(INTEGRITY_INTERVAL_SECS),
        "gc_interval_secs" => literal(GC_INTERVAL_SECS),
        "node_heartbeat_timeout_secs" => literal(NODE_HEARTBEAT_TIMEOUT_SECS),
        "replica_release_secs" => literal(REPLICA_RELEASE_SECS),
        "leader_balance_interval_secs" => literal(LEADER_BALANCE_INTERVAL_SECS),
        "learner_cache_ttl_secs" => literal(LEARNER_CACHE_TTL_SECS),
        "learner_refresh_interval_ms" => literal(LEARNER_REFRESH_INTERVAL_MS),
        "stream_buffer" => literal(STREAM_BUFFER),
        "log_level" => literal(LOG_LEVEL),
        "log_format" => literal(LOG_FORMAT),
        _ => None,
    }
}

/// The environment variable of `key`: `INFERADB__LEDGER__LISTEN_ADDR` for `listen_addr`.
pub fn env_var(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.to_uppercase())
}

/// The settings' arguments of `command` (every argument but clap's own help and version).
fn setting_args(command: &clap::Command) -> impl Iterator<Item = &Arg> {
    command.get_arguments().filter(|arg| !matches!(arg.get_id().as_str(), "help" | "version"))
}

/// Every setting's key, in the order `--help` lists them (`config` included).
pub fn setting_keys() -> Vec<String> {
    setting_args(&ConfigLayer::command()).map(|arg| arg.get_id().to_string()).collect()
}

fn not_implemented(key: &str) -> Option<&'static str> {
    NOT_IMPLEMENTED.iter().find(|(name, _)| *name == key).map(|(_, missing)| *missing)
}

/// The `ledger-server` command line as `--help` shows it: each setting's help ends with its
/// default and its environment variable, and the epilogue states the sources and what is not
/// implemented.
pub fn command() -> clap::Command {
    let not_built: Vec<&str> = NOT_IMPLEMENTED.iter().map(|(key, _)| *key).collect();
    ConfigLayer::command()
        .mut_args(|arg| {
            let key = arg.get_id().to_string();
            let Some(default) = default_of(&key) else { return arg };
            let note = format!("[default: {default}] [env: {}]", env_var(&key));
            let help = arg.get_help().map(|help| format!("{help} {note}")).unwrap_or_else(|| note.clone());
            let long_help = arg.get_long_help().map(|help| format!("{help}\n\n{note}"));
            let arg = arg.help(help);
            match long_help {
                Some(long_help) => arg.long_help(long_help),
                None => arg,
            }
        })
        .after_help(format!(
            "Each setting is taken from its flag, else its environment variable ({ENV_PREFIX} and \
             the key in upper case), else the TOML file (keys as the flags without `--` and with \
             `_` for `-`, e.g. `listen_addr = \"0.0.0.0:50051\"`), else its default. A file key or \
             {ENV_PREFIX}* variable that names no setting is an error.\n\nNot implemented yet, \
             rejected when set: {}. See docs/operations.md.",
            not_built.join(", ")
        ))
}

impl ConfigLayer {
    /// The flags layer. `args` starts with the program name, as `std::env::args_os()` does.
    /// `--help`, `--version` and malformed command lines come back as `ConfigError::Args`.
    pub fn from_args<I, T>(args: I) -> Result<ConfigLayer, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        for arg in args.iter().skip(1).filter_map(|arg| arg.to_str()) {
            if arg == "--" {
                break;
            }
            let Some(flag) = arg.strip_prefix("--") else { continue };
            let key = flag.split('=').next().unwrap_or(flag).replace('-', "_");
            if let Some(missing) = not_implemented(&key) {
                let origin = Origin::Flag(format!("--{}", key.replace('_', "-")));
                return Err(ConfigError::NotImplemented { origin, key, missing });
            }
        }
        let matches = command().try_get_matches_from(args)?;
        Ok(ConfigLayer::from_arg_matches(&matches)?)
    }

    /// The environment layer: every `INFERADB__LEDGER__{KEY}` variable of `vars`, each parsed as
    /// its flag would parse it. A variable with the prefix that names no setting (or a setting
    /// not implemented, or is not in upper case) is an error, and so is a value its flag would
    /// refuse; both name the variable.
    pub fn from_env<I>(vars: I) -> Result<ConfigLayer, ConfigError>
    where
        I: IntoIterator<Item = (OsString, OsString)>,
    {
        let command = ConfigLayer::command();
        let mut ours: Vec<(String, OsString)> = vars
            .into_iter()
            .filter_map(|(name, value)| name.into_string().ok().map(|name| (name, value)))
            .filter(|(name, _)| name.starts_with(ENV_PREFIX))
            .collect();
        // One order whatever the environment's, so that the same mistakes give the same error.
        ours.sort();
        let mut args = vec![OsString::from("ledger-server")];
        let mut auth_tokens = None;
        for (var, value) in ours {
            if var == env_var(AUTH_TOKENS) {
                let value =
                    value.into_string().map_err(|_| ConfigError::EnvNotUnicode { var: var.clone() })?;
                let tokens = AuthTokens::from_env(&value).map_err(|message| ConfigError::Invalid {
                    key: AUTH_TOKENS,
                    message: format!("{var}: {message}"),
                })?;
                auth_tokens = Some(tokens);
                continue;
            }
            let key = var[ENV_PREFIX.len()..].to_lowercase();
            if let Some(missing) = not_implemented(&key) {
                return Err(ConfigError::NotImplemented { origin: Origin::Env(var), key, missing });
            }
            let arg = setting_args(&command).find(|arg| arg.get_id().as_str() == key);
            let (Some(arg), true) = (arg, var == env_var(&key)) else {
                return Err(ConfigError::UnknownEnv { var, key });
            };
            let value = value.into_string().map_err(|_| ConfigError::EnvNotUnicode { var: var.clone() })?;
            // `--key=value`: a value that starts with `-` stays a value.
            let flag = format!("--{}={value}", arg.get_long().unwrap_or(key.as_str()));
            if let Err(source) = command.clone().try_get_matches_from(["ledger-server", flag.as_str()]) {
                return Err(ConfigError::EnvValue { var, value, source });
            }
            args.push(flag.into());
        }
        let matches = command.try_get_matches_from(args)?;
        Ok(ConfigLayer { auth_tokens, ..ConfigLayer::from_arg_matches(&matches)? })
    }

    /// The file layer from `path`, or from `DEFAULT_FILE` if `path` is None and that file
    /// exists (else an empty layer).
    pub fn from_file(path: Option<&Path>) -> Result<ConfigLayer, ConfigError> {
        let (path, required) = match path {
            Some(path) => (path.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_FILE), false),
        };
        if !required && !path.exists() {
            return Ok(ConfigLayer::default());
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|source| ConfigError::Read { path: path.clone(), source })?;
        let parse = |source| ConfigError::Parse { path: path.clone(), source: Box::new(source) };
        // Keys first, so that the error names the key rather than listing every setting.
        let table: toml::Table = toml::from_str(&text).map_err(|source: toml::de::Error| {
            // toml's message quotes the line, which may hold a secret.
            if text.contains(AUTH_TOKENS) {
                let line = source.span().map(|span| text[..span.start].lines().count().max(1)).unwrap_or(0);
                ConfigError::ParseQuiet { path: path.clone(), line, message: source.message().to_string() }
            } else {
                parse(source)
            }
        })?;
        let auth_tokens = match table.get(AUTH_TOKENS) {
            Some(value) => Some(AuthTokens::from_toml(value).map_err(|message| ConfigError::Invalid {
                key: AUTH_TOKENS,
                message: format!("config file {}: {message}", path.display()),
            })?),
            None => None,
        };
        let keys = setting_keys();
        for key in table.keys().filter(|key| *key != AUTH_TOKENS) {
            if let Some(missing) = not_implemented(key) {
                let origin = Origin::File(path.clone());
                return Err(ConfigError::NotImplemented { origin, key: key.clone(), missing });
            }
            if key == "config" || !keys.contains(key) {
                return Err(ConfigError::UnknownKey { path: path.clone(), key: key.clone() });
            }
        }
        let layer: ConfigLayer = toml::from_str(&text).map_err(parse)?;
        Ok(ConfigLayer { auth_tokens, ..layer })
    }

    /// This layer with each key it does not set taken from `lower`.
    pub fn over(self, lower: ConfigLayer) -> ConfigLayer {
        // Each key listed is this layer's, else `lower`'s, in the order the struct declares them.
        // The literal has no `..`: a key left out of the list does not compile.
        macro_rules! each_key_over_lower {
            ($($key:ident),* $(,)?) => {
                ConfigLayer { $($key: self.$key.or(lower.$key)),* }
            };
        }
        each_key_over_lower! {
            config, listen_addr, advertise_addr, tls_cert, tls_key, tls_client_ca, tls_ca, data_dir,
            bootstrap_expect, peers, bootstrap_poll_secs, bootstrap_timeout_secs, discovery_domain,
            discovery_cache_path, discovery_cache_ttl_secs, join_by_itself, test_faults, test_sim_disk, vault_auto_recovery,
            batch_max_size, batch_max_delay_ms, batch_eager_commit, batch_fill_wait_us,
            requests_max_concurrent, requests_timeout_secs, metrics_addr, health_lag_threshold_blocks, cores,
            cpu_list, cpu_pinning, core_queue_capacity, spin_before_park_us, max_frame_bytes, max_batch_items,
            idle_timeout_secs, max_connections, handshake_timeout_secs, max_ops_per_tx,
            idempotency_cache_entries, rate_limit_rps, groups_per_core, initial_groups, replication_factor, raft_heartbeat_ms,
            raft_election_min_ms, raft_election_max_ms, snapshot_interval_blocks, snapshot_interval_secs,
            snapshots_keep, raft_snapshot_logs, raft_log_keep, retention_interval_secs,
            integrity_interval_secs, gc_interval_secs, node_heartbeat_timeout_secs, replica_release_secs,
            leader_balance_interval_secs, learner_cache_ttl_secs, learner_refresh_interval_ms, stream_buffer,
            log_level, log_format, auth_tokens,
        }
    }
}

/// The resolved configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen_addr: String,
    pub advertise_addr: Option<String>,
    /// TLS for clients and peers (D43); `None` = plain TCP.
    pub tls: Option<TlsFiles>,
    pub data_dir: PathBuf,
    /// SPEC §10.3: DNS name tried after the peers and the cache; the cache file; its freshness.
    pub discovery_domain: Option<String>,
    pub discovery_cache_path: PathBuf,
    pub discovery_cache_ttl_secs: u64,
    pub bootstrap_expect: u32,
    pub peers: Vec<String>,
    pub bootstrap_poll_secs: u64,
    pub bootstrap_timeout_secs: u64,
    pub test_faults: bool,
    pub test_sim_disk: String,
    pub vault_auto_recovery: bool,
    pub join_by_itself: bool,
    pub batch_max_size: usize,
    pub batch_max_delay_ms: u64,
    pub batch_eager_commit: bool,
    pub batch_fill_wait_us: u64,
    pub requests_max_concurrent: usize,
    pub requests_timeout_secs: u64,
    pub metrics_addr: Option<String>,
    pub health_lag_threshold_blocks: u64,
    pub cores: usize,
    pub cpu_list: Vec<usize>,
    pub cpu_pinning: bool,
    pub core_queue_capacity: usize,
    pub spin_before_park_us: u64,
    pub max_frame_bytes: u32,
    pub max_batch_items: u32,
    pub idle_timeout_secs: u64,
    pub max_connections: usize,
    pub handshake_timeout_secs: u64,
    pub max_ops_per_tx: usize,
    pub idempotency_cache_entries: usize,
    pub rate_limit_rps: u32,
    pub groups_per_core: u32,
    /// SPEC §10.5: `None` = cores × groups_per_core.
    pub initial_groups: Option<u32>,
    /// SPEC §10.5: voters per data group (the bootstrapping node's holds for the cluster).
    pub replication_factor: u32,
    pub raft_heartbeat_ms: u64,
    pub raft_election_min_ms: u64,
    pub raft_election_max_ms: u64,
    pub snapshot_interval_blocks: u64,
    pub snapshot_interval_secs: u64,
    pub snapshots_keep: usize,
    pub raft_snapshot_logs: u64,
    pub raft_log_keep: u64,
    pub retention_interval_secs: u64,
    pub integrity_interval_secs: u64,
    pub gc_interval_secs: u64,
    pub node_heartbeat_timeout_secs: u64,
    pub replica_release_secs: u64,
    pub leader_balance_interval_secs: u64,
    pub learner_cache_ttl_secs: u64,
    pub learner_refresh_interval_ms: u64,
    pub stream_buffer: usize,
    pub log_level: String,
    pub log_format: LogFormat,
    /// Empty = no authentication (SPEC §4.1).
    pub auth_tokens: AuthTokens,
}

/// The TLS files of a node (D43).
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Mutual TLS: clients and peers must present a certificate signed by these CAs.
    pub client_ca: Option<PathBuf>,
    /// The CAs other nodes' certificates are checked against when this node dials them
    /// (`tls_ca`, else `tls_client_ca`).
    pub peer_ca: Option<PathBuf>,
}

/// Where a rejected setting was given.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    Flag(String),
    Env(String),
    File(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "flag {flag}"),
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::File(path) => write!(f, "config file {}", path.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// clap's own answer: `--help`, `--version`, or a malformed command line; `main` lets clap
    /// print it and exit.
    #[error(transparent)]
    Args(#[from] clap::Error),
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    /// A syntax error in a file with `auth_tokens`: the line number, not the line.
    #[error("invalid config file {path}, line {line}: {message}")]
    ParseQuiet { path: PathBuf, line: usize, message: String },
    #[error("config file {path}: unknown key `{key}` (`ledger-server --help` lists the settings)")]
    UnknownKey { path: PathBuf, key: String },
    #[error(
        "unknown environment variable {var}: `{key}` is not a setting (a setting's variable is \
         {ENV_PREFIX} and its key in upper case; `ledger-server --help` lists them)"
    )]
    UnknownEnv { var: String, key: String },
    #[error("{origin}: `{key}` is not implemented yet ({missing}); see docs/operations.md")]
    NotImplemented { origin: Origin, key: String, missing: &'static str },
    #[error("environment variable {var}: invalid value {value:?}: {}", clap_reason(.source))]
    EnvValue { var: String, value: String, source: clap::Error },
    #[error("environment variable {var}: the value is not valid UTF-8")]
    EnvNotUnicode { var: String },
    #[error("invalid value for {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// Why clap refused a value, in one line: the parser's own error (`invalid digit found in
/// string`) or the values it accepts.
fn clap_reason(error: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    if let Some(source) = std::error::Error::source(error) {
        return source.to_string();
    }
    if let Some(ContextValue::Strings(valid)) = error.get(ContextKind::ValidValue) {
        return format!("expected one of {}", valid.join(", "));
    }
    error.kind().to_string()
}

macro_rules! pick {
    ($flags:expr, $file:expr, $field:ident, $default:expr) => {
        $flags.$field.clone().or($file.$field.clone()).unwrap_or_else(|| $default)
    };
}

impl Config {
    /// SPEC §10.5: the data groups a new cluster or single node starts with.
    pub fn data_groups(&self) -> u32 {
        self.initial_groups.unwrap_or((self.cores as u32).saturating_mul(self.groups_per_core.max(1)))
    }

    /// Reads every source: `args` (starting with the program name) over the `INFERADB__LEDGER__*`
    /// variables of `vars` over the TOML file (`--config`, its variable, or `DEFAULT_FILE`)
    /// over the defaults.
    pub fn load<A, T, E>(args: A, vars: E) -> Result<Config, ConfigError>
    where
        A: IntoIterator<Item = T>,
        T: Into<OsString>,
        E: IntoIterator<Item = (OsString, OsString)>,
    {
        let upper = ConfigLayer::from_args(args)?.over(ConfigLayer::from_env(vars)?);
        let file = ConfigLayer::from_file(upper.config.as_deref())?;
        Config::resolve(upper, file)
    }

    /// Merges `flags` (flags already over environment) over `file` over the defaults, then
    /// checks the values.
    pub fn resolve(flags: ConfigLayer, file: ConfigLayer) -> Result<Config, ConfigError> {
        use defaults::*;
        let (cores, cpu_list) = resolve_cpus(&flags, &file)?;
        let metrics_addr = pick!(flags, file, metrics_addr, METRICS_ADDR.to_string());
        let tls = resolve_tls(&flags, &file)?;
        let worked_out = WorkedOut { cores, cpu_list, metrics_addr, tls };
        let config = Config::merged(&flags, &file, worked_out);
        config.check()?;
        Ok(config)
    }

    /// Every setting from `flags` over `file` over its default, but those `resolve` works out
    /// first; nothing checked yet. One line per setting, in `Config`'s order.
    fn merged(flags: &ConfigLayer, file: &ConfigLayer, worked_out: WorkedOut) -> Config {
        use defaults::*;
        let WorkedOut { cores, cpu_list, metrics_addr, tls } = worked_out;
        // `pick!` from this function's two layers, so that each setting fits on one line.
        macro_rules! picked {
            ($field:ident, $default:expr) => {
                pick!(flags, file, $field, $default)
            };
        }
        Config {
            listen_addr: picked!(listen_addr, LISTEN_ADDR.to_string()),
            advertise_addr: flags.advertise_addr.clone().or(file.advertise_addr.clone()),
            tls,
            data_dir: picked!(data_dir, PathBuf::from(DATA_DIR)),
            discovery_domain: flags.discovery_domain.clone().or(file.discovery_domain.clone()),
            discovery_cache_path: discovery_cache_path(flags, file),
            discovery_cache_ttl_secs: picked!(discovery_cache_ttl_secs, DISCOVERY_CACHE_TTL_SECS),
            bootstrap_expect: picked!(bootstrap_expect, BOOTSTRAP_EXPECT),
            peers: peer_list(flags, file),
            bootstrap_poll_secs: picked!(bootstrap_poll_secs, BOOTSTRAP_POLL_SECS),
            bootstrap_timeout_secs: picked!(bootstrap_timeout_secs, BOOTSTRAP_TIMEOUT_SECS),
            test_faults: picked!(test_faults, TEST_FAULTS),
            test_sim_disk: picked!(test_sim_disk, TEST_SIM_DISK.to_string()),
            vault_auto_recovery: picked!(vault_auto_recovery, VAULT_AUTO_RECOVERY),
            join_by_itself: picked!(join_by_itself, JOIN_BY_ITSELF),
            batch_max_size: picked!(batch_max_size, BATCH_MAX_SIZE),
            batch_max_delay_ms: picked!(batch_max_delay_ms, BATCH_MAX_DELAY_MS),
            batch_eager_commit: picked!(batch_eager_commit, BATCH_EAGER_COMMIT),
            batch_fill_wait_us: picked!(batch_fill_wait_us, BATCH_FILL_WAIT_US),
            requests_max_concurrent: picked!(requests_max_concurrent, REQUESTS_MAX_CONCURRENT),
            requests_timeout_secs: picked!(requests_timeout_secs, REQUESTS_TIMEOUT_SECS),
            metrics_addr: if metrics_addr == METRICS_OFF { None } else { Some(metrics_addr) },
            health_lag_threshold_blocks: picked!(health_lag_threshold_blocks, HEALTH_LAG_THRESHOLD_BLOCKS),
            cores,
            cpu_list: cpu_list.into_iter().take(cores).collect(),
            cpu_pinning: picked!(cpu_pinning, CPU_PINNING),
            core_queue_capacity: picked!(core_queue_capacity, CORE_QUEUE_CAPACITY),
            spin_before_park_us: picked!(spin_before_park_us, SPIN_BEFORE_PARK_US),
            max_frame_bytes: picked!(max_frame_bytes, MAX_FRAME_BYTES),
            max_batch_items: picked!(max_batch_items, MAX_BATCH_ITEMS),
            idle_timeout_secs: picked!(idle_timeout_secs, IDLE_TIMEOUT_SECS),
            max_connections: picked!(max_connections, MAX_CONNECTIONS),
            handshake_timeout_secs: picked!(handshake_timeout_secs, HANDSHAKE_TIMEOUT_SECS),
            max_ops_per_tx: picked!(max_ops_per_tx, MAX_OPS_PER_TX),
            idempotency_cache_entries: picked!(idempotency_cache_entries, IDEMPOTENCY_CACHE_ENTRIES),
            rate_limit_rps: picked!(rate_limit_rps, RATE_LIMIT_RPS),
            groups_per_core: picked!(groups_per_core, GROUPS_PER_CORE),
            initial_groups: flags.initial_groups.or(file.initial_groups),
            replication_factor: picked!(replication_factor, REPLICATION_FACTOR),
            raft_heartbeat_ms: picked!(raft_heartbeat_ms, RAFT_HEARTBEAT_MS),
            raft_election_min_ms: picked!(raft_election_min_ms, RAFT_ELECTION_MIN_MS),
            raft_election_max_ms: picked!(raft_election_max_ms, RAFT_ELECTION_MAX_MS),
            snapshot_interval_blocks: picked!(snapshot_interval_blocks, SNAPSHOT_INTERVAL_BLOCKS),
            snapshot_interval_secs: picked!(snapshot_interval_secs, SNAPSHOT_INTERVAL_SECS),
            snapshots_keep: picked!(snapshots_keep, SNAPSHOTS_KEEP),
            raft_snapshot_logs: picked!(raft_snapshot_logs, RAFT_SNAPSHOT_LOGS),
            raft_log_keep: picked!(raft_log_keep, RAFT_LOG_KEEP),
            retention_interval_secs: picked!(retention_interval_secs, RETENTION_INTERVAL_SECS),
            integrity_interval_secs: picked!(integrity_interval_secs, INTEGRITY_INTERVAL_SECS),
            gc_interval_secs: picked!(gc_interval_secs, GC_INTERVAL_SECS),
            node_heartbeat_timeout_secs: picked!(node_heartbeat_timeout_secs, NODE_HEARTBEAT_TIMEOUT_SECS),
            replica_release_secs: picked!(replica_release_secs, REPLICA_RELEASE_SECS),
            leader_balance_interval_secs: picked!(leader_balance_interval_secs, LEADER_BALANCE_INTERVAL_SECS),
            learner_cache_ttl_secs: picked!(learner_cache_ttl_secs, LEARNER_CACHE_TTL_SECS),
            learner_refresh_interval_ms: picked!(learner_refresh_interval_ms, LEARNER_REFRESH_INTERVAL_MS),
            stream_buffer: picked!(stream_buffer, STREAM_BUFFER),
            log_level: picked!(log_level, LOG_LEVEL.to_string()),
            log_format: picked!(log_format, LOG_FORMAT),
            auth_tokens: picked!(auth_tokens, AuthTokens::default()),
        }
    }

    /// Rejects the first value that cannot work, naming its key: the cluster's reach, the
    /// settings that must be at least 1, the bounds and timeouts, then the log level.
    fn check(&self) -> Result<(), ConfigError> {
        self.check_cluster()?;
        self.check_at_least_one()?;
        self.check_bounds()?;
        self.check_timeouts()?;
        self.check_test_sim_disk()?;
        self.check_log_level()
    }

    /// `test_sim_disk` is `off`, `drop` or `lying`, and only a test server (`test_faults`) runs
    /// on a simulated disk.
    fn check_test_sim_disk(&self) -> Result<(), ConfigError> {
        match self.test_sim_disk.as_str() {
            "off" => Ok(()),
            "drop" | "lying" if self.test_faults => Ok(()),
            "drop" | "lying" => {
                invalid("test_sim_disk", "needs test_faults (a simulated disk is for tests only)")
            }
            other => invalid("test_sim_disk", &format!("{other:?} is not off, drop or lying")),
        }
    }

    /// A node that joins or forms a cluster can find its peers, and over TLS can check their
    /// certificates.
    fn check_cluster(&self) -> Result<(), ConfigError> {
        // Discovery (SPEC §10.3) needs somewhere to start: the peers, the DNS name, or a cache.
        let findable =
            !self.peers.is_empty() || self.discovery_domain.is_some() || self.discovery_cache_path.exists();
        if self.bootstrap_expect == 0 && !findable {
            return invalid(
                "peers",
                "join mode (bootstrap_expect 0) needs a cluster member's address in --peers (or discovery_domain, or a peer cache)",
            );
        }
        if self.bootstrap_expect >= 2 && !findable {
            return invalid(
                "peers",
                "bootstrap_expect >= 2 needs the other nodes' addresses in --peers (or discovery_domain, or a peer cache)",
            );
        }
        let clustered = self.bootstrap_expect != 1 || !self.peers.is_empty();
        if clustered && self.tls.as_ref().is_some_and(|tls| tls.peer_ca.is_none()) {
            return invalid(
                "tls_ca",
                "a TLS cluster needs the CA of the other nodes' certificates: set tls_ca or tls_client_ca",
            );
        }
        Ok(())
    }

    /// The counts, sizes and periods that must not be 0; the first in this list is named.
    fn check_at_least_one(&self) -> Result<(), ConfigError> {
        let at_least_one = [
            ("bootstrap_poll_secs", self.bootstrap_poll_secs == 0),
            ("bootstrap_timeout_secs", self.bootstrap_timeout_secs == 0),
            ("batch_max_size", self.batch_max_size == 0),
            ("requests_max_concurrent", self.requests_max_concurrent == 0),
            ("requests_timeout_secs", self.requests_timeout_secs == 0),
            ("core_queue_capacity", self.core_queue_capacity == 0),
            ("max_batch_items", self.max_batch_items == 0),
            ("idle_timeout_secs", self.idle_timeout_secs == 0),
            ("max_connections", self.max_connections == 0),
            ("handshake_timeout_secs", self.handshake_timeout_secs == 0),
            ("max_ops_per_tx", self.max_ops_per_tx == 0),
            ("idempotency_cache_entries", self.idempotency_cache_entries == 0),
            ("groups_per_core", self.groups_per_core == 0),
            ("initial_groups", self.initial_groups == Some(0)),
            ("replication_factor", self.replication_factor == 0),
            ("stream_buffer", self.stream_buffer == 0),
            ("raft_snapshot_logs", self.raft_snapshot_logs == 0),
            ("snapshots_keep", self.snapshots_keep == 0),
            ("retention_interval_secs", self.retention_interval_secs == 0),
        ];
        if let Some((key, _)) = at_least_one.iter().find(|(_, zero)| *zero) {
            return invalid(key, "must be at least 1");
        }
        Ok(())
    }

    /// The upper bound on `initial_groups` and the lower bound on `max_frame_bytes`.
    fn check_bounds(&self) -> Result<(), ConfigError> {
        if self.initial_groups.is_some_and(|n| n > defaults::INITIAL_GROUPS_MAX) {
            return invalid("initial_groups", &format!("at most {}", defaults::INITIAL_GROUPS_MAX));
        }
        if self.max_frame_bytes < ledger_wire::constants::MAX_FRAME_BYTES_MIN {
            return invalid("max_frame_bytes", "must be at least 1024");
        }
        Ok(())
    }

    /// Raft's heartbeat below its shortest election timeout, that below its longest, and the
    /// silent-node timeout (when on) longer than two election timeouts.
    fn check_timeouts(&self) -> Result<(), ConfigError> {
        if self.raft_heartbeat_ms >= self.raft_election_min_ms {
            return invalid("raft_heartbeat_ms", "must be below raft_election_min_ms");
        }
        if self.raft_election_min_ms >= self.raft_election_max_ms {
            return invalid("raft_election_min_ms", "must be below raft_election_max_ms");
        }
        if self.node_heartbeat_timeout_secs != 0
            && self.node_heartbeat_timeout_secs * 1000 <= self.raft_election_max_ms * 2
        {
            return invalid(
                "node_heartbeat_timeout_secs",
                "must be 0 (never remove a silent node) or longer than two election timeouts",
            );
        }
        Ok(())
    }

    /// `log_level` is a level or `tracing` filter directives.
    fn check_log_level(&self) -> Result<(), ConfigError> {
        // `tracing` would read a bare word as a target to log at every level: only a level may
        // stand alone (`info`), a target needs its level (`ledger_shard=debug`).
        const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
        let bare = self.log_level.split(',').map(str::trim).filter(|d| !d.is_empty() && !d.contains('='));
        if let Some(word) = bare.into_iter().find(|d| !LEVELS.contains(&d.to_lowercase().as_str())) {
            return invalid(
                "log_level",
                &format!("{word:?} is not a level (off, error, warn, info, debug, trace) nor target=level"),
            );
        }
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.log_level) {
            return invalid("log_level", &format!("{:?}: {e}", self.log_level));
        }
        Ok(())
    }
}

/// `ConfigError::Invalid` for `key`, as the checks of `Config::check` answer.
fn invalid(key: &'static str, message: &str) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid { key, message: message.to_string() })
}

/// What `Config::resolve` works out before the settings picked one by one: the checked cores
/// and CPUs, the metrics address (`off` included) and the checked TLS files.
struct WorkedOut {
    cores: usize,
    cpu_list: Vec<usize>,
    metrics_addr: String,
    tls: Option<TlsFiles>,
}

/// `cores` (every available CPU by default) and the CPUs to pin them to (CPUs 0 to cores-1 by
/// default): at most 256 cores and at least one CPU listed for each.
fn resolve_cpus(flags: &ConfigLayer, file: &ConfigLayer) -> Result<(usize, Vec<usize>), ConfigError> {
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
    Ok((cores, cpu_list))
}

/// `discovery_cache_path`, by default `DISCOVERY_CACHE_FILE` in the data directory.
fn discovery_cache_path(flags: &ConfigLayer, file: &ConfigLayer) -> PathBuf {
    use defaults::*;
    flags
        .discovery_cache_path
        .clone()
        .or(file.discovery_cache_path.clone())
        .unwrap_or_else(|| pick!(flags, file, data_dir, PathBuf::from(DATA_DIR)).join(DISCOVERY_CACHE_FILE))
}

/// `peers` as a list: the comma-separated addresses, trimmed, empty ones left out.
fn peer_list(flags: &ConfigLayer, file: &ConfigLayer) -> Vec<String> {
    pick!(flags, file, peers, String::new())
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect()
}

/// `tls_cert` and `tls_key` together turn TLS on; the CAs only mean something with them.
fn resolve_tls(flags: &ConfigLayer, file: &ConfigLayer) -> Result<Option<TlsFiles>, ConfigError> {
    let cert = flags.tls_cert.clone().or(file.tls_cert.clone());
    let key = flags.tls_key.clone().or(file.tls_key.clone());
    let client_ca = flags.tls_client_ca.clone().or(file.tls_client_ca.clone());
    let ca = flags.tls_ca.clone().or(file.tls_ca.clone());
    let invalid = |key, message: &str| Err(ConfigError::Invalid { key, message: message.to_string() });
    match (cert, key) {
        (Some(cert), Some(key)) => {
            let peer_ca = ca.or(client_ca.clone());
            Ok(Some(TlsFiles { cert, key, client_ca, peer_ca }))
        }
        (Some(_), None) => invalid("tls_key", "tls_cert needs tls_key"),
        (None, Some(_)) => invalid("tls_cert", "tls_key needs tls_cert"),
        (None, None) if client_ca.is_some() => invalid("tls_client_ca", "needs tls_cert and tls_key"),
        (None, None) if ca.is_some() => invalid("tls_ca", "needs tls_cert and tls_key"),
        (None, None) => Ok(None),
    }
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

    /// `Config::load` over `args` (after the program name) and `vars`, with no default file.
    fn load(args: &[&str], vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let args = std::iter::once("ledger-server").chain(args.iter().copied());
        Config::load(args, vars.iter().map(|(name, value)| (OsString::from(name), OsString::from(value))))
    }

    /// A fresh directory holding one config file with `text`; the directory lives as long as
    /// the returned guard.
    fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    /// Ranges and single CPUs combine in order; malformed text is rejected.
    #[test]
    fn t01_cpu_list_parses_ranges() {
        assert_eq!(parse_cpu_list("2-4,7").unwrap(), vec![2, 3, 4, 7]);
        assert_eq!(parse_cpu_list("0").unwrap(), vec![0]);
        assert!(parse_cpu_list("4-2").is_err());
        assert!(parse_cpu_list("x").is_err());
        assert!(parse_cpu_list("").is_err());
    }

    /// SPEC §11.1 precedence, one key per step: a flag beats its variable and the file, a
    /// variable beats the file, the file beats the default, and a key set nowhere keeps its
    /// default. Each step is checked against the value the lower source gave too.
    #[test]
    fn t02_flag_beats_env_beats_file_beats_default() {
        let (_dir, path) = config_file(
            "batch_max_size = 7\nbatch_max_delay_ms = 11\nlisten_addr = \"127.0.0.1:1\"\ncores = 1\n",
        );
        let path = path.to_str().unwrap();
        let env = [("INFERADB__LEDGER__BATCH_MAX_SIZE", "8"), ("INFERADB__LEDGER__BATCH_MAX_DELAY_MS", "12")];
        let config = load(&["--config", path, "--batch-max-size", "9"], &env).unwrap();
        assert_eq!(config.batch_max_size, 9, "flag over env and file");
        assert_eq!(config.batch_max_delay_ms, 12, "env over file");
        assert_eq!(config.listen_addr, "127.0.0.1:1", "file over default");
        assert_eq!(config.cores, 1, "file over default");
        assert_eq!(config.idle_timeout_secs, defaults::IDLE_TIMEOUT_SECS, "default");
        // Without the flag the variable decides; without the variable, the file.
        assert_eq!(load(&["--config", path], &env).unwrap().batch_max_size, 8);
        assert_eq!(load(&["--config", path], &[]).unwrap().batch_max_size, 7);
        assert_eq!(load(&["--cores", "1"], &[]).unwrap().batch_max_size, defaults::BATCH_MAX_SIZE);
    }

    /// The file itself comes from `--config`, else `INFERADB__LEDGER__CONFIG`; the flag wins.
    #[test]
    fn t03_config_path_from_flag_or_env() {
        let (_a, first) = config_file("batch_max_size = 3\ncores = 1\n");
        let (_b, second) = config_file("batch_max_size = 4\ncores = 1\n");
        let env = [("INFERADB__LEDGER__CONFIG", second.to_str().unwrap())];
        assert_eq!(load(&[], &env).unwrap().batch_max_size, 4);
        assert_eq!(load(&["--config", first.to_str().unwrap()], &env).unwrap().batch_max_size, 3);
        let missing = first.with_file_name("absent.toml");
        let error = load(&["--config", missing.to_str().unwrap()], &[]).unwrap_err();
        assert!(matches!(error, ConfigError::Read { .. }), "{error}");
    }

    /// A file key that names no setting fails with an error naming the key and the file, at the
    /// top level, as a table, and for `config` (a file cannot name another file); a value of the
    /// wrong type fails naming its key.
    #[test]
    fn t04_unknown_file_key_is_rejected_by_name() {
        for (text, key) in [
            ("cores = 1\nno_such_key = 1\n", "no_such_key"),
            ("cores = 1\n[server]\nlisten_addr = \"127.0.0.1:1\"\n", "server"),
            ("config = \"other.toml\"\n", "config"),
            ("listen-addr = \"127.0.0.1:1\"\n", "listen-addr"),
        ] {
            let (_dir, path) = config_file(text);
            let error = load(&["--config", path.to_str().unwrap()], &[]).unwrap_err();
            match &error {
                ConfigError::UnknownKey { path: at, key: named } => {
                    assert_eq!(named, key);
                    assert_eq!(at, &path);
                }
                other => panic!("{text:?}: {other:?}"),
            }
            let message = error.to_string();
            assert!(message.contains(&format!("unknown key `{key}`")), "{message}");
            assert!(message.contains(path.to_str().unwrap()), "{message}");
        }
        let (_dir, path) = config_file("cores = 1\nbatch_max_size = \"many\"\n");
        let error = load(&["--config", path.to_str().unwrap()], &[]).unwrap_err();
        assert!(matches!(error, ConfigError::Parse { .. }), "{error:?}");
        assert!(error.to_string().contains("batch_max_size"), "{error}");
    }

    /// A variable with the prefix that names no setting, or a setting's name not in upper case,
    /// fails naming the variable; variables without the prefix are not ours and are ignored.
    #[test]
    fn t05_unknown_env_var_is_rejected_by_name() {
        for var in ["INFERADB__LEDGER__NO_SUCH_SETTING", "INFERADB__LEDGER__cores", "INFERADB__LEDGER__HELP"]
        {
            let error = load(&["--cores", "1"], &[(var, "1")]).unwrap_err();
            assert!(
                matches!(&error, ConfigError::UnknownEnv { var: named, .. } if named == var),
                "{error:?}"
            );
            assert!(error.to_string().contains(var), "{error}");
        }
        let others = [
            ("LEDGER_TESTS_SKIP_BUILD", "1"),
            ("INFERADB__OTHER__CORES", "x"),
            ("INFERADB_LEDGER_CORES", "x"),
            ("PATH", "/bin"),
        ];
        assert_eq!(load(&["--cores", "1"], &others).unwrap(), load(&["--cores", "1"], &[]).unwrap());
    }

    /// A variable is parsed as its flag would be: booleans, lists, `off`, negative-looking
    /// values. A value the flag would refuse fails as `EnvValue`, naming the variable, the value
    /// and the reason.
    #[test]
    fn t06_env_values_parse_like_flags_and_errors_name_the_variable() {
        let config = load(
            &["--cores", "1"],
            &[
                ("INFERADB__LEDGER__CPU_PINNING", "false"),
                ("INFERADB__LEDGER__PEERS", "127.0.0.1:1, 127.0.0.1:2"),
                ("INFERADB__LEDGER__METRICS_ADDR", "off"),
                ("INFERADB__LEDGER__DATA_DIR", "-data"),
            ],
        )
        .unwrap();
        assert!(!config.cpu_pinning);
        assert_eq!(config.peers, vec!["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(config.metrics_addr, None);
        assert_eq!(config.data_dir, PathBuf::from("-data"));
        for (var, value, reason) in [
            ("INFERADB__LEDGER__CORES", "abc", "invalid digit"),
            ("INFERADB__LEDGER__BATCH_MAX_SIZE", "", "empty string"),
            ("INFERADB__LEDGER__BOOTSTRAP_EXPECT", "-1", "-1 is not in 0..=4294967295"),
            ("INFERADB__LEDGER__MAX_FRAME_BYTES", "99999999999", "is not in 0..=4294967295"),
            ("INFERADB__LEDGER__BATCH_MAX_DELAY_MS", "-5", "invalid digit"),
            ("INFERADB__LEDGER__IDLE_TIMEOUT_SECS", "99999999999999999999", "too large"),
            ("INFERADB__LEDGER__CPU_PINNING", "yes", "expected one of true, false"),
        ] {
            let error = load(&["--cores", "1"], &[(var, value)]).unwrap_err();
            match &error {
                ConfigError::EnvValue { var: named, value: given, .. } => {
                    assert_eq!(named, var);
                    assert_eq!(given, value);
                }
                other => panic!("{var}={value}: {other:?}"),
            }
            let message = error.to_string();
            assert!(message.contains(var), "{message}");
            assert!(message.contains(&format!("{value:?}")), "{message}");
            assert!(message.contains(reason), "{message}");
            assert!(!message.contains('\n'), "one line: {message}");
        }
        use std::os::unix::ffi::OsStringExt;
        let vars = [(OsString::from("INFERADB__LEDGER__DATA_DIR"), OsString::from_vec(vec![0xff]))];
        let error = Config::load(["ledger-server", "--cores", "1"], vars).unwrap_err();
        assert!(matches!(&error, ConfigError::EnvNotUnicode { var } if var == "INFERADB__LEDGER__DATA_DIR"));
    }

    /// SPEC §11.1 keys of features not built are refused from the file, the environment and
    /// the command line alike, naming the key and the source; none of them is a setting.
    #[test]
    fn t07_unimplemented_keys_are_rejected_from_every_source() {
        let keys = setting_keys();
        for (key, _) in NOT_IMPLEMENTED {
            assert!(!keys.contains(&key.to_string()), "{key} is both a setting and not implemented");
            let (_dir, path) = config_file(&format!("{key} = 1\n"));
            let from_file = load(&["--config", path.to_str().unwrap()], &[]).unwrap_err();
            let var = env_var(key);
            let from_env = load(&["--cores", "1"], &[(var.as_str(), "1")]).unwrap_err();
            let flag = format!("--{}", key.replace('_', "-"));
            let from_flag = load(&[flag.as_str(), "1"], &[]).unwrap_err();
            let joined = format!("{flag}=1");
            let from_joined = load(&[joined.as_str()], &[]).unwrap_err();
            for (error, origin) in [
                (from_file, Origin::File(path.clone())),
                (from_env, Origin::Env(var.clone())),
                (from_flag, Origin::Flag(flag.clone())),
                (from_joined, Origin::Flag(flag.clone())),
            ] {
                let message = error.to_string();
                match error {
                    ConfigError::NotImplemented { origin: at, key: named, .. } => {
                        assert_eq!(at, origin);
                        assert_eq!(named, *key);
                    }
                    other => panic!("{key}: {other:?}"),
                }
                assert!(message.contains(&format!("`{key}` is not implemented yet")), "{message}");
            }
        }
    }

    /// `--help` shows, for every setting, its flag, its default and its variable, and names
    /// every key that is not implemented.
    #[test]
    fn t08_help_lists_every_setting_with_default_and_env() {
        let help = command().render_long_help().to_string();
        let short = command().render_help().to_string();
        let keys = setting_keys();
        assert!(keys.len() >= 37, "{keys:?}");
        for key in &keys {
            let default = default_of(key).unwrap_or_else(|| panic!("{key} has no documented default"));
            let note = format!("[default: {default}] [env: {}]", env_var(key));
            for text in [&help, &short] {
                assert!(text.contains(&format!("--{}", key.replace('_', "-"))), "{key}");
                assert!(text.contains(&note), "{key}: {note} not in\n{text}");
            }
        }
        for (key, _) in NOT_IMPLEMENTED {
            assert!(help.contains(key), "{key}");
        }
    }

    /// A literal default shown by `--help` is the value the server uses: giving it explicitly
    /// changes nothing. The derived ones resolve as described.
    #[test]
    fn t09_shown_defaults_are_the_effective_defaults() {
        let baseline = load(&["--cores", "1"], &[]).unwrap();
        let mut literals = 0;
        for key in setting_keys() {
            let Some(DefaultValue::Literal(value)) = default_of(&key) else { continue };
            let flag = format!("--{}={value}", key.replace('_', "-"));
            assert_eq!(load(&["--cores", "1", flag.as_str()], &[]).unwrap(), baseline, "{flag}");
            literals += 1;
        }
        assert!(literals >= 30, "{literals}");
        let derived = load(&[], &[]).unwrap();
        let available = std::thread::available_parallelism().unwrap().get();
        assert_eq!(derived.cores, available);
        assert_eq!(derived.cpu_list, (0..available).collect::<Vec<_>>());
        assert_eq!(derived.advertise_addr, None);
        assert!(derived.peers.is_empty());
    }

    /// docs/operations.md's Configuration section has one row per setting with its flag,
    /// variable and default, and names every key that is not implemented.
    #[test]
    fn t10_operations_doc_lists_every_setting() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md");
        let doc = std::fs::read_to_string(&path).unwrap();
        let section = doc.split("\n## Configuration\n").nth(1).expect("a Configuration section");
        let section = section.split("\n## ").next().unwrap();
        for key in setting_keys() {
            let row = section
                .lines()
                .find(|line| line.starts_with(&format!("| `{key}` |")))
                .unwrap_or_else(|| panic!("no row for {key}"));
            let default = default_of(&key).unwrap();
            for needle in [format!("`--{}`", key.replace('_', "-")), format!("`{}`", env_var(&key))] {
                assert!(row.contains(&needle), "{key}: {needle} not in {row}");
            }
            let shown = match default {
                DefaultValue::Literal(value) => format!("`{value}`"),
                DefaultValue::Derived(description) => description.to_string(),
            };
            assert!(row.contains(&shown), "{key}: default {shown} not in {row}");
        }
        for (key, _) in NOT_IMPLEMENTED {
            assert!(section.contains(&format!("`{key}`")), "{key} not in the doc");
        }
    }

    /// `peers` in the file is a comma-separated string or an array; either gives the list.
    #[test]
    fn t11_peers_in_file_as_string_or_array() {
        for text in ["peers = \"127.0.0.1:1,127.0.0.1:2\"\n", "peers = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n"]
        {
            let (_dir, path) = config_file(&format!("cores = 1\n{text}"));
            let config = load(&["--config", path.to_str().unwrap()], &[]).unwrap();
            assert_eq!(config.peers, vec!["127.0.0.1:1", "127.0.0.1:2"], "{text}");
        }
    }

    /// Values out of range fail naming the key that is wrong.
    #[test]
    fn t12_invalid_values_name_their_key() {
        for (args, key) in [
            (&["--cores", "0"][..], "cores"),
            (&["--cores", "1", "--groups-per-core", "0"][..], "groups_per_core"),
            (&["--cores", "1", "--initial-groups", "0"][..], "initial_groups"),
            (&["--cores", "1", "--initial-groups", "4097"][..], "initial_groups"),
            (&["--cores", "1", "--bootstrap-timeout-secs", "0"][..], "bootstrap_timeout_secs"),
            (&["--cores", "1", "--core-queue-capacity", "0"][..], "core_queue_capacity"),
            (&["--cores", "1", "--raft-heartbeat-ms", "200"][..], "raft_heartbeat_ms"),
            (&["--cores", "1", "--raft-election-min-ms", "400"][..], "raft_election_min_ms"),
            (&["--cores", "1", "--max-frame-bytes", "100"][..], "max_frame_bytes"),
            (
                &["--cores", "1", "--node-heartbeat-timeout-secs", "1", "--raft-election-max-ms", "600"][..],
                "node_heartbeat_timeout_secs",
            ),
            (&["--cores", "2", "--cpu-list", "3"][..], "cpu_list"),
            (&["--cores", "1", "--log-level", "loud"][..], "log_level"),
            (&["--cores", "1", "--test-sim-disk", "drop"][..], "test_sim_disk"),
            (&["--cores", "1", "--test-faults", "true", "--test-sim-disk", "ram"][..], "test_sim_disk"),
            (&["--cores", "1", "--tls-cert", "c.pem"][..], "tls_key"),
            (&["--cores", "1", "--tls-key", "k.pem"][..], "tls_cert"),
            (&["--cores", "1", "--tls-client-ca", "ca.pem"][..], "tls_client_ca"),
            (
                &[
                    "--cores",
                    "1",
                    "--tls-cert",
                    "c",
                    "--tls-key",
                    "k",
                    "--bootstrap-expect",
                    "3",
                    "--peers",
                    "a:1",
                ][..],
                "tls_ca",
            ),
        ] {
            match load(args, &[]) {
                Err(ConfigError::Invalid { key: named, .. }) => assert_eq!(named, key, "{args:?}"),
                other => panic!("{args:?}: {other:?}"),
            }
        }
    }

    /// `auth_tokens` from the file or the environment (which wins), never from a flag; errors
    /// and `Debug` never show a secret (D42).
    #[test]
    fn t13_auth_tokens_from_file_and_env_without_showing_secrets() {
        let secret = "file-secret-0123456789";
        let (_dir, path) = config_file(&format!("cores = 1\n[auth_tokens]\nnode = \"{secret}\"\n"));
        let path = path.to_str().unwrap();
        let config = load(&["--config", path], &[]).unwrap();
        assert_eq!(config.auth_tokens.peer_secret().as_deref(), Some(secret));
        assert!(!format!("{config:?}").contains(secret), "Debug shows token ids only");
        let var = env_var(AUTH_TOKENS);
        let env = load(&["--config", path], &[(var.as_str(), r#"env = "env-secret-0123456789""#)]).unwrap();
        assert_eq!(env.auth_tokens.0.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["env"]);
        assert!(load(&["--cores", "1", "--auth-tokens", "x"], &[]).is_err(), "no flag");
        for (text, vars) in [
            (format!("cores = 1\n[auth_tokens]\nnode = \"{secret}\"\nbad = 1 2\n"), vec![]),
            ("cores = 1\n".to_string(), vec![(var.as_str(), r#"node = "file-secret-0123456789", x"#)]),
            ("cores = 1\n[auth_tokens.node]\nsecret = \"file-secret-0123456789\"\n".to_string(), vec![]),
        ] {
            let (_dir, path) = config_file(&text);
            let error = load(&["--config", path.to_str().unwrap()], &vars).unwrap_err().to_string();
            assert!(!error.contains(secret), "{error}");
        }
    }
}
