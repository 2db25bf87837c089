//! Client tests against a fake server speaking the frame protocol on a real 127.0.0.1 socket
//! (OS-chosen port). The fake server hands each received `RequestBatch` to a test-provided
//! handler and performs the replies it returns, so each test scripts exactly what the server does.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::codec::{encode_frame, FrameReader};
use crate::constants::MAX_FRAME_BYTES_DEFAULT;
use crate::frame::FrameKind;
use crate::messages::{
    Goaway, GoawayCode, Hello, Ping, RequestBatch, ResponseBatch, ResponseEnvelope, Status, StatusCode,
    WriteResult, WriteSuccess,
};
use ledger_core::types::{Operation, Timestamp, WriteError, WriteErrorCode};

/// What the fake server does after a batch arrives.
enum Reply {
    Responses(Vec<ResponseEnvelope>),
    Goaway(GoawayCode, &'static str),
    /// Bytes written as they are (e.g. a Ping frame, or garbage).
    Raw(Vec<u8>),
    Close,
}

type Handler = Box<dyn FnMut(Vec<RequestEnvelope>) -> Vec<Reply> + Send>;

/// Facts the fake server records for assertions.
#[derive(Default)]
struct Seen {
    batch_sizes: Vec<usize>,
    hellos: Vec<Hello>,
    connections: usize,
    pongs: Vec<u64>,
    eofs: usize,
}

async fn fake_server(max_batch_items: u32, handler: Handler) -> (SocketAddr, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let handler = Arc::new(Mutex::new(handler));
    let seen_task = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            seen_task.lock().unwrap().connections += 1;
            tokio::spawn(serve(socket, max_batch_items, Arc::clone(&handler), Arc::clone(&seen_task)));
        }
    });
    (addr, seen)
}

async fn serve(
    mut socket: TcpStream,
    max_batch_items: u32,
    handler: Arc<Mutex<Handler>>,
    seen: Arc<Mutex<Seen>>,
) {
    let mut reader = FrameReader::new(MAX_FRAME_BYTES_DEFAULT);
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok(n) = socket.read(&mut buf).await else { return };
        if n == 0 {
            seen.lock().unwrap().eofs += 1;
            return;
        }
        let mut input = &buf[..n];
        while let Some(frame) = reader.read_from(&mut input).unwrap() {
            let mut out = Vec::new();
            match frame.kind() {
                FrameKind::Hello => {
                    seen.lock().unwrap().hellos.push(frame.decode::<Hello>().unwrap());
                    let ack = HelloAck {
                        protocol_version: 1,
                        node_id: 42,
                        cluster_id: Some(42),
                        max_frame_bytes: MAX_FRAME_BYTES_DEFAULT,
                        max_batch_items,
                        server_version: "fake".into(),
                    };
                    encode_frame(FrameKind::HelloAck, &ack, &mut out).unwrap();
                }
                FrameKind::RequestBatch => {
                    let batch = frame.decode::<RequestBatch>().unwrap();
                    seen.lock().unwrap().batch_sizes.push(batch.items.len());
                    let replies = (handler.lock().unwrap())(batch.items);
                    for reply in replies {
                        match reply {
                            Reply::Responses(items) => {
                                encode_frame(FrameKind::ResponseBatch, &ResponseBatch { items }, &mut out)
                                    .unwrap();
                            }
                            Reply::Goaway(code, message) => {
                                let goaway = Goaway { code, message: message.into() };
                                encode_frame(FrameKind::Goaway, &goaway, &mut out).unwrap();
                                let _ = socket.write_all(&out).await;
                                return;
                            }
                            Reply::Raw(bytes) => out.extend_from_slice(&bytes),
                            Reply::Close => return,
                        }
                    }
                }
                FrameKind::Pong => seen.lock().unwrap().pongs.push(frame.decode::<Ping>().unwrap().nonce),
                _ => {}
            }
            if !out.is_empty() && socket.write_all(&out).await.is_err() {
                return;
            }
        }
    }
}

fn state_request(client_id: &str) -> Request {
    Request::GetClientState { namespace_id: 1, vault_id: None, client_id: client_id.into() }
}

/// Answers GetClientState with the number encoded in the client id.
fn echo_state(envelope: &RequestEnvelope) -> ResponseEnvelope {
    let Request::GetClientState { client_id, .. } = &envelope.request else { panic!("unexpected request") };
    let last_committed_sequence = client_id.parse().unwrap();
    ResponseEnvelope {
        request_id: envelope.request_id,
        leader_hint: None,
        result: Ok(Response::GetClientState { last_committed_sequence }),
    }
}

