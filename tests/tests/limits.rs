//! The documented limits at their real sizes, over live connections to a real server (SPEC §3.6,
//! §4.2, issue 13): 1 MiB values end to end, transactions of exactly `max_ops_per_tx` operations
//! and one more, request frames just under and just over 16 MiB, a `BatchRead` of 1,000 keys,
//! results too large for any frame (a typed error, never a dead connection), 64 pipelined reads
//! of 1 MiB values on one connection, and `ledger-loadgen` on the workload of the issue, plus its
//! stop when every request fails.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ledger_core::constants::{BATCH_READ_KEYS_MAX, OPS_PER_TX_MAX_DEFAULT, VALUE_BYTES_MAX};
use ledger_core::types::{Operation, ReadConsistency};
use ledger_tests::raw::{frame_bytes, Ending, RawConn};
use ledger_tests::scope::{connect, create_scope, set, tip};
use ledger_tests::{binary, temp_dir, ServerProcess};
use ledger_wire::client::{Client, VerifiedReadOptions, WriteOutcome, WriteSession};
use ledger_wire::codec::archived_len;
use ledger_wire::constants::MAX_FRAME_BYTES_DEFAULT;
use ledger_wire::error::ClientError;
use ledger_wire::frame::FrameKind;
use ledger_wire::messages::{GoawayCode, Request, RequestBatch, RequestEnvelope, Response, StatusCode};

/// One core: the limits are per connection and per request, not per placement.
const SERVER_FLAGS: &[&str] = &["--cores", "1"];

/// The value size of the load generator run: just under 1 MiB.
const LARGE_VALUE_BYTES: usize = 1_048_000;

fn start(tag: &str) -> (tempfile::TempDir, ServerProcess) {
    let dir = temp_dir(tag);
    let server = ServerProcess::start(&dir.path().join("data"), SERVER_FLAGS);
    (dir, server)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// A value of `len` bytes whose content depends on `seed`, so a mix-up between keys shows.
fn value(seed: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seed as usize).wrapping_mul(31).wrapping_add(i) as u8).collect()
}

async fn session(client: &Client, namespace_id: i64, vault_id: i64, id: &str) -> WriteSession {
    WriteSession::new(client.clone(), namespace_id, Some(vault_id)).with_client_id(id).with_rng_seed(13)
}

fn committed(outcome: &WriteOutcome) -> bool {
    matches!(outcome, WriteOutcome::Committed { .. })
}

fn status_code(error: &ClientError) -> Option<StatusCode> {
    match error {
        ClientError::Status { code, .. } => Some(*code),
        _ => None,
    }
}

/// Writes keys `big-{i}` for `i` in `0..count` with `LARGE_VALUE_BYTES` values, several per
/// transaction but well under the frame limit.
async fn write_large_values(writer: &mut WriteSession, count: u64) {
    let per_tx = 8;
    for first in (0..count).step_by(per_tx) {
        let ops: Vec<Operation> = (first..(first + per_tx as u64).min(count))
            .map(|i| set(format!("big-{i}"), value(i, LARGE_VALUE_BYTES)))
            .collect();
        let outcome = writer.write(ops).await.unwrap();
        assert!(committed(&outcome), "{outcome:?}");
    }
}

#[test]
fn t01_one_mib_value_is_written_read_proven_and_listed() {
    // Proves a value of exactly 1 MiB (SPEC §3.6) goes through every path a value takes: the write
    // commits, a read returns it byte for byte, a verified read returns it with a proof the client
    // library checks, a list returns it; and 1 MiB + 1 is refused with InvalidArgument, writing
    // nothing (the tip stays).
    let (_dir, server) = start("limits-t01");
    runtime().block_on(async {
        let client = connect(&server.addr).await;
        let (ns, vault) = create_scope(&client, "limits-t01").await;
        let mut writer = session(&client, ns, vault, "t01").await;
        let big = value(1, VALUE_BYTES_MAX);
        let outcome = writer.write(vec![set("mib", big.clone())]).await.unwrap();
        assert!(committed(&outcome), "{outcome:?}");

        let read = client.read(ns, Some(vault), "mib").await.unwrap();
        assert_eq!(read.as_deref().map(<[u8]>::len), Some(VALUE_BYTES_MAX));
        assert!(read.as_deref() == Some(&big[..]), "read returned other bytes");

        let verified =
            client.verified_read(ns, Some(vault), "mib", VerifiedReadOptions::default()).await.unwrap();
        assert!(verified.value.as_deref() == Some(&big[..]), "verified read returned other bytes");

        let list = Request::ListEntities {
            namespace_id: ns,
            vault_id: Some(vault),
            key_prefix: "mib".into(),
            at_height: None,
            include_expired: false,
            limit: 0,
            page_token: String::new(),
            consistency: ReadConsistency::Eventual,
        };
        let Response::ListEntities { entities, .. } = client.call(list).await.unwrap() else { panic!() };
        assert_eq!(entities.len(), 1);
        assert!(entities[0].value == big, "list returned other bytes");

        let before = tip(&client, ns, Some(vault)).await;
        let e = writer.write(vec![set("over", value(2, VALUE_BYTES_MAX + 1))]).await.unwrap_err();
        assert_eq!(status_code(&e), Some(StatusCode::InvalidArgument), "{e:?}");
        assert_eq!(tip(&client, ns, Some(vault)).await, before);
        assert_eq!(client.read(ns, Some(vault), "over").await.unwrap(), None);
    });
    server.stop();
}

