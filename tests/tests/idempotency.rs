//! Idempotent writes across restarts (SPEC §6, §12 invariants 10, 24–26): the persisted client
//! state survives a clean stop and a crash, resent sequences never create a second transaction,
//! gaps are refused, and a BatchWrite whose last condition fails applies nothing.
#![allow(clippy::unwrap_used)]

use ledger_core::types::{Operation, SetCondition, TxId, WriteError, WriteErrorCode};
use ledger_tests::scope::{
    client_state, connect, create_scope, read_linearizable, set, set_if, tip, walk_chain,
};
use ledger_tests::{temp_dir, ServerProcess};
use ledger_wire::client::Client;
use ledger_wire::messages::{Request, Response, WriteResult, WriteSuccess};

const CLIENT: &str = "idem-client";

/// One raw `Write` (no session, no retry): the test controls the sequence exactly.
async fn write(
    client: &Client,
    ns: i64,
    vault: Option<i64>,
    sequence: u64,
    ops: Vec<Operation>,
) -> WriteResult {
    client.write(ns, vault, CLIENT, sequence, ops).await.expect("write call")
}

async fn batch_write(
    client: &Client,
    ns: i64,
    vault: Option<i64>,
    sequence: u64,
    groups: Vec<Vec<Operation>>,
) -> WriteResult {
    let request = Request::BatchWrite {
        namespace_id: ns,
        vault_id: vault,
        client_id: CLIENT.to_string(),
        sequence,
        groups,
        include_tx_proof: false,
    };
    match client.call(request).await.expect("batch write call") {
        Response::Write(result) => result,
        other => panic!("unexpected response to BatchWrite: {other:?}"),
    }
}

fn success(result: WriteResult) -> WriteSuccess {
    match result {
        WriteResult::Success(success) => success,
        WriteResult::Error(error) => panic!("write failed: {error:?}"),
    }
}

fn error(result: WriteResult) -> WriteError {
    match result {
        WriteResult::Error(error) => error,
        WriteResult::Success(success) => panic!("write unexpectedly succeeded: {success:?}"),
    }
}

/// A resend of a committed sequence is "done": the identical cached success, or
/// AlreadyCommitted carrying the ids of the client's last committed transaction (SPEC §6.3).
fn assert_done(result: WriteResult, original: &WriteSuccess, last: (TxId, u64)) {
    match result {
        WriteResult::Success(again) => {
            assert_eq!(again.tx_id, original.tx_id, "resend created a new transaction");
            assert_eq!(again.block_height, original.block_height);
            assert_eq!(again.statuses, original.statuses);
        }
        WriteResult::Error(error) => {
            assert_eq!(error.code, WriteErrorCode::AlreadyCommitted, "{error:?}");
            assert_eq!(error.committed_tx_id, Some(last.0), "AlreadyCommitted names another tx");
            assert_eq!(error.committed_block_height, Some(last.1));
        }
    }
}

/// The sequences of `CLIENT`'s transactions in chain order.
async fn chain_sequences(client: &Client, ns: i64, vault: Option<i64>) -> Vec<u64> {
    let chain = walk_chain(client, ns, vault).await;
    chain
        .values()
        .flat_map(|b| b.transactions.iter())
        .filter(|t| t.client_id == CLIENT)
        .map(|t| t.sequence)
        .collect()
}