fn fast_options() -> ClientOptions {
    ClientOptions { call_timeout: Duration::from_secs(5), ..ClientOptions::default() }
}

#[tokio::test]
async fn t20_pipelined_calls_are_batched_and_matched_out_of_order() {
    // Proves that 64 concurrent calls share one connection, leave in fewer frames than calls,
    // and each gets its own answer although the server replies in reverse order across several
    // ResponseBatch frames.
    let mut held: Vec<RequestEnvelope> = Vec::new();
    let handler: Handler = Box::new(move |items| {
        held.extend(items);
        if held.len() < 64 {
            return Vec::new();
        }
        let mut responses: Vec<ResponseEnvelope> = held.drain(..).rev().map(|e| echo_state(&e)).collect();
        let tail = responses.split_off(40);
        vec![Reply::Responses(tail), Reply::Responses(responses)]
    });
    let (addr, seen) = fake_server(1024, handler).await;
    let client = Client::connect(addr, fast_options()).await.unwrap();
    assert_eq!(client.hello_ack().node_id, 42);

    let mut tasks = Vec::new();
    for i in 0..64u64 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move { client.call(state_request(&i.to_string())).await }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let response = task.await.unwrap().unwrap();
        assert_eq!(response, Response::GetClientState { last_committed_sequence: i as u64 });
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.batch_sizes.iter().sum::<usize>(), 64);
    assert!(seen.batch_sizes.len() < 64, "no coalescing: {:?}", seen.batch_sizes);
    assert_eq!(seen.hellos.len(), 1);
    assert_eq!(seen.hellos[0].role, Role::Client);
}

#[tokio::test]
async fn t21_call_batch_respects_server_batch_limit() {
    // Proves call_batch returns results in request order and never exceeds the server's
    // max_batch_items (5 here) per frame.
    let handler: Handler =
        Box::new(|items| vec![Reply::Responses(items.iter().rev().map(echo_state).collect())]);
    let (addr, seen) = fake_server(5, handler).await;
    let client = Client::connect(addr, fast_options()).await.unwrap();
    let requests = (0..23u64).map(|i| state_request(&i.to_string())).collect();
    let results = client.call_batch(requests).await;
    for (i, result) in results.into_iter().enumerate() {
        assert_eq!(result.unwrap(), Response::GetClientState { last_committed_sequence: i as u64 });
    }
    let seen = seen.lock().unwrap();
    assert!(seen.batch_sizes.iter().all(|&n| (1..=5).contains(&n)), "{:?}", seen.batch_sizes);
    assert_eq!(seen.batch_sizes.iter().sum::<usize>(), 23);
}

#[tokio::test]
async fn t22_goaway_fails_pending_and_later_calls() {
    // Proves a Goaway fails every pending call with ClientError::Goaway carrying the code, and
    // that calls after it fail at once with the same error.
    let mut held = 0;
    let handler: Handler = Box::new(move |items| {
        held += items.len();
        if held < 3 {
            Vec::new()
        } else {
            vec![Reply::Goaway(GoawayCode::Shutdown, "draining")]
        }
    });
    let (addr, _seen) = fake_server(1024, handler).await;
    let client = Client::connect(addr, fast_options()).await.unwrap();
    let results = client.call_batch((0..3).map(|i| state_request(&i.to_string())).collect()).await;
    for result in results {
        match result {
            Err(ClientError::Goaway { code: GoawayCode::Shutdown, message }) => {
                assert_eq!(message, "draining")
            }
            other => panic!("expected goaway, got {other:?}"),
        }
    }
    let later = client.call(state_request("1")).await.unwrap_err();
    assert!(matches!(later, ClientError::Goaway { code: GoawayCode::Shutdown, .. }));
    assert!(later.is_retryable());
}

