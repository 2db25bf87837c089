//! Rate limits and deadlines over a real server (SPEC §4.1, §8.9, issue 17 items 3–4): a burst
//! beyond a namespace's 2× burst is refused with `ResourceExhausted` and a retry-after hint, none
//! of the refused writes is applied, another namespace is unaffected, and
//! `rate_limit_exceeded_total{namespace}` counts the refusals; a write still queued at its
//! deadline is answered `DeadlineExceeded` and never applied; a retry of a committed write with
//! its sequence returns the original result.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ledger_tests::cluster::free_addr;
use ledger_tests::raw::RawConn;
use ledger_tests::scope::{client_state, connect, create_scope, set};
use ledger_tests::{scrape_metrics, temp_dir, ServerProcess};
use ledger_wire::codec::encode_frame_to_vec;
use ledger_wire::error::ClientError;
use ledger_wire::frame::FrameKind;
use ledger_wire::messages::{
    ErrorDetail, Request, RequestBatch, RequestEnvelope, Response, ResponseBatch, StatusCode, WriteResult,
};

const RATE: u64 = 50;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn write(namespace_id: i64, vault_id: i64, client_id: &str, sequence: u64, key: &str) -> Request {
    Request::Write {
        namespace_id,
        vault_id: Some(vault_id),
        client_id: client_id.to_string(),
        sequence,
        operations: vec![set(key, b"v".to_vec())],
        include_tx_proof: false,
    }
}

/// The value of `rate_limit_exceeded_total{namespace="N"}`, if the series is there.
fn refused_metric(body: &str, namespace_id: i64) -> Option<f64> {
    let prefix = format!("rate_limit_exceeded_total{{namespace=\"{namespace_id}\"}} ");
    body.lines().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.trim().parse().unwrap())
}

/// t01: with `--rate-limit-rps 50`, 300 writes sent at once to one namespace: at most the burst
/// (100) plus what the rate refilled while they arrived are admitted, the rest are
/// `ResourceExhausted` with a `RetryAfter` of at most one token's time (20 ms); no refused write
/// is applied (its key is absent, its client's sequence unused) and every admitted one is; a
/// second namespace then takes its own full burst; the metric counts the refusals per namespace.
#[test]
fn t01_a_burst_beyond_the_limit_is_refused_and_applies_nothing() {
    let dir = temp_dir("rate-t01");
    let metrics = free_addr();
    let flags = ["--cores", "1", "--rate-limit-rps", "50", "--metrics-addr", metrics.as_str()];
    let server = ServerProcess::start(&dir.path().join("data"), &flags);
    runtime().block_on(async {
        let client = connect(&server.addr).await;
        let (noisy, noisy_vault) = create_scope(&client, "noisy").await;
        let (quiet, quiet_vault) = create_scope(&client, "quiet").await;

        let burst = 300;
        let requests: Vec<Request> =
            (0..burst).map(|i| write(noisy, noisy_vault, &format!("b{i}"), 1, &format!("k{i}"))).collect();
        let started = Instant::now();
        let results = client.call_batch(requests).await;
        let elapsed = started.elapsed().as_secs_f64();
        let mut admitted = Vec::new();
        let mut refused = Vec::new();
        for (i, result) in results.into_iter().enumerate() {
            match result {
                Ok(Response::Write(WriteResult::Success(_))) => admitted.push(i),
                Err(e @ ClientError::Status { code: StatusCode::ResourceExhausted, .. }) => {
                    let wait = e.retry_after().unwrap_or_else(|| panic!("no RetryAfter in {e:?}"));
                    assert!(
                        wait >= Duration::from_millis(1) && wait <= Duration::from_millis(20),
                        "{wait:?}"
                    );
                    refused.push(i);
                }
                other => panic!("write {i}: {other:?}"),
            }
        }
        // The bucket starts full (2 × 50) and refills at 50/s while the burst arrives.
        let most = 2 * RATE + (RATE as f64 * (elapsed + 0.1)).ceil() as u64;
        assert!(admitted.len() as u64 >= 2 * RATE, "admitted {} of {burst}", admitted.len());
        assert!((admitted.len() as u64) <= most, "admitted {} > {most} in {elapsed:.3}s", admitted.len());
        assert_eq!(admitted.len() + refused.len(), burst);

        for &i in &refused {
            assert_eq!(client.read(noisy, Some(noisy_vault), format!("k{i}")).await.unwrap(), None);
            assert_eq!(client_state(&client, noisy, Some(noisy_vault), &format!("b{i}")).await, 0);
        }
        for &i in &admitted {
            assert!(client.read(noisy, Some(noisy_vault), format!("k{i}")).await.unwrap().is_some());
        }

        // The other namespace has its own bucket: its whole burst is admitted at once.
        let requests: Vec<Request> =
            (0..2 * RATE).map(|i| write(quiet, quiet_vault, &format!("q{i}"), 1, &format!("k{i}"))).collect();
        for (i, result) in client.call_batch(requests).await.into_iter().enumerate() {
            assert!(
                matches!(result, Ok(Response::Write(WriteResult::Success(_)))),
                "quiet write {i}: {result:?}"
            );
        }

        let body = scrape_metrics(&metrics);
        assert_eq!(refused_metric(&body, noisy), Some(refused.len() as f64), "{body}");
        assert_eq!(refused_metric(&body, quiet), Some(0.0), "{body}");
    });
    server.stop();
}

