//! TLS for client and peer connections (issue 17 items 2 and 6, D43), against real server
//! processes with certificates generated at test time (`ledger_tests::tls::TestPki`).

use ledger_core::types::ReadConsistency;
use ledger_tests::cluster::Cluster;
use ledger_tests::raw::READ_GUARD;
use ledger_tests::scope::{retry_transient, set};
use ledger_tests::tls::TestPki;
use ledger_tests::{binary, temp_dir, ServerProcess};
use ledger_wire::client::{Client, ClientOptions};
use ledger_wire::error::ClientError;
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

const NODE_FLAGS: &[&str] = &["--cores", "1"];

fn flags<'a>(pki_flags: &'a [String], extra: &[&'a str]) -> Vec<&'a str> {
    let mut all: Vec<&str> = NODE_FLAGS.to_vec();
    all.extend(pki_flags.iter().map(String::as_str));
    all.extend_from_slice(extra);
    all
}

async fn connect_with(addr: &str, options: ClientOptions) -> Result<Client, ClientError> {
    let options = ClientOptions { connect_timeout: Duration::from_secs(10), ..options };
    Client::connect(addr, options).await
}

/// Writes `key` = `value` through `client` (as client `writer`, sequence 1) and reads it back
/// with a linearizable read on the same connection.
async fn write_and_read(client: &Client, namespace: &str, writer: &str) -> i64 {
    let (namespace_id, _) =
        retry_transient(|| client.create_namespace(namespace)).await.expect("create namespace");
    let ops = vec![set("k", b"v".to_vec())];
    retry_transient(|| client.write(namespace_id, None, writer, 1, ops.clone())).await.expect("write");
    let value = retry_transient(|| client.read_with(namespace_id, None, "k", ReadConsistency::Linearizable))
        .await
        .expect("read");
    assert_eq!(value.as_deref(), Some(&b"v"[..]));
    namespace_id
}

/// Runs a workspace CLI; returns (exit code, stdout, stderr).
fn run(bin: &str, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(binary(bin)).args(args).output().expect("run CLI");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// One node with TLS: a client trusting its CA writes and reads (the library and both CLIs); a
/// plain-TCP client and a client trusting another CA are refused, and the node serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t01_single_node_tls_serves_trusting_clients_only() {
    let pki = TestPki::generate();
    let dir = temp_dir("tls-single");
    let server_flags = pki.server_flags(false);
    let server = ServerProcess::start(&dir.path().join("n"), &flags(&server_flags, &[]));

    let client = connect_with(&server.addr, pki.client_options()).await.expect("TLS client connects");
    let namespace_id = write_and_read(&client, "tls-one", "w1").await;

    let plain = connect_with(&server.addr, ClientOptions::default()).await;
    assert!(plain.is_err(), "a plain-TCP client got through: {plain:?}");

    let stranger = connect_with(&server.addr, pki.options_with(&pki.other_ca, None)).await;
    let error = stranger.expect_err("a client trusting another CA connected").to_string();
    assert!(error.contains("certificate"), "{error}");

    // The refused connections left the node and the first connection alone.
    let value = client.read(namespace_id, None, "k").await.expect("read on the first connection");
    assert_eq!(value.as_deref(), Some(&b"v"[..]));
    let again = connect_with(&server.addr, pki.client_options()).await.expect("TLS client connects again");
    write_and_read(&again, "tls-again", "w2").await;

    let ca = pki.ca.display().to_string();
    let (code, out, err) =
        run("ledger", &["--addr", &server.addr, "--tls-ca", &ca, "namespace", "create", "cli-ns"]);
    assert_eq!(code, 0, "ledger over TLS: {out}{err}");
    let (code, out, err) = run("ledger-admin", &["--addr", &server.addr, "--tls-ca", &ca, "health"]);
    assert_eq!(code, 0, "ledger-admin over TLS: {out}{err}");
    let (code, _, err) = run("ledger", &["--addr", &server.addr, "namespace", "list"]);
    assert_ne!(code, 0, "ledger without --tls-ca got an answer");
    assert!(!err.is_empty());
    drop(server);
}

/// Mutual TLS: a client without a certificate, or with one from another CA, is refused; one
/// with a certificate signed by the client CA writes and reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t02_mutual_tls_requires_a_client_certificate_of_the_client_ca() {
    let pki = TestPki::generate();
    let dir = temp_dir("tls-mutual");
    let server_flags = pki.server_flags(true);
    let server = ServerProcess::start(&dir.path().join("n"), &flags(&server_flags, &[]));

    let anonymous = connect_with(&server.addr, pki.client_options()).await;
    assert!(anonymous.is_err(), "a client without a certificate got through: {anonymous:?}");
    let stranger = pki.options_with(&pki.ca, Some((&pki.stranger_cert, &pki.stranger_key)));
    let stranger = connect_with(&server.addr, stranger).await;
    assert!(stranger.is_err(), "a client certificate of another CA got through: {stranger:?}");

    let client =
        connect_with(&server.addr, pki.client_options_with_cert()).await.expect("client with a certificate");
    write_and_read(&client, "tls-mutual", "w1").await;

    let (ca, cert, key) = (
        pki.ca.display().to_string(),
        pki.client_cert.display().to_string(),
        pki.client_key.display().to_string(),
    );
    let base = ["--addr", server.addr.as_str(), "--tls-ca", ca.as_str()];
    let (code, _, _) = run("ledger-admin", &[&base[..], &["health"]].concat());
    assert_ne!(code, 0, "ledger-admin without a client certificate got an answer");
    let with_cert = [&base[..], &["--tls-cert", cert.as_str(), "--tls-key", key.as_str(), "health"]].concat();
    let (code, out, err) = run("ledger-admin", &with_cert);
    assert_eq!(code, 0, "ledger-admin with a client certificate: {out}{err}");
    drop(server);
}