#[tokio::test]
async fn t23_status_timeout_and_close() {
    // Proves a Status answer maps to ClientError::Status, an unanswered call times out at its
    // deadline (and sends that deadline), and a server close fails the remaining call as Closed.
    let deadlines = Arc::new(Mutex::new(Vec::new()));
    let deadlines_seen = Arc::clone(&deadlines);
    let handler: Handler = Box::new(move |items| {
        let mut replies = Vec::new();
        for envelope in items {
            deadlines_seen.lock().unwrap().push(envelope.deadline_ms);
            let Request::GetClientState { client_id, .. } = &envelope.request else { panic!() };
            match client_id.as_str() {
                "status" => replies.push(Reply::Responses(vec![ResponseEnvelope {
                    request_id: envelope.request_id,
                    leader_hint: None,
                    result: Err(Status::unavailable("no leader")),
                }])),
                "silent" => {}
                _ => replies.push(Reply::Close),
            }
        }
        replies
    });
    let (addr, _seen) = fake_server(1024, handler).await;
    let client = Client::connect(addr, fast_options()).await.unwrap();

    let e = client.call(state_request("status")).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Status { code: StatusCode::Unavailable, message, .. } if message == "no leader")
    );
    assert!(e.is_retryable());

    let options = CallOptions { timeout: Some(Duration::from_millis(50)) };
    let e = client.call_with(state_request("silent"), options).await.unwrap_err();
    assert!(matches!(e, ClientError::Timeout { .. }));
    assert!(deadlines.lock().unwrap().last().is_some_and(|&ms| (1..=50).contains(&ms)));

    let e = client.call(state_request("close")).await.unwrap_err();
    assert!(matches!(e, ClientError::Closed { .. }), "{e:?}");
    assert!(client.closed_reason().is_some());
}

fn write_error(code: WriteErrorCode) -> WriteError {
    WriteError {
        code,
        key: String::new(),
        current_version: None,
        current_value: None,
        message: format!("{code:?}"),
        committed_tx_id: None,
        committed_block_height: None,
        last_committed_sequence: None,
    }
}

fn success(height: u64) -> WriteSuccess {
    WriteSuccess {
        tx_id: [7; 16],
        block_height: height,
        tx_timestamp: Timestamp::default(),
        actor: "client:x".into(),
        block_header: None,
        tx_proof: None,
        statuses: vec![],
    }
}

#[tokio::test]
async fn t24_write_session_follows_client_rules() {
    // Proves SPEC §6.4 in WriteSession against a scripted server whose committed sequence starts
    // at 3: (a) the first write fetches GetClientState and uses 4; an Unavailable answer and a
    // Goaway (reconnect) are retried with the SAME sequence 4 until success; (b) the next write
    // uses 5 and gets AlreadyCommitted = done; (c) a SequenceGap (server jumped to 9) re-fetches
    // the state and resends the same operations at 10; (d) a condition failure consumes no
    // sequence.
    let script = Arc::new(Mutex::new(Vec::<(String, u64)>::new()));
    let log = Arc::clone(&script);
    let mut last_committed = 3u64;
    let mut writes = 0u32;
    let handler: Handler = Box::new(move |items| {
        let mut replies = Vec::new();
        for envelope in items {
            let request_id = envelope.request_id;
            let result = match envelope.request {
                Request::GetClientState { .. } => {
                    log.lock().unwrap().push(("state".into(), last_committed));
                    Ok(Response::GetClientState { last_committed_sequence: last_committed })
                }
                Request::Write { sequence, client_id, operations, .. } => {
                    assert!(client_id.starts_with("cli-"));
                    let Operation::DeleteEntity { key } = &operations[0] else { panic!() };
                    log.lock().unwrap().push((key.clone(), sequence));
                    writes += 1;
                    match writes {
                        1 => Err(Status::unavailable("election")),
                        2 => {
                            replies.push(Reply::Goaway(GoawayCode::Shutdown, "restart"));
                            break;
                        }
                        3 => {
                            last_committed = sequence;
                            Ok(Response::Write(WriteResult::Success(success(1))))
                        }
                        4 => Ok(Response::Write(WriteResult::Error(write_error(
                            WriteErrorCode::AlreadyCommitted,
                        )))),
                        5 => {
                            last_committed = 9;
                            Ok(Response::Write(WriteResult::Error(write_error(WriteErrorCode::SequenceGap))))
                        }
                        6 => {
                            last_committed = sequence;
                            Ok(Response::Write(WriteResult::Success(success(2))))
                        }
                        _ => {
                            Ok(Response::Write(WriteResult::Error(write_error(WriteErrorCode::KeyNotFound))))
                        }
                    }
                }
                _ => panic!("unexpected request"),
            };
            replies.push(Reply::Responses(vec![ResponseEnvelope { request_id, result, leader_hint: None }]));
        }
        replies
    });
    let (addr, seen) = fake_server(1024, handler).await;
    let client = Client::connect(addr, fast_options()).await.unwrap();
    let policy = RetryPolicy {
        base: Duration::from_millis(1),
        cap: Duration::from_millis(4),
        max_attempts: 5,
        jitter: true,
    };
    let mut session = WriteSession::new(client, 1, Some(2)).with_retry_policy(policy).with_rng_seed(7);
    let delete = |key: &str| vec![Operation::DeleteEntity { key: key.into() }];

    let outcome = session.write(delete("a")).await.unwrap();
    assert!(matches!(outcome, WriteOutcome::Committed { sequence: 4, .. }), "{outcome:?}");
    let outcome = session.write(delete("b")).await.unwrap();
    assert!(matches!(outcome, WriteOutcome::AlreadyCommitted { sequence: 5, .. }), "{outcome:?}");
    let outcome = session.write(delete("c")).await.unwrap();
    assert!(matches!(outcome, WriteOutcome::Committed { sequence: 10, .. }), "{outcome:?}");
    let outcome = session.write(delete("d")).await.unwrap();
    assert!(matches!(outcome, WriteOutcome::Rejected(WriteError { code: WriteErrorCode::KeyNotFound, .. })));
    assert_eq!(session.next_sequence(), Some(11));

    let expected: Vec<(String, u64)> =
        [("state", 3), ("a", 4), ("a", 4), ("a", 4), ("b", 5), ("c", 6), ("state", 9), ("c", 10), ("d", 11)]
            .iter()
            .map(|(k, s)| (k.to_string(), *s))
            .collect();
    assert_eq!(*script.lock().unwrap(), expected);
    assert_eq!(seen.lock().unwrap().connections, 2);
}