#[test]
fn t02_transaction_of_max_ops_commits_and_one_more_is_refused() {
    // Proves the operations-per-transaction limit at its real default (SPEC §3.6): a Write of
    // exactly 10,000 operations commits as one block with every key readable; one of 10,001 is
    // refused with InvalidArgument and writes nothing (tip unchanged, its keys absent).
    let (_dir, server) = start("limits-t02");
    runtime().block_on(async {
        let client = connect(&server.addr).await;
        let (ns, vault) = create_scope(&client, "limits-t02").await;
        let mut writer = session(&client, ns, vault, "t02").await;
        let ops = |prefix: &str, n: usize| -> Vec<Operation> {
            (0..n).map(|i| set(format!("{prefix}-{i:05}"), i.to_le_bytes().to_vec())).collect()
        };
        let before = tip(&client, ns, Some(vault)).await;
        let outcome = writer.write(ops("ok", OPS_PER_TX_MAX_DEFAULT)).await.unwrap();
        let WriteOutcome::Committed { success, .. } = outcome else { panic!("{outcome:?}") };
        assert_eq!(success.block_height, before.height + 1);
        assert_eq!(success.statuses.concat().len(), OPS_PER_TX_MAX_DEFAULT);
        let last = format!("ok-{:05}", OPS_PER_TX_MAX_DEFAULT - 1);
        assert!(client.read(ns, Some(vault), last).await.unwrap().is_some());

        let after = tip(&client, ns, Some(vault)).await;
        let e = writer.write(ops("no", OPS_PER_TX_MAX_DEFAULT + 1)).await.unwrap_err();
        assert_eq!(status_code(&e), Some(StatusCode::InvalidArgument), "{e:?}");
        assert_eq!(tip(&client, ns, Some(vault)).await, after);
        assert_eq!(client.read(ns, Some(vault), "no-00000").await.unwrap(), None);
    });
    server.stop();
}

/// A `Write` of 17 values (each within the 1 MiB limit) whose `RequestBatch` (one envelope, as the client sends it alone)
/// archives to the largest size not above `payload_len_max` that the layout allows (rkyv pads
/// the operation array to 8 bytes, so not every length is reachable), with that size.
fn write_of_size(ns: i64, vault: i64, sequence: u64, payload_len_max: usize) -> (Request, usize) {
    let build = |last_len: usize| {
        let mut operations: Vec<Operation> =
            (0..16).map(|i| set(format!("frame-{i:02}"), value(i, VALUE_BYTES_MAX - 8192))).collect();
        operations.push(set("frame-16", value(16, last_len)));
        Request::Write {
            namespace_id: ns,
            vault_id: Some(vault),
            client_id: "t03".into(),
            sequence,
            operations,
            include_tx_proof: false,
        }
    };
    let len_of = |request: &Request| {
        let request = request.clone();
        archived_len(&RequestBatch {
            items: vec![RequestEnvelope { request_id: 1, deadline_ms: 1, on_behalf_of: None, request }],
        })
        .unwrap()
    };
    let base = 1000;
    let mut last_len = base + payload_len_max - len_of(&build(base)) + 16;
    loop {
        let request = build(last_len);
        let len = len_of(&request);
        if len <= payload_len_max {
            assert!(payload_len_max - len < 16, "no request of about {payload_len_max} bytes");
            return (request, len);
        }
        last_len -= 1;
    }
}

