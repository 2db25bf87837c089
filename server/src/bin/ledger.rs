//! `ledger`: the client CLI. Every command makes one connection, prints one result (or one JSON
//! object with `--json`; `watch` prints one per block) and exits 0; errors print one line on
//! stderr and exit non-zero (1 = the request failed or the key is absent, 2 = usage, 3 = node
//! unreachable).

use clap::{Parser, Subcommand};
use ledger_core::hash::block_hash;
use ledger_core::types::{Operation, ReadConsistency, SetCondition, WriteErrorCode};
use ledger_server::cli::out;
use ledger_server::cli::render::{self, hex};
use ledger_server::cli::tls_args::TlsArgs;
use ledger_server::cli::verify_cmd;
use ledger_server::cli::watch::WatchArgs;
use ledger_server::cli::{connect_any, credential, namespace_id, now_secs, CliError};
use ledger_wire::client::{Client, ClientOptions, WriteOutcome, WriteSession};
use ledger_wire::messages::{Request, Response, WriteResult};
use serde_json::{json, Value};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ledger",
    version,
    about = "Ledger client: namespaces, vaults, entities, relationships, blocks"
)]
struct Cli {
    /// Node address; several, comma-separated, are tried in order.
    #[arg(long, global = true, default_value = "127.0.0.1:50051", env = "LEDGER_ADDR")]
    addr: String,
    /// A file where the client keeps the cluster's nodes (from `GetSystemState`): tried after
    /// --addr, and rewritten when the cluster changed (SPEC §10.3).
    #[arg(long, global = true, env = "LEDGER_NODES_CACHE")]
    nodes_cache: Option<std::path::PathBuf>,
    /// Print one JSON object on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Client id for writes (default: a fresh random id).
    #[arg(long, global = true)]
    client_id: Option<String>,
    /// Send exactly this sequence number (needs --client-id). Repeating the identical command
    /// with the same client id and sequence is an idempotent retry (SPEC §6).
    #[arg(long, global = true, requires = "client_id")]
    sequence: Option<u64>,
    /// File holding the token secret, when the server has `auth_tokens` (SPEC §4.1).
    #[arg(long, global = true, env = "LEDGER_TOKEN_FILE", value_name = "PATH")]
    token_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Namespaces (tenants).
    #[command(subcommand)]
    Namespace(NamespaceCommand),
    /// Vaults of a namespace.
    #[command(subcommand)]
    Vault(VaultCommand),
    /// Set an entity.
    Set {
        #[command(flatten)]
        scope: Scope,
        key: String,
        value: String,
        /// Expire after this many seconds.
        #[arg(long)]
        ttl: Option<u64>,
        /// Only if the key does not exist (MustNotExist).
        #[arg(long, conflicts_with = "if_version")]
        if_absent: bool,
        /// Only if the key exists with this version (VersionEquals).
        #[arg(long)]
        if_version: Option<u64>,
    },
    /// Print an entity's value; exit 1 if absent.
    Get {
        #[command(flatten)]
        scope: Scope,
        key: String,
        /// `linearizable` (default): through the group's leader, never stale (SPEC §8.6);
        /// `eventual`: from the node asked, possibly behind the leader.
        #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
        consistency: ConsistencyArg,
        /// The default; kept for scripts that still pass it.
        #[arg(long, hide = true)]
        linearizable: bool,
        /// Verified read (SPEC §7.7): check the state proof (and chain proof) before printing;
        /// with --json print the whole verified response for `ledger verify`.
        #[arg(long)]
        verify: bool,
        /// With --verify: read the state at this height.
        #[arg(long, requires = "verify")]
        at_height: Option<u64>,
        /// With --verify: trust the block at this height and ask for a chain proof from it.
        #[arg(long, requires = "verify")]
        trusted_height: Option<u64>,
    },
    /// Delete an entity.
    Del {
        #[command(flatten)]
        scope: Scope,
        key: String,
    },
    /// Relationships (resource, relation, subject).
    #[command(subcommand)]
    Rel(RelCommand),
    /// Height, block hash and state root of a scope's chain tip.
    Tip {
        #[command(flatten)]
        scope: Scope,
    },
    /// One block of a scope's chain.
    Block {
        #[command(flatten)]
        scope: Scope,
        height: u64,
    },
    /// Blocks FROM..=TO of a scope's chain (with --json: exact form for `ledger verify`).
    Blocks {
        #[command(flatten)]
        scope: Scope,
        from: u64,
        to: u64,
    },
    /// Check a saved `get --verify --json` or `blocks --json` output offline (SPEC §7 only):
    /// prints `ok`, or the first failure and exits 1.
    Verify { file: String },
    /// Print each block of a scope's chain as it is committed (one line each) until Ctrl-C.
    Watch {
        #[command(flatten)]
        scope: Scope,
        /// First height (archived blocks are replayed first); default: the block after the tip.
        #[arg(long)]
        from: Option<u64>,
        /// Exit after this many blocks.
        #[arg(long)]
        count: Option<u64>,
    },
}