#[tokio::test]
async fn t01_client_state_survives_clean_restart() {
    // Proves that after SIGTERM + restart GetClientState returns the last committed sequence;
    // resending the last (and an older) sequence is done without a new transaction; last + 2 is
    // SequenceGap naming the last sequence; none of these move the tip; last + 1 then commits and
    // the chain holds each sequence exactly once. Client state is per scope.
    let dir = temp_dir("idem-t01");
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &[]);
    let client = connect(&server.addr).await;
    let (ns, vault) = create_scope(&client, "idem1").await;
    let scope = Some(vault);
    let mut committed = Vec::new();
    for sequence in 1..=4u64 {
        let ops = vec![set(format!("k{sequence}"), format!("v{sequence}").into_bytes())];
        committed.push((ops.clone(), success(write(&client, ns, scope, sequence, ops).await)));
    }
    let batch = vec![vec![set("b1", b"1".to_vec())], vec![set("b2", b"2".to_vec())]];
    let last_batch = success(batch_write(&client, ns, scope, 5, batch.clone()).await);
    drop(client);
    assert_eq!(server.stop(), Some(0), "clean stop failed");

    let server = ServerProcess::restart(&data, &[]);
    let client = connect(&server.addr).await;
    assert_eq!(client_state(&client, ns, scope, CLIENT).await, 5);
    assert_eq!(client_state(&client, ns, None, CLIENT).await, 0, "client state leaked across scopes");
    let before = tip(&client, ns, scope).await;
    let last = (last_batch.tx_id, last_batch.block_height);

    assert_done(batch_write(&client, ns, scope, 5, batch).await, &last_batch, last);
    let (ops, original) = &committed[1];
    assert_done(write(&client, ns, scope, 2, ops.clone()).await, original, last);
    assert_eq!(tip(&client, ns, scope).await, before, "a resent sequence changed state");

    let gap = error(write(&client, ns, scope, 7, vec![set("gap", b"x".to_vec())]).await);
    assert_eq!(gap.code, WriteErrorCode::SequenceGap);
    assert_eq!(gap.last_committed_sequence, Some(5));
    assert_eq!(tip(&client, ns, scope).await, before, "a sequence gap changed state");
    assert_eq!(client_state(&client, ns, scope, CLIENT).await, 5);

    success(write(&client, ns, scope, 6, vec![set("k6", b"v6".to_vec())]).await);
    assert_eq!(client_state(&client, ns, scope, CLIENT).await, 6);
    assert_eq!(chain_sequences(&client, ns, scope).await, (1..=6).collect::<Vec<_>>());
    assert_eq!(read_linearizable(&client, ns, scope, "gap").await, None);
    drop(client);
    server.stop();
}

#[tokio::test]
async fn t02_resend_after_kill9_is_not_applied_twice() {
    // Proves invariant 25 across a crash: the response cache is volatile, so after kill -9 a
    // resend of the last sequence is answered from the persisted client state (or an identical
    // cached success) and the chain still holds one copy of it.
    let dir = temp_dir("idem-t02");
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &[]);
    let client = connect(&server.addr).await;
    let (ns, _vault) = create_scope(&client, "idem2").await;
    let mut last = None;
    for sequence in 1..=3u64 {
        let ops = vec![set("counter", sequence.to_string().into_bytes())];
        last = Some((ops.clone(), success(write(&client, ns, None, sequence, ops).await)));
    }
    drop(client);
    server.kill9();

    let server = ServerProcess::restart(&data, &[]);
    let client = connect(&server.addr).await;
    assert_eq!(client_state(&client, ns, None, CLIENT).await, 3);
    let before = tip(&client, ns, None).await;
    let (ops, original) = last.unwrap();
    let ids = (original.tx_id, original.block_height);
    let resend = ledger_tests::scope::retry_transient(|| client.write(ns, None, CLIENT, 3, ops.clone()))
        .await
        .unwrap();
    assert_done(resend, &original, ids);
    assert_eq!(tip(&client, ns, None).await, before);
    assert_eq!(chain_sequences(&client, ns, None).await, vec![1, 2, 3]);
    assert_eq!(read_linearizable(&client, ns, None, "counter").await.as_deref(), Some(&b"3"[..]));
    drop(client);
    server.stop();
}

