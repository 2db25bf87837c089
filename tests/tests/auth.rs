//! Token authentication (issue 17 item 1 and the wrong-token case of item 6; SPEC §4.1, §11.1;
//! D42) on real servers: missing and unknown credentials, scopes, the actor recorded, peers, the
//! raw peer role, SIGHUP rotation, secrets kept out of the log, and the CLIs' `--token-file`.

use ledger_core::types::Block;
use ledger_tests::cluster::Cluster;
use ledger_tests::scope::{connect_with_token, retry_transient, set, tip};
use ledger_tests::{ledger_admin_with, ledger_cli_env, write_file, ServerProcess};
use ledger_wire::client::Client;
use ledger_wire::error::ClientError;
use ledger_wire::messages::{NamespaceSelector, Request, Response, StatusCode, WriteResult, WriteSuccess};
use std::path::Path;
use std::time::{Duration, Instant};

const NODE: &str = "node-secret-4f9a1c2e7b";
const RO: &str = "ro-secret-0d3e8a5c91";
const OPS: &str = "ops-secret-7c2b9e4f60";
const APP: &str = "app-secret-1a6d3f8b27";
const UNKNOWN: &str = "nobody-secret-5e8c2a9d";
const NEW: &str = "new-secret-9b4e7d1c3a";
const SCOPED: &str = "scoped-secret-2f7a4c8e";

/// Guard for polling after a SIGHUP: not a timing assertion, a bound on a hang.
const RELOAD_GUARD: Duration = Duration::from_secs(20);

fn base_tokens() -> String {
    format!(
        "[auth_tokens]\nnode = \"{NODE}\"\n\
         [auth_tokens.ro]\nsecret = \"{RO}\"\n\
         [auth_tokens.ops]\nsecret = \"{OPS}\"\nadmin = true\n\
         [auth_tokens.app]\nsecret = \"{APP}\"\naccess = \"read-write\"\n"
    )
}

fn code_of<T: std::fmt::Debug>(result: Result<T, ClientError>) -> StatusCode {
    match result {
        Err(ClientError::Status { code, .. }) => code,
        other => panic!("expected a status, got {other:?}"),
    }
}

async fn write(
    client: &Client,
    namespace_id: i64,
    client_id: &str,
    sequence: u64,
) -> Result<WriteSuccess, ClientError> {
    match client
        .write(namespace_id, None, client_id, sequence, vec![set(format!("k{sequence}"), "v")])
        .await?
    {
        WriteResult::Success(success) => Ok(success),
        WriteResult::Error(e) => panic!("write rejected: {e:?}"),
    }
}

