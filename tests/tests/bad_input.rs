//! Malformed and invalid input against a real server: broken frames over raw TCP sockets (each
//! must earn the Goaway code of docs/protocol.md §2 and affect only its own connection), and
//! invalid requests through the client library (each must get its typed error and leave every
//! scope's tip, height and state root, unchanged).
#![allow(clippy::unwrap_used)]

use ledger_core::types::{Operation, SetCondition, WriteErrorCode};
use ledger_tests::raw::{frame_bytes, hello_frame, Ending, RawConn};
use ledger_tests::scope::{connect, create_scope, set, tip, ScopeTip};
use ledger_tests::{temp_dir, ServerProcess};
use ledger_wire::client::Client;
use ledger_wire::codec::encode_frame_to_vec;
use ledger_wire::error::ClientError;
use ledger_wire::frame::FrameKind;
use ledger_wire::messages::{
    GoawayCode, Ping, Request, RequestBatch, RequestEnvelope, Response, ResponseBatch, StatusCode,
    WriteResult,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// One core: these tests exercise the connection layer, not placement.
const SERVER_FLAGS: &[&str] = &["--cores", "1"];

fn start(tag: &str) -> (tempfile::TempDir, ServerProcess) {
    let dir = temp_dir(tag);
    let server = ServerProcess::start(&dir.path().join("data"), SERVER_FLAGS);
    (dir, server)
}

/// A fresh client connection can still write and read back: the bad connection hurt nobody else.
async fn still_serving(addr: &str, tag: &str) {
    let client = connect(addr).await;
    let (namespace_id, vault_id) = create_scope(&client, tag).await;
    let mut session = ledger_wire::client::WriteSession::new(client.clone(), namespace_id, Some(vault_id))
        .with_client_id(format!("probe-{tag}"))
        .with_rng_seed(7);
    let outcome = session.write(vec![set("probe", tag.as_bytes().to_vec())]).await.expect("probe write");
    assert!(matches!(outcome, ledger_wire::client::WriteOutcome::Committed { .. }), "{outcome:?}");
    let value = client.read(namespace_id, Some(vault_id), "probe").await.expect("probe read");
    assert_eq!(value.as_deref(), Some(tag.as_bytes()));
}

fn still_serving_blocking(addr: &str, tag: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(still_serving(addr, tag));
}

fn expect_goaway(ending: Ending, code: GoawayCode) {
    match ending {
        Ending::Goaway(goaway) => assert_eq!(goaway.code, code, "wrong Goaway: {goaway:?}"),
        Ending::Closed => panic!("connection closed without Goaway (expected {code:?})"),
    }
}

/// A valid `Hello` frame with one header byte replaced.
fn hello_with_byte(offset: usize, byte: u8) -> Vec<u8> {
    let mut frame = hello_frame(1);
    frame[offset] = byte;
    frame
}

#[test]
fn t01_first_frame_not_hello_is_protocol_error() {
    // Proves a connection whose first frame is a well-formed Ping (not Hello) gets
    // Goaway{ProtocolError} and is closed, and a separate connection then works.
    let (_dir, server) = start("bad-t01");
    let mut conn = RawConn::connect(&server.addr);
    let ping = ledger_wire::codec::encode_frame_to_vec(FrameKind::Ping, &Ping { nonce: 7 }).unwrap();
    conn.send(&ping).unwrap();
    expect_goaway(conn.ending(), GoawayCode::ProtocolError);
    still_serving_blocking(&server.addr, "t01");
    server.stop();
}

#[test]
fn t02_bad_magic_is_protocol_error() {
    // Proves a header whose magic is not "LDGR" earns Goaway{ProtocolError}.
    let (_dir, server) = start("bad-t02");
    let mut conn = RawConn::connect(&server.addr);
    conn.send(&hello_with_byte(0, b'X')).unwrap();
    expect_goaway(conn.ending(), GoawayCode::ProtocolError);
    still_serving_blocking(&server.addr, "t02");
    server.stop();
}

#[test]
fn t03_wrong_header_version_is_unsupported_version() {
    // Proves a header carrying protocol version 2 earns Goaway{UnsupportedVersion}.
    let (_dir, server) = start("bad-t03");
    let mut conn = RawConn::connect(&server.addr);
    conn.send(&hello_with_byte(4, 2)).unwrap();
    expect_goaway(conn.ending(), GoawayCode::UnsupportedVersion);
    still_serving_blocking(&server.addr, "t03");
    server.stop();
}

#[test]
fn t04_nonzero_flags_and_unknown_kind_are_protocol_errors() {
    // Proves nonzero header flags, and an unknown frame kind, each earn Goaway{ProtocolError}.
    let (_dir, server) = start("bad-t04");
    let mut conn = RawConn::connect(&server.addr);
    conn.send(&hello_with_byte(7, 0x01)).unwrap();
    expect_goaway(conn.ending(), GoawayCode::ProtocolError);
    let mut conn = RawConn::connect(&server.addr);
    conn.send(&hello_with_byte(6, 42)).unwrap();
    expect_goaway(conn.ending(), GoawayCode::ProtocolError);
    still_serving_blocking(&server.addr, "t04");
    server.stop();
}

#[test]
fn t05_bad_checksum_is_corrupt() {
    // Proves a frame whose payload does not match the header checksum earns Goaway{Corrupt},
    // both as the first frame and after a completed handshake.
    let (_dir, server) = start("bad-t05");
    let mut conn = RawConn::connect(&server.addr);
    let mut hello = hello_frame(1);
    let last = hello.len() - 1;
    hello[last] ^= 0x55;
    conn.send(&hello).unwrap();
    expect_goaway(conn.ending(), GoawayCode::Corrupt);

    let (mut conn, _ack) = RawConn::connect_with_hello(&server.addr);
    let mut ping = ledger_wire::codec::encode_frame_to_vec(FrameKind::Ping, &Ping { nonce: 9 }).unwrap();
    ping[12] ^= 0xff;
    conn.send(&ping).unwrap();
    expect_goaway(conn.ending(), GoawayCode::Corrupt);
    still_serving_blocking(&server.addr, "t05");
    server.stop();
}

#[test]
fn t06_oversized_frame_length_is_frame_too_large() {
    // Proves a header announcing max_frame_bytes + 1 (the server's own limit from HelloAck) earns
    // Goaway{FrameTooLarge} before any payload is sent, i.e. the length is checked before the
    // payload is buffered.
    let (_dir, server) = start("bad-t06");
    let (mut conn, ack) = RawConn::connect_with_hello(&server.addr);
    let mut header = frame_bytes(FrameKind::RequestBatch, b"");
    header[8..12].copy_from_slice(&(ack.max_frame_bytes + 1).to_le_bytes());
    conn.send(&header).unwrap();
    expect_goaway(conn.ending(), GoawayCode::FrameTooLarge);
    still_serving_blocking(&server.addr, "t06");
    server.stop();
}

#[test]
fn t07_truncated_frame_then_close_is_protocol_error() {
    // Proves a stream that ends inside a frame (header promises 64 bytes, 10 arrive, then the
    // client half-closes) earns Goaway{ProtocolError} on the still-open direction.
    let (_dir, server) = start("bad-t07");
    let (mut conn, _ack) = RawConn::connect_with_hello(&server.addr);
    let frame = frame_bytes(FrameKind::RequestBatch, &[0u8; 64]);
    conn.send(&frame[..16 + 10]).unwrap();
    conn.shutdown_write();
    expect_goaway(conn.ending(), GoawayCode::ProtocolError);
    still_serving_blocking(&server.addr, "t07");
    server.stop();
}

#[test]
fn t08_garbage_payload_with_valid_header_is_protocol_error() {
    // Proves a frame with a correct header and checksum but a payload that is not a valid rkyv
    // archive earns Goaway{ProtocolError}: as the first (Hello) frame, and as a RequestBatch.
    let (_dir, server) = start("bad-t08");
    let garbage: Vec<u8> = (0u8..48).map(|i| i.wrapping_mul(37).wrapping_add(0x80)).collect();
    let mut conn = RawConn::connect(&server.addr);
    conn.send(&frame_bytes(FrameKind::Hello, &garbage)).unwrap();
    expect_goaway(conn.ending(), GoawayCode::ProtocolError);

    let (mut conn, _ack) = RawConn::connect_with_hello(&server.addr);
    conn.send(&frame_bytes(FrameKind::RequestBatch, &garbage)).unwrap();
    expect_goaway(conn.ending(), GoawayCode::ProtocolError);
    still_serving_blocking(&server.addr, "t08");
    server.stop();
}

#[test]
fn t09_hello_with_protocol_version_2_is_unsupported_version() {
    // Proves a valid v1 frame carrying `Hello { protocol_version: 2 }` earns
    // Goaway{UnsupportedVersion} instead of a HelloAck.
    let (_dir, server) = start("bad-t09");
    let mut conn = RawConn::connect(&server.addr);
    conn.send(&hello_frame(2)).unwrap();
    expect_goaway(conn.ending(), GoawayCode::UnsupportedVersion);
    still_serving_blocking(&server.addr, "t09");
    server.stop();
}

// ---------------------------------------------------------------------------------------------
// Invalid requests through the client library.

/// The scopes whose tips must not move, and their tips now.
struct Snapshot {
    scopes: Vec<(i64, Option<i64>)>,
    tips: Vec<ScopeTip>,
}

impl Snapshot {
    async fn take(client: &Client, scopes: &[(i64, Option<i64>)]) -> Snapshot {
        let mut tips = Vec::new();
        for (namespace_id, vault_id) in scopes {
            tips.push(tip(client, *namespace_id, *vault_id).await);
        }
        Snapshot { scopes: scopes.to_vec(), tips }
    }

    /// Every tip (height, hash, state root) is as it was.
    async fn unchanged(&self, client: &Client, case: &str) {
        let now = Snapshot::take(client, &self.scopes).await;
        assert_eq!(now.tips, self.tips, "{case}: a rejected request changed state");
    }
}

fn write_req(
    namespace_id: i64,
    vault_id: Option<i64>,
    client_id: &str,
    sequence: u64,
    ops: Vec<Operation>,
) -> Request {
    Request::Write {
        namespace_id,
        vault_id,
        client_id: client_id.to_string(),
        sequence,
        operations: ops,
        include_tx_proof: false,
    }
}

/// The request fails with a transport `Status` of `code`.
async fn expect_status(client: &Client, request: Request, code: StatusCode, case: &str) -> String {
    match client.call(request).await {
        Err(ClientError::Status { code: got, message, .. }) => {
            assert_eq!(got, code, "{case}: wrong status ({message})");
            message
        }
        other => panic!("{case}: expected Status {code:?}, got {other:?}"),
    }
}

/// Sets up a server, a namespace with two vaults and a second namespace; returns the scopes.
async fn invalid_request_fixture(
    tag: &str,
) -> (tempfile::TempDir, ServerProcess, Client, i64, i64, i64, i64) {
    let (dir, server) = start(tag);
    let client = connect(&server.addr).await;
    let (ns, vault) = create_scope(&client, &format!("{tag}-a")).await;
    let (other_ns, other_vault) = create_scope(&client, &format!("{tag}-b")).await;
    // One committed write so that the tips are not genesis.
    let result = client.write(ns, Some(vault), "seed", 1, vec![set("k", b"v".to_vec())]).await.unwrap();
    assert!(matches!(result, WriteResult::Success(_)), "{result:?}");
    (dir, server, client, ns, vault, other_ns, other_vault)
}

#[tokio::test]
async fn t10_entity_limits_are_invalid_argument() {
    // Proves the entity limits of SPEC §3.6: a 1025-byte key and a 1 MiB + 1 value are each
    // InvalidArgument with no state change, while exactly 1024 bytes / 1 MiB are accepted (the
    // frame limit of 16 MiB is not what rejects the value).
    let (_dir, server, client, ns, vault, ..) = invalid_request_fixture("bad-t10").await;
    let snapshot = Snapshot::take(&client, &[(ns, None), (ns, Some(vault))]).await;
    let long_key = "k".repeat(1025);
    let request = write_req(ns, Some(vault), "w", 1, vec![set(long_key, b"v".to_vec())]);
    expect_status(&client, request, StatusCode::InvalidArgument, "1025-byte key").await;
    snapshot.unchanged(&client, "1025-byte key").await;
    let request = write_req(ns, Some(vault), "w", 1, vec![set("big", vec![7u8; 1024 * 1024 + 1])]);
    expect_status(&client, request, StatusCode::InvalidArgument, "1 MiB + 1 value").await;
    snapshot.unchanged(&client, "1 MiB + 1 value").await;
    let request = write_req(ns, Some(vault), "w", 1, vec![set("", b"v".to_vec())]);
    expect_status(&client, request, StatusCode::InvalidArgument, "empty key").await;
    snapshot.unchanged(&client, "empty key").await;

    // The boundaries themselves are fine, and the rejected attempts consumed no sequence.
    let ops = vec![set("k".repeat(1024), b"v".to_vec()), set("big", vec![7u8; 1024 * 1024])];
    let result = client.write(ns, Some(vault), "w", 1, ops).await.unwrap();
    assert!(matches!(result, WriteResult::Success(_)), "{result:?}");
    let value = client.read(ns, Some(vault), "big").await.unwrap().unwrap();
    assert_eq!(value.len(), 1024 * 1024);
    drop(client);
    server.stop();
}

#[tokio::test]
async fn t11_relationship_validation() {
    // Proves every malformed tuple of SPEC §3.4 is InvalidArgument, and a relationship op in a
    // namespace scope is InvalidArgument, all without a state change.
    let (_dir, server, client, ns, vault, ..) = invalid_request_fixture("bad-t11").await;
    let snapshot = Snapshot::take(&client, &[(ns, None), (ns, Some(vault))]).await;
    let create = |resource: &str, relation: &str, subject: &str| Operation::CreateRelationship {
        resource: resource.to_string(),
        relation: relation.to_string(),
        subject: subject.to_string(),
    };
    let long = format!("doc:{}", "x".repeat(509));
    let cases = [
        ("resource without ':'", create("doc1", "viewer", "user:1")),
        ("subject without ':'", create("doc:1", "viewer", "user1")),
        ("resource with '#'", create("doc:1#a", "viewer", "user:1")),
        ("resource with '@'", create("doc:1@a", "viewer", "user:1")),
        ("subject with '@'", create("doc:1", "viewer", "user:1@x")),
        ("subject with two '#'", create("doc:1", "viewer", "group:1#a#b")),
        ("empty relation", create("doc:1", "", "user:1")),
        ("relation with ':'", create("doc:1", "vi:ewer", "user:1")),
        ("relation with '#'", create("doc:1", "vi#ewer", "user:1")),
        ("65-byte relation", create("doc:1", &"r".repeat(65), "user:1")),
        ("513-byte resource", create(&long, "viewer", "user:1")),
        (
            "delete with bad syntax",
            Operation::DeleteRelationship {
                resource: "doc1".to_string(),
                relation: "viewer".to_string(),
                subject: "user:1".to_string(),
            },
        ),
    ];
    for (case, op) in cases {
        let request = write_req(ns, Some(vault), "w", 1, vec![op]);
        expect_status(&client, request, StatusCode::InvalidArgument, case).await;
        snapshot.unchanged(&client, case).await;
    }
    let request = write_req(ns, None, "w", 1, vec![create("doc:1", "viewer", "user:1")]);
    expect_status(&client, request, StatusCode::InvalidArgument, "relationship in namespace scope").await;
    snapshot.unchanged(&client, "relationship in namespace scope").await;
    drop(client);
    server.stop();
}

#[tokio::test]
async fn t12_reserved_key_and_gc_only_operation() {
    // Proves a `_meta:` key is PermissionDenied (vault and namespace scope) and ExpireEntity from
    // a client is InvalidArgument, without a state change.
    let (_dir, server, client, ns, vault, ..) = invalid_request_fixture("bad-t12").await;
    let snapshot = Snapshot::take(&client, &[(ns, None), (ns, Some(vault))]).await;
    for scope in [Some(vault), None] {
        let request = write_req(ns, scope, "w", 1, vec![set("_meta:counter", b"1".to_vec())]);
        expect_status(&client, request, StatusCode::PermissionDenied, "_meta: key").await;
        snapshot.unchanged(&client, "_meta: key").await;
    }
    let expire = Operation::ExpireEntity { key: "k".to_string(), expired_at: 1 };
    let request = write_req(ns, Some(vault), "w", 1, vec![expire]);
    expect_status(&client, request, StatusCode::InvalidArgument, "ExpireEntity from a client").await;
    snapshot.unchanged(&client, "ExpireEntity from a client").await;
    drop(client);
    server.stop();
}

#[tokio::test]
async fn t13_sequence_zero_empty_operations_and_bad_client_id() {
    // Proves sequence 0, a Write with no operations, a BatchWrite with no groups or only empty
    // groups, and an empty or 257-byte client id are each InvalidArgument with no state change.
    let (_dir, server, client, ns, vault, ..) = invalid_request_fixture("bad-t13").await;
    let snapshot = Snapshot::take(&client, &[(ns, None), (ns, Some(vault))]).await;
    let batch = |groups: Vec<Vec<Operation>>| Request::BatchWrite {
        namespace_id: ns,
        vault_id: Some(vault),
        client_id: "w".to_string(),
        sequence: 1,
        groups,
        include_tx_proof: false,
    };
    let cases = [
        ("sequence 0", write_req(ns, Some(vault), "w", 0, vec![set("a", b"1".to_vec())])),
        ("empty operations", write_req(ns, Some(vault), "w", 1, vec![])),
        ("empty batch", batch(vec![])),
        ("batch of empty groups", batch(vec![vec![], vec![]])),
        ("empty client id", write_req(ns, Some(vault), "", 1, vec![set("a", b"1".to_vec())])),
        (
            "257-byte client id",
            write_req(ns, Some(vault), &"c".repeat(257), 1, vec![set("a", b"1".to_vec())]),
        ),
    ];
    for (case, request) in cases {
        expect_status(&client, request, StatusCode::InvalidArgument, case).await;
        snapshot.unchanged(&client, case).await;
    }
    assert_eq!(client.get_client_state(ns, Some(vault), "w").await.unwrap(), 0);
    drop(client);
    server.stop();
}

#[tokio::test]
async fn t14_unknown_scopes_are_not_found() {
    // Proves writes and reads addressing an unknown namespace, an unknown vault, or a vault under
    // a namespace it does not belong to are NotFound, and change no scope.
    let (_dir, server, client, ns, vault, other_ns, other_vault) = invalid_request_fixture("bad-t14").await;
    let scopes = [(ns, None), (ns, Some(vault)), (other_ns, None), (other_ns, Some(other_vault))];
    let snapshot = Snapshot::take(&client, &scopes).await;
    let targets = [
        ("unknown namespace", 9_999, None),
        ("unknown namespace with vault", 9_999, Some(vault)),
        ("unknown vault", ns, Some(9_999)),
        ("vault under another namespace", ns, Some(other_vault)),
        ("other vault under the first namespace", other_ns, Some(vault)),
    ];
    for (case, namespace_id, vault_id) in targets {
        let request = write_req(namespace_id, vault_id, "w", 1, vec![set("a", b"1".to_vec())]);
        expect_status(&client, request, StatusCode::NotFound, case).await;
        let read = Request::Read {
            namespace_id,
            vault_id,
            key: "k".to_string(),
            consistency: ledger_core::types::ReadConsistency::Eventual,
        };
        expect_status(&client, read, StatusCode::NotFound, case).await;
        expect_status(&client, Request::GetTip { namespace_id, vault_id }, StatusCode::NotFound, case).await;
        snapshot.unchanged(&client, case).await;
    }
    drop(client);
    server.stop();
}

#[tokio::test]
async fn t15_sequence_gap_and_duplicate_sequence() {
    // Proves SPEC §6.3 on the wire: a sequence past last + 1 is WriteError{SequenceGap} naming
    // the last committed sequence, a resent committed sequence returns the same tx id (cached
    // success) or AlreadyCommitted, a failed condition consumes no sequence, and none of these
    // changes state.
    let (_dir, server, client, ns, vault, ..) = invalid_request_fixture("bad-t15").await;
    let first = client.write(ns, Some(vault), "w", 1, vec![set("a", b"1".to_vec())]).await.unwrap();
    let WriteResult::Success(first) = first else { panic!("{first:?}") };
    let snapshot = Snapshot::take(&client, &[(ns, None), (ns, Some(vault))]).await;

    let gap = client.write(ns, Some(vault), "w", 3, vec![set("b", b"2".to_vec())]).await.unwrap();
    let WriteResult::Error(error) = gap else { panic!("gap accepted: {gap:?}") };
    assert_eq!(error.code, WriteErrorCode::SequenceGap);
    assert_eq!(error.last_committed_sequence, Some(1));
    snapshot.unchanged(&client, "sequence gap").await;

    let duplicate = client.write(ns, Some(vault), "w", 1, vec![set("a", b"1".to_vec())]).await.unwrap();
    match duplicate {
        WriteResult::Success(again) => {
            assert_eq!(again.tx_id, first.tx_id, "duplicate created a new transaction");
            assert_eq!(again.block_height, first.block_height);
        }
        WriteResult::Error(error) => {
            assert_eq!(error.code, WriteErrorCode::AlreadyCommitted, "{error:?}");
            assert_eq!(error.committed_tx_id, Some(first.tx_id));
        }
    }
    snapshot.unchanged(&client, "duplicate sequence").await;

    let condition = vec![Operation::SetEntity {
        key: "a".to_string(),
        value: b"x".to_vec(),
        expires_at: None,
        condition: Some(SetCondition::MustNotExist),
    }];
    let failed = client.write(ns, Some(vault), "w", 2, condition).await.unwrap();
    let WriteResult::Error(error) = failed else { panic!("{failed:?}") };
    assert_eq!(error.code, WriteErrorCode::KeyExists);
    assert_eq!(error.key, "a");
    snapshot.unchanged(&client, "failed condition").await;
    assert_eq!(client.get_client_state(ns, Some(vault), "w").await.unwrap(), 1);
    let next = client.write(ns, Some(vault), "w", 2, vec![set("b", b"2".to_vec())]).await.unwrap();
    assert!(matches!(next, WriteResult::Success(_)), "sequence 2 was consumed: {next:?}");
    drop(client);
    server.stop();
}

#[test]
fn t16_random_bytes_after_hello_get_goaway_or_close() {
    // Proves (property, 64 seeded cases) that whatever bytes follow a valid Hello — pure noise,
    // or a correct header of any kind around a random payload — the server answers with a Goaway
    // or closes the connection (never hangs once the client half-closes, never crashes), and
    // keeps serving other connections.
    let (_dir, server) = start("bad-t16");
    let addr = server.addr.clone();
    let config = Config { cases: 64, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &[16u8; 32]));
    let strategy = prop_oneof![
        prop::collection::vec(any::<u8>(), 1..512).prop_map(|bytes| bytes),
        (1u8..=12, prop::collection::vec(any::<u8>(), 0..256)).prop_map(|(kind, payload)| {
            let mut frame = frame_bytes(FrameKind::Ping, &payload);
            frame[6] = kind;
            frame
        }),
    ];
    runner
        .run(&strategy, |bytes| {
            let (mut conn, _ack) = RawConn::connect_with_hello(&addr);
            // The server may close before reading everything; a failed send is allowed.
            let _ = conn.send(&bytes);
            conn.shutdown_write();
            match conn.ending() {
                Ending::Goaway(goaway) => {
                    prop_assert!(
                        matches!(
                            goaway.code,
                            GoawayCode::ProtocolError
                                | GoawayCode::Corrupt
                                | GoawayCode::FrameTooLarge
                                | GoawayCode::UnsupportedVersion
                        ),
                        "unexpected Goaway {:?}",
                        goaway
                    );
                }
                Ending::Closed => {}
            }
            Ok(())
        })
        .unwrap();
    assert!(server_alive(&server), "server died on random input");
    still_serving_blocking(&addr, "t16");
    server.stop();
}