#[derive(Subcommand)]
enum NamespaceCommand {
    /// Create a namespace; prints its id.
    Create { name: String },
    /// List namespaces.
    List,
}

#[derive(Subcommand)]
enum VaultCommand {
    /// Create a vault; prints its id.
    Create {
        #[arg(long)]
        namespace: String,
    },
    /// List the vaults of a namespace.
    List {
        #[arg(long)]
        namespace: String,
    },
}

#[derive(Subcommand)]
enum RelCommand {
    /// Create a relationship.
    Add {
        #[command(flatten)]
        scope: VaultScope,
        resource: String,
        relation: String,
        subject: String,
    },
    /// Delete a relationship.
    Del {
        #[command(flatten)]
        scope: VaultScope,
        resource: String,
        relation: String,
        subject: String,
    },
    /// List relationships, optionally filtered.
    List {
        #[command(flatten)]
        scope: VaultScope,
        #[arg(long)]
        resource: Option<String>,
        #[arg(long)]
        subject: Option<String>,
    },
}

/// `--namespace NS [--vault V]`: without a vault, the namespace scope.
#[derive(clap::Args)]
struct Scope {
    /// Namespace id or name.
    #[arg(long)]
    namespace: String,
    /// Vault id (omit for the namespace scope).
    #[arg(long)]
    vault: Option<i64>,
}

#[derive(clap::Args)]
struct VaultScope {
    /// Namespace id or name.
    #[arg(long)]
    namespace: String,
    /// Vault id.
    #[arg(long)]
    vault: i64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ledger_server::cli::run_main("ledger", async { run(cli).await.map(|()| 0) })
}

/// Prints `value` as JSON, or `text` otherwise.
fn emit(json_mode: bool, value: Value, text: impl FnOnce() -> String) {
    if json_mode {
        out::line(value);
    } else {
        out::line(text());
    }
}

/// Runs one command: `verify` offline, every other one over one connection to the cluster.
async fn run(cli: Cli) -> Result<(), CliError> {
    if let Command::Verify { file } = &cli.command {
        return verify_cmd::offline(file, cli.json);
    }
    let options = ClientOptions {
        credential: credential(cli.token_file.as_deref())?,
        tls: cli.tls.client_tls(cli.addr.split(',').next().unwrap_or_default().trim())?,
        ..ClientOptions::default()
    };
    let client = connect_any(&cli.addr, cli.nodes_cache.as_deref(), options).await?;
    let json_mode = cli.json;
    let writer = (cli.client_id, cli.sequence);
    match cli.command {
        Command::Namespace(command) => namespace_command(&client, command, json_mode).await,
        Command::Vault(command) => vault_command(&client, command, json_mode).await,
        Command::Set { scope, key, value, ttl, if_absent, if_version } => {
            let op = set_operation(key, value, ttl, if_absent, if_version);
            write_one(&client, &scope, writer, op, json_mode).await
        }
        Command::Del { scope, key } => {
            write_one(&client, &scope, writer, Operation::DeleteEntity { key }, json_mode).await
        }
        Command::Get { scope, key, verify: true, at_height, trusted_height, .. } => {
            let ns = namespace_id(&client, &scope.namespace).await?;
            verify_cmd::get(&client, ns, scope.vault, &key, at_height, trusted_height, json_mode).await
        }
        Command::Blocks { scope, from, to } => {
            let ns = namespace_id(&client, &scope.namespace).await?;
            verify_cmd::blocks(&client, ns, scope.vault, from, to, json_mode).await
        }
        Command::Verify { .. } => Ok(()),
        Command::Get { scope, key, consistency, linearizable, .. } => {
            get_entity(&client, &scope, key, consistency, linearizable, json_mode).await
        }
        Command::Rel(command) => rel_command(&client, command, writer, json_mode).await,
        Command::Tip { scope } => print_tip(&client, &scope, json_mode).await,
        Command::Block { scope, height } => print_block(&client, &scope, height, json_mode).await,
        Command::Watch { scope, from, count } => {
            let namespace_id = namespace_id(&client, &scope.namespace).await?;
            let args = WatchArgs { namespace_id, vault_id: scope.vault, from, count, json: json_mode };
            ledger_server::cli::watch::run(&client, args).await
        }
    }
}