#[test]
fn t03_request_frames_just_under_and_just_over_the_frame_limit() {
    // Proves the 16 MiB frame limit (SPEC §3.6, §4.2) at its size: a request frame 64–80 bytes
    // under it is accepted and commits; the client refuses to send one up to 8 bytes over it
    // (RequestTooLarge)
    // and its connection keeps working; a raw frame announcing max + 1 earns
    // Goaway{FrameTooLarge} on its own connection only. The block holding the ~16 MiB
    // transaction cannot fit a response frame: GetBlock answers InvalidArgument saying so, and the
    // connection still serves the next request.
    let (_dir, server) = start("limits-t03");
    runtime().block_on(async {
        let client = connect(&server.addr).await;
        assert_eq!(client.hello_ack().max_frame_bytes, MAX_FRAME_BYTES_DEFAULT);
        let (ns, vault) = create_scope(&client, "limits-t03").await;
        let max = MAX_FRAME_BYTES_DEFAULT as usize;

        let (over, over_len) = write_of_size(ns, vault, 1, max + 8);
        assert!(over_len > max);
        let e = client.call(over).await.unwrap_err();
        assert!(matches!(e, ClientError::RequestTooLarge { len, .. } if len == over_len), "{e:?}");
        assert!(client.closed_reason().is_none());

        let (under, under_len) = write_of_size(ns, vault, 1, max - 64);
        assert!(under_len > max - 80);
        let response = client.call(under).await.unwrap();
        let Response::Write(ledger_wire::messages::WriteResult::Success(success)) = response else {
            panic!("{response:?}")
        };
        let read = client.read(ns, Some(vault), "frame-00").await.unwrap();
        assert!(read == Some(value(0, VALUE_BYTES_MAX - 8192)), "read returned other bytes");

        let mut raw = RawConn::connect_with_hello(&server.addr).0;
        let mut frame = frame_bytes(FrameKind::RequestBatch, &[0u8; 64 * 1024]);
        frame[8..12].copy_from_slice(&(MAX_FRAME_BYTES_DEFAULT + 1).to_le_bytes());
        let _ = raw.send(&frame);
        match raw.ending() {
            Ending::Goaway(goaway) => assert_eq!(goaway.code, GoawayCode::FrameTooLarge, "{goaway:?}"),
            Ending::Closed => panic!("closed without Goaway{{FrameTooLarge}}"),
        }

        let block =
            Request::GetBlock { namespace_id: ns, vault_id: Some(vault), height: success.block_height };
        let e = client.call(block).await.unwrap_err();
        assert_eq!(status_code(&e), Some(StatusCode::InvalidArgument), "{e:?}");
        assert!(e.to_string().contains("max_frame_bytes"), "{e}");
        assert!(client.closed_reason().is_none());
        assert!(client.read(ns, Some(vault), "frame-16").await.unwrap().is_some());
    });
    server.stop();
}

#[test]
fn t04_batch_read_of_1000_keys_and_a_result_too_large_for_a_frame() {
    // Proves a BatchRead of exactly 1,000 keys (SPEC §3.6) answers every key in order, 1,001 keys
    // are refused with InvalidArgument, and a BatchRead whose result (40 values of ~1 MiB) cannot
    // fit in one frame gets InvalidArgument naming max_frame_bytes, on a connection that stays
    // usable (issue 13: never a dead connection).
    let (_dir, server) = start("limits-t04");
    runtime().block_on(async {
        let client = connect(&server.addr).await;
        let (ns, vault) = create_scope(&client, "limits-t04").await;
        let mut writer = session(&client, ns, vault, "t04").await;
        let ops = (0..BATCH_READ_KEYS_MAX).map(|i| set(format!("k-{i:04}"), format!("v{i}"))).collect();
        assert!(committed(&writer.write(ops).await.unwrap()));
        let keys: Vec<String> = (0..BATCH_READ_KEYS_MAX).rev().map(|i| format!("k-{i:04}")).collect();
        let results =
            client.batch_read(ns, Some(vault), keys.clone(), ReadConsistency::Eventual).await.unwrap();
        assert_eq!(results.len(), BATCH_READ_KEYS_MAX);
        for (result, key) in results.iter().zip(&keys) {
            assert_eq!(&result.key, key);
            assert!(result.found);
            assert_eq!(
                result.value.as_deref(),
                Some(format!("v{}", &key[2..].parse::<usize>().unwrap()).as_bytes())
            );
        }
        let mut too_many = keys.clone();
        too_many.push("k-extra".into());
        let e = client.batch_read(ns, Some(vault), too_many, ReadConsistency::Eventual).await.unwrap_err();
        assert_eq!(status_code(&e), Some(StatusCode::InvalidArgument), "{e:?}");

        write_large_values(&mut writer, 40).await;
        let big_keys: Vec<String> = (0..40).map(|i| format!("big-{i}")).collect();
        let e = client
            .batch_read(ns, Some(vault), big_keys.clone(), ReadConsistency::Eventual)
            .await
            .unwrap_err();
        assert_eq!(status_code(&e), Some(StatusCode::InvalidArgument), "{e:?}");
        assert!(e.to_string().contains("max_frame_bytes"), "{e}");
        assert!(client.closed_reason().is_none());
        // Ten of them fit: the same connection answers.
        let fits =
            client.batch_read(ns, Some(vault), big_keys[..10].to_vec(), ReadConsistency::Eventual).await;
        assert_eq!(fits.unwrap().len(), 10);
    });
    server.stop();
}