/// Block `height` of the namespace scope, waiting while the node asked (a follower, in a
/// cluster) has not applied it yet.
async fn block(client: &Client, namespace_id: i64, height: u64) -> Block {
    let deadline = Instant::now() + RELOAD_GUARD;
    loop {
        match client.call(Request::GetBlock { namespace_id, vault_id: None, height }).await {
            Ok(Response::GetBlock { block, .. }) => return block,
            Err(ClientError::Status { code: StatusCode::NotFound, .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => panic!("GetBlock: {other:?}"),
        }
    }
}

fn assert_no_secret(log: &str) {
    for secret in [NODE, RO, OPS, APP, UNKNOWN, NEW, SCOPED] {
        assert!(!log.contains(secret), "secret {secret} in the server's log");
    }
}

fn start(dir: &Path, config: &Path) -> ServerProcess {
    let config = config.to_str().expect("utf-8 path");
    ServerProcess::start(&dir.join("n"), &["--cores", "1", "--config", config, "--log-level", "debug"])
}

/// No credential or an unknown one: `Unauthenticated` on every request, the connection stays
/// open, nothing is written, other connections are served. Scopes: read-only, admin, and the
/// actor is the token id whatever the write's client id.
#[tokio::test]
async fn t01_missing_unknown_and_scoped_tokens() {
    let dir = ledger_tests::temp_dir("auth-scopes");
    let config = write_file(dir.path(), "ledger.toml", &base_tokens());
    let server = start(dir.path(), &config);
    let node = connect_with_token(&server.addr, Some(NODE), true).await;
    let (namespace_id, _) = node.create_namespace("acme").await.expect("create namespace");
    let before = tip(&node, namespace_id, None).await;

    for secret in [None, Some(UNKNOWN)] {
        let client = connect_with_token(&server.addr, secret, true).await;
        for _ in 0..2 {
            assert_eq!(code_of(client.call(Request::GetNodeInfo).await), StatusCode::Unauthenticated);
            assert_eq!(
                code_of(write(&client, namespace_id, "intruder", 1).await),
                StatusCode::Unauthenticated
            );
            assert_eq!(code_of(client.create_namespace("evil").await), StatusCode::Unauthenticated);
            assert_eq!(code_of(client.read(namespace_id, None, "k1").await), StatusCode::Unauthenticated);
        }
        // The authenticated connection is unaffected.
        node.call(Request::GetNodeInfo).await.expect("node token still served");
    }
    assert_eq!(tip(&node, namespace_id, None).await, before, "nothing was written");
    let named = node.get_namespace(NamespaceSelector::Name("evil".into())).await;
    assert_eq!(code_of(named), StatusCode::NotFound);

    // Read-only: reads yes, writes and registry changes no.
    let ro = connect_with_token(&server.addr, Some(RO), true).await;
    assert_eq!(ro.read(namespace_id, None, "k1").await.expect("ro reads"), None);
    ro.call(Request::ListVaults).await.expect("ro lists");
    assert_eq!(code_of(write(&ro, namespace_id, "ro", 1).await), StatusCode::PermissionDenied);
    assert_eq!(code_of(ro.create_namespace("ro-ns").await), StatusCode::PermissionDenied);
    // Admin without write access: registry yes, data no.
    let ops = connect_with_token(&server.addr, Some(OPS), true).await;
    ops.create_namespace("ops-ns").await.expect("admin creates a namespace");
    assert_eq!(code_of(write(&ops, namespace_id, "ops", 1).await), StatusCode::PermissionDenied);
    // Read-write, not admin.
    let app = connect_with_token(&server.addr, Some(APP), true).await;
    assert_eq!(code_of(app.create_namespace("app-ns").await), StatusCode::PermissionDenied);
    assert_eq!(tip(&node, namespace_id, None).await, before, "refused writes wrote nothing");

    // The actor is the token id, never the client's say.
    let success = write(&app, namespace_id, "client-chosen-id", 1).await.expect("app writes");
    assert_eq!(success.actor, "client:app");
    let block = block(&node, namespace_id, success.block_height).await;
    let tx = block.transactions.iter().find(|tx| tx.client_id == "client-chosen-id").expect("the write");
    assert_eq!(tx.actor, "client:app");

    // ledger-admin and ledger take the token from a file (flag or environment).
    let ops_file = write_file(dir.path(), "ops.token", &format!("  {OPS}\n"));
    let (code, out, err) = ledger_admin_with(&server.addr, 10, Some(&ops_file), &["namespace", "list"]);
    assert_eq!(code, 0, "stdout {out} stderr {err}");
    assert!(out.contains("acme"), "{out}");
    let (code, _, err) = ledger_admin_with(&server.addr, 10, None, &["namespace", "list"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("Unauthenticated"), "{err}");
    let app_file = write_file(dir.path(), "app.token", APP);
    let env = [("LEDGER_TOKEN_FILE", app_file.as_path())];
    let (code, out, err) = ledger_cli_env(&server.addr, &env, &["set", "--namespace", "acme", "cli", "v"]);
    assert_eq!(code, 0, "stdout {out} stderr {err}");
    let (code, _, err) = ledger_cli_env(&server.addr, &[], &["set", "--namespace", "acme", "cli", "v"]);
    assert_ne!(code, 0, "{err}");

    drop((node, ro, ops, app));
    let log = server.stderr();
    assert!(log.contains("node_started"), "the log was written: {log}");
    assert_no_secret(&log);
}

/// A raw `Role::Peer` Hello without the peer token is refused (per request, the connection
/// stays); with a client token it is denied; with the peer token the call reaches the group.
#[test]
fn t02_peer_role_needs_the_peer_token() {
    use ledger_tests::raw::RawConn;
    use ledger_wire::codec::encode_frame_to_vec;
    use ledger_wire::frame::FrameKind;
    use ledger_wire::messages::{
        Hello, RequestBatch, RequestEnvelope, ResponseBatch, Role, PROTOCOL_VERSION,
    };
    use ledger_wire::peer::{PeerRequest, WireVote};
    let dir = ledger_tests::temp_dir("auth-peer");
    let config = write_file(dir.path(), "ledger.toml", &base_tokens());
    let server = start(dir.path(), &config);
    let append = encode_frame_to_vec(
        FrameKind::RequestBatch,
        &RequestBatch {
            items: vec![RequestEnvelope {
                request_id: 1,
                deadline_ms: 0,
                on_behalf_of: None,
                request: Request::Peer(Box::new(PeerRequest::AppendEntries {
                    group_id: 0,
                    vote: WireVote { term: 99, node_id: 7, committed: true },
                    prev_log_id: None,
                    entries: vec![vec![0xff; 40]],
                    leader_commit: None,
                })),
            }],
        },
    )
    .expect("encode");
    let answer = |credential: Option<&str>| -> Vec<Option<StatusCode>> {
        let mut peer = RawConn::connect(&server.addr);
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            role: Role::Peer,
            node_id: Some(7),
            client_name: "fake-peer".into(),
            credential: credential.map(str::to_string),
            namespace_hint: None,
        };
        peer.send(&encode_frame_to_vec(FrameKind::Hello, &hello).expect("hello")).expect("send");
        assert_eq!(peer.next_frame().expect("HelloAck").kind(), FrameKind::HelloAck);
        // Twice: the refusal is per request, the connection lives on.
        (0..2)
            .map(|_| {
                peer.send(&append).expect("send");
                let batch: ResponseBatch = peer.next_frame().expect("a response").decode().expect("batch");
                batch.items.into_iter().next().expect("one item").result.err().map(|s| s.code)
            })
            .collect()
    };
    let unauthenticated = Some(StatusCode::Unauthenticated);
    assert_eq!(answer(None), [unauthenticated; 2]);
    assert_eq!(answer(Some(UNKNOWN)), [unauthenticated; 2]);
    assert_eq!(answer(Some(APP)), [Some(StatusCode::PermissionDenied); 2]);
    // The peer token gets through to the group, which refuses the garbage entries.
    assert_eq!(answer(Some(NODE)), [Some(StatusCode::InvalidArgument); 2]);
    assert_no_secret(&server.stderr());
}

/// SIGHUP re-reads `auth_tokens`: a new token works and a removed one is refused, on new and
/// already open connections, without a restart; a namespace-scoped token stays in its list.
#[tokio::test]
async fn t03_sighup_rotates_tokens() {
    let dir = ledger_tests::temp_dir("auth-rotate");
    let config = write_file(dir.path(), "ledger.toml", &base_tokens());
    let server = start(dir.path(), &config);
    let node = connect_with_token(&server.addr, Some(NODE), true).await;
    let (a, _) = node.create_namespace("a").await.expect("create a");
    let (b, _) = node.create_namespace("b").await.expect("create b");
    let old = connect_with_token(&server.addr, Some(APP), true).await;
    write(&old, a, "old", 1).await.expect("app writes before the rotation");
    let fresh = connect_with_token(&server.addr, Some(NEW), true).await;
    assert_eq!(code_of(fresh.call(Request::GetNodeInfo).await), StatusCode::Unauthenticated);

    // `app` removed, `new` and a token for namespace `a` only added.
    let rotated = format!(
        "[auth_tokens]\nnode = \"{NODE}\"\nnew = \"{NEW}\"\n\
         [auth_tokens.scoped]\nsecret = \"{SCOPED}\"\nnamespaces = [{a}]\naccess = \"read-write\"\n"
    );
    write_file(dir.path(), "ledger.toml", &rotated);
    server.sighup();
    let deadline = Instant::now() + RELOAD_GUARD;
    // The connection opened before the reload is checked again on its next request.
    while fresh.call(Request::GetNodeInfo).await.is_err() {
        assert!(Instant::now() < deadline, "the new token was never accepted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(code_of(old.call(Request::GetNodeInfo).await), StatusCode::Unauthenticated);
    let reconnected = connect_with_token(&server.addr, Some(APP), true).await;
    assert_eq!(code_of(write(&reconnected, a, "old", 2).await), StatusCode::Unauthenticated);
    write(&fresh, a, "fresh", 1).await.expect("the new token writes");

    let scoped = connect_with_token(&server.addr, Some(SCOPED), true).await;
    write(&scoped, a, "scoped", 1).await.expect("in its namespace");
    assert_eq!(code_of(write(&scoped, b, "scoped", 1).await), StatusCode::PermissionDenied);
    assert_eq!(code_of(scoped.read(b, None, "k1").await), StatusCode::PermissionDenied);
    let list = Request::ListNamespaces { page_token: String::new(), page_size: 10 };
    assert_eq!(code_of(scoped.call(list).await), StatusCode::PermissionDenied);
    assert_eq!(tip(&node, b, None).await.height, 0, "nothing written to b");

    // A file that no longer loads keeps the tokens in force.
    write_file(dir.path(), "ledger.toml", "[auth_tokens]\nnode = \"short\"\n");
    server.sighup();
    let deadline = Instant::now() + RELOAD_GUARD;
    while !server.stderr().contains("auth_reload_failed") {
        assert!(Instant::now() < deadline, "the failed reload was never reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    write(&fresh, a, "fresh", 2).await.expect("the tokens in force stay");
    assert_no_secret(&server.stderr());
}

/// Three nodes with one `auth_tokens`: the peers authenticate to each other with the peer
/// token, and a write sent to any node (forwarded by followers) is recorded with the actor of
/// the client's token.
#[tokio::test]
async fn t04_cluster_peers_authenticate_and_forwarded_writes_keep_the_actor() {
    let dir = ledger_tests::temp_dir("auth-cluster");
    let config = write_file(dir.path(), "ledger.toml", &base_tokens());
    let config = config.to_str().expect("utf-8 path");
    let flags = ["--cores", "1", "--requests-timeout-secs", "5", "--config", config, "--log-level", "debug"];
    let cluster = Cluster::start(3, &flags);
    let node = connect_with_token(cluster.addr(0), Some(NODE), true).await;
    let (namespace_id, _) =
        retry_transient(|| node.create_namespace("acme")).await.expect("create namespace through the peers");
    for i in 0..3 {
        // Followers forward (no leader following): the leader records the client's token id.
        let app = connect_with_token(cluster.addr(i), Some(APP), false).await;
        let client_id = format!("someone-{i}");
        let success =
            retry_transient(|| write(&app, namespace_id, &client_id, 1)).await.expect("write through node");
        assert_eq!(success.actor, "client:app", "node {i}");
        let block = block(&node, namespace_id, success.block_height).await;
        let tx = block.transactions.iter().find(|tx| tx.client_id == client_id).expect("the write");
        assert_eq!(tx.actor, "client:app", "node {i}");
        // A client without a token is refused by followers too (before any forwarding).
        let anonymous = connect_with_token(cluster.addr(i), None, false).await;
        assert_eq!(code_of(write(&anonymous, namespace_id, "anon", 1).await), StatusCode::Unauthenticated);
    }
    for i in 0..3 {
        assert_no_secret(&cluster.stderr(i));
    }
}
