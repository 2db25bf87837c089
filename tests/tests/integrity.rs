//! Integrity checks, snapshots and retention against a real server (SPEC §9.4, §9.5, §9.7; §12
//! invariants 9, 11, 18–20, 33): bytes flipped in archived headers and bodies (`blocks.redb`) and
//! in state rows (`state.redb`) of a stopped server are reported by `ledger-admin
//! check-integrity` (quick and `--full`) at the right height with the right issue type, and a
//! corrupted state is not served; a Compacted vault loses only the bodies below its retention
//! bound, keeps every header, still passes the full check, and its snapshots' chain commitments
//! equal a recomputation from the headers.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ledger_core::hash::{block_hash, chain_commitment};
use ledger_core::types::{NamespaceId, RetentionMode, RetentionPolicy, ScopeKey, VaultId};
use ledger_tests::scope::{connect, retry_transient, set, walk_chain};
use ledger_tests::{binary, temp_dir, ServerProcess};
use ledger_wire::client::Client;
use ledger_wire::error::ClientError;
use ledger_wire::messages::{ErrorDetail, Request, Response, StatusCode, WriteResult};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::Value;

// The archive and state tables, as defined in shard/src/archive.rs and checkpoint.rs.
const GROUP_BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("group_blocks");
const BODIES: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("bodies");
const VAULT_INDEX: TableDefinition<(i64, u64), (u64, u32)> = TableDefinition::new("vault_index");
const ENTITIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entities");

/// Blocks written to the vault whose archive is corrupted.
const BLOCKS: u64 = 240;

/// Runs `ledger-admin --format json` against `addr`; returns (exit code, parsed stdout).
fn admin(addr: &str, args: &[&str]) -> (i32, Value) {
    let output = Command::new(binary("ledger-admin"))
        .args(["--addr", addr, "--format", "json", "--timeout-secs", "60"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!("ledger-admin {args:?}: stdout {stdout:?} stderr {}", String::from_utf8_lossy(&output.stderr))
    });
    (output.status.code().unwrap_or(-1), value)
}

/// `check-integrity` → (exit code, healthy, [(height, issue_type)]).
fn check(addr: &str, ns: i64, vault: i64, full: bool) -> (i32, bool, Vec<(u64, String)>) {
    let (ns, vault) = (ns.to_string(), vault.to_string());
    let mut args = vec!["check-integrity", "--namespace", &ns, "--vault", &vault];
    if full {
        args.push("--full");
    }
    let (code, value) = admin(addr, &args);
    let issues = value["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["block_height"].as_u64().unwrap(), i["issue_type"].as_str().unwrap().to_string()))
        .collect();
    (code, value["healthy"].as_bool().unwrap(), issues)
}

fn has(issues: &[(u64, String)], height: u64, kind: &str) -> bool {
    issues.iter().any(|(h, k)| *h == height && k == kind)
}

/// `count` one-transaction blocks `key-{i}` = `value-{i:04}` (sequential, so one block each).
async fn write_blocks(client: &Client, ns: i64, vault: i64, client_id: &str, first: u64, count: u64) {
    for i in first..first + count {
        let result = client
            .write(ns, Some(vault), client_id, i, vec![set(format!("key-{i}"), format!("value-{i:04}"))])
            .await
            .unwrap();
        assert!(matches!(result, WriteResult::Success(_)), "write {i}: {result:?}");
    }
}

fn group_dir(data_dir: &Path, group: u32) -> PathBuf {
    data_dir.join("groups").join(format!("g{group:05}"))
}

fn scope_id(ns: i64, vault: i64) -> i64 {
    ScopeKey { namespace_id: NamespaceId(ns), vault_id: VaultId(vault) }.scope_id()
}

/// Flips one bit of the first occurrence of `needle` in `row`.
fn flip_in(row: &mut [u8], needle: &[u8], what: &str) {
    let at =
        row.windows(needle.len()).position(|w| w == needle).unwrap_or_else(|| panic!("{what} not found"));
    row[at + needle.len() / 2] ^= 0x01;
}

/// (group height, entry) of a vault block.
fn locate(db: &redb::Database, scope: i64, height: u64) -> (u64, u32) {
    let txn = db.begin_read().unwrap();
    let index = txn.open_table(VAULT_INDEX).unwrap();
    index.get((scope, height)).unwrap().unwrap().value()
}

fn rewrite_group_block(db: &redb::Database, group_height: u64, needle: &[u8], what: &str) {
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(GROUP_BLOCKS).unwrap();
        let mut row = table.get(group_height).unwrap().unwrap().value().to_vec();
        flip_in(&mut row, needle, what);
        table.insert(group_height, row.as_slice()).unwrap();
    }
    txn.commit().unwrap();
}