#[test]
fn t05_sixty_four_pipelined_reads_of_1_mib_values_on_one_connection() {
    // Proves the failure is gone: 64 reads of ~1 MiB values in flight at once on one
    // connection (64 MiB of replies, four times the frame limit) are all answered with the right
    // bytes, because the server ends each response frame before it would cross max_frame_bytes;
    // the connection is still open afterwards. Then a list over those keys returns them in pages
    // that fit a frame (a page stops early, with a page token) and together cover every key.
    let (_dir, server) = start("limits-t05");
    runtime().block_on(async {
        let client = connect(&server.addr).await;
        let (ns, vault) = create_scope(&client, "limits-t05").await;
        let mut writer = session(&client, ns, vault, "t05").await;
        write_large_values(&mut writer, 40).await;
        let reads = (0..64u64).map(|i| {
            let client = client.clone();
            async move { (i % 40, client.read(ns, Some(vault), format!("big-{}", i % 40)).await) }
        });
        let results = futures_join_all(reads).await;
        assert_eq!(results.len(), 64);
        for (key, result) in results {
            let read = result.unwrap_or_else(|e| panic!("read of big-{key} failed: {e}"));
            assert!(read == Some(value(key, LARGE_VALUE_BYTES)), "big-{key} returned other bytes");
        }
        assert!(client.closed_reason().is_none());

        let mut token = String::new();
        let mut seen = 0;
        let mut pages = 0;
        loop {
            let list = Request::ListEntities {
                namespace_id: ns,
                vault_id: Some(vault),
                key_prefix: "big-".into(),
                at_height: None,
                include_expired: false,
                limit: 1000,
                page_token: token.clone(),
                consistency: ReadConsistency::Eventual,
            };
            let Response::ListEntities { entities, next_page_token, .. } = client.call(list).await.unwrap()
            else {
                panic!()
            };
            seen += entities.len();
            pages += 1;
            if next_page_token.is_empty() {
                break;
            }
            token = next_page_token;
        }
        assert_eq!(seen, 40);
        assert!(pages >= 5, "40 values of ~1 MiB in {pages} pages");
    });
    server.stop();
}

/// Awaits every future, concurrently, in order (the tests crate has no `futures` dependency).
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[test]
fn t06_loadgen_reads_1_mib_values_with_deep_pipelining_without_errors() {
    // Proves the reproduction now succeeds: `ledger-loadgen --connections 1 --pipeline 64
    // --mix read=100 --value-size 1048000 --key-space 40` completes with reads counted and zero
    // errors (before the fix every read failed from --pipeline 24 up).
    let (_dir, server) = start("limits-t06");
    let output = Command::new(binary("ledger-loadgen"))
        .args(["--addr", &server.addr, "--connections", "1", "--pipeline", "64", "--mix", "read=100"])
        .args(["--value-size", "1048000", "--key-space", "40", "--duration", "2s", "--warmup", "0s"])
        .args(["--report", "json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "loadgen failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let read = &report["ops"]["read"];
    assert!(read["count"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(read["errors_total"].as_u64(), Some(0), "{report}");
    assert!(!stderr.contains("lost"), "a connection was lost: {stderr}");
    server.stop();
}

#[test]
fn t07_loadgen_stops_with_a_clear_message_when_every_request_fails() {
    // Proves `ledger-loadgen` against a server that dies mid-run reports the lost connection
    // once per connection (with its cause), backs off instead of spinning, and stops on its own
    // with a message saying every request failed, long before its 120 s duration.
    let (_dir, server) = start("limits-t07");
    let mut loadgen = Command::new(binary("ledger-loadgen"))
        .args(["--addr", &server.addr, "--connections", "2", "--pipeline", "8", "--mix", "read=100"])
        .args(["--key-space", "100", "--duration", "120s", "--warmup", "0s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(loadgen.stderr.take().unwrap()).lines();
    let mut stderr = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        stderr.push_str(&line);
        stderr.push('\n');
        if line.contains("worker(s) running") {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    server.kill9();
    for line in lines {
        stderr.push_str(&line.unwrap());
        stderr.push('\n');
    }
    let status = loadgen.wait().unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(killed.elapsed() < Duration::from_secs(60), "loadgen ran on for {:?}", killed.elapsed());
    assert!(stderr.contains("every request failed"), "{stderr}");
    // Each loss is reported once. The OS may hand the freed port to another test's server in
    // this process meanwhile (every test binds port 0): a reconnect that lands there is one more
    // connection, lost again when that server goes. Hence up to two losses per connection.
    let lost = stderr.lines().filter(|l| l.contains(" lost: ")).count();
    assert!((1..=4).contains(&lost), "lost reported {lost} times:\n{stderr}");
    assert!(stderr.lines().count() < 20, "too chatty:\n{stderr}");
}