/// Three nodes over mutual TLS (bootstrap, Raft and forwarding all over TLS): a write sent to
/// each node, followers included, is readable on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t03_three_node_cluster_over_mutual_tls() {
    let pki = TestPki::generate();
    let server_flags = pki.server_flags(true);
    let cluster = Cluster::start(3, &flags(&server_flags, &["--requests-timeout-secs", "5"]));
    // No leader routing: each write goes to the node it is sent to, so two of the three are
    // forwarded by a follower to the leader over a peer connection.
    let options = || ClientOptions { follow_leaders: false, ..pki.client_options_with_cert() };
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(connect_with(cluster.addr(i), options()).await.expect("connect to a node"));
    }
    let (namespace_id, _) =
        retry_transient(|| clients[0].create_namespace("tls-cluster")).await.expect("create namespace");
    for (i, client) in clients.iter().enumerate() {
        let ops = vec![set(format!("k{i}"), format!("v{i}").into_bytes())];
        retry_transient(|| client.write(namespace_id, None, format!("writer-{i}"), 1, ops.clone()))
            .await
            .unwrap_or_else(|e| panic!("write through node {i}: {e}\n{}", cluster.stderr(i)));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for (n, client) in clients.iter().enumerate() {
        for i in 0..3 {
            let key = format!("k{i}");
            // Eventual reads answer from the node's own replica: wait for it to apply.
            loop {
                let value =
                    retry_transient(|| client.read(namespace_id, None, key.clone())).await.expect("read");
                if value.as_deref() == Some(format!("v{i}").as_bytes()) {
                    break;
                }
                assert!(Instant::now() < deadline, "node {n} never showed {key}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    drop(cluster);
}

/// Garbage instead of a TLS ClientHello: that connection is closed with at most a TLS alert
/// (never a protocol frame), and the node keeps serving a connection opened before it and a new
/// one after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t04_garbage_instead_of_a_client_hello_closes_only_that_connection() {
    let pki = TestPki::generate();
    let dir = temp_dir("tls-garbage");
    let server_flags = pki.server_flags(false);
    let server = ServerProcess::start(&dir.path().join("n"), &flags(&server_flags, &[]));
    let before = connect_with(&server.addr, pki.client_options()).await.expect("TLS client");
    write_and_read(&before, "before", "w1").await;

    for garbage in
        [&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5][..]]
    {
        let mut raw = std::net::TcpStream::connect(&server.addr).expect("connect");
        raw.set_read_timeout(Some(READ_GUARD)).expect("read timeout");
        raw.write_all(garbage).expect("send garbage");
        let mut answer = Vec::new();
        match raw.read_to_end(&mut answer) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("the connection was not closed: {e}"),
        }
        // Nothing, or TLS alert records (content type 21).
        assert!(answer.is_empty() || answer[0] == 0x15, "answered {answer:02x?}");
    }

    write_and_read(&before, "before-2", "w2").await;
    let after = connect_with(&server.addr, pki.client_options()).await.expect("TLS client after garbage");
    write_and_read(&after, "after", "w3").await;
    drop(server);
}

/// A connection that never finishes its TLS handshake is closed by the handshake timeout (2 s
/// here, D46), not held open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t05_a_silent_handshake_is_closed() {
    let pki = TestPki::generate();
    let dir = temp_dir("tls-silent");
    let server_flags = pki.server_flags(false);
    let server = ServerProcess::start(
        &dir.path().join("n"),
        &flags(&server_flags, &["--handshake-timeout-secs", "2"]),
    );
    let mut raw = std::net::TcpStream::connect(&server.addr).expect("connect");
    raw.set_read_timeout(Some(READ_GUARD)).expect("read timeout");
    let mut answer = Vec::new();
    match raw.read_to_end(&mut answer) {
        Ok(_) => assert!(answer.is_empty(), "answered {answer:02x?}"),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the silent connection was not closed: {e}"),
    }
    drop(server);
}

