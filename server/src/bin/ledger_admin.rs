//! `ledger-admin`: the operator CLI (SPEC §11.2). Implemented so far: namespace and vault
//! lifecycle, `vault-status`, `health`, `metrics`, `check-integrity`, `snapshot`, `ping`, `join`,
//! `leave`, `logs` and `force-gc`; the
//! remaining §11.2 commands are listed as missing in the README. Exit codes: 0 ok, 1 ran but unhealthy/failed, 2 usage, 3 unreachable.

use clap::{Parser, Subcommand, ValueEnum};
use ledger_core::hash::block_hash;
use ledger_core::types::{RetentionMode, RetentionPolicy};
use ledger_server::cli::render::{self, hex};
use ledger_server::cli::tls_args::TlsArgs;
use ledger_server::cli::{connect, credential, namespace_id, CliError};
use ledger_server::cli::{gc_cmd, logs, ops_cmd, out};
use ledger_wire::client::{Client, ClientOptions};
use ledger_wire::messages::{HealthStatus, NamespaceSelector, Request, Response};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "ledger-admin", version, about = "Ledger operator CLI")]
struct Cli {
    /// Node address.
    #[arg(long, global = true, default_value = "127.0.0.1:50051", env = "LEDGER_ADMIN_ADDR")]
    addr: String,
    /// Metrics/health endpoint of the node.
    #[arg(long, global = true, default_value = "127.0.0.1:9090")]
    metrics_addr: String,
    #[arg(long, global = true, value_enum, default_value = "text")]
    format: Format,
    #[arg(long, global = true, default_value_t = 10)]
    timeout_secs: u64,
    /// File holding the token secret, when the server has `auth_tokens` (SPEC §4.1).
    #[arg(long, global = true, env = "LEDGER_TOKEN_FILE", value_name = "PATH")]
    token_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    #[command(subcommand)]
    Namespace(NamespaceCommand),
    #[command(subcommand)]
    Vault(VaultCommand),
    /// Vault status; exit 1 unless Healthy.
    VaultStatus {
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        vault: i64,
    },
    /// Node health (HealthCheck); exit 1 unless healthy.
    Health,
    /// Integrity check of a vault (SPEC §9.7); exit 1 unless healthy.
    CheckIntegrity {
        #[arg(long)]
        namespace: String,
        /// Vault id; 0 checks the namespace scope.
        #[arg(long)]
        vault: i64,
        /// Also replay the bodies and compare the state root at every height.
        #[arg(long)]
        full: bool,
    },
    /// Snapshot the vault's group now (SPEC §9.4).
    Snapshot {
        #[arg(long)]
        namespace: String,
        /// Vault id; 0 names the namespace scope.
        #[arg(long)]
        vault: i64,
    },
    /// One GC cycle of expired entities now (SPEC §3.8): of one scope (on its group's leader),
    /// or of every group the node at --addr leads. Prints entities expired and scopes scanned.
    ForceGc {
        #[arg(long)]
        namespace: Option<String>,
        /// Vault id; absent or 0 names the namespace scope.
        #[arg(long, requires = "namespace")]
        vault: Option<i64>,
    },
    /// Raw Prometheus exposition text from the metrics endpoint.
    Metrics,
    /// Write `_ping:{node}` and read it back linearizably (SPEC §11.2); prints both latencies,
    /// exit 1 on failure.
    Ping {
        #[arg(long)]
        namespace: String,
        /// Vault id; 0 names the namespace scope.
        #[arg(long)]
        vault: i64,
    },
    /// Add a node to every group (SPEC §10.6): a learner first, a voter once caught up. The
    /// node must be running in join mode (`--bootstrap-expect 0 --peers …`).
    Join {
        #[arg(long)]
        node: u64,
        /// The address the node listens on for peers and clients.
        #[arg(long)]
        address: String,
    },
    /// Remove a node from every group (data groups first, `_system` last).
    Leave {
        #[arg(long)]
        node: u64,
    },
    /// Every node's health and every group's leader, term, indexes and lag; exit 1 unless the
    /// whole cluster is healthy.
    ClusterStatus,
    /// Replication lag per group and follower (ok ≤ 50 blocks, warning > 50, critical > 100);
    /// exit 1 if any is critical.
    LagReport {
        #[arg(long)]
        group: Option<u32>,
    },
    /// Move every group leadership off a node (or one group's), spreading them over the other
    /// voters, or to the voter --to names. A whole node stepped down with no --to is drained:
    /// the leader balancer gives it no leadership for 10 minutes or until it restarts.
    Stepdown {
        #[arg(long)]
        node: u64,
        #[arg(long)]
        group: Option<u32>,
        #[arg(long)]
        to: Option<u64>,
    },
    /// Rebuild a vault on the node at --addr from its snapshot and archived blocks (SPEC §9.9).
    RecoverVault {
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        vault: i64,
        /// Rebuild even a healthy vault, and reset the attempt counter.
        #[arg(long)]
        force: bool,
    },
    /// Print a vault's health on the node at --addr as it changes, until Healthy (exit 0) or
    /// recovery is exhausted (exit 1).
    WatchRecovery {
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        vault: i64,
        #[arg(long, default_value_t = 2)]
        interval_secs: u64,
    },
    /// A vault's state root on every replica against the leader's; exit 1 on a mismatch.
    CompareStateRoots {
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        vault: i64,
        #[arg(long)]
        height: Option<u64>,
    },
    /// Offline, with the server stopped: delete the vault's state rows in DIR and mark it
    /// Diverged, so that the next start rebuilds it (SPEC §9.9). Refused while the data
    /// directory is locked by a running server.
    ClearVaultState {
        /// Namespace id (offline: names cannot be resolved).
        #[arg(long)]
        namespace: i64,
        #[arg(long)]
        vault: i64,
        #[arg(long)]
        data_dir: std::path::PathBuf,
    },
    /// Test servers only (--test-faults): mark the vault Diverged on the node at --addr.
    SimulateDivergence {
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        vault: i64,
        #[arg(long)]
        height: Option<u64>,
    },
    /// This node's events (SPEC §11.6), oldest first: time, level, kind, scope, message, fields.
    Logs {
        /// Only events this recent: a number with s, m, h or d (`90s`, `1h`, `7d`); all if absent.
        #[arg(long, value_parser = logs::parse_duration)]
        since: Option<u64>,
        /// Only events whose kind, message or a `key=value` field contains this text.
        #[arg(long)]
        filter: Option<String>,
        /// Only events this severe or more (`warn`: errors and warnings).
        #[arg(long, value_enum)]
        level: Option<logs::LevelArg>,
        /// At most this many events, the newest (0: the node's default, 1000).
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
}

#[derive(Subcommand)]
enum NamespaceCommand {
    Create {
        name: String,
        #[arg(long)]
        group: Option<u32>,
    },
    Get {
        #[arg(long, conflicts_with = "name", required_unless_present = "name")]
        id: Option<i64>,
        #[arg(long)]
        name: Option<String>,
    },
    List,
    Delete {
        id: i64,
    },
}

#[derive(Subcommand)]
enum VaultCommand {
    Create {
        #[arg(long)]
        namespace: String,
        #[arg(long, default_value = "full")]
        retention: String,
        #[arg(long, default_value_t = 10_000)]
        retention_blocks: u64,
    },
    Get {
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        vault: i64,
    },
    Delete {
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        vault: i64,
    },
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ledger_server::cli::run_main("ledger-admin", run(cli))
}

fn emit(format: Format, value: Value, text: impl FnOnce() -> String) {
    match format {
        Format::Json => out::line(value),
        Format::Text => out::line(text()),
    }
}

fn options(cli: &Cli) -> Result<ClientOptions, CliError> {
    Ok(ClientOptions {
        call_timeout: Duration::from_secs(cli.timeout_secs),
        connect_timeout: Duration::from_secs(cli.timeout_secs),
        credential: credential(cli.token_file.as_deref())?,
        tls: cli.tls.client_tls(&cli.addr)?,
        ..ClientOptions::admin()
    })
}

async fn client(cli: &Cli) -> Result<Client, CliError> {
    connect(&cli.addr, options(cli)?).await
}

/// Runs one command; its exit code is 0, or 1 when it ran but found something unhealthy or
/// failed. Every command except `metrics` and `clear-vault-state` connects to --addr first.
async fn run(cli: Cli) -> Result<u8, CliError> {
    let format = cli.format;
    let json_out = format == Format::Json;
    match &cli.command {
        Command::Metrics => print_metrics(&cli),
        Command::Health => health(&cli).await,
        Command::Namespace(command) => namespace_command(&client(&cli).await?, command, format).await,
        Command::Join { node, address } => join(&cli, *node, address).await,
        Command::Leave { node } => leave(&cli, *node).await,
        Command::Vault(command) => vault_command(&client(&cli).await?, command, format).await,
        Command::Logs { since, filter, level, limit } => {
            print_logs(&cli, *since, filter.clone(), *level, *limit).await
        }
        Command::CheckIntegrity { namespace, vault, full } => {
            check_integrity(&cli, namespace, *vault, *full).await
        }
        Command::Snapshot { namespace, vault } => snapshot(&cli, namespace, *vault).await,
        Command::ForceGc { namespace, vault } => force_gc(&cli, namespace.as_deref(), *vault).await,
        Command::Ping { namespace, vault } => ping(&client(&cli).await?, namespace, *vault, format).await,
        Command::ClusterStatus => cluster_status(&cli).await,
        Command::LagReport { group } => ops_cmd::lag_report(&client(&cli).await?, *group, json_out).await,
        Command::Stepdown { node, group, to } => stepdown(&cli, *node, *group, *to).await,
        Command::RecoverVault { namespace, vault, force } => {
            recover_vault(&cli, namespace, *vault, *force).await
        }
        Command::WatchRecovery { namespace, vault, interval_secs } => {
            watch_recovery(&cli, namespace, *vault, *interval_secs).await
        }
        Command::CompareStateRoots { namespace, vault, height } => {
            compare_state_roots(&cli, namespace, *vault, *height).await
        }
        Command::SimulateDivergence { namespace, vault, height } => {
            simulate_divergence(&cli, namespace, *vault, *height).await
        }
        Command::ClearVaultState { namespace, vault, data_dir } => {
            ops_cmd::clear_vault_state(data_dir, *namespace, *vault, json_out)
        }
        Command::VaultStatus { namespace, vault } => vault_status(&cli, namespace, *vault).await,
    }
}

/// `metrics`: the node's Prometheus text, fetched over plain HTTP from --metrics-addr (no
/// client connection).
fn print_metrics(cli: &Cli) -> Result<u8, CliError> {
    let text = http_get(&cli.metrics_addr, "/metrics", cli.timeout_secs)?;
    out::text(text);
    Ok(0)
}

/// `health`: the node's HealthCheck status and details (a non-empty message listed first);
/// exit 1 unless healthy.
async fn health(cli: &Cli) -> Result<u8, CliError> {
    let client = client(cli).await?;
    let response = client.call(Request::HealthCheck { namespace_id: None, vault_id: None }).await?;
    let Response::HealthCheck { status, message, details } = response else {
        return Err(CliError::new(1, format!("unexpected response: {response:?}")));
    };
    let details: Vec<(String, String)> = if message.is_empty() {
        details
    } else {
        [("message".to_string(), message)].into_iter().chain(details).collect()
    };
    let name = format!("{status:?}").to_lowercase();
    emit(cli.format, json!({"status": name, "details": details}), || {
        let mut lines = vec![name.clone()];
        lines.extend(details.iter().map(|(k, v)| format!("  {k}: {v}")));
        lines.join("\n")
    });
    Ok(if status == HealthStatus::Healthy { 0 } else { 1 })
}

/// `join`: adds the node at `address` to every group; prints each group's voters afterwards.
async fn join(cli: &Cli, node: u64, address: &str) -> Result<u8, CliError> {
    let client = client(cli).await?;
    let response = client.call(Request::JoinCluster { node_id: node, address: address.to_string() }).await?;
    let Response::JoinCluster { groups } = response else {
        return Err(CliError::new(1, format!("unexpected response: {response:?}")));
    };
    print_membership(cli.format, "joined", node, &groups);
    Ok(0)
}

/// `leave`: removes the node from every group; prints each group's voters afterwards.
async fn leave(cli: &Cli, node: u64) -> Result<u8, CliError> {
    let client = client(cli).await?;
    let response = client.call(Request::LeaveCluster { node_id: node }).await?;
    let Response::LeaveCluster { groups } = response else {
        return Err(CliError::new(1, format!("unexpected response: {response:?}")));
    };
    print_membership(cli.format, "left", node, &groups);
    Ok(0)
}

/// `logs`: the node's events, filtered by age (all when `since` is absent), text and level, at
/// most `limit` of them (0: the node's default).
async fn print_logs(
    cli: &Cli,
    since: Option<u64>,
    filter: Option<String>,
    level: Option<logs::LevelArg>,
    limit: u32,
) -> Result<u8, CliError> {
    let client = client(cli).await?;
    logs::run(&client, since.unwrap_or(0), filter, level, limit, cli.format == Format::Json).await
}

/// `check-integrity`: the node checks the scope's chain (and with `full` replays it); prints each
/// issue found, exit 1 unless healthy.
async fn check_integrity(cli: &Cli, namespace: &str, vault: i64, full: bool) -> Result<u8, CliError> {
    let client = client(cli).await?;
    let ns = namespace_id(&client, namespace).await?;
    let vault_id = (vault != 0).then_some(vault);
    let request = Request::CheckIntegrity { namespace_id: ns, vault_id, full_check: full };
    // A full check replays the chain: it may take longer than one call's default timeout.
    let timeout = Duration::from_secs(cli.timeout_secs.max(if full { 600 } else { 60 }));
    let call = client.call_with(request, ledger_wire::client::CallOptions { timeout: Some(timeout) });
    let response = ops_cmd::with_progress("checking integrity", call).await?;
    let Response::CheckIntegrity { healthy, issues } = response else {
        return Err(CliError::new(1, format!("unexpected response: {response:?}")));
    };
    let listed: Vec<Value> = issues
        .iter()
        .map(|i| {
            json!({"block_height": i.block_height, "issue_type": i.issue_type.as_str(),
                   "description": i.description})
        })
        .collect();
    emit(cli.format, json!({"healthy": healthy, "issues": listed}), || {
        let mut lines = vec![if healthy { "healthy".to_string() } else { "unhealthy".to_string() }];
        lines.extend(
            issues.iter().map(|i| {
                format!("  height {}\t{}\t{}", i.block_height, i.issue_type.as_str(), i.description)
            }),
        );
        lines.join("\n")
    });
    Ok(if healthy { 0 } else { 1 })
}

/// `snapshot`: snapshots the scope's group now; prints the height, state root and file.
async fn snapshot(cli: &Cli, namespace: &str, vault: i64) -> Result<u8, CliError> {
    let client = client(cli).await?;
    let ns = namespace_id(&client, namespace).await?;
    let vault_id = (vault != 0).then_some(vault);
    let response = client.call(Request::CreateSnapshot { namespace_id: ns, vault_id }).await?;
    let Response::CreateSnapshot { block_height, state_root, snapshot_path } = response else {
        return Err(CliError::new(1, format!("unexpected response: {response:?}")));
    };
    emit(
        cli.format,
        json!({"block_height": block_height, "state_root": hex(&state_root), "snapshot_path": snapshot_path}),
        || format!("height {block_height}\nstate_root {}\npath {snapshot_path}", hex(&state_root)),
    );
    Ok(0)
}

/// `force-gc`: one GC cycle, of one scope when a namespace is given, else of every group the
/// node leads.
async fn force_gc(cli: &Cli, namespace: Option<&str>, vault: Option<i64>) -> Result<u8, CliError> {
    let client = client(cli).await?;
    let ns = match namespace {
        Some(name) => Some(namespace_id(&client, name).await?),
        None => None,
    };
    gc_cmd::force_gc(&client, ns, vault, cli.format == Format::Json).await
}

/// `cluster-status`: it connects to every node itself, with this CLI's client options.
async fn cluster_status(cli: &Cli) -> Result<u8, CliError> {
    let client = client(cli).await?;
    ops_cmd::cluster_status(&client, &options(cli)?, cli.format == Format::Json).await
}

/// `stepdown`: moves leaderships off `node` (of one group, or all; to `to`, or spread).
async fn stepdown(cli: &Cli, node: u64, group: Option<u32>, to: Option<u64>) -> Result<u8, CliError> {
    let client = client(cli).await?;
    // Each hand-over waits out an election timeout; many groups take a while.
    let timeout = Duration::from_secs(cli.timeout_secs.max(60));
    ops_cmd::stepdown(&client, node, group, to, cli.format == Format::Json, timeout).await
}

/// `recover-vault`: rebuilds the vault on the node at --addr.
async fn recover_vault(cli: &Cli, namespace: &str, vault: i64, force: bool) -> Result<u8, CliError> {
    let client = client(cli).await?;
    let ns = namespace_id(&client, namespace).await?;
    let timeout = Duration::from_secs(cli.timeout_secs);
    ops_cmd::recover_vault(&client, ns, vault, force, cli.format == Format::Json, timeout).await
}

/// `watch-recovery`: polls the vault's health every `interval_secs` (at least 1).
async fn watch_recovery(cli: &Cli, namespace: &str, vault: i64, interval_secs: u64) -> Result<u8, CliError> {
    let client = client(cli).await?;
    let ns = namespace_id(&client, namespace).await?;
    let interval = Duration::from_secs(interval_secs.max(1));
    ops_cmd::watch_recovery(&client, ns, vault, interval, cli.format == Format::Json).await
}

/// `compare-state-roots`: the vault's state root on every replica against the leader's.
async fn compare_state_roots(
    cli: &Cli,
    namespace: &str,
    vault: i64,
    height: Option<u64>,
) -> Result<u8, CliError> {
    let client = client(cli).await?;
    let ns = namespace_id(&client, namespace).await?;
    ops_cmd::compare_state_roots(&client, ns, vault, height, cli.format == Format::Json).await
}

/// `simulate-divergence` (test servers only): marks the vault Diverged on the node at --addr.
async fn simulate_divergence(
    cli: &Cli,
    namespace: &str,
    vault: i64,
    height: Option<u64>,
) -> Result<u8, CliError> {
    let client = client(cli).await?;
    let ns = namespace_id(&client, namespace).await?;
    ops_cmd::simulate_divergence(&client, ns, vault, height, cli.format == Format::Json).await
}

/// `vault-status`: the vault's status; exit 1 unless Healthy.
async fn vault_status(cli: &Cli, namespace: &str, vault: i64) -> Result<u8, CliError> {
    let client = client(cli).await?;
    let ns = namespace_id(&client, namespace).await?;
    ops_cmd::vault_status(&client, ns, vault, cli.format == Format::Json).await
}

/// `ping`: one write through consensus and one linearizable read of it, each timed. The client
/// id is this host's own (`ledger-admin:{hostname}`) and its sequence follows the last committed
/// one, so repeated pings never collide with each other or with applications.
async fn ping(client: &Client, namespace: &str, vault: i64, format: Format) -> Result<u8, CliError> {
    let ns = namespace_id(client, namespace).await?;
    let vault_id = (vault != 0).then_some(vault);
    let node = match client.call(Request::GetNodeInfo).await? {
        Response::GetNodeInfo { node_id, .. } => node_id,
        other => return Err(CliError::new(1, format!("unexpected response: {other:?}"))),
    };
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    let client_id = format!("ledger-admin:{}", if host.is_empty() { "unknown" } else { &host });
    let key = format!("_ping:{node}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let value = now.as_nanos().to_string().into_bytes();
    let sequence = client.get_client_state(ns, vault_id, client_id.clone()).await? + 1;
    let started = std::time::Instant::now();
    let op = ledger_core::types::Operation::SetEntity {
        key: key.clone(),
        value: value.clone(),
        expires_at: None,
        condition: None,
    };
    let written = client.write(ns, vault_id, client_id, sequence, vec![op]).await?;
    let write_us = started.elapsed().as_micros() as u64;
    let height = match written {
        ledger_wire::messages::WriteResult::Success(success) => success.block_height,
        ledger_wire::messages::WriteResult::Error(error) => {
            return Err(CliError::new(1, format!("ping write failed: {error:?}")));
        }
    };
    let started = std::time::Instant::now();
    let read = client
        .read_with(ns, vault_id, key.clone(), ledger_core::types::ReadConsistency::Linearizable)
        .await?;
    let read_us = started.elapsed().as_micros() as u64;
    let ok = read.as_deref() == Some(value.as_slice());
    emit(
        format,
        json!({"ok": ok, "node": node, "key": key, "height": height, "write_us": write_us, "read_us": read_us}),
        || {
            let verdict = if ok { "ok" } else { "FAILED: the read did not return the written value" };
            format!(
                "{verdict}\nnode      {node}\nkey       {key}\nheight    {height}\nwrite     {:.3} ms\nread      {:.3} ms",
                write_us as f64 / 1000.0,
                read_us as f64 / 1000.0
            )
        },
    );
    Ok(if ok { 0 } else { 1 })
}

async fn namespace_command(
    client: &Client,
    command: &NamespaceCommand,
    format: Format,
) -> Result<u8, CliError> {
    let response = match command {
        NamespaceCommand::Create { name, group } => {
            client.call(Request::CreateNamespace { name: name.clone(), group_id: *group }).await?
        }
        NamespaceCommand::Get { id, name } => {
            let by = match (id, name) {
                (Some(id), _) => NamespaceSelector::Id(*id),
                (None, Some(name)) => NamespaceSelector::Name(name.clone()),
                (None, None) => return Err(CliError::new(2, "give --id or --name")),
            };
            client.call(Request::GetNamespace { by }).await?
        }
        NamespaceCommand::List => {
            client.call(Request::ListNamespaces { page_token: String::new(), page_size: 1000 }).await?
        }
        NamespaceCommand::Delete { id } => {
            client.call(Request::DeleteNamespace { namespace_id: *id }).await?
        }
    };
    match response {
        Response::CreateNamespace { namespace_id, group_id } => {
            emit(format, json!({"namespace_id": namespace_id, "group_id": group_id}), || {
                format!("namespace {namespace_id} in group {group_id}")
            })
        }
        Response::GetNamespace(info) => emit(format, render::namespace(&info), || {
            format!("{}\t{}\tgroup {}\t{:?}", info.namespace_id, info.name, info.group_id, info.status)
        }),
        Response::ListNamespaces { namespaces, .. } => emit(
            format,
            json!({"namespaces": namespaces.iter().map(render::namespace).collect::<Vec<_>>()}),
            || {
                namespaces
                    .iter()
                    .map(|n| format!("{}\t{}\tgroup {}\t{:?}", n.namespace_id, n.name, n.group_id, n.status))
                    .collect::<Vec<_>>()
                    .join("\n")
            },
        ),
        Response::DeleteNamespace { deleted_at } => {
            emit(format, json!({"deleted_at": render::timestamp(&deleted_at)}), || "deleted".to_string())
        }
        other => return Err(CliError::new(1, format!("unexpected response: {other:?}"))),
    }
    Ok(0)
}

async fn vault_command(client: &Client, command: &VaultCommand, format: Format) -> Result<u8, CliError> {
    match command {
        VaultCommand::Create { namespace, retention, retention_blocks } => {
            let mode = match retention.as_str() {
                "full" => RetentionMode::Full,
                "compacted" => RetentionMode::Compacted,
                other => {
                    return Err(CliError::new(
                        2,
                        format!("--retention must be full or compacted, not {other:?}"),
                    ))
                }
            };
            let ns = namespace_id(client, namespace).await?;
            let response = client
                .call(Request::CreateVault {
                    namespace_id: ns,
                    replication_factor: 0,
                    initial_nodes: Vec::new(),
                    retention_policy: Some(RetentionPolicy { mode, retention_blocks: *retention_blocks }),
                })
                .await?;
            let Response::CreateVault { vault_id, genesis } = response else {
                return Err(CliError::new(1, format!("unexpected response: {response:?}")));
            };
            let hash = hex(&block_hash(&genesis));
            emit(format, json!({"vault_id": vault_id, "genesis_hash": hash}), || {
                format!("vault {vault_id}\ngenesis {hash}")
            });
        }
        VaultCommand::Get { namespace, vault } => {
            let ns = namespace_id(client, namespace).await?;
            let info = client.get_vault(ns, *vault).await?;
            emit(format, render::vault(&info), || format!("{}", render::vault(&info)));
        }
        VaultCommand::Delete { namespace, vault } => {
            let ns = namespace_id(client, namespace).await?;
            let response = client.call(Request::DeleteVault { namespace_id: ns, vault_id: *vault }).await?;
            let Response::DeleteVault { deleted_at } = response else {
                return Err(CliError::new(1, format!("unexpected response: {response:?}")));
            };
            emit(format, json!({"deleted_at": render::timestamp(&deleted_at)}), || "deleted".to_string());
        }
        VaultCommand::List => {
            let response = client.call(Request::ListVaults).await?;
            let Response::ListVaults { vaults } = response else {
                return Err(CliError::new(1, format!("unexpected response: {response:?}")));
            };
            emit(format, json!({"vaults": vaults.iter().map(render::vault).collect::<Vec<_>>()}), || {
                vaults
                    .iter()
                    .map(|v| {
                        format!("{}/{}\theight {}\t{:?}", v.namespace_id, v.vault_id, v.height, v.status)
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
    }
    Ok(0)
}

/// A minimal HTTP/1.1 GET (the metrics endpoint is plain HTTP on a private address).
fn http_get(addr: &str, path: &str, timeout_secs: u64) -> Result<String, CliError> {
    let unreachable = |e: std::io::Error| CliError::new(3, format!("cannot reach {addr}: {e}"));
    let mut stream = std::net::TcpStream::connect(addr).map_err(unreachable)?;
    stream.set_read_timeout(Some(Duration::from_secs(timeout_secs))).map_err(unreachable)?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
        .map_err(unreachable)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(unreachable)?;
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        Some((head, _)) => Err(CliError::new(1, head.lines().next().unwrap_or("bad response").to_string())),
        None => Err(CliError::new(1, "malformed HTTP response")),
    }
}

/// `join` / `leave` output: each group with its voters afterwards.
fn print_membership(format: Format, what: &str, node: u64, groups: &[(u32, Vec<u64>)]) {
    let listed: Vec<Value> = groups.iter().map(|(g, voters)| json!({"group": g, "voters": voters})).collect();
    emit(format, json!({"result": what, "node": node, "groups": listed}), || {
        let mut lines = vec![format!("node {node} {what} {} group(s)", groups.len())];
        lines.extend(groups.iter().map(|(g, voters)| format!("  group {g}\tvoters {voters:?}")));
        lines.join("\n")
    });
}