/// Sends one envelope on a raw connection and returns its answer.
fn raw_call(conn: &mut RawConn, request_id: u64, deadline_ms: u32, request: Request) -> ResponseBatch {
    let batch = RequestBatch {
        items: vec![RequestEnvelope { request_id, deadline_ms, on_behalf_of: None, request }],
    };
    conn.send(&encode_frame_to_vec(FrameKind::RequestBatch, &batch).unwrap()).unwrap();
    let frame = conn.next_frame().expect("a response");
    assert_eq!(frame.kind(), FrameKind::ResponseBatch);
    frame.decode::<ResponseBatch>().unwrap()
}

/// t02: eager commit off and a 2.5 s batch delay hold every write in the queue for 2.5 s. A write
/// whose deadline is 500 ms is still queued at its deadline: it is answered `DeadlineExceeded`
/// and never applied (key absent, sequence unused). Sent again with the same sequence it commits;
/// and a retry of that committed write with the same sequence returns the original result (same
/// transaction id, block height and statuses), not a second transaction.
#[test]
fn t02_a_write_queued_past_its_deadline_is_dropped_and_its_retry_commits_once() {
    let dir = temp_dir("rate-t02");
    let flags = ["--cores", "1", "--batch-eager-commit", "false", "--batch-max-delay-ms", "2500"];
    let server = ServerProcess::start(&dir.path().join("data"), &flags);
    let (namespace_id, vault_id) = runtime().block_on(async {
        let client = connect(&server.addr).await;
        create_scope(&client, "deadlines").await
    });

    let (mut conn, _) = RawConn::connect_with_hello(&server.addr);
    let late = write(namespace_id, vault_id, "late", 1, "late-key");
    let answer = raw_call(&mut conn, 1, 500, late.clone());
    match &answer.items[..] {
        [item] => match &item.result {
            Err(status) => assert_eq!(status.code, StatusCode::DeadlineExceeded, "{status:?}"),
            other => panic!("a write queued past its deadline was answered {other:?}"),
        },
        other => panic!("{other:?}"),
    }
    runtime().block_on(async {
        let client = connect(&server.addr).await;
        assert_eq!(client.read(namespace_id, Some(vault_id), "late-key").await.unwrap(), None);
        assert_eq!(client_state(&client, namespace_id, Some(vault_id), "late").await, 0);
    });

    // The retry, with a deadline the queue wait fits in, commits.
    let first = raw_call(&mut conn, 2, 30_000, late.clone());
    let Ok(Response::Write(WriteResult::Success(original))) = &first.items[0].result else {
        panic!("retry: {first:?}")
    };
    // Its retry with the same sequence is answered with the same transaction.
    let again = raw_call(&mut conn, 3, 30_000, late);
    let Ok(Response::Write(WriteResult::Success(repeat))) = &again.items[0].result else {
        panic!("second retry: {again:?}")
    };
    assert_eq!(repeat, original);
    runtime().block_on(async {
        let client = connect(&server.addr).await;
        assert_eq!(client_state(&client, namespace_id, Some(vault_id), "late").await, 1);
        let tip = ledger_tests::scope::tip(&client, namespace_id, Some(vault_id)).await;
        assert_eq!(tip.height, original.block_height, "the retry made no block of its own");
    });
    server.stop();
}