/// TLS settings that cannot work stop the server at start, naming the problem.
#[test]
fn t06_unreadable_tls_files_stop_the_server() {
    let pki = TestPki::generate();
    let dir = temp_dir("tls-bad");
    let missing = dir.path().join("missing.pem").display().to_string();
    let key = pki.node_key.display().to_string();
    let (code, _, err) = ledger_tests::run_server_to_exit(
        &dir.path().join("n"),
        &["--cores", "1", "--tls-cert", &missing, "--tls-key", &key],
        Duration::from_secs(30),
    );
    assert_ne!(code, Some(0));
    assert!(err.contains("missing.pem"), "{err}");
    let cert = pki.node_cert.display().to_string();
    let (code, _, err) = ledger_tests::run_server_to_exit(
        &dir.path().join("n2"),
        &["--cores", "1", "--tls-cert", &cert],
        Duration::from_secs(30),
    );
    assert_ne!(code, Some(0));
    assert!(err.contains("tls_key"), "{err}");
}

/// D80: a TLS client over `max_connections` is told why in a `Goaway{TooManyConnections}` sent
/// over TLS, not a plain frame it would see as a broken handshake; once the slot is free a TLS
/// client is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t06_a_tls_client_over_max_connections_gets_a_typed_goaway() {
    use ledger_wire::messages::GoawayCode;
    let pki = TestPki::generate();
    let dir = temp_dir("tls-max-connections");
    let server_flags = pki.server_flags(false);
    let server =
        ServerProcess::start(&dir.path().join("data"), &flags(&server_flags, &["--max-connections", "1"]));
    let held = connect_with(&server.addr, pki.client_options()).await.expect("the one slot");
    write_and_read(&held, "tls-held", "held").await;
    match connect_with(&server.addr, pki.client_options()).await {
        Err(ClientError::Goaway { code: GoawayCode::TooManyConnections, message }) => {
            assert!(message.contains("max_connections (1)"), "{message}")
        }
        Err(other) => panic!("a TLS client over the limit saw {other}"),
        Ok(_) => panic!("a TLS client over the limit was served"),
    }
    held.close();
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(30);
    let fresh = loop {
        match connect_with(&server.addr, pki.client_options()).await {
            Ok(fresh) => break fresh,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("the slot never came free: {e}"),
        }
    };
    write_and_read(&fresh, "tls-fresh", "fresh").await;
    server.stop();
}
