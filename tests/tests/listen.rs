//! One address, one server (SPEC §4.1: one listening socket per node; issue 12 item 2, D26): a
//! second `ledger-server` on an address in use exits at start with a clear error, and a server
//! restarted right after `kill -9` takes its address back once the killed one's socket is gone.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ledger_tests::scope::{connect, create_scope, read_linearizable, retry_transient, set};
use ledger_tests::{run_server_to_exit_on, temp_dir, ServerProcess};
use ledger_wire::messages::WriteResult;

/// Longer than the server's wait for an address in use (`LISTEN_IN_USE_WAIT`, 5 s) plus a
/// fresh node's start, shorter than the harness's start timeout.
const REFUSED_EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Kill-and-restart rounds in t02: the killed process's socket outlives it by a varying time.
const RESTARTS: usize = 3;
/// Clients t01 opens on the first server after the refusal: more than its cores, so that every
/// core's accept has been exercised on the shared socket.
const CLIENTS: usize = 6;

#[tokio::test]
async fn t01_second_server_on_an_address_in_use_exits_non_zero() {
    // Proves a second server with its own data directory cannot take an address in use: it
    // exits with code 1 within the bound, its stderr names the address, it never says
    // "listening on", and the first server keeps serving writes and reads on every connection.
    // (Before D26 the second server joined the first one's SO_REUSEPORT group, listened and
    // never exited: this test timed out.)
    let dir = temp_dir("listen-t01");
    let first = ServerProcess::start(&dir.path().join("first"), &["--cores", "2"]);
    let started = Instant::now();
    let (code, stdout, stderr) = run_server_to_exit_on(
        &dir.path().join("second"),
        &first.addr,
        &["--cores", "1"],
        REFUSED_EXIT_TIMEOUT,
    );
    let elapsed = started.elapsed();
    assert_eq!(code, Some(1), "stdout {stdout:?} stderr {stderr:?}");
    assert!(
        stderr.contains(&format!("address {} is already in use by another process", first.addr)),
        "stderr: {stderr}"
    );
    assert!(!stdout.contains("listening on"), "second server listened: {stdout}");
    assert!(elapsed < REFUSED_EXIT_TIMEOUT, "took {elapsed:?}");

    let client = connect(&first.addr).await;
    let (namespace_id, vault_id) = create_scope(&client, "one-address").await;
    let result =
        client.write(namespace_id, Some(vault_id), "c", 1, vec![set("k", b"v".to_vec())]).await.unwrap();
    assert!(matches!(result, WriteResult::Success(_)), "{result:?}");
    for _ in 0..CLIENTS {
        let other = connect(&first.addr).await;
        assert_eq!(other.read(namespace_id, Some(vault_id), "k").await.unwrap().as_deref(), Some(&b"v"[..]));
    }
    drop(client);
    assert_eq!(first.stop(), Some(0));
}

#[tokio::test]
async fn t02_restart_after_kill9_takes_the_same_address() {
    // Proves a server restarted at once on the address and data directory of one killed with
    // `kill -9` (a client still connected) comes up on that address and serves the data written
    // before, over several rounds: the restart waits, bounded, for the dead process's socket.
    let dir = temp_dir("listen-t02");
    let data = dir.path().join("data");
    // A port outside the ephemeral range: another test's outgoing connection could take a
    // port-0 one while this server is down.
    let addr = ledger_tests::ports::free_addr();
    let mut server = ServerProcess::start_on(&data, &addr, &["--cores", "2"]);
    let client = connect(&addr).await;
    let (namespace_id, vault_id) = create_scope(&client, "restart").await;
    drop(client);
    for round in 0..RESTARTS {
        let client = connect(&addr).await;
        let key = format!("k{round}");
        let result = retry_transient(|| {
            client.write(
                namespace_id,
                Some(vault_id),
                "c",
                round as u64 + 1,
                vec![set(key.clone(), b"v".to_vec())],
            )
        })
        .await
        .unwrap();
        assert!(matches!(result, WriteResult::Success(_)), "round {round}: {result:?}");
        server.kill9();
        let started = Instant::now();
        server = ServerProcess::start_on(&data, &addr, &["--cores", "2"]);
        eprintln!("round {round}: restarted on {addr} after {:?}", started.elapsed());
        assert_eq!(server.addr, addr, "round {round}");
        drop(client);
        let client = connect(&addr).await;
        for earlier in 0..=round {
            let value =
                read_linearizable(&client, namespace_id, Some(vault_id), &format!("k{earlier}")).await;
            assert_eq!(value.as_deref(), Some(&b"v"[..]), "round {round}: k{earlier}");
        }
    }
    assert_eq!(server.stop(), Some(0));
}