/// t04: a client that ignores the retry-after hint (16 writes always in flight to one namespace,
/// each refusal followed at once by the next write) is paced by the router (D47): over 3 s at
/// `--rate-limit-rps 100`, its admitted writes stay within the burst plus the rate (and it is not
/// starved: at least half the rate gets through), and it is refused at most ~20 × the rate per
/// second: without the router's pacing a loopback client is refused tens of thousands of times a
/// second. Every refusal carries a hint, no refused write is applied, the metric counts them, and
/// another namespace written meanwhile is admitted in full.
#[test]
fn t04_a_client_ignoring_the_hint_is_paced_not_served_faster() {
    const RPS: u64 = 100;
    const WORKERS: usize = 16;
    const FLOOD: Duration = Duration::from_secs(3);
    let dir = temp_dir("rate-t04");
    let metrics = free_addr();
    let rps = RPS.to_string();
    let flags = ["--cores", "2", "--rate-limit-rps", rps.as_str(), "--metrics-addr", metrics.as_str()];
    let server = ServerProcess::start(&dir.path().join("data"), &flags);
    runtime().block_on(async {
        let client = connect(&server.addr).await;
        let (noisy, noisy_vault) = create_scope(&client, "flood").await;
        let (quiet, quiet_vault) = create_scope(&client, "quiet").await;
        let started = Instant::now();
        let mut workers = Vec::new();
        for w in 0..WORKERS {
            let client = connect(&server.addr).await;
            workers.push(tokio::spawn(async move {
                let (mut admitted, mut refused, mut sequence) = (Vec::new(), Vec::new(), 1);
                while started.elapsed() < FLOOD {
                    let key = format!("w{w}-s{sequence}");
                    match client.call(write(noisy, noisy_vault, &format!("w{w}"), sequence, &key)).await {
                        Ok(Response::Write(WriteResult::Success(_))) => {
                            admitted.push(key);
                            sequence += 1;
                        }
                        Err(e @ ClientError::Status { code: StatusCode::ResourceExhausted, .. }) => {
                            assert!(e.retry_after().is_some(), "no hint: {e:?}");
                            refused.push(key);
                        }
                        other => panic!("worker {w}: {other:?}"),
                    }
                }
                (admitted, refused)
            }));
        }
        // The other namespace, written meanwhile at a fifth of its rate, is never refused.
        for i in 0..(RPS as usize / 5) * 2 {
            let result = client.call(write(quiet, quiet_vault, "q", i as u64 + 1, &format!("q{i}"))).await;
            assert!(matches!(result, Ok(Response::Write(WriteResult::Success(_)))), "quiet {i}: {result:?}");
            tokio::time::sleep(Duration::from_millis(1000 / (RPS / 5))).await;
        }
        let (mut admitted, mut refused) = (Vec::new(), Vec::new());
        for worker in workers {
            let (a, r) = worker.await.unwrap();
            admitted.extend(a);
            refused.extend(r);
        }
        let elapsed = started.elapsed().as_secs_f64();
        let most = 2 * RPS + (RPS as f64 * elapsed).ceil() as u64;
        let least = (RPS as f64 * (elapsed - 1.0) / 2.0) as u64;
        let (a, r) = (admitted.len() as u64, refused.len() as u64);
        assert!(a <= most && a >= least, "admitted {a} in {elapsed:.2}s (expected {least}..={most})");
        let refused_per_s = r as f64 / elapsed;
        assert!(refused_per_s <= 20.0 * RPS as f64, "refused {r} in {elapsed:.2}s: the flood was not paced");
        // A sample of refused writes: none applied (a refused write is retried with its
        // sequence and key, so only those never admitted later are absent).
        let admitted_keys: std::collections::HashSet<&String> = admitted.iter().collect();
        let never_admitted: std::collections::HashSet<&String> =
            refused.iter().filter(|k| !admitted_keys.contains(k)).collect();
        assert!(never_admitted.len() <= WORKERS, "a worker has at most its last write unanswered");
        for key in never_admitted {
            assert_eq!(client.read(noisy, Some(noisy_vault), key.clone()).await.unwrap(), None, "{key}");
        }
        for key in admitted.iter().step_by((admitted.len() / 50).max(1)) {
            assert!(client.read(noisy, Some(noisy_vault), key.clone()).await.unwrap().is_some(), "{key}");
        }
        let body = scrape_metrics(&metrics);
        assert_eq!(refused_metric(&body, noisy), Some(r as f64), "{body}");
        assert_eq!(refused_metric(&body, quiet), Some(0.0), "{body}");
    });
    server.stop();
}

/// The detail travels on the wire as sent (a typed hint, not only text).
#[test]
fn t03_retry_after_detail_round_trips() {
    let status = ledger_wire::messages::Status {
        code: StatusCode::ResourceExhausted,
        message: "slow down".into(),
        leader_hint: None,
        detail: Some(ErrorDetail::RetryAfter { ms: 17 }),
    };
    let error = ClientError::from(status);
    assert_eq!(error.retry_after(), Some(Duration::from_millis(17)));
    assert!(error.is_retryable());
}