/// Proves corruption is found where it is: a flipped `previous_hash` byte in the header at 60
/// is a `chain_break` at 60; a flipped `state_root` byte at 120 is a `chain_break` at 121 in
/// the quick check and a `state_divergence` at 120 in the full one; a flipped value byte in
/// the body at 180 is a `tx_root_mismatch` at 180 (full: `state_divergence` at 180); a flipped
/// value byte of a row in `state.redb` makes that vault Diverged at restart, so reads answer
/// `Unavailable{VaultUnavailable}` and the check reports `state_divergence` at its tip; an
/// untouched vault in the same group stays healthy and readable.
#[test]
fn t01_corruption_reported_at_its_height() {
    let dir = temp_dir("integrity");
    let data_dir = dir.path().join("node");
    let server = ServerProcess::start(&data_dir, &[]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (ns, group, chain_vault, state_vault, clean_vault, chain) = rt.block_on(async {
        let client = connect(&server.addr).await;
        let (ns, group) = client.create_namespace("integrity").await.unwrap();
        let chain_vault = client.create_vault(ns, None).await.unwrap();
        let state_vault = client.create_vault(ns, None).await.unwrap();
        let clean_vault = client.create_vault(ns, None).await.unwrap();
        write_blocks(&client, ns, chain_vault, "w", 1, BLOCKS).await;
        write_blocks(&client, ns, state_vault, "w", 1, 20).await;
        write_blocks(&client, ns, clean_vault, "w", 1, 20).await;
        let chain = walk_chain(&client, ns, Some(chain_vault)).await;
        (ns, group, chain_vault, state_vault, clean_vault, chain)
    });
    assert_eq!(chain.len() as u64, BLOCKS + 1);
    let (code, healthy, issues) = check(&server.addr, ns, chain_vault, true);
    assert_eq!((code, healthy, issues), (0, true, vec![]), "the intact chain must be healthy");
    assert_eq!(server.stop(), Some(0));

    let gdir = group_dir(&data_dir, group);
    {
        let db = redb::Database::open(gdir.join("blocks.redb")).unwrap();
        let scope = scope_id(ns, chain_vault);
        let (gh, _) = locate(&db, scope, 60);
        rewrite_group_block(&db, gh, &block_hash(&chain[&59].header), "previous_hash of 60");
        let (gh, _) = locate(&db, scope, 120);
        rewrite_group_block(&db, gh, &chain[&120].header.state_root, "state_root of 120");
        let (gh, entry) = locate(&db, scope, 180);
        let txn = db.begin_write().unwrap();
        {
            let mut bodies = txn.open_table(BODIES).unwrap();
            let mut row = bodies.get((gh, entry)).unwrap().unwrap().value().to_vec();
            flip_in(&mut row, b"value-0180", "value of block 180");
            bodies.insert((gh, entry), row.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    {
        let db = redb::Database::open(gdir.join("state.redb")).unwrap();
        let mut key = scope_id(ns, state_vault).to_be_bytes().to_vec();
        key.extend_from_slice(b"key-7");
        let txn = db.begin_write().unwrap();
        {
            let mut entities = txn.open_table(ENTITIES).unwrap();
            let mut row = entities.get(key.as_slice()).unwrap().unwrap().value().to_vec();
            flip_in(&mut row, b"value-0007", "row key-7");
            entities.insert(key.as_slice(), row.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }

    // Automatic recovery off: this test looks at the Diverged vault as restart leaves it
    // (tests/tests/ops.rs covers recovery). The background check runs every second.
    let flags = ["--vault-auto-recovery", "false", "--integrity-interval-secs", "1"];
    let server = ServerProcess::restart(&data_dir, &flags);
    rt.block_on(async {
        let client = connect(&server.addr).await;
        let value = retry_transient(|| client.read(ns, Some(clean_vault), "key-3")).await.unwrap();
        assert_eq!(value, Some(b"value-0003".to_vec()), "an untouched vault keeps serving");
        match client.read(ns, Some(state_vault), "key-3").await {
            Err(ClientError::Status { code: StatusCode::Unavailable, detail, .. }) => {
                assert!(
                    matches!(detail.as_deref(), Some(ErrorDetail::VaultUnavailable { .. })),
                    "{detail:?}"
                );
            }
            other => panic!("a corrupted state must not be served: {other:?}"),
        }
    });

    let (code, healthy, quick) = check(&server.addr, ns, chain_vault, false);
    assert_eq!((code, healthy), (1, false), "{quick:?}");
    assert!(has(&quick, 60, "chain_break"), "{quick:?}");
    assert!(has(&quick, 121, "chain_break"), "{quick:?}");
    assert!(has(&quick, 180, "tx_root_mismatch"), "{quick:?}");
    assert!(!quick.iter().any(|(_, k)| k == "state_divergence"), "quick does not replay: {quick:?}");
    assert!(!quick.iter().any(|(h, _)| *h < 60), "nothing is wrong below 60: {quick:?}");

    let (code, _, full) = check(&server.addr, ns, chain_vault, true);
    assert_eq!(code, 1);
    assert!(has(&full, 120, "state_divergence"), "{full:?}");
    assert!(has(&full, 180, "state_divergence"), "{full:?}");
    assert!(!full.iter().any(|(h, k)| k == "state_divergence" && *h < 120), "{full:?}");

    let (code, _, diverged) = check(&server.addr, ns, state_vault, false);
    assert_eq!(code, 1);
    assert!(has(&diverged, 20, "state_divergence"), "{diverged:?}");
    assert_eq!(check(&server.addr, ns, clean_vault, true), (0, true, vec![]));

    // The background check (SPEC §9.7, issue 16 item 6) finds the same chain breaks by itself
    // and reports them in `vault-status` (exit 1); the clean vault's check finds nothing.
    let (ns_arg, chain_arg, clean_arg) = (ns.to_string(), chain_vault.to_string(), clean_vault.to_string());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let found = loop {
        let (code, status) =
            admin(&server.addr, &["vault-status", "--namespace", &ns_arg, "--vault", &chain_arg]);
        let issues = status["integrity"]["issues"].as_array().cloned().unwrap_or_default();
        if !issues.is_empty() {
            assert_eq!(code, 1, "{status}");
            break issues;
        }
        assert!(std::time::Instant::now() < deadline, "the background check never ran: {status}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let found: Vec<(u64, String)> = found
        .iter()
        .map(|i| (i["block_height"].as_u64().unwrap(), i["issue_type"].as_str().unwrap().to_string()))
        .collect();
    assert!(has(&found, 60, "chain_break"), "{found:?}");
    assert!(has(&found, 180, "tx_root_mismatch"), "{found:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (code, status) =
            admin(&server.addr, &["vault-status", "--namespace", &ns_arg, "--vault", &clean_arg]);
        if status["integrity"]["checked_at"].is_string() {
            assert_eq!(code, 0, "{status}");
            assert_eq!(status["integrity"]["issues"].as_array().map(Vec::len), Some(0), "{status}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the clean vault was never checked: {status}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(server.stop(), Some(0));
}

async fn body_pruned(client: &Client, ns: i64, vault: i64, height: u64) -> bool {
    let request = Request::GetBlock { namespace_id: ns, vault_id: Some(vault), height };
    match retry_transient(|| client.call(request.clone())).await.unwrap() {
        Response::GetBlock { block, body_pruned } => {
            assert_eq!(block.transactions.is_empty(), body_pruned);
            body_pruned
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// Proves Compacted retention (SPEC §9.5) and snapshot continuity: with a snapshot at height
/// 120 and tip 150 (retention 20), the bodies below min(120, 130) = 120 are deleted by the
/// retention pass while every header is still served and the chain verifies (invariant 18);
/// `check-integrity --full` replays from the snapshot and is healthy (invariant 20); each
/// snapshot's root equals the archived header at its height (33) and its chain commitment
/// equals one recomputed from the headers, the second one linked to the first (19); a damaged
/// snapshot is reported as `snapshot_corruption` and the full check falls back to the older one.
#[test]
fn t02_compacted_retention_keeps_verifiability() {
    let dir = temp_dir("retention");
    let data_dir = dir.path().join("node");
    let server = ServerProcess::start(&data_dir, &["--retention-interval-secs", "1"]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = rt.block_on(connect(&server.addr));
    let policy = RetentionPolicy { mode: RetentionMode::Compacted, retention_blocks: 20 };
    let (ns, vault) = rt.block_on(async {
        let (ns, _) = client.create_namespace("retention").await.unwrap();
        let vault = client.create_vault(ns, Some(policy)).await.unwrap();
        write_blocks(&client, ns, vault, "w", 1, 120).await;
        (ns, vault)
    });
    let (ns_arg, vault_arg) = (ns.to_string(), vault.to_string());
    let (code, first) = admin(&server.addr, &["snapshot", "--namespace", &ns_arg, "--vault", &vault_arg]);
    assert_eq!(code, 0, "{first}");
    assert_eq!(first["block_height"].as_u64(), Some(120));
    rt.block_on(write_blocks(&client, ns, vault, "w", 121, 30));

    let deadline = Instant::now() + Duration::from_secs(15);
    while !rt.block_on(body_pruned(&client, ns, vault, 119)) {
        assert!(Instant::now() < deadline, "bodies below the bound were not compacted");
        std::thread::sleep(Duration::from_millis(200));
    }
    let chain = rt.block_on(walk_chain(&client, ns, Some(vault)));
    assert_eq!(chain.len(), 151, "every header is still served");
    for (height, block) in &chain {
        let pruned = block.transactions.is_empty() && *height > 0;
        assert_eq!(pruned, (1..120).contains(height), "body of {height}");
    }
    assert_eq!(check(&server.addr, ns, vault, true), (0, true, vec![]));

    let (code, second) = admin(&server.addr, &["snapshot", "--namespace", &ns_arg, "--vault", &vault_arg]);
    assert_eq!(code, 0, "{second}");
    assert_eq!(second["block_height"].as_u64(), Some(150));
    let headers: Vec<_> = chain.values().map(|b| b.header.clone()).collect();
    let scope = ScopeKey { namespace_id: NamespaceId(ns), vault_id: VaultId(vault) };
    for (snapshot, from, to) in [(&first, 0u64, 120u64), (&second, 121, 150)] {
        let path = PathBuf::from(snapshot["snapshot_path"].as_str().unwrap());
        let header = ledger_shard::storage::snapshot::read_header(&path).unwrap();
        let summary = header.scope(scope).unwrap();
        assert_eq!(summary.vault_height, to);
        assert_eq!(summary.state_root, headers[to as usize].state_root, "invariant 33");
        assert_eq!(summary.block_hash, block_hash(&headers[to as usize]));
        assert_eq!(summary.genesis_hash, block_hash(&headers[0]));
        let recomputed = chain_commitment(&headers[from as usize..=to as usize]);
        assert_eq!(summary.chain_commitment, recomputed, "invariant 19 over {from}..={to}");
        if from > 0 {
            assert_eq!(summary.previous_snapshot_height, Some(from - 1));
            assert_eq!(summary.previous_snapshot_hash, Some(block_hash(&headers[from as usize - 1])));
        } else {
            assert_eq!(summary.previous_snapshot_height, None);
        }
    }
    assert_eq!(check(&server.addr, ns, vault, true), (0, true, vec![]));
    assert_eq!(server.stop(), Some(0));

    // A damaged newest snapshot is reported and skipped: the full check replays from the older
    // one (bodies 121..=150 are still there) and finds nothing else wrong.
    let newest = PathBuf::from(second["snapshot_path"].as_str().unwrap());
    let mut bytes = std::fs::read(&newest).unwrap();
    let last = bytes.len() - 8;
    bytes[last] ^= 0x20;
    std::fs::write(&newest, bytes).unwrap();
    let server = ServerProcess::restart(&data_dir, &["--retention-interval-secs", "1"]);
    for full in [false, true] {
        let (code, healthy, issues) = check(&server.addr, ns, vault, full);
        assert_eq!((code, healthy), (1, false));
        assert_eq!(issues, vec![(150, "snapshot_corruption".to_string())], "full: {full}");
    }
    assert_eq!(server.stop(), Some(0));
}

/// Proves the block-count trigger (SPEC §9.4): with `--snapshot-interval-blocks 20` and
/// `--snapshots-keep 2`, writing 90 blocks makes the group snapshot on its own, only the newest
/// two files remain, and each one loads with its checksums and scope roots verified.
#[test]
fn t03_snapshots_on_block_interval_keep_newest() {
    let dir = temp_dir("snapinterval");
    let data_dir = dir.path().join("node");
    let server =
        ServerProcess::start(&data_dir, &["--snapshot-interval-blocks", "20", "--snapshots-keep", "2"]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (ns, group) = rt.block_on(async {
        let client = connect(&server.addr).await;
        let (ns, group) = client.create_namespace("interval").await.unwrap();
        let vault = client.create_vault(ns, None).await.unwrap();
        for batch in 0..3 {
            write_blocks(&client, ns, vault, "w", 1 + batch * 30, 30).await;
            // Let the 1 s maintenance tick see each step.
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
        (ns, group)
    });
    let snapshots = group_dir(&data_dir, group).join("snapshots");
    let deadline = Instant::now() + Duration::from_secs(10);
    let files = loop {
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(&snapshots).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
        files.sort();
        if files.len() == 2 {
            break files;
        }
        assert!(Instant::now() < deadline, "expected 2 snapshot files, found {files:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    for file in &files {
        let (header, scopes) = ledger_shard::storage::snapshot::load_verified(file).unwrap();
        assert!(header.group_height >= 20, "{}", file.display());
        assert!(scopes.iter().any(|s| s.meta.key.namespace_id.0 == ns));
    }
    assert_eq!(server.stop(), Some(0));
}

/// D73: a data group whose `state.redb` and `blocks.redb` are lost while its snapshot file
/// survives used to stop the node at start (openraft found the snapshot ahead of its committed
/// index and panicked). The group now restores from the snapshot and re-applies the log: the node
/// starts, serves the snapshot's rows, takes writes, and `check-integrity` names the archived
/// blocks that are gone.
#[test]
fn t04_lost_redb_files_beside_a_snapshot_restore_instead_of_stopping_the_node() {
    let dir = temp_dir("lost-state");
    let data_dir = dir.path().join("node");
    let server = ServerProcess::start(&data_dir, &[]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = rt.block_on(connect(&server.addr));
    let (ns, vault) = rt.block_on(async {
        let (ns, _) = client.create_namespace("lost").await.unwrap();
        let vault = client.create_vault(ns, None).await.unwrap();
        write_blocks(&client, ns, vault, "w", 1, 3).await;
        (ns, vault)
    });
    let (ns_arg, vault_arg) = (ns.to_string(), vault.to_string());
    let (code, snap) = admin(&server.addr, &["snapshot", "--namespace", &ns_arg, "--vault", &vault_arg]);
    assert_eq!(code, 0, "{snap}");
    let group = PathBuf::from(snap["snapshot_path"].as_str().unwrap())
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    drop(client);
    assert_eq!(server.stop(), Some(0));
    std::fs::remove_file(group.join("state.redb")).unwrap();
    std::fs::remove_file(group.join("blocks.redb")).unwrap();
    let server = ServerProcess::start(&data_dir, &[]);
    assert!(server.stderr().contains("event=state_restored_from_snapshot"), "{}", server.stderr());
    let client = rt.block_on(connect(&server.addr));
    rt.block_on(async {
        let value = retry_transient(|| client.read(ns, Some(vault), "key-2")).await.unwrap();
        assert_eq!(value, Some(b"value-0002".to_vec()));
        write_blocks(&client, ns, vault, "w", 4, 1).await;
    });
    let (code, healthy, issues) = check(&server.addr, ns, vault, false);
    assert_eq!((code, healthy), (1, false), "{issues:?}");
    assert!((1..=3).all(|h| has(&issues, h, "missing_block")), "{issues:?}");
}
