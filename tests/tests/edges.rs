//! Bad input at the edges of a real server (issue 17 item 6): each case gets a typed answer,
//! writes nothing and leaves other connections serving. A peer call from a client connection is
//! cluster.rs t07; a wrong token is auth.rs; a TLS handshake with garbage is tls.rs.
#![allow(clippy::unwrap_used)]

use ledger_tests::raw::{frame_bytes, Ending, RawConn};
use ledger_tests::scope::{connect, create_scope, set, tip};
use ledger_tests::{temp_dir, ServerProcess};
use ledger_wire::codec::{encode_frame_to_vec, FrameReader};
use ledger_wire::error::ClientError;
use ledger_wire::frame::FrameKind;
use ledger_wire::messages::{
    Goaway, GoawayCode, Request, RequestBatch, RequestEnvelope, ResponseBatch, StatusCode,
};
use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn expect_goaway(ending: Ending, code: GoawayCode) -> Goaway {
    match ending {
        Ending::Goaway(goaway) => {
            assert_eq!(goaway.code, code, "wrong Goaway: {goaway:?}");
            goaway
        }
        Ending::Closed => panic!("connection closed without Goaway (expected {code:?})"),
    }
}

async fn write_one(client: &ledger_wire::Client, ns: i64, vault: i64, client_id: &str, key: &str) {
    let mut session = ledger_wire::client::WriteSession::new(client.clone(), ns, Some(vault))
        .with_client_id(client_id.to_string())
        .with_rng_seed(11);
    let outcome = session.write(vec![set(key, b"v".to_vec())]).await.expect("write");
    assert!(matches!(outcome, ledger_wire::client::WriteOutcome::Committed { .. }), "{outcome:?}");
}

#[tokio::test]
async fn e01_16_mib_frame_of_junk_after_a_valid_header() {
    // Proves a frame of exactly max_frame_bytes (16 MiB) whose header is valid (magic, version,
    // length, checksum of the body) but whose body is junk earns Goaway{ProtocolError} on that
    // connection only: the scope's tip does not move and a client connected before goes on
    // writing.
    let dir = temp_dir("edges-e01");
    let server = ServerProcess::start(&dir.path().join("data"), &["--cores", "1"]);
    let client = connect(&server.addr).await;
    let (ns, vault) = create_scope(&client, "e01").await;
    write_one(&client, ns, vault, "e01-before", "before").await;
    let before = tip(&client, ns, Some(vault)).await;

    let addr = server.addr.clone();
    let ending = tokio::task::spawn_blocking(move || {
        let (mut conn, ack) = RawConn::connect_with_hello(&addr);
        assert_eq!(ack.max_frame_bytes, 16 * 1024 * 1024, "the default limit");
        // Deterministic junk: no valid archive starts like this.
        let junk: Vec<u8> =
            (0..ack.max_frame_bytes as usize).map(|i| (i.wrapping_mul(31) % 251) as u8).collect();
        let _ = conn.send(&frame_bytes(FrameKind::RequestBatch, &junk));
        conn.ending()
    })
    .await
    .unwrap();
    expect_goaway(ending, GoawayCode::ProtocolError);

    assert_eq!(tip(&client, ns, Some(vault)).await, before, "a junk frame changed the scope");
    write_one(&client, ns, vault, "e01-after", "after").await;
    server.stop();
}

#[tokio::test]
async fn e02_on_behalf_of_from_a_client_is_permission_denied() {
    // Proves a client cannot choose the actor of its writes through the envelope field peers use
    // to forward (`on_behalf_of`): the request is PermissionDenied, nothing is written, and the
    // same connection's next request is served.
    let dir = temp_dir("edges-e02");
    let server = ServerProcess::start(&dir.path().join("data"), &["--cores", "1"]);
    let client = connect(&server.addr).await;
    let (ns, vault) = create_scope(&client, "e02").await;
    let before = tip(&client, ns, Some(vault)).await;

    let addr = server.addr.clone();
    let codes = tokio::task::spawn_blocking(move || {
        let (mut conn, _ack) = RawConn::connect_with_hello(&addr);
        let write = |request_id, on_behalf_of: Option<String>| {
            let request = Request::Write {
                namespace_id: ns,
                vault_id: Some(vault),
                client_id: "e02".into(),
                sequence: 1,
                operations: vec![set("k", b"v".to_vec())],
                include_tx_proof: false,
            };
            let items = vec![RequestEnvelope { request_id, deadline_ms: 0, on_behalf_of, request }];
            encode_frame_to_vec(FrameKind::RequestBatch, &RequestBatch { items }).unwrap()
        };
        let answer = |conn: &mut RawConn| {
            let batch: ResponseBatch = conn.next_frame().expect("a response").decode().unwrap();
            batch.items.into_iter().next().unwrap().result.err().map(|s| s.code)
        };
        conn.send(&write(1, Some("admin".into()))).unwrap();
        let forged = answer(&mut conn);
        conn.send(
            &encode_frame_to_vec(
                FrameKind::RequestBatch,
                &RequestBatch {
                    items: vec![RequestEnvelope {
                        request_id: 2,
                        deadline_ms: 0,
                        on_behalf_of: None,
                        request: Request::GetNodeInfo,
                    }],
                },
            )
            .unwrap(),
        )
        .unwrap();
        let next = answer(&mut conn);
        (forged, next)
    })
    .await
    .unwrap();
    assert_eq!(codes.0, Some(StatusCode::PermissionDenied), "a client's on_behalf_of");
    assert_eq!(codes.1, None, "the connection serves its next request");
    assert_eq!(tip(&client, ns, Some(vault)).await, before, "the refused write changed the scope");
    server.stop();
}