fn server_alive(server: &ServerProcess) -> bool {
    // SAFETY: signal 0 only checks that our child still exists.
    unsafe { libc::kill(server.pid(), 0) == 0 }
}

#[tokio::test]
async fn t17_invalid_requests_in_one_batch_do_not_affect_valid_ones() {
    // Proves envelopes of one RequestBatch are independent: invalid writes next to a valid one
    // each get their own typed error while the valid write commits exactly once.
    let (_dir, server, client, ns, vault, ..) = invalid_request_fixture("bad-t17").await;
    let results = client
        .call_batch(vec![
            write_req(ns, Some(vault), "w", 0, vec![set("a", b"1".to_vec())]),
            write_req(ns, Some(vault), "w", 1, vec![set("_meta:x", b"1".to_vec())]),
            write_req(ns, Some(vault), "w", 1, vec![set("ok", b"1".to_vec())]),
            write_req(9_999, None, "w", 1, vec![set("a", b"1".to_vec())]),
        ])
        .await;
    let code = |r: &Result<Response, ClientError>| match r {
        Err(ClientError::Status { code, .. }) => Some(*code),
        _ => None,
    };
    assert_eq!(code(&results[0]), Some(StatusCode::InvalidArgument), "{:?}", results[0]);
    assert_eq!(code(&results[1]), Some(StatusCode::PermissionDenied), "{:?}", results[1]);
    assert!(matches!(results[2], Ok(Response::Write(WriteResult::Success(_)))), "{:?}", results[2]);
    assert_eq!(code(&results[3]), Some(StatusCode::NotFound), "{:?}", results[3]);
    assert_eq!(client.read(ns, Some(vault), "ok").await.unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(client.get_client_state(ns, Some(vault), "w").await.unwrap(), 1);
    drop(client);
    server.stop();
}

#[test]
fn t18_batch_size_limits_and_second_hello_are_protocol_errors() {
    // Proves the framing rules after the handshake: an empty RequestBatch, a RequestBatch with
    // more than max_batch_items envelopes (server started with 4), and a second Hello each earn
    // Goaway{ProtocolError}; a batch of exactly max_batch_items is answered in full.
    let dir = temp_dir("bad-t18");
    let server = ServerProcess::start(&dir.path().join("data"), &["--cores", "1", "--max-batch-items", "4"]);
    let envelopes = |count: u64| RequestBatch {
        items: (1..=count)
            .map(|request_id| RequestEnvelope {
                request_id,
                deadline_ms: 0,
                on_behalf_of: None,
                request: Request::GetNodeInfo,
            })
            .collect(),
    };
    let (mut conn, ack) = RawConn::connect_with_hello(&server.addr);
    assert_eq!(ack.max_batch_items, 4);
    conn.send(&encode_frame_to_vec(FrameKind::RequestBatch, &envelopes(4)).unwrap()).unwrap();
    let mut answered = Vec::new();
    while answered.len() < 4 {
        let frame = conn.next_frame().expect("responses to a full batch");
        assert_eq!(frame.kind(), FrameKind::ResponseBatch);
        let batch = frame.decode::<ResponseBatch>().unwrap();
        for item in batch.items {
            assert!(matches!(item.result, Ok(Response::GetNodeInfo { .. })), "{item:?}");
            answered.push(item.request_id);
        }
    }
    answered.sort_unstable();
    assert_eq!(answered, vec![1, 2, 3, 4]);

    conn.send(&encode_frame_to_vec(FrameKind::RequestBatch, &envelopes(5)).unwrap()).unwrap();
    expect_goaway(conn.ending(), GoawayCode::ProtocolError);

    let (mut conn, _ack) = RawConn::connect_with_hello(&server.addr);
    conn.send(&encode_frame_to_vec(FrameKind::RequestBatch, &envelopes(0)).unwrap()).unwrap();
    expect_goaway(conn.ending(), GoawayCode::ProtocolError);

    let (mut conn, _ack) = RawConn::connect_with_hello(&server.addr);
    conn.send(&hello_frame(1)).unwrap();
    expect_goaway(conn.ending(), GoawayCode::ProtocolError);
    still_serving_blocking(&server.addr, "t18");
    server.stop();
}

#[test]
fn t19_ping_is_answered_with_pong_echoing_the_nonce() {
    // Proves the keepalive of SPEC §4.3: after the handshake a Ping gets a Pong with the same
    // nonce and the connection stays open (a clean close afterwards earns no Goaway).
    let (_dir, server) = start("bad-t19");
    let (mut conn, _ack) = RawConn::connect_with_hello(&server.addr);
    for nonce in [0u64, 0x0102_0304_0506_0708, u64::MAX] {
        conn.send(&encode_frame_to_vec(FrameKind::Ping, &Ping { nonce }).unwrap()).unwrap();
        let frame = conn.next_frame().expect("Pong");
        assert_eq!(frame.kind(), FrameKind::Pong);
        assert_eq!(frame.decode::<Ping>().unwrap().nonce, nonce);
    }
    conn.shutdown_write();
    assert_eq!(conn.ending(), Ending::Closed, "a clean close between frames is not an error");
    server.stop();
}

#[tokio::test]
async fn t20_read_request_limits() {
    // Proves the read-side limits of SPEC §3.6/§5.1: GetBlock beyond the tip is NotFound,
    // GetBlockRange with start > end or more than 1000 blocks is InvalidArgument while an end past
    // the tip is truncated, and BatchRead of more than 1000 keys is InvalidArgument.
    let (_dir, server, client, ns, vault, ..) = invalid_request_fixture("bad-t20").await;
    let scope = Some(vault);
    let beyond = Request::GetBlock { namespace_id: ns, vault_id: scope, height: 2 };
    expect_status(&client, beyond, StatusCode::NotFound, "GetBlock beyond tip").await;
    let range = |start_height, end_height| Request::GetBlockRange {
        namespace_id: ns,
        vault_id: scope,
        start_height,
        end_height,
    };
    expect_status(&client, range(1, 0), StatusCode::InvalidArgument, "start > end").await;
    expect_status(&client, range(0, 1000), StatusCode::InvalidArgument, "1001 blocks").await;
    match client.call(range(0, 999)).await.unwrap() {
        Response::GetBlockRange { blocks, current_tip } => {
            assert_eq!(current_tip, 1);
            assert_eq!(blocks.iter().map(|b| b.header.height).collect::<Vec<_>>(), vec![0, 1]);
        }
        other => panic!("{other:?}"),
    }
    match client.call(range(5, 6)).await.unwrap() {
        Response::GetBlockRange { blocks, .. } => assert!(blocks.is_empty(), "{blocks:?}"),
        other => panic!("{other:?}"),
    }
    let keys: Vec<String> =
        (0..1001).map(|i| if i == 0 { "k".to_string() } else { format!("k{i}") }).collect();
    let request = Request::BatchRead {
        namespace_id: ns,
        vault_id: scope,
        keys: keys.clone(),
        consistency: ledger_core::types::ReadConsistency::Eventual,
    };
    expect_status(&client, request, StatusCode::InvalidArgument, "1001 keys").await;
    let items = client.batch_read(ns, scope, keys[..1000].to_vec(), Default::default()).await.unwrap();
    assert_eq!(items.len(), 1000);
    assert!(items[0].found && items[0].value.as_deref() == Some(&b"v"[..]), "{:?}", items[0]);
    assert!(items[1..].iter().all(|i| !i.found && i.value.is_none()));
    drop(client);
    server.stop();
}

#[tokio::test]
async fn t21_deleted_scopes_are_not_found() {
    // Proves SPEC §5.3 items 16 and 20: deleting a namespace that still has vaults is
    // FailedPrecondition; after DeleteVault, writes and reads of that vault are NotFound while
    // its sibling vault is untouched; after deleting the last vault the namespace can be deleted
    // and its scope is NotFound too.
    let (_dir, server, client, ns, vault, ..) = invalid_request_fixture("bad-t21").await;
    let doomed = client.create_vault(ns, None).await.unwrap();
    let result = client.write(ns, Some(doomed), "d", 1, vec![set("x", b"1".to_vec())]).await.unwrap();
    assert!(matches!(result, WriteResult::Success(_)), "{result:?}");
    let sibling = Snapshot::take(&client, &[(ns, Some(vault))]).await;

    let delete_ns = Request::DeleteNamespace { namespace_id: ns };
    expect_status(&client, delete_ns.clone(), StatusCode::FailedPrecondition, "namespace with vaults").await;
    match client.call(Request::DeleteVault { namespace_id: ns, vault_id: doomed }).await.unwrap() {
        Response::DeleteVault { .. } => {}
        other => panic!("unexpected response to DeleteVault: {other:?}"),
    }
    let write = write_req(ns, Some(doomed), "d", 2, vec![set("y", b"1".to_vec())]);
    expect_status(&client, write, StatusCode::NotFound, "write to a deleted vault").await;
    let read = Request::Read {
        namespace_id: ns,
        vault_id: Some(doomed),
        key: "x".to_string(),
        consistency: Default::default(),
    };
    expect_status(&client, read, StatusCode::NotFound, "read of a deleted vault").await;
    sibling.unchanged(&client, "deleting a sibling vault").await;

    match client.call(Request::DeleteVault { namespace_id: ns, vault_id: vault }).await.unwrap() {
        Response::DeleteVault { .. } => {}
        other => panic!("unexpected response to DeleteVault: {other:?}"),
    }
    match client.call(delete_ns).await.unwrap() {
        Response::DeleteNamespace { .. } => {}
        other => panic!("unexpected response to DeleteNamespace: {other:?}"),
    }
    let write = write_req(ns, None, "d", 1, vec![set("z", b"1".to_vec())]);
    expect_status(&client, write, StatusCode::NotFound, "write to a deleted namespace").await;
    expect_status(&client, Request::GetTip { namespace_id: ns, vault_id: None }, StatusCode::NotFound, "tip")
        .await;
    drop(client);
    server.stop();
}

#[test]
fn t22_idle_connection_gets_goaway_idle() {
    // Proves the idle timeout of SPEC §4.3: with `--idle-timeout-secs 1` a connection that sends
    // nothing after its handshake receives Goaway{Idle} and is closed, while new connections
    // are still served.
    let dir = temp_dir("bad-t22");
    let server =
        ServerProcess::start(&dir.path().join("data"), &["--cores", "1", "--idle-timeout-secs", "1"]);
    let (mut conn, _ack) = RawConn::connect_with_hello(&server.addr);
    expect_goaway(conn.ending(), GoawayCode::Idle);
    still_serving_blocking(&server.addr, "t22");
    server.stop();
}

#[test]
fn t23_clean_shutdown_sends_goaway_shutdown() {
    // Proves docs/protocol.md §1 item 4: on SIGTERM the node tells connected clients
    // Goaway{Shutdown} before closing (so they know to retry elsewhere), and exits 0.
    let (_dir, server) = start("bad-t23");
    let (mut conn, _ack) = RawConn::connect_with_hello(&server.addr);
    assert_eq!(server.stop(), Some(0), "clean stop failed");
    expect_goaway(conn.ending(), GoawayCode::Shutdown);
}