#[test]
fn t25_retry_policy_backoff_is_capped_and_jittered() {
    // Proves the SPEC §6.4 schedule: 10 ms × 2^n capped at 2 s, jitter within [d/2, d].
    let policy = RetryPolicy::default();
    let mut rng = rand::rngs::mock::StepRng::new(0, 0);
    let exact = RetryPolicy { jitter: false, ..policy };
    assert_eq!(exact.delay(0, &mut rng), Duration::from_millis(10));
    assert_eq!(exact.delay(3, &mut rng), Duration::from_millis(80));
    assert_eq!(exact.delay(8, &mut rng), Duration::from_secs(2));
    assert_eq!(exact.delay(40, &mut rng), Duration::from_secs(2));
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
    for attempt in 0..12 {
        let full = exact.delay(attempt, &mut rng);
        let jittered = policy.delay(attempt, &mut rng);
        assert!(jittered >= full / 2 && jittered <= full, "{attempt}: {jittered:?} vs {full:?}");
    }
    assert_eq!(policy.max_attempts, 10);
}

#[tokio::test]
async fn t26_ping_is_answered_and_a_bad_frame_closes_the_connection() {
    // Proves the client answers a server Ping with a Pong carrying the same nonce, and that a
    // garbage frame fails the pending call with a Protocol error and shuts the socket down (the
    // server sees end-of-stream) instead of leaving a half-open connection.
    let handler: Handler = Box::new(|items| {
        let mut replies = Vec::new();
        for envelope in items {
            let Request::GetClientState { client_id, .. } = &envelope.request else { panic!() };
            if client_id == "garbage" {
                replies.push(Reply::Raw(b"NOT A FRAME AT ALL".to_vec()));
            } else {
                let mut ping = Vec::new();
                encode_frame(FrameKind::Ping, &Ping { nonce: 77 }, &mut ping).unwrap();
                replies.push(Reply::Raw(ping));
                replies.push(Reply::Responses(vec![echo_state(&envelope)]));
            }
        }
        replies
    });
    let (addr, seen) = fake_server(1024, handler).await;
    let client = Client::connect(addr, fast_options()).await.unwrap();
    assert_eq!(
        client.call(state_request("5")).await.unwrap(),
        Response::GetClientState { last_committed_sequence: 5 }
    );
    let e = client.call(state_request("garbage")).await.unwrap_err();
    assert!(matches!(e, ClientError::Protocol(_)), "{e:?}");
    assert!(!e.is_retryable());
    for _ in 0..200 {
        if seen.lock().unwrap().eofs == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.pongs, vec![77]);
    assert_eq!(seen.eofs, 1);
}