#[tokio::test]
async fn t03_batch_write_with_failing_last_condition_applies_nothing() {
    // Proves invariant 10: a BatchWrite whose last operation's condition fails (MustNotExist on
    // an existing key, VersionEquals with a wrong version, ValueEquals with a wrong value) is
    // rejected naming that key, and leaves the state root, height, every key and the client's
    // sequence unchanged; the same sequence then commits a valid batch as one transaction.
    let dir = temp_dir("idem-t03");
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &[]);
    let client = connect(&server.addr).await;
    let (ns, vault) = create_scope(&client, "idem3").await;
    let scope = Some(vault);
    let existing = success(write(&client, ns, scope, 1, vec![set("guard", b"g0".to_vec())]).await);
    let before = tip(&client, ns, scope).await;

    let failing_last = [
        (set_if("guard", b"g1".to_vec(), SetCondition::MustNotExist), WriteErrorCode::KeyExists),
        (
            set_if("guard", b"g1".to_vec(), SetCondition::VersionEquals(existing.block_height + 7)),
            WriteErrorCode::VersionMismatch,
        ),
        (
            set_if("guard", b"g1".to_vec(), SetCondition::ValueEquals(b"nope".to_vec())),
            WriteErrorCode::ValueMismatch,
        ),
        (set_if("absent", b"x".to_vec(), SetCondition::MustExist), WriteErrorCode::KeyNotFound),
    ];
    for (last_op, code) in failing_last {
        let key = match &last_op {
            Operation::SetEntity { key, .. } => key.clone(),
            _ => unreachable!(),
        };
        let groups = vec![
            vec![set("a", b"1".to_vec()), Operation::DeleteEntity { key: "guard".to_string() }],
            vec![Operation::CreateRelationship {
                resource: "doc:1".to_string(),
                relation: "viewer".to_string(),
                subject: "user:1".to_string(),
            }],
            vec![set("guard", b"g0".to_vec()), last_op],
        ];
        let rejected = error(batch_write(&client, ns, scope, 2, groups).await);
        assert_eq!(rejected.code, code, "{rejected:?}");
        assert_eq!(rejected.key, key);
        assert_eq!(tip(&client, ns, scope).await, before, "{code:?}: a failed batch changed state");
        assert_eq!(client_state(&client, ns, scope, CLIENT).await, 1, "{code:?}: sequence consumed");
        assert_eq!(read_linearizable(&client, ns, scope, "a").await, None, "{code:?}: first group applied");
        assert_eq!(read_linearizable(&client, ns, scope, "guard").await.as_deref(), Some(&b"g0"[..]));
    }

    // Same sequence, all conditions passing: one transaction, one block, later ops see earlier.
    let groups = vec![
        vec![set("a", b"1".to_vec())],
        vec![set_if("a", b"2".to_vec(), SetCondition::ValueEquals(b"1".to_vec()))],
        vec![set_if("guard", b"g1".to_vec(), SetCondition::VersionEquals(existing.block_height))],
    ];
    let done = success(batch_write(&client, ns, scope, 2, groups).await);
    assert_eq!(done.statuses.len(), 3);
    assert_eq!(done.block_height, before.height + 1);
    assert_eq!(read_linearizable(&client, ns, scope, "a").await.as_deref(), Some(&b"2"[..]));
    let chain = walk_chain(&client, ns, scope).await;
    let txs: Vec<_> =
        chain.values().flat_map(|b| b.transactions.iter()).filter(|t| t.sequence == 2).collect();
    assert_eq!(txs.len(), 1, "the batch is not exactly one transaction");
    assert_eq!(txs[0].operations.len(), 3);
    let after = tip(&client, ns, scope).await;
    drop(client);
    assert_eq!(server.stop(), Some(0));

    // The rejected batches left nothing behind that a restart could resurrect.
    let server = ServerProcess::restart(&data, &[]);
    let client = connect(&server.addr).await;
    assert_eq!(tip(&client, ns, scope).await, after);
    assert_eq!(client_state(&client, ns, scope, CLIENT).await, 2);
    drop(client);
    server.stop();
}
