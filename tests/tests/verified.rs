//! Verified and historical reads end to end (SPEC §5.1 items 3–4, §7.7, §8.7, §12 invariants 8
//! and 13): thousands of seeded random writes (sets with and without TTL, deletes) through the
//! client with verified write proofs, then a seeded sample of current and historical reads of
//! present and absent keys verified by the client library, by `ledger get --verify --json` plus
//! the offline `ledger verify FILE`, and tampered files rejected.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use ledger_core::types::Operation;
use ledger_core::verify::TrustedBlock;
use ledger_tests::scope::{connect, create_scope};
use ledger_tests::{ledger_cli, temp_dir, ServerProcess};
use ledger_wire::client::{Client, VerifiedReadOptions, WriteOutcome, WriteSession};
use ledger_wire::messages::{Request, Response, StatusCode};
use ledger_wire::ClientError;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

const SEED: u64 = 0x5eed_0001;
/// Concurrent writers, each on its own keys so that every key's history is in commit order.
const WRITERS: usize = 4;
const TXS_PER_WRITER: usize = 150;
const OPS_PER_TX: usize = 4;
const KEYS_PER_WRITER: u32 = 60;

/// `(height, row after that height)` per key, ascending; a row is `(value, expires_at)`.
type KeyHistory = Vec<(u64, Option<(Vec<u8>, u64)>)>;
/// A committed row as the proof covers it: `(value, expires_at, version)`.
type ProvenRow = (Vec<u8>, u64, u64);

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// The model's row of `key` at `height`: `(value, expires_at, version)`.
fn row_at(history: &BTreeMap<String, KeyHistory>, key: &str, height: u64) -> Option<ProvenRow> {
    let list = history.get(key)?;
    let (h, row) = list.iter().rev().find(|(h, _)| *h <= height)?;
    row.as_ref().map(|(v, e)| (v.clone(), *e, *h))
}

/// One writer: `TXS_PER_WRITER` verified transactions of random sets / TTL sets / deletes.
async fn writer(client: Client, ns: i64, vault: i64, id: usize) -> BTreeMap<String, KeyHistory> {
    let mut rng = StdRng::seed_from_u64(SEED + id as u64);
    let mut session =
        WriteSession::new(client, ns, Some(vault)).with_client_id(format!("writer-{id}")).with_rng_seed(SEED);
    let mut history: BTreeMap<String, KeyHistory> = BTreeMap::new();
    let now = now_secs();
    for _ in 0..TXS_PER_WRITER {
        let mut ops = Vec::new();
        let mut rows = BTreeMap::new();
        for _ in 0..OPS_PER_TX {
            let key = format!("w{id}:k{}", rng.gen_range(0..KEYS_PER_WRITER));
            let op = match rng.gen_range(0..10) {
                0..=4 => {
                    let value: Vec<u8> = (0..rng.gen_range(0..12)).map(|_| rng.gen()).collect();
                    rows.insert(key.clone(), Some((value.clone(), 0)));
                    Operation::SetEntity { key, value, expires_at: None, condition: None }
                }
                5..=6 => {
                    // Already expired (any block's time is later) or far in the future: both
                    // are judged the same by every clock the test can meet.
                    let expires_at = if rng.gen_bool(0.5) { now - 100 } else { now + 36_000 };
                    let value = format!("ttl-{}", rng.gen::<u16>()).into_bytes();
                    rows.insert(key.clone(), Some((value.clone(), expires_at)));
                    Operation::SetEntity { key, value, expires_at: Some(expires_at), condition: None }
                }
                _ => {
                    rows.insert(key.clone(), None);
                    Operation::DeleteEntity { key }
                }
            };
            ops.push(op);
        }
        match session.write_verified(ops).await.expect("verified write") {
            WriteOutcome::Committed { success, .. } => {
                for (key, row) in rows {
                    history.entry(key).or_default().push((success.block_height, row));
                }
            }
            other => panic!("unexpected write outcome {other:?}"),
        }
    }
    history
}