#[tokio::test]
async fn t40_a_request_too_large_for_a_frame_fails_alone() {
    // Proves a request whose frame would exceed the server's max_frame_bytes is never sent: the
    // call fails with RequestTooLarge (not retryable, not a lost connection), and the same
    // connection then answers a normal call.
    let handler: Handler = Box::new(|items| vec![Reply::Responses(items.iter().map(echo_state).collect())]);
    let (addr, seen) = fake_server(1024, handler).await;
    let client = Client::connect(addr, fast_options()).await.unwrap();
    let huge = "9".repeat(MAX_FRAME_BYTES_DEFAULT as usize);
    let e = client.call(state_request(&huge)).await.unwrap_err();
    assert!(matches!(e, ClientError::RequestTooLarge { max: MAX_FRAME_BYTES_DEFAULT, .. }), "{e:?}");
    assert!(!e.is_retryable());
    assert!(!e.is_connection_lost());
    assert_eq!(
        client.call(state_request("3")).await.unwrap(),
        Response::GetClientState { last_committed_sequence: 3 }
    );
    assert_eq!(seen.lock().unwrap().batch_sizes, vec![1]);
}

#[tokio::test]
async fn t41_call_idempotent_backs_off_on_retryable_errors() {
    // Proves Client::call_idempotent retries Unavailable and ResourceExhausted with a growing
    // pause (not a tight loop) until an answer, and returns a non-retryable error at once.
    let attempts = Arc::new(Mutex::new(Vec::<std::time::Instant>::new()));
    let log = Arc::clone(&attempts);
    let handler: Handler = Box::new(move |items| {
        let mut log = log.lock().unwrap();
        log.push(std::time::Instant::now());
        let result = match (log.len(), &items[0].request) {
            (_, Request::GetTip { .. }) => Err(Status::invalid("no")),
            (1, _) => Err(Status::unavailable("electing")),
            (2, _) => Err(Status::exhausted("queue full")),
            _ => return vec![Reply::Responses(vec![echo_state(&items[0])])],
        };
        vec![Reply::Responses(vec![ResponseEnvelope {
            request_id: items[0].request_id,
            result,
            leader_hint: None,
        }])]
    });
    let (addr, _seen) = fake_server(1024, handler).await;
    let client = Client::connect(addr, fast_options()).await.unwrap();
    let policy = RetryPolicy { base: Duration::from_millis(20), jitter: false, ..RetryPolicy::default() };
    let response = client.call_idempotent(state_request("8"), &policy).await.unwrap();
    assert_eq!(response, Response::GetClientState { last_committed_sequence: 8 });
    {
        let log = attempts.lock().unwrap();
        assert_eq!(log.len(), 3);
        assert!(log[1] - log[0] >= Duration::from_millis(20));
        assert!(log[2] - log[1] >= Duration::from_millis(40));
    }
    let tip = Request::GetTip { namespace_id: 1, vault_id: None };
    let e = client.call_idempotent(tip, &policy).await.unwrap_err();
    assert!(matches!(e, ClientError::Status { code: StatusCode::InvalidArgument, .. }), "{e:?}");
    assert_eq!(attempts.lock().unwrap().len(), 4);
}

#[tokio::test]
async fn t42_frames_up_to_the_announced_limit_are_accepted() {
    // Proves the client accepts response frames up to the max_frame_bytes the server announced
    // even when its own option is smaller (the server bounds its frames by what it announced),
    // instead of dropping the connection on the first large reply.
    let handler: Handler = Box::new(|items| {
        let replies = items
            .iter()
            .map(|e| ResponseEnvelope {
                request_id: e.request_id,
                leader_hint: None,
                result: Ok(Response::Read { value: Some(vec![5u8; 200_000]), block_height: 1, stale: false }),
            })
            .collect();
        vec![Reply::Responses(replies)]
    });
    let (addr, _seen) = fake_server(1024, handler).await;
    let options = ClientOptions { max_frame_bytes: 64 * 1024, ..fast_options() };
    let client = Client::connect(addr, options).await.unwrap();
    let value = client.read(1, None, "k").await.unwrap();
    assert_eq!(value.map(|v| v.len()), Some(200_000));
    assert!(client.closed_reason().is_none());
}