/// What the server did with one raw socket that sent nothing.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    /// Accepted and served: nothing to read yet.
    Open,
    /// Told why and closed.
    Refused(Goaway),
}

/// Reads without blocking what the server sent on `socket` so far.
fn fate(socket: &mut TcpStream) -> Fate {
    socket.set_nonblocking(true).unwrap();
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match socket.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock && bytes.is_empty() => return Fate::Open,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("read: {e}"),
        }
    }
    let mut reader = FrameReader::new(1 << 20);
    let mut input: &[u8] = &bytes;
    let frame = reader.read_from(&mut input).unwrap().expect("a whole frame before the close");
    assert_eq!(frame.kind(), FrameKind::Goaway);
    Fate::Refused(frame.decode::<Goaway>().unwrap())
}

#[tokio::test]
async fn e03_ten_thousand_idle_connections_are_bounded_by_max_connections() {
    // Proves 10,000 idle sockets cost the node at most `max_connections` served connections:
    // the rest are each told Goaway{TooManyConnections} with a message naming the setting, a
    // client connected before keeps writing, a new client is refused with that typed error, and
    // once the idle sockets close a new client is served again.
    const IDLE: usize = 10_000;
    const MAX: usize = 300;
    let dir = temp_dir("edges-e03");
    let flags = ["--cores", "1", "--max-connections", "300", "--handshake-timeout-secs", "600"];
    let server = ServerProcess::start(&dir.path().join("data"), &flags);
    let client = connect(&server.addr).await;
    let (ns, vault) = create_scope(&client, "e03").await;

    let addr = server.addr.clone();
    let (sockets, fates) = tokio::task::spawn_blocking(move || {
        let mut sockets: Vec<TcpStream> = (0..IDLE).map(|_| TcpStream::connect(&addr).unwrap()).collect();
        // Every socket is accepted by now or soon; give the listener time to accept and refuse
        // them all (this bounds the wait, it asserts nothing about speed).
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut fates: Vec<Fate> = sockets.iter().map(|_| Fate::Open).collect();
        loop {
            // A refusal is read once (its bytes are consumed); only open sockets are looked at again.
            for (socket, fate_of) in sockets.iter_mut().zip(fates.iter_mut()) {
                if *fate_of == Fate::Open {
                    *fate_of = fate(socket);
                }
            }
            let open = fates.iter().filter(|f| **f == Fate::Open).count();
            if open < MAX || Instant::now() > deadline {
                return (sockets, fates);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await
    .unwrap();
    let open = fates.iter().filter(|f| **f == Fate::Open).count();
    // The client connected first holds one slot.
    assert_eq!(open, MAX - 1, "served idle connections");
    for fate in &fates {
        if let Fate::Refused(goaway) = fate {
            assert_eq!(goaway.code, GoawayCode::TooManyConnections, "{goaway:?}");
            assert!(goaway.message.contains("max_connections (300)"), "{}", goaway.message);
        }
    }

    write_one(&client, ns, vault, "e03-held", "held").await;
    match ledger_wire::Client::connect(server.addr.as_str(), ledger_wire::ClientOptions::default()).await {
        Err(ClientError::Goaway { code: GoawayCode::TooManyConnections, .. }) => {}
        Err(other) => panic!("a client over the limit: {other}"),
        Ok(_) => panic!("a client over the limit was served"),
    }

    drop(sockets);
    // The server frees a slot when it reads each closed socket's end; a new client gets one.
    let deadline = Instant::now() + Duration::from_secs(60);
    let fresh = loop {
        match ledger_wire::Client::connect(server.addr.as_str(), ledger_wire::ClientOptions::default()).await
        {
            Ok(fresh) => break fresh,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("no slot came free after the idle sockets closed: {e}"),
        }
    };
    write_one(&fresh, ns, vault, "e03-fresh", "fresh").await;
    server.stop();
}

#[test]
fn e04_a_socket_that_never_says_hello_is_closed_after_the_handshake_timeout() {
    // Proves a connection that sends nothing does not hold its slot for the idle timeout: it gets
    // Goaway{Idle} naming the handshake timeout, and the node goes on serving.
    let dir = temp_dir("edges-e04");
    let flags = ["--cores", "1", "--handshake-timeout-secs", "1", "--idle-timeout-secs", "300"];
    let server = ServerProcess::start(&dir.path().join("data"), &flags);
    let mut conn = RawConn::connect(&server.addr);
    let goaway = expect_goaway(conn.ending(), GoawayCode::Idle);
    assert!(goaway.message.contains("handshake timeout"), "{}", goaway.message);
    let (_conn, ack) = RawConn::connect_with_hello(&server.addr);
    assert_eq!(ack.protocol_version, 1);
    server.stop();
}