/// `namespace create` and `namespace list`.
async fn namespace_command(
    client: &Client,
    command: NamespaceCommand,
    json_mode: bool,
) -> Result<(), CliError> {
    match command {
        NamespaceCommand::Create { name } => {
            let (id, group) = client.create_namespace(name.clone()).await?;
            emit(json_mode, json!({"namespace_id": id, "name": name, "group_id": group}), || id.to_string());
        }
        NamespaceCommand::List => list_namespaces(client, json_mode).await?,
    }
    Ok(())
}

/// `namespace list`: every namespace, gathered page by page before anything is printed.
async fn list_namespaces(client: &Client, json_mode: bool) -> Result<(), CliError> {
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        match client.call(Request::ListNamespaces { page_token: token.clone(), page_size: 1000 }).await? {
            Response::ListNamespaces { namespaces, next_page_token } => {
                all.extend(namespaces);
                if next_page_token.is_empty() {
                    break;
                }
                token = next_page_token;
            }
            other => return Err(unexpected(&other)),
        }
    }
    emit(json_mode, json!({"namespaces": all.iter().map(render::namespace).collect::<Vec<_>>()}), || {
        all.iter()
            .map(|n| format!("{}\t{}\tgroup {}\t{:?}", n.namespace_id, n.name, n.group_id, n.status))
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

/// `vault create` and `vault list`.
async fn vault_command(client: &Client, command: VaultCommand, json_mode: bool) -> Result<(), CliError> {
    match command {
        VaultCommand::Create { namespace } => create_vault(client, &namespace, json_mode).await,
        VaultCommand::List { namespace } => list_vaults(client, &namespace, json_mode).await,
    }
}

/// `vault create`: a vault with the server's default replication and retention; prints its id.
async fn create_vault(client: &Client, namespace: &str, json_mode: bool) -> Result<(), CliError> {
    let ns = namespace_id(client, namespace).await?;
    let response = client
        .call(Request::CreateVault {
            namespace_id: ns,
            replication_factor: 0,
            initial_nodes: Vec::new(),
            retention_policy: None,
        })
        .await?;
    let Response::CreateVault { vault_id, genesis } = response else {
        return Err(unexpected(&response));
    };
    let genesis_hash = block_hash(&genesis);
    emit(
        json_mode,
        json!({"vault_id": vault_id, "namespace_id": ns, "genesis": render::header(&genesis),
               "genesis_hash": hex(&genesis_hash)}),
        || vault_id.to_string(),
    );
    Ok(())
}

/// `vault list`: the vaults of one namespace (its namespace scope, vault 0, left out).
async fn list_vaults(client: &Client, namespace: &str, json_mode: bool) -> Result<(), CliError> {
    let ns = namespace_id(client, namespace).await?;
    let response = client.call(Request::ListVaults).await?;
    let Response::ListVaults { vaults } = response else {
        return Err(unexpected(&response));
    };
    let vaults: Vec<_> = vaults.into_iter().filter(|v| v.namespace_id == ns && v.vault_id != 0).collect();
    emit(json_mode, json!({"vaults": vaults.iter().map(render::vault).collect::<Vec<_>>()}), || {
        vaults
            .iter()
            .map(|v| {
                format!("{}\theight {}\t{:?}\troot {}", v.vault_id, v.height, v.status, hex(&v.state_root))
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

/// The `SetEntity` operation of `set`: its condition from --if-absent or --if-version, its
/// expiry from --ttl counted from now.
fn set_operation(
    key: String,
    value: String,
    ttl: Option<u64>,
    if_absent: bool,
    if_version: Option<u64>,
) -> Operation {
    let condition = if if_absent {
        Some(SetCondition::MustNotExist)
    } else {
        if_version.map(SetCondition::VersionEquals)
    };
    let expires_at = ttl.map(|secs| now_secs().saturating_add(secs));
    Operation::SetEntity { key, value: value.into_bytes(), expires_at, condition }
}

/// `get` without --verify: prints the entity's value at the consistency asked for (--linearizable,
/// the old flag, wins); exit 1 if the key is absent.
async fn get_entity(
    client: &Client,
    scope: &Scope,
    key: String,
    consistency: ConsistencyArg,
    linearizable: bool,
    json_mode: bool,
) -> Result<(), CliError> {
    let ns = namespace_id(client, &scope.namespace).await?;
    let consistency = match consistency {
        _ if linearizable => ReadConsistency::Linearizable,
        ConsistencyArg::Linearizable => ReadConsistency::Linearizable,
        ConsistencyArg::Eventual => ReadConsistency::Eventual,
    };
    let response = client
        .call(Request::Read { namespace_id: ns, vault_id: scope.vault, key: key.clone(), consistency })
        .await?;
    let Response::Read { value, block_height, .. } = response else {
        return Err(unexpected(&response));
    };
    match value {
        Some(value) => emit(
            json_mode,
            json!({"key": key, "value": render::text_or_hex(&value), "block_height": block_height}),
            || render::text_or_hex(&value),
        ),
        None => return Err(CliError::new(1, format!("key {key:?} not found"))),
    }
    Ok(())
}

/// `rel add`, `rel del` (each one write, with `writer`'s client id and sequence) and `rel list`.
async fn rel_command(
    client: &Client,
    command: RelCommand,
    writer: (Option<String>, Option<u64>),
    json_mode: bool,
) -> Result<(), CliError> {
    match command {
        RelCommand::Add { scope, resource, relation, subject } => {
            let scope = Scope { namespace: scope.namespace, vault: Some(scope.vault) };
            let op = Operation::CreateRelationship { resource, relation, subject };
            write_one(client, &scope, writer, op, json_mode).await
        }
        RelCommand::Del { scope, resource, relation, subject } => {
            let scope = Scope { namespace: scope.namespace, vault: Some(scope.vault) };
            let op = Operation::DeleteRelationship { resource, relation, subject };
            write_one(client, &scope, writer, op, json_mode).await
        }
        RelCommand::List { scope, resource, subject } => {
            list_relationships(client, &scope, resource, subject, json_mode).await
        }
    }
}

/// `rel list`: a vault's relationships, optionally filtered by resource and subject, gathered
/// page by page; the block height printed is the last page's.
async fn list_relationships(
    client: &Client,
    scope: &VaultScope,
    resource: Option<String>,
    subject: Option<String>,
    json_mode: bool,
) -> Result<(), CliError> {
    let ns = namespace_id(client, &scope.namespace).await?;
    let mut all = Vec::new();
    let mut token = String::new();
    let mut height;
    loop {
        let response = client
            .call(Request::ListRelationships {
                namespace_id: ns,
                vault_id: scope.vault,
                resource: resource.clone(),
                relation: None,
                subject: subject.clone(),
                at_height: None,
                limit: 1000,
                page_token: token.clone(),
                consistency: ReadConsistency::Eventual,
            })
            .await?;
        let Response::ListRelationships { relationships, block_height, next_page_token } = response else {
            return Err(unexpected(&response));
        };
        height = block_height;
        all.extend(relationships);
        if next_page_token.is_empty() {
            break;
        }
        token = next_page_token;
    }
    let rows: Vec<Value> = all
        .iter()
        .map(|r| json!({"resource": r.resource, "relation": r.relation, "subject": r.subject}))
        .collect();
    emit(json_mode, json!({"relationships": rows, "block_height": height}), || {
        all.iter()
            .map(|r| format!("{}#{}@{}", r.resource, r.relation, r.subject))
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

/// `tip`: height, block hash and state root of the scope's chain tip.
async fn print_tip(client: &Client, scope: &Scope, json_mode: bool) -> Result<(), CliError> {
    let ns = namespace_id(client, &scope.namespace).await?;
    let tip = client.get_tip(ns, scope.vault).await?;
    emit(
        json_mode,
        json!({"height": tip.height, "block_hash": hex(&tip.block_hash), "state_root": hex(&tip.state_root)}),
        || {
            format!(
                "height {}\nblock_hash {}\nstate_root {}",
                tip.height,
                hex(&tip.block_hash),
                hex(&tip.state_root)
            )
        },
    );
    Ok(())
}

/// `block`: one block of the scope's chain, as pretty JSON even without --json.
async fn print_block(client: &Client, scope: &Scope, height: u64, json_mode: bool) -> Result<(), CliError> {
    let ns = namespace_id(client, &scope.namespace).await?;
    let response = client.call(Request::GetBlock { namespace_id: ns, vault_id: scope.vault, height }).await?;
    let Response::GetBlock { block, body_pruned } = response else {
        return Err(unexpected(&response));
    };
    let hash = block_hash(&block.header);
    let value = render::block(&block, &hash, body_pruned);
    emit(json_mode, value.clone(), || serde_json::to_string_pretty(&value).unwrap_or_default());
    Ok(())
}

/// Commits one operation as one transaction and prints its outcome.
async fn write_one(
    client: &Client,
    scope: &Scope,
    (client_id, sequence): (Option<String>, Option<u64>),
    op: Operation,
    json_mode: bool,
) -> Result<(), CliError> {
    let ns = namespace_id(client, &scope.namespace).await?;
    let mut session = WriteSession::new(client.clone(), ns, scope.vault);
    if let Some(id) = client_id {
        session = session.with_client_id(id);
    }
    let outcome = match sequence {
        Some(sequence) => write_at(client, ns, scope.vault, session.client_id(), sequence, op).await?,
        None => session.write(vec![op]).await?,
    };
    match outcome {
        WriteOutcome::Committed { sequence, success } => {
            let status =
                success.statuses.first().and_then(|s| s.first()).map(render::op_status).unwrap_or("");
            emit(
                json_mode,
                json!({"tx_id": hex(&success.tx_id), "block_height": success.block_height, "sequence": sequence,
                       "client_id": session.client_id(), "status": status}),
                || format!("{status} at height {} (tx {})", success.block_height, hex(&success.tx_id)),
            );
            Ok(())
        }
        WriteOutcome::AlreadyCommitted { sequence, committed_block_height, .. } => {
            emit(
                json_mode,
                json!({"already_committed": true, "sequence": sequence, "block_height": committed_block_height}),
                || format!("already committed (sequence {sequence})"),
            );
            Ok(())
        }
        WriteOutcome::Rejected(error) => Err(CliError::new(1, render::write_error(&error))),
    }
}

/// One `Write` with a caller-chosen sequence: a retry of the identical command is answered from
/// the server's idempotency record instead of committing again.
async fn write_at(
    client: &Client,
    namespace_id: i64,
    vault_id: Option<i64>,
    client_id: &str,
    sequence: u64,
    op: Operation,
) -> Result<WriteOutcome, CliError> {
    let request = Request::Write {
        namespace_id,
        vault_id,
        client_id: client_id.to_string(),
        sequence,
        operations: vec![op],
        include_tx_proof: false,
    };
    match client.call(request).await? {
        Response::Write(WriteResult::Success(success)) => Ok(WriteOutcome::Committed { sequence, success }),
        Response::Write(WriteResult::Error(error)) if error.code == WriteErrorCode::AlreadyCommitted => {
            Ok(WriteOutcome::AlreadyCommitted {
                sequence,
                committed_tx_id: error.committed_tx_id,
                committed_block_height: error.committed_block_height,
            })
        }
        Response::Write(WriteResult::Error(error)) => Err(CliError::new(1, render::write_error(&error))),
        other => Err(unexpected(&other)),
    }
}

fn unexpected(response: &Response) -> CliError {
    CliError::new(1, format!("unexpected response: {response:?}"))
}

/// `ledger get --consistency`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum ConsistencyArg {
    Linearizable,
    Eventual,
}