/// Expected `(value shown, entity row)` of `key` at `height`; `historical` judges TTL at the
/// block's time (any block is after the past expiries and before the future ones).
fn expected(
    history: &BTreeMap<String, KeyHistory>,
    key: &str,
    height: u64,
) -> (Option<Vec<u8>>, Option<ProvenRow>) {
    let row = row_at(history, key, height);
    let now = now_secs();
    let shown = row.as_ref().filter(|(_, e, _)| *e == 0 || *e > now).map(|(v, _, _)| v.clone());
    (shown, row)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t01_verified_current_and_historical_reads() {
    // Proves: every write proof verifies; sampled current and historical reads (present, absent,
    // deleted, expired keys; recent heights from the ring and old ones rebuilt by replay) return
    // the model's row with proofs that verify in the client and, saved by the CLI, in
    // `ledger verify`; HistoricalRead agrees; tampered files and invalid arguments are refused.
    let dir = temp_dir("verified");
    let server = ServerProcess::start(&dir.path().join("data"), &["--cores", "1"]);
    let client = connect(&server.addr).await;
    let (ns, vault) = create_scope(&client, "verified").await;

    let mut tasks = Vec::new();
    for id in 0..WRITERS {
        tasks.push(tokio::spawn(writer(client.clone(), ns, vault, id)));
    }
    let mut history: BTreeMap<String, KeyHistory> = BTreeMap::new();
    for task in tasks {
        history.extend(task.await.unwrap());
    }
    let tip = client.get_tip(ns, Some(vault)).await.unwrap().height;
    assert!(tip > 100, "expected well over 64 blocks for the replay path, got {tip}");

    let genesis =
        match client.call(Request::GetBlock { namespace_id: ns, vault_id: Some(vault), height: 0 }).await {
            Ok(Response::GetBlock { block, .. }) => block.header,
            other => panic!("GetBlock 0: {other:?}"),
        };
    let trusted_genesis = TrustedBlock::of(&genesis);

    // --- client library sample
    let mut rng = StdRng::seed_from_u64(SEED ^ 0xabcdef);
    let mut all_keys: Vec<String> = history.keys().cloned().collect();
    all_keys.push("never:written".into());
    for i in 0..120 {
        let key = &all_keys[rng.gen_range(0..all_keys.len())];
        let at_height = match i % 3 {
            0 => None,
            1 => Some(tip - rng.gen_range(0..20)),
            _ => Some(rng.gen_range(1..=tip)),
        };
        let trusted = if i % 2 == 0 { Some(trusted_genesis) } else { None };
        let options = VerifiedReadOptions { at_height, trusted, consistency: None };
        let read = client.verified_read(ns, Some(vault), key.clone(), options).await.unwrap();
        let height = at_height.unwrap_or(tip);
        assert_eq!(read.block_height, height);
        let (shown, row) = expected(&history, key, height);
        assert_eq!(read.value, shown, "value of {key} at {height}");
        assert_eq!(read.entity.map(|e| (e.value, e.expires_at, e.version)), row, "row of {key} at {height}");
        if let Some(h) = at_height {
            let value = client.historical_read(ns, Some(vault), key.clone(), h).await.unwrap();
            assert_eq!(value, shown, "HistoricalRead of {key} at {h}");
        }
    }

    // --- errors of SPEC §5.1
    let out_of_range = client
        .verified_read(
            ns,
            Some(vault),
            "k",
            VerifiedReadOptions { at_height: Some(tip + 1), ..Default::default() },
        )
        .await;
    match out_of_range {
        Err(ClientError::Status { code: StatusCode::InvalidArgument, message, .. }) => {
            assert!(message.contains("at_height out of range"), "{message}")
        }
        other => panic!("at_height beyond tip: {other:?}"),
    }
    let chain_without_proof = Request::HistoricalRead {
        namespace_id: ns,
        vault_id: Some(vault),
        key: "k".into(),
        at_height: 1,
        include_proof: false,
        include_chain_proof: true,
        trusted_height: Some(0),
    };
    match client.call(chain_without_proof).await {
        Err(ClientError::Status { code: StatusCode::InvalidArgument, .. }) => {}
        other => panic!("include_chain_proof without include_proof: {other:?}"),
    }
    let trusted_not_below = Request::VerifiedRead {
        namespace_id: ns,
        vault_id: Some(vault),
        key: "k".into(),
        at_height: Some(5),
        include_chain_proof: true,
        trusted_height: Some(5),
        consistency: None,
    };
    match client.call(trusted_not_below).await {
        Err(ClientError::Status { code: StatusCode::InvalidArgument, .. }) => {}
        other => panic!("trusted_height not below the height: {other:?}"),
    }

    // --- CLI sample: save, verify offline, compare with the model
    let ns_s = ns.to_string();
    let vault_s = vault.to_string();
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let mut present_file = None;
    for i in 0..10 {
        let key = all_keys[rng.gen_range(0..all_keys.len())].clone();
        let height = if i % 2 == 0 { rng.gen_range(1..=tip) } else { tip };
        let height_s = height.to_string();
        let mut args = vec!["--json", "get", "--verify", "--namespace", &ns_s, "--vault", &vault_s, &key];
        if i % 2 == 0 {
            args.extend(["--at-height", &height_s, "--trusted-height", "0"]);
        }
        let (code, stdout, stderr) = ledger_cli(&server.addr, &args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        let doc: Value = serde_json::from_str(stdout.trim()).unwrap();
        let (shown, row) = expected(&history, &key, height);
        assert_eq!(
            doc["value"],
            shown.map(|v| Value::from(hex(&v))).unwrap_or(Value::Null),
            "{key}@{height}"
        );
        assert_eq!(doc["entity"].is_null(), row.is_none());
        let path = files.join(format!("read-{i}.json"));
        std::fs::write(&path, stdout.trim()).unwrap();
        let (code, out, err) = ledger_cli(&server.addr, &["verify", path.to_str().unwrap()]);
        assert_eq!((code, out.trim()), (0, "ok"), "verify {key}@{height}: {err}");
        if row.is_some() && present_file.is_none() {
            present_file = Some(doc);
        }
    }

    // A tampered value or version is rejected offline.
    let doc = present_file.expect("the sample holds a present key");
    for (field, change) in [("value", "entity_value"), ("version", "version")] {
        let mut bad = doc.clone();
        match change {
            "entity_value" => {
                bad["entity"]["value"] = Value::from("ff");
                bad["value"] = Value::from("ff");
            }
            _ => bad["entity"]["version"] = Value::from(bad["entity"]["version"].as_u64().unwrap() + 1),
        }
        let path = files.join(format!("tampered-{field}.json"));
        std::fs::write(&path, bad.to_string()).unwrap();
        let (code, _, err) = ledger_cli(&server.addr, &["verify", path.to_str().unwrap()]);
        assert_eq!(code, 1, "tampered {field} accepted");
        assert!(err.contains("verification failed"), "{err}");
    }

    // A block range verifies offline; a tampered transaction breaks its tx_merkle_root.
    let to = tip.min(300).to_string();
    let (code, stdout, stderr) =
        ledger_cli(&server.addr, &["--json", "blocks", "--namespace", &ns_s, "--vault", &vault_s, "0", &to]);
    assert_eq!(code, 0, "{stderr}");
    let blocks_path = files.join("blocks.json");
    std::fs::write(&blocks_path, stdout.trim()).unwrap();
    let (code, out, err) = ledger_cli(&server.addr, &["verify", blocks_path.to_str().unwrap()]);
    assert_eq!((code, out.trim()), (0, "ok"), "{err}");
    let mut bad: Value = serde_json::from_str(stdout.trim()).unwrap();
    bad["blocks"][3]["transactions"][0]["sequence"] = Value::from(999_999);
    std::fs::write(&blocks_path, bad.to_string()).unwrap();
    let (code, _, err) = ledger_cli(&server.addr, &["verify", blocks_path.to_str().unwrap()]);
    assert_eq!(code, 1, "tampered block accepted");
    assert!(err.contains("tx_merkle_root"), "{err}");

    assert_eq!(server.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t02_recent_history_costs_about_a_current_read() {
    // Proves (and prints, for the design note) that a verified read 10 blocks below the tip,
    // served from the history ring, costs about what a verified read of the current state
    // costs end to end; also prints the cost of a height rebuilt by replay (first and LRU hit).
    let dir = temp_dir("verified-cost");
    let server = ServerProcess::start(&dir.path().join("data"), &["--cores", "1"]);
    let client = connect(&server.addr).await;
    let (ns, vault) = create_scope(&client, "verified-cost").await;
    let mut session = WriteSession::new(client.clone(), ns, Some(vault)).with_rng_seed(SEED);
    for block in 0..200u32 {
        let ops = (0..20u32)
            .map(|j| Operation::SetEntity {
                key: format!("k{}", (block * 37 + j * 101) % 2000),
                value: block.to_le_bytes().to_vec(),
                expires_at: None,
                condition: None,
            })
            .collect();
        session.write(ops).await.unwrap();
    }
    let tip = client.get_tip(ns, Some(vault)).await.unwrap().height;
    let eventual = Some(ledger_core::types::ReadConsistency::Eventual);
    let rounds = 400u32;
    let timed = |at_height: Option<u64>| {
        let client = client.clone();
        async move {
            let start = std::time::Instant::now();
            for i in 0..rounds {
                let options = VerifiedReadOptions { at_height, trusted: None, consistency: eventual };
                client.verified_read(ns, Some(vault), format!("k{}", (i * 7) % 2000), options).await.unwrap();
            }
            start.elapsed() / rounds
        }
    };
    // Warm up the connection and caches.
    timed(None).await;
    let current = timed(None).await;
    let recent = timed(Some(tip - 10)).await;
    let start = std::time::Instant::now();
    let options = VerifiedReadOptions { at_height: Some(tip - 150), trusted: None, consistency: eventual };
    client.verified_read(ns, Some(vault), "k1", options).await.unwrap();
    let rebuilt_first = start.elapsed();
    let rebuilt_hit = timed(Some(tip - 150)).await;
    eprintln!(
        "verified read e2e: current {current:?}, recent (tip-10) {recent:?}, \
         rebuilt (tip-150) first {rebuilt_first:?} then {rebuilt_hit:?} per read"
    );
    assert!(
        recent < current * 3 + std::time::Duration::from_micros(500),
        "recent {recent:?} vs current {current:?}"
    );
    assert_eq!(server.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t03_compacted_vault_reads_history_from_its_snapshot() {
    // Proves SPEC §8.7 with §9.5: in a Compacted vault whose bodies below a snapshot at height
    // 120 were deleted, a verified read at height 130 (below the 64-block ring) is rebuilt from
    // the snapshot and verifies with the right row, while height 60 (bodies gone, no earlier
    // snapshot) is FailedPrecondition{HeightUnavailable} naming 120 as the oldest height.
    use ledger_core::types::{RetentionMode, RetentionPolicy};
    use ledger_wire::messages::ErrorDetail;
    let dir = temp_dir("verified-compacted");
    let server =
        ServerProcess::start(&dir.path().join("data"), &["--cores", "1", "--retention-interval-secs", "1"]);
    let client = connect(&server.addr).await;
    let (ns, _) = client.create_namespace("verified-compacted").await.unwrap();
    let policy = RetentionPolicy { mode: RetentionMode::Compacted, retention_blocks: 20 };
    let vault = client.create_vault(ns, Some(policy)).await.unwrap();
    let mut session = WriteSession::new(client.clone(), ns, Some(vault)).with_rng_seed(SEED);
    // One block per write: key `k` holds the height that last wrote it.
    let op = |n: u64| Operation::SetEntity {
        key: "k".into(),
        value: n.to_le_bytes().to_vec(),
        expires_at: None,
        condition: None,
    };
    for n in 1..=120u64 {
        match session.write(vec![op(n)]).await.unwrap() {
            WriteOutcome::Committed { success, .. } => assert_eq!(success.block_height, n),
            other => panic!("{other:?}"),
        }
    }
    match client.call(Request::CreateSnapshot { namespace_id: ns, vault_id: Some(vault) }).await {
        Ok(Response::CreateSnapshot { block_height, .. }) => assert_eq!(block_height, 120),
        other => panic!("CreateSnapshot: {other:?}"),
    }
    for n in 121..=220u64 {
        session.write(vec![op(n)]).await.unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let request = Request::GetBlock { namespace_id: ns, vault_id: Some(vault), height: 100 };
        if let Ok(Response::GetBlock { body_pruned: true, .. }) = client.call(request).await {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "bodies below 120 were not compacted");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let options = VerifiedReadOptions { at_height: Some(130), ..Default::default() };
    let read = client.verified_read(ns, Some(vault), "k", options).await.unwrap();
    assert_eq!(read.value, Some(130u64.to_le_bytes().to_vec()));
    assert_eq!(read.entity.map(|e| e.version), Some(130));
    let options = VerifiedReadOptions { at_height: Some(60), ..Default::default() };
    match client.verified_read(ns, Some(vault), "k", options).await {
        Err(ClientError::Status { code: StatusCode::FailedPrecondition, detail, .. }) => {
            match detail.as_deref() {
                Some(ErrorDetail::HeightUnavailable { requested: 60, oldest_available: 120 }) => {}
                other => panic!("detail {other:?}"),
            }
        }
        other => panic!("height 60 after compaction: {other:?}"),
    }
    assert_eq!(server.stop(), Some(0));
}