#[tokio::test]
async fn t43_a_write_only_refused_keeps_its_sequence_and_waits_the_hint() {
    // Proves D44 in WriteSession: a write refused with ResourceExhausted + RetryAfter is retried
    // no sooner than the hint; a write whose every attempt was refused leaves its sequence to
    // the next transaction (it was never queued), while one that also met Unavailable (maybe
    // applied) does not.
    let script = Arc::new(Mutex::new(Vec::<(String, u64)>::new()));
    let log = Arc::clone(&script);
    let mut writes = 0u32;
    let refused = || {
        let mut status = Status::exhausted("over the rate limit");
        status.detail = Some(crate::messages::ErrorDetail::RetryAfter { ms: 30 });
        status
    };
    let handler: Handler = Box::new(move |items| {
        let mut replies = Vec::new();
        for envelope in items {
            let request_id = envelope.request_id;
            let result = match envelope.request {
                Request::GetClientState { .. } => Ok(Response::GetClientState { last_committed_sequence: 0 }),
                Request::Write { sequence, operations, .. } => {
                    let Operation::DeleteEntity { key } = &operations[0] else { panic!() };
                    log.lock().unwrap().push((key.clone(), sequence));
                    writes += 1;
                    match writes {
                        1..=3 => Err(refused()),
                        4 => Err(Status::unavailable("election")),
                        5 => Err(refused()),
                        _ => Ok(Response::Write(WriteResult::Success(success(1)))),
                    }
                }
                _ => panic!("unexpected request"),
            };
            replies.push(Reply::Responses(vec![ResponseEnvelope { request_id, result, leader_hint: None }]));
        }
        replies
    });
    let (addr, _seen) = fake_server(1024, handler).await;
    let client = Client::connect(addr, fast_options()).await.unwrap();
    let policy = RetryPolicy {
        base: Duration::from_millis(1),
        cap: Duration::from_millis(2),
        max_attempts: 2,
        jitter: false,
    };
    let mut session = WriteSession::new(client, 1, Some(2)).with_retry_policy(policy).with_rng_seed(7);
    let delete = |key: &str| vec![Operation::DeleteEntity { key: key.into() }];

    let started = std::time::Instant::now();
    let e = session.write(delete("a")).await.unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::from_millis(30)));
    assert!(started.elapsed() >= Duration::from_millis(30), "retried before the hint");
    assert_eq!(session.next_sequence(), Some(1), "a refused sequence is free again");
    session.write(delete("b")).await.unwrap_err();
    assert_eq!(session.next_sequence(), Some(2), "after Unavailable the sequence may be taken");
    let outcome = session.write(delete("c")).await.unwrap();
    assert!(matches!(outcome, WriteOutcome::Committed { sequence: 2, .. }), "{outcome:?}");
    let expected: Vec<(String, u64)> = [("a", 1), ("a", 1), ("b", 1), ("b", 1), ("c", 2), ("c", 2)]
        .iter()
        .map(|(k, s)| (k.to_string(), *s))
        .collect();
    assert_eq!(*script.lock().unwrap(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn t44_calls_released_by_one_answer_leave_together() {
    // Proves the writer lets ready callers queue before it writes: 32 callers each answered by one
    // ResponseBatch send their next requests in at most two frames, not one frame each (a
    // caller's send wakes the writer into the runtime's next slot, ahead of the other callers).
    const CALLERS: usize = 32;
    let mut held: Vec<RequestEnvelope> = Vec::new();
    let handler: Handler = Box::new(move |items| {
        held.extend(items);
        if held.len() < CALLERS {
            return Vec::new();
        }
        vec![Reply::Responses(held.drain(..).map(|e| echo_state(&e)).collect())]
    });
    let (addr, seen) = fake_server(1024, handler).await;
    let client = Client::connect(addr, fast_options()).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..CALLERS as u64 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..2 {
                let response = client.call(state_request(&i.to_string())).await.unwrap();
                assert_eq!(response, Response::GetClientState { last_committed_sequence: i });
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let seen = seen.lock().unwrap();
    // Frames up to the first CALLERS requests are the first round; the rest the second.
    let mut sent = 0;
    let first_round = seen.batch_sizes.iter().take_while(|&&n| {
        sent += n;
        sent <= CALLERS
    });
    let second_round = &seen.batch_sizes[first_round.count()..];
    assert_eq!(second_round.iter().sum::<usize>(), CALLERS, "{:?}", seen.batch_sizes);
    assert!(second_round.len() <= 2, "one frame per caller: {:?}", seen.batch_sizes);
}
