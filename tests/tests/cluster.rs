//! The cluster (SPEC §10, issue 14): three real `ledger-server` processes on one machine,
//! bootstrapped with `--bootstrap-expect 3 --peers …`. Every test ends by checking that every
//! acknowledged write is on every replica and that the replicas agree on each scope's tip
//! height, block hash and state root (SPEC §12 invariants 1–3, 14, 24–26).

// `ONE_CLUSTER`'s guard is held for a whole test on purpose; each test runs on a runtime of its
// own, so no task of the same runtime ever waits for it.
#![allow(clippy::await_holding_lock)]

use ledger_core::types::ReadConsistency;
use ledger_tests::cluster::Cluster;
use ledger_tests::scope::{connect, create_scope, retry_transient, set, tip, walk_chain, ScopeTip};
use ledger_wire::client::{Client, RetryPolicy, WriteOutcome, WriteSession};
use ledger_wire::messages::{Request, Response, StatusCode};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One cluster at a time: each test starts three or four server processes, and several clusters
/// at once on two CPUs would starve elections into flakiness.
static ONE_CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_cluster() -> std::sync::MutexGuard<'static, ()> {
    ONE_CLUSTER.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One core per node: three nodes share this machine's two CPUs.
const NODE_FLAGS: &[&str] = &["--cores", "1", "--requests-timeout-secs", "5"];
/// For the tests that add nodes to three and expect each data group on every node: a
/// replication factor above the cluster's size (SPEC §10.5; the default is 3).
const EVERY_NODE_FLAGS: &[&str] =
    &["--cores", "1", "--requests-timeout-secs", "5", "--replication-factor", "9"];

/// An acknowledged write: `key` = `value` in the scope.
#[derive(Debug, Clone)]
struct Ack {
    vault_id: Option<i64>,
    key: String,
    value: Vec<u8>,
}

fn patient() -> RetryPolicy {
    RetryPolicy {
        base: Duration::from_millis(20),
        cap: Duration::from_millis(200),
        max_attempts: 100,
        jitter: true,
    }
}

/// The node id each node reports.
async fn node_ids(cluster: &Cluster, live: &[usize]) -> BTreeMap<u64, usize> {
    let mut ids = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    for &i in live {
        let client = connect(cluster.addr(i)).await;
        // A member learns it is one when the leader's first append reaches it.
        loop {
            match client.call(Request::GetNodeInfo).await.expect("GetNodeInfo") {
                Response::GetNodeInfo { node_id, is_cluster_member: true, .. } => {
                    ids.insert(node_id, i);
                    break;
                }
                Response::GetNodeInfo { .. } => {
                    assert!(Instant::now() < deadline, "node {i} never became a member of group 0");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    ids
}

/// The index of the node that built the scope's newest block (its group's leader then).
async fn leader_of(
    client: &Client,
    ids: &BTreeMap<u64, usize>,
    namespace_id: i64,
    vault_id: Option<i64>,
) -> usize {
    let tip = tip(client, namespace_id, vault_id).await;
    let request = Request::GetBlock { namespace_id, vault_id, height: tip.height };
    let Response::GetBlock { block, .. } = client.call(request).await.expect("GetBlock") else {
        panic!("unexpected GetBlock answer")
    };
    *ids.get(&block.header.leader_id).expect("the leader is a member")
}

/// Writes `count` keys `{tag}:{n}` through a session on `addr`; returns the acknowledged ones.
async fn write_keys(
    addr: &str,
    namespace_id: i64,
    vault_id: Option<i64>,
    tag: &str,
    count: usize,
) -> Vec<Ack> {
    let mut session = WriteSession::new(connect(addr).await, namespace_id, vault_id)
        .with_client_id(format!("writer-{tag}"))
        .with_retry_policy(patient());
    let mut acks = Vec::new();
    for n in 0..count {
        let (key, value) = (format!("{tag}:{n}"), format!("v-{tag}-{n}").into_bytes());
        match session.write(vec![set(key.clone(), value.clone())]).await.expect("write") {
            WriteOutcome::Committed { .. } | WriteOutcome::AlreadyCommitted { .. } => {
                acks.push(Ack { vault_id, key, value })
            }
            WriteOutcome::Rejected(e) => panic!("unconditional write rejected: {e:?}"),
        }
    }
    acks
}

/// Waits until every live node reports the same tip for every scope, then checks that every
/// acknowledged write reads back on every node (eventual reads: each node's own replica), and
/// that each node's chain is continuous and ends at that tip.
async fn assert_converged(
    cluster: &Cluster,
    live: &[usize],
    scopes: &[(i64, Option<i64>)],
    acks: &[Ack],
    namespace_id: i64,
) -> BTreeMap<(i64, Option<i64>), ScopeTip> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let clients: Vec<Client> = futures_join(live.iter().map(|&i| connect(cluster.addr(i)))).await;
    // A node that just restarted answers from its checkpoint until it learns the commit index
    // and re-applies its log (stale, never wrong): wait until every replica shows every
    // acknowledged write, then compare the tips.
    let vault_scope = scopes.iter().find(|s| s.0 == namespace_id && s.1.is_some()).and_then(|s| s.1);
    for (client, &i) in clients.iter().zip(live) {
        for scope in [None, vault_scope] {
            let keys: Vec<String> =
                acks.iter().filter(|a| a.vault_id == scope).map(|a| a.key.clone()).collect();
            for chunk in keys.chunks(500) {
                loop {
                    let items = client
                        .batch_read(namespace_id, scope, chunk.to_vec(), ReadConsistency::Eventual)
                        .await
                        .expect("batch read");
                    if items.iter().all(|item| item.value.is_some()) {
                        break;
                    }
                    assert!(Instant::now() < deadline, "node {i} never showed every acknowledged write");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    let mut agreed = BTreeMap::new();
    for &(ns, vault) in scopes {
        loop {
            let mut tips = Vec::new();
            for client in &clients {
                tips.push(tip(client, ns, vault).await);
            }
            if tips.windows(2).all(|w| w[0] == w[1]) {
                agreed.insert((ns, vault), tips[0]);
                break;
            }
            assert!(Instant::now() < deadline, "replicas never agreed on ({ns}, {vault:?}): {tips:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for (client, &i) in clients.iter().zip(live) {
        for &(ns, vault) in scopes {
            // Registry upkeep may add `_system` blocks meanwhile: the agreed tip must be in the
            // node's (continuous) chain with the agreed hash and root.
            let chain = walk_chain(client, ns, vault).await;
            let want = agreed[&(ns, vault)];
            let block = chain
                .get(&want.height)
                .unwrap_or_else(|| panic!("node {i}: ({ns}, {vault:?}) lacks {want:?}"));
            assert_eq!(
                ledger_core::hash::block_hash(&block.header),
                want.block_hash,
                "node {i}: ({ns}, {vault:?})"
            );
            assert_eq!(block.header.state_root, want.state_root, "node {i}: ({ns}, {vault:?})");
        }
        for scope in [None, scopes.iter().find(|s| s.0 == namespace_id && s.1.is_some()).and_then(|s| s.1)] {
            let scoped: Vec<&Ack> = acks.iter().filter(|a| a.vault_id == scope).collect();
            for chunk in scoped.chunks(500) {
                let keys: Vec<String> = chunk.iter().map(|a| a.key.clone()).collect();
                let items = client
                    .batch_read(namespace_id, scope, keys, ReadConsistency::Eventual)
                    .await
                    .expect("batch read");
                for (ack, item) in chunk.iter().zip(items) {
                    assert_eq!(
                        item.value.as_deref(),
                        Some(&ack.value[..]),
                        "node {i} lacks acknowledged {ack:?}"
                    );
                }
            }
        }
    }
    agreed
}

async fn futures_join<F: std::future::Future<Output = Client>>(futs: impl Iterator<Item = F>) -> Vec<Client> {
    let mut out = Vec::new();
    for f in futs {
        out.push(f.await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t01_three_nodes_form_one_cluster_serve_from_any_node_and_restart() {
    let _one = one_cluster();
    // Two data groups, so that the spread of their first leaders shows.
    let flags: Vec<&str> = NODE_FLAGS.iter().copied().chain(["--groups-per-core", "2"]).collect();
    let mut cluster = Cluster::start(3, &flags);
    let ids = node_ids(&cluster, &[0, 1, 2]).await;
    assert_eq!(ids.len(), 3, "three distinct members");
    // Registry changes through a follower or the leader alike.
    let admin = connect(cluster.addr(1)).await;
    let (namespace_id, vault_id) = create_scope(&admin, "acme").await;
    let scopes = [(0, None), (namespace_id, None), (namespace_id, Some(vault_id))];
    // Writes through every node (forwarded to the leader where needed), to both scopes.
    let mut acks = Vec::new();
    for i in 0..3 {
        acks.extend(write_keys(cluster.addr(i), namespace_id, Some(vault_id), &format!("v{i}"), 20).await);
        acks.extend(write_keys(cluster.addr(i), namespace_id, None, &format!("n{i}"), 5).await);
    }
    // A linearizable read on any node sees the last write at once (forwarded to the leader).
    for i in 0..3 {
        let client = connect(cluster.addr(i)).await;
        let value = client
            .read_with(namespace_id, Some(vault_id), "v2:19", ReadConsistency::Linearizable)
            .await
            .expect("linearizable read");
        assert_eq!(value.as_deref(), Some(&b"v-v2-19"[..]), "node {i}");
    }
    let before = assert_converged(&cluster, &[0, 1, 2], &scopes, &acks, namespace_id).await;
    // Verified reads work on every replica: eventual ones from its own state, proven against
    // its own header (checked by the client library), and linearizable ones through the leader.
    for i in 0..3 {
        let client = connect(cluster.addr(i)).await;
        for consistency in [ReadConsistency::Eventual, ReadConsistency::Linearizable] {
            let options = ledger_wire::client::VerifiedReadOptions {
                at_height: None,
                trusted: None,
                consistency: Some(consistency),
            };
            let read = client
                .verified_read(namespace_id, Some(vault_id), "v1:7", options)
                .await
                .expect("verified read");
            assert_eq!(read.value.as_deref(), Some(&b"v-v1-7"[..]), "node {i} {consistency:?}");
        }
    }
    // Data groups are led by different nodes (leaderships start spread, D30).
    let client = connect(cluster.addr(0)).await;
    let (ns2, _) = client.create_namespace("second").await.expect("second namespace");
    write_keys(cluster.addr(0), ns2, None, "s", 1).await;
    let leaders =
        [leader_of(&client, &ids, namespace_id, None).await, leader_of(&client, &ids, ns2, None).await];
    let groups = [
        client
            .get_namespace(ledger_wire::messages::NamespaceSelector::Id(namespace_id))
            .await
            .expect("ns")
            .group_id,
        client.get_namespace(ledger_wire::messages::NamespaceSelector::Id(ns2)).await.expect("ns").group_id,
    ];
    assert_ne!(groups[0], groups[1], "two namespaces went to one group of two");
    assert_ne!(leaders[0], leaders[1], "groups {groups:?} are both led by node {}", leaders[0]);
    // All three killed and restarted (in another order): the same cluster, nothing lost.
    for i in [2, 0, 1] {
        cluster.kill9(i);
    }
    cluster.start_nodes(&[1, 2, 0]);
    let after = assert_converged(&cluster, &[0, 1, 2], &scopes, &acks, namespace_id).await;
    for scope in &scopes {
        assert!(after[scope].height >= before[scope].height, "{scope:?} went backwards");
    }
    acks.extend(write_keys(cluster.addr(2), namespace_id, Some(vault_id), "after", 10).await);
    assert_converged(&cluster, &[0, 1, 2], &scopes, &acks, namespace_id).await;
}

/// Writers on the two nodes that stay up, writing until told to stop; each records its acks.
fn spawn_writers(
    addrs: Vec<String>,
    namespace_id: i64,
    vault_id: i64,
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
    first_ack_after: Arc<Mutex<Option<Instant>>>,
    killed_at: Arc<Mutex<Option<Instant>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    addrs
        .into_iter()
        .enumerate()
        .map(|(w, addr)| {
            let (stop, acks, first, killed) =
                (stop.clone(), acks.clone(), first_ack_after.clone(), killed_at.clone());
            tokio::spawn(async move {
                let mut session = WriteSession::new(connect(&addr).await, namespace_id, Some(vault_id))
                    .with_client_id(format!("load-{w}"))
                    .with_retry_policy(patient());
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let (key, value) = (format!("load{w}:{n}"), format!("x{n}").into_bytes());
                    n += 1;
                    let sent = Instant::now();
                    match session.write(vec![set(key.clone(), value.clone())]).await {
                        Ok(WriteOutcome::Committed { .. } | WriteOutcome::AlreadyCommitted { .. }) => {
                            acks.lock().expect("acks").push(Ack { vault_id: Some(vault_id), key, value });
                            let killed = *killed.lock().expect("kill time");
                            if let Some(k) = killed {
                                if sent >= k {
                                    first.lock().expect("first").get_or_insert_with(Instant::now);
                                }
                            }
                        }
                        Ok(WriteOutcome::Rejected(e)) => panic!("unconditional write rejected: {e:?}"),
                        Err(e) => panic!("writer {w} gave up: {e}"),
                    }
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t02_leader_killed_under_load_fails_over_and_rejoins_identical() {
    let _one = one_cluster();
    let mut cluster = Cluster::start(3, NODE_FLAGS);
    let ids = node_ids(&cluster, &[0, 1, 2]).await;
    let admin = connect(cluster.addr(0)).await;
    let (namespace_id, vault_id) = create_scope(&admin, "failover").await;
    write_keys(cluster.addr(0), namespace_id, Some(vault_id), "warm", 3).await;
    let leader = leader_of(&admin, &ids, namespace_id, Some(vault_id)).await;
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let (stop, acks) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
    let (first_after, killed_at) = (Arc::new(Mutex::new(None)), Arc::new(Mutex::new(None)));
    let addrs: Vec<String> = others.iter().map(|&i| cluster.addr(i).to_string()).collect();
    let writers = spawn_writers(
        addrs,
        namespace_id,
        vault_id,
        stop.clone(),
        acks.clone(),
        first_after.clone(),
        killed_at.clone(),
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let kill = Instant::now();
    cluster.kill9(leader);
    *killed_at.lock().expect("kill time") = Some(kill);
    let deadline = Instant::now() + Duration::from_secs(20);
    while first_after.lock().expect("first").is_none() {
        assert!(Instant::now() < deadline, "no write succeeded within 20 s of killing the leader");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let gap = first_after.lock().expect("first").map(|t| t.duration_since(kill)).unwrap_or_default();
    println!(
        "failover gap: kill -9 of the leader → first acknowledged write sent after it: {} ms",
        gap.as_millis()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The killed leader comes back and catches up while the load goes on.
    cluster.restart(leader);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.expect("writer");
    }
    let acks = acks.lock().expect("acks").clone();
    assert!(acks.len() > 10, "only {} writes acknowledged", acks.len());
    let scopes = [(0, None), (namespace_id, None), (namespace_id, Some(vault_id))];
    assert_converged(&cluster, &[0, 1, 2], &scopes, &acks, namespace_id).await;
    // Retried writes were applied once: each writer's sequences in the chain are 1..n.
    let client = connect(cluster.addr(leader)).await;
    let chain = walk_chain(&client, namespace_id, Some(vault_id)).await;
    for w in 0..2 {
        let id = format!("load-{w}");
        let sequences: Vec<u64> = chain
            .values()
            .flat_map(|b| b.transactions.iter())
            .filter(|t| t.client_id == id)
            .map(|t| t.sequence)
            .collect();
        let expected: Vec<u64> = (1..=sequences.len() as u64).collect();
        assert_eq!(sequences, expected, "{id}: a retried write was applied twice or lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t03_majority_lost_writes_unavailable_reads_served_nothing_lost() {
    let _one = one_cluster();
    let mut cluster = Cluster::start(3, NODE_FLAGS);
    let admin = connect(cluster.addr(0)).await;
    let (namespace_id, vault_id) = create_scope(&admin, "majority").await;
    let acks = write_keys(cluster.addr(1), namespace_id, Some(vault_id), "before", 20).await;
    let scopes = [(0, None), (namespace_id, None), (namespace_id, Some(vault_id))];
    assert_converged(&cluster, &[0, 1, 2], &scopes, &acks, namespace_id).await;
    cluster.kill9(0);
    cluster.kill9(1);
    let survivor = connect(cluster.addr(2)).await;
    // A write cannot commit: it answers Unavailable within the request deadline (5 s here).
    let started = Instant::now();
    let request = Request::Write {
        namespace_id,
        vault_id: Some(vault_id),
        client_id: "lonely".into(),
        sequence: 1,
        operations: vec![set("lost?", "no")],
        include_tx_proof: false,
    };
    match survivor.call(request).await {
        Err(ledger_wire::error::ClientError::Status { code, message, .. }) => {
            assert!(
                matches!(
                    code,
                    StatusCode::Unavailable | StatusCode::NotLeader | StatusCode::DeadlineExceeded
                ),
                "{code:?}: {message}"
            )
        }
        other => panic!("a write without a majority answered {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(12), "took {:?}", started.elapsed());
    // A namespace the survivor does not know cannot be confirmed unknown without a leader: it
    // answers a retryable status, not NotFound (its replica may only lag).
    match survivor.read(namespace_id + 1000, None, "k").await {
        Err(ledger_wire::error::ClientError::Status { code, message, .. }) => assert!(
            matches!(code, StatusCode::Unavailable | StatusCode::NotLeader | StatusCode::DeadlineExceeded),
            "{code:?}: {message}"
        ),
        other => panic!("an unconfirmed namespace miss answered {other:?}"),
    }
    // Eventual reads are still served by the survivor.
    let value = survivor.read(namespace_id, Some(vault_id), "before:19").await.expect("eventual read");
    assert_eq!(value.as_deref(), Some(&b"v-before-19"[..]));
    // The majority returns; nothing acknowledged was lost and the cluster writes again.
    cluster.start_nodes(&[0, 1]);
    let mut acks = acks;
    acks.extend(write_keys(cluster.addr(2), namespace_id, Some(vault_id), "after", 10).await);
    assert_converged(&cluster, &[0, 1, 2], &scopes, &acks, namespace_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t04_follower_killed_under_load_catches_up() {
    let _one = one_cluster();
    let mut cluster = Cluster::start(3, NODE_FLAGS);
    let ids = node_ids(&cluster, &[0, 1, 2]).await;
    let admin = connect(cluster.addr(0)).await;
    let (namespace_id, vault_id) = create_scope(&admin, "follower").await;
    write_keys(cluster.addr(0), namespace_id, Some(vault_id), "warm", 3).await;
    let leader = leader_of(&admin, &ids, namespace_id, Some(vault_id)).await;
    let follower = (leader + 1) % 3;
    let writer_node = (leader + 2) % 3;
    let (stop, acks) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
    let writers = spawn_writers(
        vec![cluster.addr(writer_node).to_string(), cluster.addr(leader).to_string()],
        namespace_id,
        vault_id,
        stop.clone(),
        acks.clone(),
        Arc::new(Mutex::new(None)),
        Arc::new(Mutex::new(None)),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.kill9(follower);
    let during = acks.lock().expect("acks").len();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(acks.lock().expect("acks").len() > during, "writes stopped while one follower was down");
    cluster.restart(follower);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.expect("writer");
    }
    let acks = acks.lock().expect("acks").clone();
    let scopes = [(0, None), (namespace_id, None), (namespace_id, Some(vault_id))];
    assert_converged(&cluster, &[0, 1, 2], &scopes, &acks, namespace_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t05_follower_behind_purged_log_is_brought_back_by_snapshot() {
    let _one = one_cluster();
    // A snapshot every 20 log entries and 5 kept behind it: the leader soon purges what a
    // stopped follower still needs.
    let mut flags = NODE_FLAGS.to_vec();
    flags.extend(["--raft-snapshot-logs", "20", "--raft-log-keep", "5"]);
    let mut cluster = Cluster::start(3, &flags);
    let ids = node_ids(&cluster, &[0, 1, 2]).await;
    let admin = connect(cluster.addr(0)).await;
    // A fresh cluster's registry may not list its data group yet (`Unavailable`): retried.
    let (namespace_id, _) =
        retry_transient(|| admin.create_namespace("snapshots")).await.expect("create namespace");
    let vault_id = retry_transient(|| admin.create_vault(namespace_id, None)).await.expect("create vault");
    let mut acks = write_keys(cluster.addr(0), namespace_id, Some(vault_id), "before", 10).await;
    let leader = leader_of(&admin, &ids, namespace_id, Some(vault_id)).await;
    let follower = (leader + 1) % 3;
    cluster.kill9(follower);
    // Far more entries than the threshold and the kept tail, to both scopes of the group.
    acks.extend(write_keys(cluster.addr(leader), namespace_id, Some(vault_id), "down", 120).await);
    acks.extend(write_keys(cluster.addr(leader), namespace_id, None, "down-ns", 30).await);
    let leader_log = cluster.stderr(leader);
    assert!(leader_log.contains("event=snapshot_created"), "the leader never snapshotted");
    cluster.restart(follower);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cluster.stderr(follower).contains("event=snapshot_installed") {
        assert!(
            Instant::now() < deadline,
            "node {follower} was not brought back by a snapshot:\n{}",
            cluster.stderr(follower)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    acks.extend(write_keys(cluster.addr(follower), namespace_id, Some(vault_id), "after", 10).await);
    let scopes = [(0, None), (namespace_id, None), (namespace_id, Some(vault_id))];
    // Every replica's chain is complete from genesis: the follower back-filled its archive.
    assert_converged(&cluster, &[0, 1, 2], &scopes, &acks, namespace_id).await;
    let log = cluster.stderr(follower);
    assert!(log.contains("event=archive_backfilled"), "no archive back-fill:\n{log}");
    assert!(!log.contains("event=backfill_commitment_mismatch"), "{log}");
    assert!(!log.contains("event=snapshot_refused"), "{log}");
    for line in log.lines().filter(|l| l.contains("snapshot") || l.contains("backfill")) {
        println!("node {follower}: {line}");
    }
}

/// Cuts `node` off from the others (both directions, on every node's fault switch), or heals.
async fn partition(cluster: &Cluster, ids: &BTreeMap<u64, usize>, isolated: Option<usize>) {
    let id_of = |i: usize| ids.iter().find(|(_, n)| **n == i).map(|(id, _)| *id).expect("node id");
    for i in 0..cluster.nodes.len() {
        let blocked_nodes = match isolated {
            None => Vec::new(),
            Some(x) if x == i => (0..cluster.nodes.len()).filter(|j| *j != x).map(id_of).collect(),
            Some(x) => vec![id_of(x)],
        };
        let client = connect(cluster.addr(i)).await;
        match client.call(Request::SetPartition { blocked_nodes }).await.expect("SetPartition") {
            Response::SetPartition { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The `stale` flag of an eventual read of `key` on `client`'s node.
async fn stale_flag(client: &Client, namespace_id: i64, vault_id: i64, key: &str) -> bool {
    let request = Request::Read {
        namespace_id,
        vault_id: Some(vault_id),
        key: key.into(),
        consistency: ReadConsistency::Eventual,
    };
    match client.call(request).await.expect("eventual read") {
        Response::Read { stale, .. } => stale,
        other => panic!("unexpected {other:?}"),
    }
}

/// Waits (at most 20 s) until node `i`'s eventual reads carry `stale == want` (SPEC §8.6: set
/// after 2 × the election timeout without a leader, cleared once one is heard again).
async fn await_stale(cluster: &Cluster, i: usize, namespace_id: i64, vault_id: i64, want: bool) {
    let client = connect(cluster.addr(i)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while stale_flag(&client, namespace_id, vault_id, "before:0").await != want {
        assert!(Instant::now() < deadline, "node {i}: reads never said stale = {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t06_partition_majority_commits_minority_cannot_then_heals_and_converges() {
    let _one = one_cluster();
    let flags: Vec<&str> = NODE_FLAGS.iter().copied().chain(["--test-faults", "true"]).collect();
    let cluster = Cluster::start(3, &flags);
    let ids = node_ids(&cluster, &[0, 1, 2]).await;
    let admin = connect(cluster.addr(0)).await;
    let (namespace_id, vault_id) = create_scope(&admin, "partition").await;
    let mut acks = write_keys(cluster.addr(0), namespace_id, Some(vault_id), "before", 10).await;
    let leader = leader_of(&admin, &ids, namespace_id, Some(vault_id)).await;
    let majority: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    partition(&cluster, &ids, Some(leader)).await;
    // The majority side elects a leader of its own and commits.
    acks.extend(write_keys(cluster.addr(majority[0]), namespace_id, Some(vault_id), "majority", 10).await);
    // The minority side cannot commit: its write answers Unavailable (or NotLeader) within the
    // deadline, and its replica still serves (stale) eventual reads.
    let minority = connect(cluster.addr(leader)).await;
    let request = Request::Write {
        namespace_id,
        vault_id: Some(vault_id),
        client_id: "minority".into(),
        sequence: 1,
        operations: vec![set("minority", "must not commit")],
        include_tx_proof: false,
    };
    match minority.call(request).await {
        Err(ledger_wire::error::ClientError::Status { code, message, .. }) => assert!(
            matches!(code, StatusCode::Unavailable | StatusCode::NotLeader | StatusCode::DeadlineExceeded),
            "{code:?}: {message}"
        ),
        other => panic!("a write on the minority side answered {other:?}"),
    }
    let stale = minority.read(namespace_id, Some(vault_id), "before:9").await.expect("eventual read");
    assert_eq!(stale.as_deref(), Some(&b"v-before-9"[..]));
    // Cut off, the old leader has heard from no quorum: its reads say they may be stale; the
    // majority's replicas hear their new leader and say they are not.
    await_stale(&cluster, leader, namespace_id, vault_id, true).await;
    for &i in &majority {
        await_stale(&cluster, i, namespace_id, vault_id, false).await;
    }
    let missing = minority.read(namespace_id, Some(vault_id), "majority:9").await.expect("eventual read");
    assert_eq!(missing, None, "the minority replica saw a write it cannot have received");
    // Healed: the old leader steps down, receives what it missed, and all replicas agree.
    partition(&cluster, &ids, None).await;
    acks.extend(write_keys(cluster.addr(leader), namespace_id, Some(vault_id), "healed", 5).await);
    let scopes = [(0, None), (namespace_id, None), (namespace_id, Some(vault_id))];
    assert_converged(&cluster, &[0, 1, 2], &scopes, &acks, namespace_id).await;
    await_stale(&cluster, leader, namespace_id, vault_id, false).await;
    for i in 0..3 {
        let client = connect(cluster.addr(i)).await;
        let value = client.read(namespace_id, Some(vault_id), "minority").await.expect("read");
        assert_eq!(value, None, "node {i}: the minority's uncommitted write survived the heal");
    }
}

#[test]
fn t07_bad_peer_bytes_are_refused_and_the_node_keeps_serving() {
    let _one = one_cluster();
    use ledger_tests::raw::{frame_bytes, RawConn};
    use ledger_wire::codec::encode_frame_to_vec;
    use ledger_wire::frame::FrameKind;
    use ledger_wire::messages::{
        Hello, RequestBatch, RequestEnvelope, ResponseBatch, Role, PROTOCOL_VERSION,
    };
    use ledger_wire::peer::{PeerRequest, WireVote};
    let dir = ledger_tests::temp_dir("peer-bytes");
    let server = ledger_tests::ServerProcess::start(&dir.path().join("n"), &["--cores", "1"]);
    let append = |entries: Vec<Vec<u8>>| {
        let request = Request::Peer(Box::new(PeerRequest::AppendEntries {
            group_id: 0,
            vote: WireVote { term: 99, node_id: 7, committed: true },
            prev_log_id: None,
            entries,
            leader_commit: None,
        }));
        let batch = RequestBatch {
            items: vec![RequestEnvelope { request_id: 1, deadline_ms: 0, on_behalf_of: None, request }],
        };
        encode_frame_to_vec(FrameKind::RequestBatch, &batch).expect("encode")
    };
    // The answer's status code, or `None` for a success.
    let answer = |conn: &mut RawConn| -> Option<StatusCode> {
        let frame = conn.next_frame().expect("a response");
        let batch: ResponseBatch = frame.decode().expect("a ResponseBatch");
        batch.items.into_iter().next().expect("one item").result.err().map(|s| s.code)
    };
    // A client connection may not make peer calls at all.
    let (mut client, _) = RawConn::connect_with_hello(&server.addr);
    client.send(&append(vec![vec![1, 2, 3]])).expect("send");
    assert_eq!(answer(&mut client), Some(StatusCode::PermissionDenied), "a client's peer call");
    // A peer connection with an entry that does not decode: refused, nothing appended.
    let mut peer = RawConn::connect(&server.addr);
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        role: Role::Peer,
        node_id: Some(7),
        client_name: "fake-peer".into(),
        credential: None,
        namespace_hint: None,
    };
    peer.send(&encode_frame_to_vec(FrameKind::Hello, &hello).expect("hello")).expect("send");
    assert_eq!(peer.next_frame().expect("HelloAck").kind(), FrameKind::HelloAck);
    peer.send(&append(vec![vec![1; 7], vec![0xff; 40]])).expect("send");
    assert_eq!(answer(&mut peer), Some(StatusCode::InvalidArgument), "garbage entries");
    // Bytes that are not a frame close that connection only.
    let _ = peer.send(&frame_bytes(FrameKind::RequestBatch, &[0xAB; 64]));
    // The node still serves, and its group still leads (the fake vote changed nothing it keeps).
    let (code, out, err) = ledger_tests::ledger_cli(&server.addr, &["namespace", "create", "after-garbage"]);
    assert_eq!(code, 0, "stdout {out} stderr {err}");
    let (code, _, err) =
        ledger_tests::ledger_cli(&server.addr, &["set", "--namespace", "after-garbage", "k", "v"]);
    assert_eq!(code, 0, "{err}");
    drop(server);
}

// ------------------------------------------------------------------------------------------
// Linearizability (issue 14 item 8): concurrent puts, deletes, put-if-absent and linearizable
// gets on a few keys, through every node, while a nemesis kills leaders and partitions nodes;
// the recorded history is checked with the Wing–Gong checker of `ledger_tests::linearizability`.
// `LEDGER_LIN_SEEDS` (default 2) runs, `LEDGER_LIN_SECS` (default 6) seconds of load each,
// first seed `LEDGER_LIN_SEED` (default 0x11ea7); `scripts/linearizability.sh` is the long run.

use ledger_tests::linearizability::{KvInput, KvOutput, Recorder, Verdict};

/// splitmix64: small, seedable, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

const LIN_KEYS: u64 = 3;
const LIN_CLIENTS: usize = 4;

/// One client: random operations on `LIN_KEYS` keys through node `addr`, recorded.
async fn lin_client(
    addr: String,
    client: usize,
    seed: u64,
    scope: (i64, i64),
    stop: Arc<AtomicBool>,
    recorder: Recorder,
) -> usize {
    let (namespace_id, vault_id) = scope;
    let mut rng = Rng(seed ^ (client as u64).wrapping_mul(0x5851_F42D_4C95_7F2D));
    let quick = RetryPolicy {
        base: Duration::from_millis(10),
        cap: Duration::from_millis(100),
        max_attempts: 4,
        jitter: true,
    };
    let mut epoch = 0;
    let mut session: Option<WriteSession> = None;
    let mut done = 0;
    while !stop.load(Ordering::SeqCst) {
        if session.is_none() {
            // A fresh client id after any unknown outcome: a retried sequence must never stand
            // for another operation than the one first sent with it.
            epoch += 1;
            match Client::connect(addr.as_str(), Default::default()).await {
                Ok(c) => {
                    session = Some(
                        WriteSession::new(c, namespace_id, Some(vault_id))
                            .with_client_id(format!("lin-{seed:x}-{client}-{epoch}"))
                            .with_retry_policy(quick)
                            .with_rng_seed(rng.next()),
                    )
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let Some(s) = session.as_mut() else { continue };
        let key = format!("k{}", rng.below(LIN_KEYS));
        let value = format!("c{client}-{done}").into_bytes();
        done += 1;
        match rng.below(10) {
            0..=3 => {
                let op = recorder.start(client, key.clone(), KvInput::Get);
                match s
                    .client()
                    .read_with(namespace_id, Some(vault_id), key, ReadConsistency::Linearizable)
                    .await
                {
                    Ok(v) => recorder.finish(op, KvOutput::Value(v)),
                    Err(_) => recorder.discard(op),
                }
            }
            kind => {
                let (input, operation) = match kind {
                    4..=6 => (KvInput::Put(Some(value.clone())), set(key.clone(), value.clone())),
                    7 => {
                        (KvInput::Put(None), ledger_core::types::Operation::DeleteEntity { key: key.clone() })
                    }
                    _ => (
                        KvInput::Cas { expected: None, new: Some(value.clone()) },
                        ledger_tests::scope::set_if(
                            key.clone(),
                            value.clone(),
                            ledger_core::types::SetCondition::MustNotExist,
                        ),
                    ),
                };
                let cas = matches!(input, KvInput::Cas { .. });
                let op = recorder.start(client, key, input);
                match s.write(vec![operation]).await {
                    Ok(WriteOutcome::Committed { .. } | WriteOutcome::AlreadyCommitted { .. }) => {
                        recorder.finish(op, if cas { KvOutput::Cas(true) } else { KvOutput::Ok })
                    }
                    Ok(WriteOutcome::Rejected(e))
                        if cas && e.code == ledger_core::types::WriteErrorCode::KeyExists =>
                    {
                        recorder.finish(op, KvOutput::Cas(false))
                    }
                    // Refused before it was proposed: it did not happen.
                    Ok(WriteOutcome::Rejected(_)) => recorder.discard(op),
                    Err(_) => {
                        recorder.finish_unknown(op);
                        session = None;
                    }
                }
            }
        }
    }
    done
}

/// The nemesis: every ~1.5 s kills the vault's leader (restarting it a second later) or cuts
/// one node off (healing it a second later), as the seed says.
fn nemesis(
    cluster: &mut Cluster,
    ids: &BTreeMap<u64, usize>,
    scope: (i64, i64),
    seed: u64,
    until: Instant,
) -> Vec<String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut rng = Rng(seed ^ 0xDEAD_BEEF);
    let mut log = Vec::new();
    std::thread::sleep(Duration::from_millis(800));
    while Instant::now() + Duration::from_millis(1500) < until {
        let victim = runtime.block_on(async {
            let live = (0..3).find(|i| cluster.nodes[*i].process.is_some()).expect("a live node");
            let client = connect(cluster.addr(live)).await;
            tokio::time::timeout(Duration::from_secs(2), leader_of(&client, ids, scope.0, Some(scope.1)))
                .await
                .unwrap_or(rng.below(3) as usize)
        });
        if rng.below(2) == 0 {
            log.push(format!("kill -9 node {victim}"));
            cluster.kill9(victim);
            std::thread::sleep(Duration::from_millis(1000));
            cluster.restart(victim);
        } else {
            log.push(format!("partition node {victim}"));
            runtime.block_on(partition(cluster, ids, Some(victim)));
            std::thread::sleep(Duration::from_millis(1000));
            runtime.block_on(partition(cluster, ids, None));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t08_histories_under_kills_and_partitions_are_linearizable() {
    let _one = one_cluster();
    let runs = env_u64("LEDGER_LIN_SEEDS", 2);
    let secs = env_u64("LEDGER_LIN_SECS", 6);
    let first = env_u64("LEDGER_LIN_SEED", 0x11ea7);
    for run in 0..runs {
        let seed = first.wrapping_add(run);
        let flags: Vec<&str> = NODE_FLAGS.iter().copied().chain(["--test-faults", "true"]).collect();
        let mut cluster = Cluster::start(3, &flags);
        let ids = node_ids(&cluster, &[0, 1, 2]).await;
        let admin = connect(cluster.addr(0)).await;
        let scope = create_scope(&admin, &format!("lin{run}")).await;
        let (stop, recorder) = (Arc::new(AtomicBool::new(false)), Recorder::new());
        let clients: Vec<_> = (0..LIN_CLIENTS)
            .map(|c| {
                let addr = cluster.addr(c % 3).to_string();
                tokio::spawn(lin_client(addr, c, seed, scope, stop.clone(), recorder.clone()))
            })
            .collect();
        let until = Instant::now() + Duration::from_secs(secs);
        let (cluster_back, log) = tokio::task::spawn_blocking(move || {
            let log = nemesis(&mut cluster, &ids, scope, seed, until);
            (cluster, log)
        })
        .await
        .expect("nemesis");
        let cluster = cluster_back;
        stop.store(true, Ordering::SeqCst);
        let mut ops = 0;
        for c in clients {
            ops += c.await.expect("client");
        }
        let history = recorder.history();
        let verdict = ledger_tests::linearizability::check_kv(&history, 5_000_000);
        println!(
            "linearizability seed {seed:#x}: {ops} operations, {} recorded, faults {log:?}: {verdict}",
            history.len()
        );
        match verdict {
            Verdict::Linearizable => {}
            Verdict::Unknown { key } => {
                println!("seed {seed:#x}: key {key} exceeded the search budget (not judged)")
            }
            Verdict::NotLinearizable { key, explanation } => {
                panic!("seed {seed:#x} (rerun: LEDGER_LIN_SEED={seed} LEDGER_LIN_SEEDS=1): key {key} not linearizable: {explanation}")
            }
        }
        let scopes = [(0, None), (scope.0, None), (scope.0, Some(scope.1))];
        assert_converged(&cluster, &[0, 1, 2], &scopes, &[], scope.0).await;
    }
}

/// Runs `ledger-admin --addr ADDR ARGS…`; returns (exit code, stdout + stderr).
fn admin_cli(addr: &str, args: &[&str]) -> (i32, String) {
    let output = std::process::Command::new(ledger_tests::binary("ledger-admin"))
        .args(["--addr", addr, "--timeout-secs", "60"])
        .args(args)
        .output()
        .expect("run ledger-admin");
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t09_a_node_joins_and_another_leaves_at_runtime() {
    let _one = one_cluster();
    let mut cluster = Cluster::start(3, EVERY_NODE_FLAGS);
    let ids = node_ids(&cluster, &[0, 1, 2]).await;
    let admin = connect(cluster.addr(0)).await;
    let (namespace_id, vault_id) = create_scope(&admin, "membership").await;
    let mut acks = write_keys(cluster.addr(0), namespace_id, Some(vault_id), "before", 20).await;
    // A fourth node in join mode, added by an operator through any member.
    let flags: Vec<&str> = NODE_FLAGS.iter().copied().chain(["--join-by-itself", "false"]).collect();
    let joiner = cluster.start_joining(&flags);
    let joiner_id = match connect(cluster.addr(joiner)).await.call(Request::GetNodeInfo).await.expect("info")
    {
        Response::GetNodeInfo { node_id, is_cluster_member, .. } => {
            assert!(!is_cluster_member, "a node in join mode is not a member until added");
            node_id
        }
        other => panic!("unexpected {other:?}"),
    };
    let id = joiner_id.to_string();
    let (code, out) = admin_cli(cluster.addr(1), &["join", "--node", &id, "--address", cluster.addr(joiner)]);
    assert_eq!(code, 0, "join failed: {out}");
    assert!(out.contains(&format!("node {joiner_id} joined")), "{out}");
    // The registry lists the new member of the namespace's group. Node 0 answers from its own
    // replica of the registry, which may trail the commit by the replication lag (SPEC §8.6).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let by = ledger_wire::messages::NamespaceSelector::Id(namespace_id);
        let info = admin.get_namespace(by).await.expect("ns");
        if info.member_nodes.contains(&joiner_id) {
            break;
        }
        assert!(Instant::now() < deadline, "the registry never listed {joiner_id}: {:?}", info.member_nodes);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    acks.extend(write_keys(cluster.addr(joiner), namespace_id, Some(vault_id), "joined", 10).await);
    let scopes = [(0, None), (namespace_id, None), (namespace_id, Some(vault_id))];
    assert_converged(&cluster, &[0, 1, 2, joiner], &scopes, &acks, namespace_id).await;
    // Node 2 leaves, then stops: the three others go on.
    let leaver = ids.iter().find(|(_, i)| **i == 2).map(|(id, _)| id.to_string()).expect("node 2's id");
    let (code, out) = admin_cli(cluster.addr(joiner), &["leave", "--node", &leaver]);
    assert_eq!(code, 0, "leave failed: {out}");
    cluster.kill9(2);
    acks.extend(write_keys(cluster.addr(0), namespace_id, Some(vault_id), "after-leave", 10).await);
    assert_converged(&cluster, &[0, 1, joiner], &scopes, &acks, namespace_id).await;
    // Down to two voters, removing one more would leave fewer than the quorum: refused.
    let one = ids.iter().find(|(_, i)| **i == 1).map(|(id, _)| id.to_string()).expect("node 1's id");
    let (code, out) = admin_cli(cluster.addr(0), &["leave", "--node", &one]);
    assert_eq!(code, 0, "leave failed: {out}");
    let zero = ids.iter().find(|(_, i)| **i == 0).map(|(id, _)| id.to_string()).expect("node 0's id");
    let (code, out) = admin_cli(cluster.addr(0), &["leave", "--node", &zero]);
    assert_ne!(code, 0, "a leave that breaks the quorum was accepted: {out}");
    assert!(out.contains("WouldBreakQuorum"), "{out}");
    acks.extend(write_keys(cluster.addr(joiner), namespace_id, Some(vault_id), "two-voters", 5).await);
    assert_converged(&cluster, &[0, joiner], &scopes, &acks, namespace_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_a_node_in_join_mode_asks_to_be_added_by_itself() {
    let _one = one_cluster();
    let mut cluster = Cluster::start(3, EVERY_NODE_FLAGS);
    let admin = connect(cluster.addr(0)).await;
    let (namespace_id, vault_id) = create_scope(&admin, "self-join").await;
    let mut acks = write_keys(cluster.addr(0), namespace_id, Some(vault_id), "before", 10).await;
    let joiner = cluster.start_joining(NODE_FLAGS);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cluster.stderr(joiner).contains("event=joined") {
        assert!(Instant::now() < deadline, "the joining node was never added:\n{}", cluster.stderr(joiner));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match connect(cluster.addr(joiner)).await.call(Request::GetNodeInfo).await.expect("GetNodeInfo") {
        Response::GetNodeInfo { is_cluster_member, .. } => {
            assert!(is_cluster_member, "joined but not a member")
        }
        other => panic!("unexpected {other:?}"),
    }
    acks.extend(write_keys(cluster.addr(joiner), namespace_id, Some(vault_id), "after", 10).await);
    let scopes = [(0, None), (namespace_id, None), (namespace_id, Some(vault_id))];
    assert_converged(&cluster, &[0, 1, 2, joiner], &scopes, &acks, namespace_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t11_the_client_learns_the_leader_sends_to_it_and_follows_a_failover() {
    // Issue 14 item 3 (D33): a client connected to a follower has its first write forwarded,
    // learns the leader from the answer's hint and sends the next writes there directly; when
    // that leader dies it goes back through its own node and learns the new one.
    let _one = one_cluster();
    let mut cluster = Cluster::start(3, NODE_FLAGS);
    let ids = node_ids(&cluster, &[0, 1, 2]).await;
    let admin = connect(cluster.addr(0)).await;
    let (namespace_id, vault_id) = create_scope(&admin, "routing").await;
    let mut acks = write_keys(cluster.addr(0), namespace_id, Some(vault_id), "warm", 2).await;
    let leader = leader_of(&admin, &ids, namespace_id, Some(vault_id)).await;
    let home = (0..3).find(|i| *i != leader).expect("a follower");
    let client = connect(cluster.addr(home)).await;
    let mut session = WriteSession::new(client.clone(), namespace_id, Some(vault_id))
        .with_client_id("router-test")
        .with_retry_policy(patient());
    let mut write = |n: usize| {
        let (key, value) = (format!("routed:{n}"), format!("v{n}").into_bytes());
        acks.push(Ack { vault_id: Some(vault_id), key: key.clone(), value: value.clone() });
        vec![set(key, value)]
    };
    session.write(write(0)).await.expect("first write");
    let learned = client.learned_leader(namespace_id).expect("a forwarded write teaches the leader");
    assert_eq!(ids.get(&learned.node_id), Some(&leader), "learned {learned:?}");
    assert_eq!(learned.address, cluster.addr(leader));
    // The side connection opens in the background; once it is up, writes go straight there.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 1;
    while client.routed_calls() == 0 {
        assert!(Instant::now() < deadline, "no call was ever sent to the learned leader");
        session.write(write(n)).await.expect("write");
        n += 1;
    }
    let before = client.routed_calls();
    for _ in 0..20 {
        session.write(write(n)).await.expect("write");
        n += 1;
    }
    assert_eq!(client.routed_calls() - before, 20, "writes after learning went elsewhere");
    // Eventual reads stay on the client's own node.
    let read = Request::Read {
        namespace_id,
        vault_id: Some(vault_id),
        key: "routed:0".into(),
        consistency: ReadConsistency::Eventual,
    };
    client.call(read).await.expect("eventual read");
    assert_eq!(client.routed_calls() - before, 20, "an eventual read went to the leader");

    cluster.kill9(leader);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        session.write(write(n)).await.expect("write after failover");
        n += 1;
        let now = client.learned_leader(namespace_id);
        if now.as_ref().is_some_and(|l| l.node_id != learned.node_id) || now.is_none() {
            // Either another node leads (learned), or this client's own node does (no route).
            break;
        }
        assert!(Instant::now() < deadline, "still routed to the killed leader: {now:?}");
    }
    let live: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let scopes = [(namespace_id, Some(vault_id))];
    assert_converged(&cluster, &live, &scopes, &acks, namespace_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t12_followers_of_an_idle_group_learn_each_commit_without_waiting_for_a_heartbeat() {
    // D58: the leader answers openraft's empty AppendEntries itself when they repeat what a
    // follower just acknowledged, and sends a commit it announces as a notice 2 ms later unless
    // the next block carries it. With heartbeats 500 ms apart, a follower that had to wait for one
    // would show a lone write after ~250 ms on average; with the notice it shows it at once.
    let _one = one_cluster();
    let flags: Vec<&str> = NODE_FLAGS
        .iter()
        .copied()
        .chain([
            "--raft-heartbeat-ms",
            "500",
            "--raft-election-min-ms",
            "1500",
            "--raft-election-max-ms",
            "3000",
        ])
        .collect();
    let cluster = Cluster::start(3, &flags);
    let ids = node_ids(&cluster, &[0, 1, 2]).await;
    let admin = connect(cluster.addr(0)).await;
    let (namespace_id, vault_id) = create_scope(&admin, "notice").await;
    let mut acks = write_keys(cluster.addr(0), namespace_id, Some(vault_id), "warm", 2).await;
    let leader = leader_of(&admin, &ids, namespace_id, Some(vault_id)).await;
    let followers: Vec<Client> =
        futures_join((0..3).filter(|i| *i != leader).map(|i| connect(cluster.addr(i)))).await;
    let mut lags = Vec::new();
    for n in 0..20 {
        // A quiet moment first, so that no other block carries the commit.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let ack =
            write_keys(cluster.addr(leader), namespace_id, Some(vault_id), &format!("idle{n}"), 1).await;
        let acked_at = Instant::now();
        for follower in &followers {
            loop {
                let value = follower
                    .read_with(namespace_id, Some(vault_id), &ack[0].key, ReadConsistency::Eventual)
                    .await
                    .expect("eventual read");
                if value.is_some() {
                    break;
                }
                assert!(
                    acked_at.elapsed() < Duration::from_secs(10),
                    "a follower never applied {:?}",
                    ack[0]
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            lags.push(acked_at.elapsed());
        }
        acks.extend(ack);
    }
    lags.sort();
    let median = lags[lags.len() / 2];
    assert!(
        median < Duration::from_millis(100),
        "followers learned commits late: median {median:?} of {lags:?}"
    );
    assert_converged(&cluster, &[0, 1, 2], &[(namespace_id, Some(vault_id))], &acks, namespace_id).await;
}

/// Each group's voters as node `i` sees them (openraft lists a joint config's union).
async fn group_voters(cluster: &Cluster, i: usize) -> BTreeMap<u32, Vec<u64>> {
    let client = connect(cluster.addr(i)).await;
    match client.call(Request::GetGroupStatus).await.expect("GetGroupStatus") {
        Response::GetGroupStatus { groups, .. } => groups
            .into_iter()
            .map(|g| {
                let mut voters = g.voters;
                voters.sort_unstable();
                (g.group_id, voters)
            })
            .collect(),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t13_a_leader_crashed_between_joint_and_final_config_is_completed_by_its_successor() {
    // SPEC §10.7: "leader crash between joint and final config (new leader completes)". The
    // `_system` leader is armed to abort as it is about to append the final config of the first
    // change it makes (removing node `leaver`), so that group is left joint: {all three} and
    // {the two others}. The new config's quorum needs the crashed node, so the group waits for it;
    // once it is back, whichever node leads completes the change without being asked again.
    let _one = one_cluster();
    let flags: Vec<&str> = NODE_FLAGS.iter().copied().chain(["--test-faults", "true"]).collect();
    let mut cluster = Cluster::start(3, &flags);
    let ids = node_ids(&cluster, &[0, 1, 2]).await;
    let id_of = |i: usize| ids.iter().find(|(_, n)| **n == i).map(|(id, _)| *id).expect("node id");
    let admin = connect(cluster.addr(0)).await;
    let (namespace_id, vault_id) = create_scope(&admin, "joint").await;
    let mut acks = write_keys(cluster.addr(0), namespace_id, Some(vault_id), "before", 5).await;
    let crasher = leader_of(&admin, &ids, 0, None).await;
    let leaver = (0..3).find(|i| *i != crasher).expect("another node");
    let stayer = (0..3).find(|i| *i != crasher && *i != leaver).expect("a third node");
    let (crasher_id, leaver_id, stayer_id) = (id_of(crasher), id_of(leaver), id_of(stayer));
    std::fs::write(cluster.nodes[crasher].data_dir.join(ledger_shard::faults::CRASH_MARKER_FILE), b"")
        .expect("arm the crash marker");
    // The leave is sent to the armed leader itself, and its client is stopped once that leader
    // has crashed, so no one asks again (a follower would forward the request to the next
    // leader, which would then finish the change as part of the leave).
    let mut first_leave = std::process::Command::new(ledger_tests::binary("ledger-admin"))
        .args([
            "--addr",
            cluster.addr(crasher),
            "--timeout-secs",
            "60",
            "leave",
            "--node",
            &leaver_id.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run ledger-admin leave");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cluster.stderr(crasher).contains("test fault: crashing before the final config") {
        assert!(Instant::now() < deadline, "the armed leader never crashed:\n{}", cluster.stderr(crasher));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = first_leave.kill();
    let _ = first_leave.wait();
    let two = {
        let mut two = vec![crasher_id, stayer_id];
        two.sort_unstable();
        two
    };
    // The groups changed before the crash have the two voters; the interrupted one is joint (its
    // voters, as listed, are still all three) and cannot change without the crashed node.
    let completed = |voters: &BTreeMap<u32, Vec<u64>>| voters.values().filter(|v| **v == two).count();
    let before = completed(&group_voters(&cluster, stayer).await);
    cluster.kill9(crasher);
    cluster.restart(crasher);
    // No second request: the interrupted group is completed to the two remaining voters.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let voters = group_voters(&cluster, stayer).await;
        if completed(&voters) > before {
            break;
        }
        assert!(Instant::now() < deadline, "the joint config was never completed: {voters:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The leave, asked again, finishes the other groups; the cluster writes and converges.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (code, out) = admin_cli(cluster.addr(stayer), &["leave", "--node", &leaver_id.to_string()]);
        if code == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "leave never succeeded: {out}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for i in [crasher, stayer] {
        let voters = group_voters(&cluster, i).await;
        assert!(voters.values().all(|v| *v == two), "node {i}: {voters:?}");
    }
    acks.extend(write_keys(cluster.addr(stayer), namespace_id, Some(vault_id), "after", 5).await);
    let scopes = [(0, None), (namespace_id, None), (namespace_id, Some(vault_id))];
    assert_converged(&cluster, &[crasher, stayer], &scopes, &acks, namespace_id).await;
}

/// `cluster-status --format json`'s node entry for `node_id`, asked of node `i`.
fn status_of_node(cluster: &Cluster, i: usize, node_id: u64) -> Option<serde_json::Value> {
    let (_, out) = admin_cli(cluster.addr(i), &["--format", "json", "cluster-status"]);
    let value: serde_json::Value = serde_json::from_str(out.lines().next().unwrap_or_default()).ok()?;
    value["nodes"].as_array()?.iter().find(|n| n["node_id"].as_u64() == Some(node_id)).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t14_a_node_that_stays_down_is_marked_unavailable_then_removed() {
    // SPEC §10.6 (D69): the `_system` leader marks a member silent for `node_heartbeat_timeout_secs`
    // unavailable and removes it from every group after as long again, since the two voters
    // left are a live quorum. The node killed here leads `_system`, so its successor counts from
    // its own term's start. Back with its old data directory, the removed node is told it is no
    // member, and the two others go on without it.
    let _one = one_cluster();
    let flags: Vec<&str> = NODE_FLAGS.iter().copied().chain(["--node-heartbeat-timeout-secs", "2"]).collect();
    let mut cluster = Cluster::start(3, &flags);
    let ids = node_ids(&cluster, &[0, 1, 2]).await;
    let id_of = |i: usize| ids.iter().find(|(_, n)| **n == i).map(|(id, _)| *id).expect("node id");
    let admin = connect(cluster.addr(0)).await;
    let (namespace_id, vault_id) = create_scope(&admin, "node-loss").await;
    let mut acks = write_keys(cluster.addr(0), namespace_id, Some(vault_id), "before", 10).await;
    let lost = leader_of(&admin, &ids, 0, None).await;
    let survivors: Vec<usize> = (0..3).filter(|i| *i != lost).collect();
    let lost_id = id_of(lost);
    cluster.kill9(lost);
    // Marked unavailable first: `cluster-status` shows it (any survivor asks the new leader).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut marked = false;
    let mut groups_removed = false;
    while !groups_removed {
        if let Some(node) = status_of_node(&cluster, survivors[0], lost_id) {
            marked |= node["marked_unavailable"] == serde_json::Value::Bool(true);
        }
        let voters = group_voters(&cluster, survivors[0]).await;
        groups_removed = voters.values().all(|v| !v.contains(&lost_id));
        assert!(Instant::now() < deadline, "node {lost_id} was never removed: {voters:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log: String = survivors.iter().map(|&i| cluster.stderr(i)).collect();
    assert!(marked || log.contains("event=node_unavailable"), "never marked unavailable first:\n{log}");
    assert!(log.contains("event=node_removed"), "no removal event:\n{log}");
    let two = {
        let mut two: Vec<u64> = survivors.iter().map(|&i| id_of(i)).collect();
        two.sort_unstable();
        two
    };
    // Every group on both survivors ends with the two of them; the member list drops the node.
    let deadline = Instant::now() + Duration::from_secs(30);
    for &i in &survivors {
        loop {
            let voters = group_voters(&cluster, i).await;
            if voters.values().all(|v| *v == two) {
                break;
            }
            assert!(Instant::now() < deadline, "node {i}: {voters:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let client = connect(cluster.addr(survivors[0])).await;
    match client.call(Request::GetClusterInfo).await.expect("GetClusterInfo") {
        Response::GetClusterInfo { members, .. } => {
            assert!(members.iter().all(|m| m.node_id != lost_id), "still listed: {members:?}")
        }
        other => panic!("unexpected {other:?}"),
    }
    acks.extend(write_keys(cluster.addr(survivors[1]), namespace_id, Some(vault_id), "after", 10).await);
    // Back with its old data directory: its vote requests are refused as a non-member's, and
    // the others keep their two voters and keep writing.
    cluster.restart(lost);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cluster.stderr(lost).contains("event=not_a_member") {
        assert!(Instant::now() < deadline, "the removed node was never told:\n{}", cluster.stderr(lost));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    acks.extend(write_keys(cluster.addr(survivors[0]), namespace_id, Some(vault_id), "back", 10).await);
    for &i in &survivors {
        let voters = group_voters(&cluster, i).await;
        assert!(voters.values().all(|v| *v == two), "node {i}: {voters:?}");
    }
    let scopes = [(0, None), (namespace_id, None), (namespace_id, Some(vault_id))];
    assert_converged(&cluster, &survivors, &scopes, &acks, namespace_id).await;
}

/// Each group's leader as node `i` sees it.
async fn group_leaders(cluster: &Cluster, i: usize) -> BTreeMap<u32, Option<u64>> {
    let client = connect(cluster.addr(i)).await;
    match client.call(Request::GetGroupStatus).await.expect("GetGroupStatus") {
        Response::GetGroupStatus { groups, .. } => {
            groups.into_iter().map(|g| (g.group_id, g.leader)).collect()
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// Waits until node 0 sees a leader for each of the three groups and `cond` holds.
async fn wait_for_leaders(
    cluster: &Cluster,
    what: &str,
    cond: impl Fn(&BTreeMap<u32, Option<u64>>) -> bool,
) -> BTreeMap<u32, Option<u64>> {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let leaders = group_leaders(cluster, 0).await;
        if leaders.len() == 3 && leaders.values().all(Option::is_some) && cond(&leaders) {
            return leaders;
        }
        assert!(Instant::now() < deadline, "{what}: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t15_leaderships_are_spread_again_after_a_failover_but_not_onto_a_drained_node() {
    // SPEC §10.5 (D70): three groups on three nodes start with one leader each. The leader of a
    // data group is killed and restarted: the survivors lead everything meanwhile, and the
    // balancer (a look per second here) gives the returning node one group back. A node then
    // stepped down as a whole is drained: the balancer gives it nothing.
    let _one = one_cluster();
    let flags: Vec<&str> = NODE_FLAGS
        .iter()
        .copied()
        .chain(["--groups-per-core", "2", "--leader-balance-interval-secs", "1"])
        .collect();
    let mut cluster = Cluster::start(3, &flags);
    let ids = node_ids(&cluster, &[0, 1, 2]).await;
    let id_of = |i: usize| ids.iter().find(|(_, n)| **n == i).map(|(id, _)| *id).expect("node id");
    let admin = connect(cluster.addr(0)).await;
    let (namespace_id, vault_id) = create_scope(&admin, "balance").await;
    let mut acks = write_keys(cluster.addr(0), namespace_id, Some(vault_id), "before", 5).await;
    let led_by = |leaders: &BTreeMap<u32, Option<u64>>, node: u64| {
        leaders.values().filter(|l| **l == Some(node)).count()
    };
    let spread = |leaders: &BTreeMap<u32, Option<u64>>| (0..3).all(|i| led_by(leaders, id_of(i)) == 1);
    let leaders = wait_for_leaders(&cluster, "never one leader per node", spread).await;
    let victim = (0..3).find(|i| leaders.get(&1) == Some(&Some(id_of(*i)))).expect("group 1's leader");
    let victim_id = id_of(victim);
    cluster.kill9(victim);
    let survivor = (0..3).find(|i| *i != victim).expect("a survivor");
    acks.extend(write_keys(cluster.addr(survivor), namespace_id, Some(vault_id), "failover", 5).await);
    let victim_log_before = cluster.stderr(victim).len();
    cluster.restart(victim);
    wait_for_leaders(&cluster, "the returning node was never given a leadership back", spread).await;
    let log: String = (0..3).map(|i| cluster.stderr(i)).collect();
    // The balancer gives the returning node a group back, unless the node won one's election by
    // itself first (its log can be as new as the others' in a group nobody wrote meanwhile): then
    // nothing is left to balance.
    let victim_log = cluster.stderr(victim);
    let won_by_itself = victim_log.get(victim_log_before..).unwrap_or_default().lines().any(|line| {
        line.contains("event=leader_changed")
            && line.contains(&format!("leader={victim_id} "))
            && line.contains("local=true")
    });
    assert!(
        log.contains("event=leader_balanced") || won_by_itself,
        "the returning node led a group again, neither balanced to it nor elected there:\n{log}"
    );
    // Drained: the balancer leaves the node without leaderships.
    let (code, out) = admin_cli(cluster.addr(0), &["stepdown", "--node", &victim_id.to_string()]);
    assert_eq!(code, 0, "stepdown failed: {out}");
    wait_for_leaders(&cluster, "stepdown left leaderships", |l| led_by(l, victim_id) == 0).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let leaders = group_leaders(&cluster, 0).await;
    assert_eq!(led_by(&leaders, victim_id), 0, "a drained node was given a leadership: {leaders:?}");
    acks.extend(write_keys(cluster.addr(victim), namespace_id, Some(vault_id), "after", 5).await);
    let scopes = [(0, None), (namespace_id, None), (namespace_id, Some(vault_id))];
    assert_converged(&cluster, &[0, 1, 2], &scopes, &acks, namespace_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t16_members_keep_a_peer_cache_that_a_joining_node_finds_the_cluster_by() {
    // SPEC §10.3 (D71): every member keeps `{data_dir}/peers.cache` equal to the other members
    // and answers `GetPeers`; a node started in join mode with no `--peers`, only a copy of a
    // member's cache, finds the cluster through it, asks to be added, and serves.
    let _one = one_cluster();
    let mut cluster = Cluster::start(3, EVERY_NODE_FLAGS);
    let ids = node_ids(&cluster, &[0, 1, 2]).await;
    let cache = cluster.nodes[0].data_dir.join("peers.cache");
    let others = {
        let mut others = vec![cluster.addr(1).to_string(), cluster.addr(2).to_string()];
        others.sort();
        others
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed: Option<Vec<String>> = std::fs::read(&cache)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .and_then(|v| {
                v["peers"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|p| p["addr"].as_str().map(String::from)).collect())
            });
        if listed.as_ref() == Some(&others) {
            break;
        }
        assert!(Instant::now() < deadline, "node 0's peer cache never listed {others:?}: {listed:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let client = connect(cluster.addr(1)).await;
    match client.call(Request::GetPeers { max_peers: 0 }).await.expect("GetPeers") {
        Response::GetPeers { peers, system_version } => {
            let mut listed: Vec<(u64, String)> =
                peers.iter().map(|p| (p.node_id, format!("{}:{}", p.addresses[0], p.port))).collect();
            listed.sort();
            let mut want: Vec<(u64, String)> =
                ids.iter().map(|(id, i)| (*id, cluster.addr(*i).to_string())).collect();
            want.sort();
            assert_eq!(listed, want);
            assert!(system_version > 0);
            let answering = ids.iter().find(|(_, i)| **i == 1).map(|(id, _)| *id);
            let own = peers.iter().find(|p| Some(p.node_id) == answering).expect("the answering node");
            assert!(own.last_seen.secs > 0, "the answering node was seen now: {own:?}");
        }
        other => panic!("unexpected {other:?}"),
    }
    let admin = connect(cluster.addr(0)).await;
    let (namespace_id, vault_id) = create_scope(&admin, "discovery").await;
    let mut acks = write_keys(cluster.addr(0), namespace_id, Some(vault_id), "before", 5).await;
    // GetSystemState (SPEC §5.5 item 40) from any replica: the members, and the namespaces once
    // the replica has applied the creation; nothing new past the version a client holds.
    let client = connect(cluster.addr(2)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let version = loop {
        match client.call(Request::GetSystemState { if_version_greater_than: 0 }).await.expect("state") {
            Response::GetSystemState { version, nodes, namespaces } => {
                let mut listed: Vec<u64> = nodes.iter().map(|n| n.node_id).collect();
                listed.sort_unstable();
                assert_eq!(listed, ids.keys().copied().collect::<Vec<_>>());
                assert!(nodes.iter().all(|n| n.port > 0 && n.capabilities.can_lead), "{nodes:?}");
                if namespaces.iter().any(|n| n.namespace_id == namespace_id && n.name == "discovery") {
                    break version;
                }
                assert!(Instant::now() < deadline, "node 2 never listed the namespace: {namespaces:?}");
            }
            other => panic!("unexpected {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    match client.call(Request::GetSystemState { if_version_greater_than: version + 1_000_000 }).await {
        Ok(Response::GetSystemState { nodes, namespaces, .. }) => {
            assert!(nodes.is_empty() && namespaces.is_empty())
        }
        other => panic!("unexpected {other:?}"),
    }
    let copied = cluster.nodes[0].data_dir.with_extension("joiner.cache");
    std::fs::copy(&cache, &copied).expect("copy the cache");
    let path = copied.to_string_lossy().to_string();
    let flags: Vec<&str> = NODE_FLAGS.iter().copied().chain(["--discovery-cache-path", &path]).collect();
    let joiner = cluster.start_joining_via(None, &flags);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cluster.stderr(joiner).contains("event=joined") {
        assert!(Instant::now() < deadline, "the joining node was never added:\n{}", cluster.stderr(joiner));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    acks.extend(write_keys(cluster.addr(joiner), namespace_id, Some(vault_id), "after", 5).await);
    let scopes = [(0, None), (namespace_id, None), (namespace_id, Some(vault_id))];
    assert_converged(&cluster, &[0, 1, 2, joiner], &scopes, &acks, namespace_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t17_a_stopping_node_hands_its_leaderships_over_first() {
    // SPEC §11.7: on SIGTERM a cluster node steps down from the groups it leads before it
    // closes them, so their writes pause for a hand-over, not an election timeout.
    let _one = one_cluster();
    let mut cluster = Cluster::start(3, NODE_FLAGS);
    let ids = node_ids(&cluster, &[0, 1, 2]).await;
    let admin = connect(cluster.addr(0)).await;
    let (namespace_id, vault_id) = create_scope(&admin, "stepping-down").await;
    let mut acks = write_keys(cluster.addr(0), namespace_id, Some(vault_id), "before", 5).await;
    let leaving = leader_of(&admin, &ids, 0, None).await;
    let leaving_id = ids.iter().find(|(_, i)| **i == leaving).map(|(id, _)| *id).expect("id");
    assert_eq!(cluster.stop(leaving), Some(0), "a clean stop exits 0:\n{}", cluster.stderr(leaving));
    let log = cluster.stderr(leaving);
    let line = log
        .lines()
        .find(|l| l.contains("event=stepped_down"))
        .unwrap_or_else(|| panic!("no step-down:\n{log}"));
    assert!(line.contains("moved=[(0, "), "`_system` was not handed over: {line}");
    assert!(log.contains("leadership moved from node"), "{log}");
    let staying: Vec<usize> = (0..3).filter(|i| *i != leaving).collect();
    let leaders = group_leaders(&cluster, staying[0]).await;
    assert!(leaders.values().all(|l| *l != Some(leaving_id)), "still led by the stopped node: {leaders:?}");
    acks.extend(write_keys(cluster.addr(staying[0]), namespace_id, Some(vault_id), "after", 5).await);
    cluster.restart(leaving);
    let scopes = [(0, None), (namespace_id, None), (namespace_id, Some(vault_id))];
    assert_converged(&cluster, &[0, 1, 2], &scopes, &acks, namespace_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t18_a_node_stopped_on_purpose_is_not_removed_for_its_silence() {
    // D74: SPEC §10.6 removes a node lost *unexpectedly*. A node stopped with SIGTERM says so to
    // `_system`'s leader, which records it: the node is marked unavailable but kept as a member
    // however long it stays away, and the record goes once the node is heard from again.
    let _one = one_cluster();
    let flags: Vec<&str> = NODE_FLAGS.iter().copied().chain(["--node-heartbeat-timeout-secs", "2"]).collect();
    let mut cluster = Cluster::start(3, &flags);
    let ids = node_ids(&cluster, &[0, 1, 2]).await;
    let admin = connect(cluster.addr(0)).await;
    let (namespace_id, vault_id) = create_scope(&admin, "planned-stop").await;
    let mut acks = write_keys(cluster.addr(0), namespace_id, Some(vault_id), "before", 5).await;
    let stopped = 2;
    let stopped_id = ids.iter().find(|(_, i)| **i == stopped).map(|(id, _)| *id).expect("id");
    assert_eq!(cluster.stop(stopped), Some(0));
    let log = |cluster: &Cluster| -> String { [0, 1].iter().map(|&i| cluster.stderr(i)).collect() };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !log(&cluster).contains(&format!("event=node_unavailable node={stopped_id}")) {
        assert!(Instant::now() < deadline, "never marked unavailable:\n{}", log(&cluster));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(log(&cluster).contains("event=node_stopping_recorded"), "{}", log(&cluster));
    // Well past twice the timeout: still a member of every group.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(!log(&cluster).contains("event=node_removed"), "{}", log(&cluster));
    let voters = group_voters(&cluster, 0).await;
    assert!(voters.values().all(|v| v.contains(&stopped_id)), "{voters:?}");
    acks.extend(write_keys(cluster.addr(1), namespace_id, Some(vault_id), "meanwhile", 5).await);
    cluster.restart(stopped);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !log(&cluster).contains(&format!("event=node_back_from_planned_stop node={stopped_id}")) {
        assert!(Instant::now() < deadline, "the stop record was never cleared:\n{}", log(&cluster));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let scopes = [(0, None), (namespace_id, None), (namespace_id, Some(vault_id))];
    assert_converged(&cluster, &[0, 1, 2], &scopes, &acks, namespace_id).await;
}

/// Group 0's voters and learners as node `i` sees them.
async fn system_roles(cluster: &Cluster, i: usize) -> (Vec<u64>, Vec<u64>) {
    let client = connect(cluster.addr(i)).await;
    match client.call(Request::GetGroupStatus).await.expect("GetGroupStatus") {
        Response::GetGroupStatus { groups, .. } => {
            let g = groups.into_iter().find(|g| g.group_id == 0).expect("group 0");
            let (mut voters, mut learners) = (g.voters, g.learners);
            voters.sort_unstable();
            learners.sort_unstable();
            (voters, learners)
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// Waits until node `i` sees group 0 with exactly these voters and learners.
async fn wait_system_roles(cluster: &Cluster, i: usize, voters: &[u64], learners: &[u64]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let roles = system_roles(cluster, i).await;
        if roles.0 == voters && roles.1 == learners {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "group 0 on node {i} never had voters {voters:?} and learners {learners:?}: {roles:?}\n{}",
            cluster.stderr(i)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t19_system_keeps_five_voters_and_other_members_follow_it_as_learners() {
    // SPEC §10.4 (D75): a bootstrap of six gives `_system` five voters (the lowest ids, the
    // earliest starts) and one learner, while every data group has all six as voters. A learner
    // serves like any member. When a voter leaves, the learner is promoted; a node that joins a
    // `_system` of five voters stays its learner.
    let _one = one_cluster();
    let flags: Vec<&str> = NODE_FLAGS
        .iter()
        .copied()
        .chain(["--test-faults", "true", "--learner-cache-ttl-secs", "1", "--replication-factor", "9"])
        .collect();
    let mut cluster = Cluster::start_with_metrics(6, &flags);
    let all: Vec<usize> = (0..6).collect();
    let ids = node_ids(&cluster, &all).await;
    let sorted: Vec<u64> = ids.keys().copied().collect();
    let (first_five, learner_id) = (sorted[..5].to_vec(), sorted[5]);
    let learner = ids[&learner_id];
    wait_system_roles(&cluster, 0, &first_five, &[learner_id]).await;
    // The learner hears of each data group from its initializer's leader, which may come after
    // group 0's roles settle (a group not heard of yet reports no other member).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let groups = group_voters(&cluster, learner).await;
        assert!(groups.len() >= 2, "{groups:?}");
        let pending: Vec<(&u32, &Vec<u64>)> =
            groups.iter().filter(|(g, voters)| **g != 0 && **voters != sorted).collect();
        if pending.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "data groups without every member as a voter: {pending:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let admin = connect(cluster.addr(learner)).await;
    let (namespace_id, vault_id) = create_scope(&admin, "learners").await;
    let mut acks = write_keys(cluster.addr(learner), namespace_id, Some(vault_id), "via-learner", 5).await;

    // A learner cut off for longer than `learner_cache_ttl_secs` finds its copy stale: its first
    // lookup of a namespace asks the leader, gets no answer, and routes by its own copy, so an
    // eventual read is still served (SPEC §10.4, §10.8).
    let (other, _) = create_scope(&connect(cluster.addr(0)).await, "learner-stale").await;
    let on_learner = connect(cluster.addr(learner)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(
        on_learner
            .call(Request::GetNamespace { by: ledger_wire::messages::NamespaceSelector::Id(other) })
            .await,
        Ok(Response::GetNamespace(_))
    ) {
        assert!(Instant::now() < deadline, "the learner never applied the namespace");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    partition(&cluster, &ids, Some(learner)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let read = on_learner.read_with(other, None, "absent", ReadConsistency::Eventual).await;
    assert!(matches!(read, Ok(None)), "a cut-off learner's eventual read: {read:?}");
    let metrics =
        ledger_tests::scrape_metrics(cluster.nodes[learner].metrics_addr.as_deref().expect("metrics"));
    let stale: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("ledger_learner_cache_stale_total ")
                .or(l.strip_prefix("learner_cache_stale_total "))
        })
        .and_then(|v| v.trim().parse().ok())
        .expect("learner_cache_stale_total");
    assert!(stale >= 1.0, "the stale copy was not counted:\n{metrics}");
    partition(&cluster, &ids, None).await;

    // A voter leaves (not node 0, which the checks ask): the learner takes its place.
    let leaver_id = first_five[1..].iter().copied().find(|id| ids[id] != 0).expect("a voter");
    let (code, out) = admin_cli(cluster.addr(0), &["leave", "--node", &leaver_id.to_string()]);
    assert_eq!(code, 0, "leave: {out}");
    let leaver = ids[&leaver_id];
    assert_eq!(cluster.stop(leaver), Some(0));
    let mut voters: Vec<u64> = sorted.iter().copied().filter(|id| *id != leaver_id).collect();
    voters.sort_unstable();
    wait_system_roles(&cluster, 0, &voters, &[]).await;
    assert!(
        cluster.stderr(0).contains("event=system_learner_promoted")
            || (0..6).any(|i| cluster.stderr(i).contains("event=system_learner_promoted")),
        "no promotion was logged"
    );

    // A node that joins a `_system` of five voters stays its learner, and serves.
    let joiner = cluster.start_joining(NODE_FLAGS);
    let deadline = Instant::now() + Duration::from_secs(90);
    while !cluster.stderr(joiner).contains("event=joined") {
        assert!(Instant::now() < deadline, "the joining node was never added:\n{}", cluster.stderr(joiner));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let joined = node_ids(&cluster, &[joiner]).await;
    let joiner_id = *joined.keys().next().expect("the joiner's id");
    wait_system_roles(&cluster, 0, &voters, &[joiner_id]).await;
    acks.extend(write_keys(cluster.addr(joiner), namespace_id, Some(vault_id), "via-joiner", 5).await);
    let live: Vec<usize> = (0..=joiner).filter(|i| *i != leaver).collect();
    let scopes = [(0, None), (namespace_id, None), (namespace_id, Some(vault_id))];
    assert_converged(&cluster, &live, &scopes, &acks, namespace_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_announced_peers_join_the_cache_and_a_join_is_announced_to_the_members() {
    // SPEC §10.3 and §5.5 item 39 (D76): `AnnouncePeer` merges a private address into the
    // receiver's peer cache and refuses a public one; `_system`'s leader announces a node that
    // joins to every other member.
    use ledger_wire::messages::PeerInfo;
    let _one = one_cluster();
    let mut cluster = Cluster::start(3, EVERY_NODE_FLAGS);
    node_ids(&cluster, &[0, 1, 2]).await;
    let client = connect(cluster.addr(1)).await;
    let announce = |addresses: &[&str]| Request::AnnouncePeer {
        peer: PeerInfo {
            node_id: 77,
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            port: 7000,
            last_seen: Default::default(),
        },
    };
    for (addresses, accepted) in
        [(&["8.8.8.8"][..], false), (&["10.77.0.1", "8.8.4.4"][..], false), (&["10.77.0.1"][..], true)]
    {
        match client.call(announce(addresses)).await.expect("AnnouncePeer") {
            Response::AnnouncePeer { accepted: got } => assert_eq!(got, accepted, "{addresses:?}"),
            other => panic!("unexpected {other:?}"),
        }
    }
    let cache = cluster.nodes[1].data_dir.join("peers.cache");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&cache).unwrap_or_default();
        if text.contains("\"10.77.0.1:7000\"") {
            assert!(!text.contains("8.8."), "a public address was cached: {text}");
            assert!(text.contains(cluster.addr(0)) && text.contains(cluster.addr(2)), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "node 1's cache never took the announced peer: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let joiner = cluster.start_joining(NODE_FLAGS);
    let joined = node_ids(&cluster, &[joiner]).await;
    let joiner_id = *joined.keys().next().expect("the joiner's id");
    let deadline = Instant::now() + Duration::from_secs(60);
    let heard = |cluster: &Cluster| {
        (0..3)
            .filter(|i| {
                cluster.stderr(*i).contains(&format!("event=peer_announced node={joiner_id} accepted=true"))
            })
            .count()
    };
    // Every member but the announcing leader hears of the joiner.
    while heard(&cluster) < 2 {
        assert!(Instant::now() < deadline, "the join was not announced:\n{}", cluster.stderr(0));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A client keeps the nodes `GetSystemState` lists, and reaches a cached node once the one it
    // was given is gone.
    let nodes_cache = cluster.nodes[0].data_dir.with_file_name("client-nodes.json");
    let cache_arg = nodes_cache.to_str().expect("utf-8 path");
    let run = |addr: &str, args: &[&str]| {
        let mut all = vec!["--nodes-cache", cache_arg];
        all.extend_from_slice(args);
        ledger_tests::ledger_cli(addr, &all)
    };
    let (code, out, err) = run(cluster.addr(0), &["namespace", "list"]);
    assert_eq!(code, 0, "{out}{err}");
    let cached: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&nodes_cache).expect("the client wrote its cache"))
            .expect("json");
    let listed: Vec<&str> =
        cached["nodes"].as_array().expect("nodes").iter().filter_map(|n| n.as_str()).collect();
    assert_eq!(listed.len(), 4, "{cached}");
    for i in [0, 1, 2, joiner] {
        assert!(listed.contains(&cluster.addr(i)), "{cached}");
    }
    assert!(cached["version"].as_u64().is_some_and(|v| v > 0), "{cached}");
    let gone = cluster.addr(0).to_string();
    cluster.kill9(0);
    let (code, out, err) = run(&gone, &["namespace", "create", "via-cached-node"]);
    assert_eq!(code, 0, "the cached nodes were not tried: {out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t21_a_client_given_several_nodes_fails_over_when_its_node_dies() {
    // D78: a client connected through `connect_any` keeps the other addresses; when its node is
    // killed mid-stream, its session reconnects to the next one and goes on with the same client
    // id and sequence, so every write is acknowledged once and nothing is lost or doubled.
    let _one = one_cluster();
    let mut cluster = Cluster::start(3, NODE_FLAGS);
    node_ids(&cluster, &[0, 1, 2]).await;
    let admin = connect(cluster.addr(1)).await;
    let (namespace_id, vault_id) = create_scope(&admin, "failover").await;
    let addrs = cluster.addrs();
    // Without leader routing every write goes through the session's own connection (node 0
    // forwards it), so node 0's death must be survived by falling back, not by a side connection
    // to a leader that happens to live elsewhere.
    let options = ledger_wire::client::ClientOptions { follow_leaders: false, ..Default::default() };
    let client = Client::connect_any(&addrs, None, options).await.expect("connect_any");
    assert_eq!(client.peer_addr().to_string(), addrs[0], "the first address answers first");
    let mut session = WriteSession::new(client, namespace_id, Some(vault_id))
        .with_client_id("failover-writer")
        .with_retry_policy(patient());
    let mut acks = Vec::new();
    for n in 0..40 {
        if n == 15 {
            cluster.kill9(0);
        }
        let (key, value) = (format!("k{n}"), format!("v{n}").into_bytes());
        match session.write(vec![set(key.clone(), value.clone())]).await.expect("write through a failover") {
            WriteOutcome::Committed { .. } | WriteOutcome::AlreadyCommitted { .. } => {
                acks.push(Ack { vault_id: Some(vault_id), key, value })
            }
            WriteOutcome::Rejected(e) => panic!("unconditional write rejected: {e:?}"),
        }
    }
    assert_ne!(session.client().peer_addr().to_string(), addrs[0], "the session never left the dead node");
    let scopes = [(0, None), (namespace_id, None), (namespace_id, Some(vault_id))];
    assert_converged(&cluster, &[1, 2], &scopes, &acks, namespace_id).await;
    // 40 writes, each committed once under its own sequence.
    let reader = connect(cluster.addr(1)).await;
    let last = reader.get_client_state(namespace_id, Some(vault_id), "failover-writer").await.expect("state");
    assert_eq!(last, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t22_a_cluster_starts_with_the_initializers_initial_groups() {
    // SPEC §10.5 (D79): a coordinated bootstrap creates the initializer's `initial_groups` data
    // groups on every node (here three on one core each), and namespaces spread over them.
    let _one = one_cluster();
    let flags: Vec<&str> = NODE_FLAGS.iter().copied().chain(["--initial-groups", "3"]).collect();
    let cluster = Cluster::start(3, &flags);
    node_ids(&cluster, &[0, 1, 2]).await;
    // A node reports a data group once the group's initializer has reached it (until then its
    // copy counts as outside, D90): each node comes to report all four.
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0..3 {
        loop {
            let groups: Vec<u32> = group_voters(&cluster, i).await.keys().copied().collect();
            if groups == vec![0, 1, 2, 3] {
                break;
            }
            assert!(Instant::now() < deadline, "node {i} reports groups {groups:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let admin = connect(cluster.addr(0)).await;
    let mut groups = std::collections::BTreeSet::new();
    for n in 0..3 {
        let (namespace_id, _) = create_scope(&admin, &format!("spread-{n}")).await;
        match admin
            .call(Request::GetNamespace { by: ledger_wire::messages::NamespaceSelector::Id(namespace_id) })
            .await
            .expect("GetNamespace")
        {
            Response::GetNamespace(info) => groups.insert(info.group_id),
            other => panic!("unexpected {other:?}"),
        };
    }
    assert_eq!(groups.into_iter().collect::<Vec<_>>(), vec![1, 2, 3], "least-loaded placement");
}

/// The data group a namespace lives in.
async fn namespace_group(client: &Client, namespace_id: i64) -> u32 {
    let by = ledger_wire::messages::NamespaceSelector::Id(namespace_id);
    match client.call(Request::GetNamespace { by }).await.expect("GetNamespace") {
        Response::GetNamespace(info) => info.group_id,
        other => panic!("unexpected {other:?}"),
    }
}

/// Opens `blocks.redb` of `group` in a stopped node's data directory.
fn blocks_db(data_dir: &std::path::Path, group: u32) -> redb::Database {
    let path = data_dir.join("groups").join(format!("g{group:05}")).join("blocks.redb");
    redb::Database::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t23_recovery_fetches_archived_blocks_damaged_on_its_node_from_the_others() {
    // SPEC §9.6's failure table ("missing archive rows → fetch from a peer") and §9.7 ("partial
    // block → re-fetch from healthy replicas"), D81: on one node, three of a vault's archived
    // bodies are damaged while it is down (one deleted, one replaced by bytes that do not decode,
    // one with a flipped byte). Recovering the vault there fetches those blocks again from the
    // other members, verified against the chain, then rebuilds: Healthy at the tip, the blocks
    // readable with their transactions. Before D81 the replay stopped at the first damaged
    // block ("compacted"), and a flipped body was reported as a determinism bug.
    use ledger_core::types::{NamespaceId, ScopeKey, VaultId};
    use redb::ReadableTable;
    const BODIES: redb::TableDefinition<(u64, u32), &[u8]> = redb::TableDefinition::new("bodies");
    const VAULT_INDEX: redb::TableDefinition<(i64, u64), (u64, u32)> =
        redb::TableDefinition::new("vault_index");
    let _one = one_cluster();
    let flags: Vec<&str> = NODE_FLAGS.iter().copied().chain(["--test-faults", "true"]).collect();
    let mut cluster = Cluster::start(3, &flags);
    node_ids(&cluster, &[0, 1, 2]).await;
    let admin = connect(cluster.addr(0)).await;
    let (namespace_id, vault_id) = create_scope(&admin, "archive-repair").await;
    let mut acks = write_keys(cluster.addr(0), namespace_id, Some(vault_id), "t23", 12).await;
    let scopes = [(namespace_id, Some(vault_id))];
    let before = assert_converged(&cluster, &[0, 1, 2], &scopes, &acks, namespace_id).await;
    let tip_height = before[&(namespace_id, Some(vault_id))].height;
    let group = namespace_group(&admin, namespace_id).await;

    let victim = 2;
    assert_eq!(cluster.stop(victim), Some(0));
    let scope_id =
        ScopeKey { namespace_id: NamespaceId(namespace_id), vault_id: VaultId(vault_id) }.scope_id();
    let damaged = [tip_height - 9, tip_height - 6, tip_height - 3];
    {
        let db = blocks_db(&cluster.nodes[victim].data_dir, group);
        let txn = db.begin_write().expect("begin_write");
        {
            let index = txn.open_table(VAULT_INDEX).expect("vault_index");
            let at: Vec<(u64, u32)> = damaged
                .iter()
                .map(|h| index.get((scope_id, *h)).expect("get").expect("indexed").value())
                .collect();
            drop(index);
            let mut bodies = txn.open_table(BODIES).expect("bodies");
            bodies.remove(at[0]).expect("remove");
            bodies.insert(at[1], &b"not a body"[..]).expect("insert");
            let mut body = bodies.get(at[2]).expect("get").expect("a body").value().to_vec();
            let needle = b"v-t23-";
            let i = body.windows(needle.len()).position(|w| w == needle).expect("the value in the body");
            body[i + needle.len()] ^= 0x01;
            bodies.insert(at[2], body.as_slice()).expect("insert");
        }
        txn.commit().expect("commit");
    }
    cluster.restart(victim);
    node_ids(&cluster, &[victim]).await;
    let client = connect(cluster.addr(victim)).await;
    let simulate = Request::SimulateDivergence {
        namespace_id,
        vault_id: Some(vault_id),
        expected_state_root: [1; 32],
        computed_state_root: [2; 32],
        at_height: 0,
    };
    match client.call(simulate).await.expect("SimulateDivergence") {
        Response::SimulateDivergence { success: true, .. } => {}
        other => panic!("unexpected {other:?}"),
    }
    let recover = Request::RecoverVault { namespace_id, vault_id: Some(vault_id), force: false };
    match client.call(recover).await.expect("RecoverVault") {
        Response::RecoverVault { success, message, health, final_height, final_state_root } => {
            assert!(success, "{message}\n{}", cluster.stderr(victim));
            assert_eq!(health, ledger_core::types::VaultHealth::Healthy);
            assert!(final_height >= tip_height, "{final_height} < {tip_height}");
            if final_height == tip_height {
                assert_eq!(final_state_root, before[&(namespace_id, Some(vault_id))].state_root);
            }
        }
        other => panic!("unexpected {other:?}"),
    }
    let log = cluster.stderr(victim);
    assert!(log.contains("event=archive_damage_found"), "{log}");
    assert!(log.contains("event=archive_damage_repaired"), "{log}");
    for height in damaged {
        let request = Request::GetBlock { namespace_id, vault_id: Some(vault_id), height };
        match client.call(request).await.expect("GetBlock") {
            Response::GetBlock { block, body_pruned: false } => {
                let value = format!("v-t23-{}", height - 1).into_bytes();
                let operations: Vec<&ledger_core::types::Operation> =
                    block.transactions.iter().flat_map(|tx| &tx.operations).collect();
                assert!(
                    matches!(&operations[..], [ledger_core::types::Operation::SetEntity { value: v, .. }] if *v == value),
                    "height {height}: {operations:?}"
                );
            }
            other => panic!("height {height}: unexpected {other:?}"),
        }
    }
    acks.extend(write_keys(cluster.addr(victim), namespace_id, Some(vault_id), "t23-after", 3).await);
    assert_converged(&cluster, &[0, 1, 2], &scopes, &acks, namespace_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t24_a_node_whose_state_and_snapshots_are_lost_fetches_a_snapshot_from_a_member() {
    // D83: a node's `state.redb` and snapshot files of a group are lost while it is down, and its
    // own log of that group was purged behind a snapshot, so nothing on the node can rebuild the
    // group's state. At restart it fetches a snapshot file covering its purged log from another
    // member, verifies it as it loads it, replays its log after it, and serves every
    // acknowledged write. Without the fetch the group does not open ("older than the purged
    // log").
    let _one = one_cluster();
    let mut flags = NODE_FLAGS.to_vec();
    flags.extend(["--raft-snapshot-logs", "20", "--raft-log-keep", "5"]);
    let mut cluster = Cluster::start(3, &flags);
    node_ids(&cluster, &[0, 1, 2]).await;
    let admin = connect(cluster.addr(0)).await;
    let (namespace_id, vault_id) = create_scope(&admin, "snapshot-fetch").await;
    let mut acks = write_keys(cluster.addr(0), namespace_id, Some(vault_id), "t24", 80).await;
    let scopes = [(namespace_id, Some(vault_id))];
    assert_converged(&cluster, &[0, 1, 2], &scopes, &acks, namespace_id).await;
    let group = namespace_group(&admin, namespace_id).await;
    let victim = 2;
    assert!(cluster.stderr(victim).contains("event=snapshot_created"), "node {victim} never snapshotted");
    assert_eq!(cluster.stop(victim), Some(0));
    let group_dir = cluster.nodes[victim].data_dir.join("groups").join(format!("g{group:05}"));
    std::fs::remove_file(group_dir.join("state.redb")).expect("remove state.redb");
    let snapshots = group_dir.join("snapshots");
    for file in std::fs::read_dir(&snapshots).expect("snapshots dir") {
        std::fs::remove_file(file.expect("entry").path()).expect("remove a snapshot file");
    }
    cluster.restart(victim);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cluster.stderr(victim).contains("event=snapshot_fetched") {
        assert!(Instant::now() < deadline, "no snapshot fetched:\n{}", cluster.stderr(victim));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = cluster.stderr(victim);
    assert!(log.contains("event=snapshot_needed_from_peer"), "{log}");
    assert!(log.contains("event=state_restored_from_snapshot"), "{log}");
    acks.extend(write_keys(cluster.addr(victim), namespace_id, Some(vault_id), "t24-after", 5).await);
    assert_converged(&cluster, &[0, 1, 2], &scopes, &acks, namespace_id).await;
}

// ------------------------------------------------------------------------------------------
// Power cuts of the whole cluster (D89): each node runs its groups on a simulated disk
// (`--test-sim-disk`), writers write through every node, and at a seeded moment SIGUSR2 cuts
// the power of all three at once. Each node writes what its disk had made durable to the real
// files and exits; the cluster restarts on them. Every write acknowledged before the cut must be
// on every replica, the replicas must agree, chains and state roots must check, and writing
// goes on. This is what D50 bets on: a leader counts its own entries before its sync ends, and
// followers learn only commits durable on it. `LEDGER_CLUSTER_CUTS` (default 2) cuts, first
// seed `LEDGER_CLUSTER_CUT_SEED`.

/// Node flags of the power-cut tests: no snapshot falls inside a run, so every file that matters
/// is on the simulated disk (snapshot files are written with std::fs to the real one).
fn power_flags(disk: &'static str) -> Vec<&'static str> {
    let mut flags = NODE_FLAGS.to_vec();
    flags.extend(["--test-faults", "true", "--test-sim-disk", disk]);
    flags.extend(["--raft-snapshot-logs", "1000000", "--snapshot-interval-blocks", "1000000"]);
    flags.extend(["--snapshot-interval-secs", "86400"]);
    flags
}

/// Acknowledged writes, each with when its answer arrived.
type Answered = Arc<Mutex<Vec<(Instant, Ack)>>>;

/// Acknowledged writes (with when each answer arrived) of `writers` sessions, one per node in
/// turn, each writing its own keys until `stop`.
fn spawn_power_writers(
    cluster: &Cluster,
    namespace_id: i64,
    vault_id: i64,
    writers: usize,
    stop: &Arc<AtomicBool>,
) -> (Answered, Vec<tokio::task::JoinHandle<()>>) {
    let acks = Arc::new(Mutex::new(Vec::new()));
    let tasks = (0..writers)
        .map(|w| {
            let (addr, acks, stop) = (cluster.addr(w % 3).to_string(), acks.clone(), stop.clone());
            tokio::spawn(async move {
                let mut session = WriteSession::new(connect(&addr).await, namespace_id, Some(vault_id))
                    .with_client_id(format!("power-{w}"));
                let mut n = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let (key, value) = (format!("p{w}:{n}"), format!("v{w}-{n}").into_bytes());
                    let Ok(outcome) = session.write(vec![set(key.clone(), value.clone())]).await else {
                        break;
                    };
                    let answered = Instant::now();
                    if let WriteOutcome::Committed { .. } | WriteOutcome::AlreadyCommitted { .. } = outcome {
                        let ack = Ack { vault_id: Some(vault_id), key, value };
                        acks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((answered, ack));
                    }
                    n += 1;
                }
            })
        })
        .collect();
    (acks, tasks)
}

/// One cut of the whole cluster after `write_ms` of writing: the power of disks `drop` or
/// `lying`, or with `off` (real disks) a `kill -9` of every node. Returns the restarted cluster,
/// its scope and the writes acknowledged before the cut.
async fn cut_whole_cluster(disk: &'static str, write_ms: u64) -> (Cluster, i64, i64, Vec<Ack>) {
    let mut cluster = Cluster::start(3, &power_flags(disk));
    node_ids(&cluster, &[0, 1, 2]).await;
    let admin = connect(cluster.addr(0)).await;
    let (namespace_id, vault_id) = create_scope(&admin, "power").await;
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, writers) = spawn_power_writers(&cluster, namespace_id, vault_id, 6, &stop);
    tokio::time::sleep(Duration::from_millis(write_ms)).await;
    // Only answers that arrived before the first signal count: a node goes on running (and may
    // answer from memory) while it writes its durable image out.
    let cut_at = Instant::now();
    if disk == "off" {
        cluster.kill9_together(&[0, 1, 2]);
    } else {
        let codes = cluster.cut_power(&[0, 1, 2]);
        for (i, code) in codes.iter().enumerate() {
            assert_eq!(*code, Some(137), "node {i} did not end by its power cut:\n{}", cluster.stderr(i));
        }
    }
    stop.store(true, Ordering::Release);
    for task in writers {
        task.abort();
    }
    let acks: Vec<Ack> = answered
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .filter(|(at, _)| *at < cut_at)
        .map(|(_, ack)| ack.clone())
        .collect();
    assert!(acks.len() >= 20, "only {} writes acknowledged before the cut", acks.len());
    // Power back: the nodes run on the real files the cut left.
    cluster.set_flag("--test-sim-disk", "off");
    cluster.start_nodes(&[0, 1, 2]);
    (cluster, namespace_id, vault_id, acks)
}

/// `LEDGER_CLUSTER_CUTS` (default 2) cuts of the whole cluster with `disk` (see
/// [`cut_whole_cluster`]), seeds from `LEDGER_CLUSTER_CUT_SEED` (default `first_seed`), each
/// checked by [`check_after_cut`]. The cut lands anywhere from early in the writing to well into it.
async fn cut_and_check(disk: &'static str, first_seed: u64) {
    let cuts = std::env::var("LEDGER_CLUSTER_CUTS").ok().and_then(|v| v.parse().ok()).unwrap_or(2u64);
    let first =
        std::env::var("LEDGER_CLUSTER_CUT_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(first_seed);
    for seed in first..first + cuts {
        let write_ms = 300 + (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33) % 1200;
        let (cluster, namespace_id, vault_id, acks) = cut_whole_cluster(disk, write_ms).await;
        eprintln!(
            "seed {seed} ({disk}): cut after {write_ms} ms, {} writes acknowledged before it",
            acks.len()
        );
        check_after_cut(&cluster, namespace_id, vault_id, acks, seed).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t25_a_power_cut_of_the_whole_cluster_keeps_every_acknowledged_write() {
    let _one = one_cluster();
    cut_and_check("drop", 0x9c07).await;
}

/// After a cut of the whole cluster: every acknowledged write on every replica, agreeing and
/// continuous chains, clean full integrity checks on every node, and writing goes on.
async fn check_after_cut(cluster: &Cluster, namespace_id: i64, vault_id: i64, mut acks: Vec<Ack>, seed: u64) {
    let scopes = [(0, None), (namespace_id, None), (namespace_id, Some(vault_id))];
    assert_converged(cluster, &[0, 1, 2], &scopes, &acks, namespace_id).await;
    for i in 0..3 {
        let client = connect(cluster.addr(i)).await;
        let request = Request::CheckIntegrity { namespace_id, vault_id: Some(vault_id), full_check: true };
        match client.call(request).await {
            Ok(Response::CheckIntegrity { healthy: true, issues }) if issues.is_empty() => {}
            other => panic!("seed {seed}: node {i}'s integrity after the cut: {other:?}"),
        }
    }
    acks.extend(write_keys(cluster.addr(1), namespace_id, Some(vault_id), "after-cut", 5).await);
    assert_converged(cluster, &[0, 1, 2], &scopes, &acks, namespace_id).await;
}

/// `kill -9` of every node at once under the same writers (the page cache keeps what was
/// written, but what a node still held in memory dies with it): the same checks after the
/// restart (D89: the whole cluster's durability promise for `kill -9`, beside t25's power cut).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t27_a_kill_of_every_node_keeps_every_acknowledged_write() {
    let _one = one_cluster();
    cut_and_check("off", 0x6b11).await;
}

/// The canary: on disks that ignore fsync the same cut must lose acknowledged writes, or the
/// test above could not notice a lost one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t26_canary_a_cluster_on_disks_that_ignore_fsync_loses_acknowledged_writes() {
    let _one = one_cluster();
    let (cluster, namespace_id, vault_id, acks) = cut_whole_cluster("lying", 800).await;
    // Nothing reached the disks: the cluster comes back without the namespace (or without a
    // leader for it); either way acknowledged writes do not read back.
    let client = connect(cluster.addr(0)).await;
    let keys: Vec<String> = acks.iter().map(|a| a.key.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let found = loop {
        match client
            .batch_read(namespace_id, Some(vault_id), keys.clone(), ReadConsistency::Linearizable)
            .await
        {
            Ok(items) => break items.iter().filter(|item| item.value.is_some()).count(),
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(_) => break 0,
        }
    };
    assert!(found < acks.len(), "all {} acknowledged writes survived disks that ignore fsync", acks.len());
}

/// Each node's data groups (the ones it is a member of, `_system` left out) with their voters.
async fn data_group_voters(cluster: &Cluster, i: usize) -> BTreeMap<u32, Vec<u64>> {
    group_voters(cluster, i).await.into_iter().filter(|(g, _)| *g != 0).collect()
}

/// A namespace's group and that group's members as `_system` lists them.
async fn namespace_members(client: &Client, namespace_id: i64) -> (u32, Vec<u64>) {
    let by = ledger_wire::messages::NamespaceSelector::Id(namespace_id);
    match client.call(Request::GetNamespace { by }).await.expect("GetNamespace") {
        Response::GetNamespace(info) => {
            let mut members = info.member_nodes;
            members.sort_unstable();
            (info.group_id, members)
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// Waits until every node in `live` reports the data groups `want` (group → sorted voters) for
/// the groups it is a member of, and is a member of exactly those that list it.
async fn wait_data_groups(
    cluster: &Cluster,
    ids: &BTreeMap<u64, usize>,
    live: &[usize],
    want: &BTreeMap<u32, Vec<u64>>,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut seen = Vec::new();
        let mut settled = true;
        for &i in live {
            let id = *ids.iter().find(|(_, n)| **n == i).map(|(id, _)| id).expect("the node's id");
            let groups = data_group_voters(cluster, i).await;
            let mine: BTreeMap<u32, Vec<u64>> =
                want.iter().filter(|(_, v)| v.contains(&id)).map(|(g, v)| (*g, v.clone())).collect();
            settled &= groups == mine;
            seen.push((i, groups));
        }
        if settled {
            return;
        }
        assert!(Instant::now() < deadline, "data groups never settled at {want:?}: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t28_data_groups_have_replication_factor_voters_any_node_serves_and_a_leave_is_replaced() {
    // SPEC §10.5 (D90): three nodes, three data groups, `--replication-factor 2`: each data
    // group has two voters and each node is a voter of two groups. Every node serves every
    // namespace — writes, reads, tips and chains of a group it is outside of are sent on to the
    // group's members — and `_system` lists each group's two members. When a node leaves, each
    // group it was in gets the remaining node first (a two-voter group can then lose one), and
    // nothing acknowledged is lost.
    let _one = one_cluster();
    let flags: Vec<&str> =
        NODE_FLAGS.iter().copied().chain(["--initial-groups", "3", "--replication-factor", "2"]).collect();
    let mut cluster = Cluster::start(3, &flags);
    let ids = node_ids(&cluster, &[0, 1, 2]).await;
    let sorted: Vec<u64> = ids.keys().copied().collect();
    // The plan (`ClusterPlan::members_of`): two members in id order from where the last stopped.
    let initial: BTreeMap<u32, Vec<u64>> = BTreeMap::from([
        (1, vec![sorted[0], sorted[1]]),
        (2, vec![sorted[0], sorted[2]]),
        (3, vec![sorted[1], sorted[2]]),
    ]);
    wait_data_groups(&cluster, &ids, &[0, 1, 2], &initial).await;

    let admin = connect(cluster.addr(0)).await;
    let mut scopes = Vec::new();
    for n in 0..3 {
        let (namespace_id, vault_id) = create_scope(&admin, &format!("rf-{n}")).await;
        let (group, members) = namespace_members(&admin, namespace_id).await;
        assert_eq!(members, initial[&group], "the registry's members of group {group}");
        scopes.push((namespace_id, vault_id, group));
    }
    let mut groups: Vec<u32> = scopes.iter().map(|s| s.2).collect();
    groups.sort_unstable();
    assert_eq!(groups, vec![1, 2, 3], "one namespace per group");

    // Through every node, the one outside each group included.
    let mut acks: BTreeMap<i64, Vec<Ack>> = BTreeMap::new();
    for &(namespace_id, vault_id, _) in &scopes {
        for i in 0..3 {
            let tag = format!("n{i}-ns{namespace_id}");
            let written = write_keys(cluster.addr(i), namespace_id, Some(vault_id), &tag, 5).await;
            acks.entry(namespace_id).or_default().extend(written);
        }
        let scope_list = [(namespace_id, None), (namespace_id, Some(vault_id))];
        assert_converged(&cluster, &[0, 1, 2], &scope_list, &acks[&namespace_id], namespace_id).await;
    }
    // A linearizable read through the node outside each group.
    for &(namespace_id, vault_id, group) in &scopes {
        let outside =
            (0..3).find(|i| !initial[&group].contains(&sorted_id(&ids, *i))).expect("a node outside");
        let client = connect(cluster.addr(outside)).await;
        let ack = &acks[&namespace_id][0];
        let read =
            client.read_with(namespace_id, Some(vault_id), &ack.key, ReadConsistency::Linearizable).await;
        assert_eq!(read.expect("linearizable read").as_deref(), Some(&ack.value[..]), "via node {outside}");
    }
    // WatchBlocks through the node outside each group is relayed from a member (D91): the
    // archived blocks from height 1, then the new ones as they commit, as the members have them.
    for &(namespace_id, vault_id, group) in &scopes {
        let outside =
            (0..3).find(|i| !initial[&group].contains(&sorted_id(&ids, *i))).expect("a node outside");
        let member = ids[&initial[&group][0]];
        let before = tip(&connect(cluster.addr(member)).await, namespace_id, Some(vault_id)).await;
        let client = connect(cluster.addr(outside)).await;
        let mut stream = client.watch_blocks(namespace_id, Some(vault_id), 1).await.expect("watch");
        let replayed = next_blocks(&mut stream, 1, before.height).await;
        assert_eq!(replayed.last().map(|b| b.block_hash), Some(before.block_hash), "replayed tip");
        let tag = format!("watched-ns{namespace_id}");
        let written = write_keys(cluster.addr(outside), namespace_id, Some(vault_id), &tag, 3).await;
        acks.entry(namespace_id).or_default().extend(written);
        let scope_list = [(namespace_id, None), (namespace_id, Some(vault_id))];
        let tips =
            assert_converged(&cluster, &[0, 1, 2], &scope_list, &acks[&namespace_id], namespace_id).await;
        let after = &tips[&(namespace_id, Some(vault_id))];
        let live = next_blocks(&mut stream, before.height + 1, after.height).await;
        assert_eq!(live.last().map(|b| b.block_hash), Some(after.block_hash), "live tip via node {outside}");
        stream.cancel().await.expect("cancel");
    }

    // Node 2 leaves: in each of its groups the remaining node is added before it goes.
    let leaver_id = sorted_id(&ids, 2);
    let (code, out) = admin_cli(cluster.addr(0), &["leave", "--node", &leaver_id.to_string()]);
    assert_eq!(code, 0, "leave failed: {out}");
    cluster.kill9(2);
    let mut both = vec![sorted_id(&ids, 0), sorted_id(&ids, 1)];
    both.sort_unstable();
    let after: BTreeMap<u32, Vec<u64>> = (1..=3).map(|g| (g, both.clone())).collect();
    wait_data_groups(&cluster, &ids, &[0, 1], &after).await;
    for &(namespace_id, vault_id, _) in &scopes {
        let deadline = Instant::now() + Duration::from_secs(30);
        while namespace_members(&admin, namespace_id).await.1 != both {
            assert!(
                Instant::now() < deadline,
                "the registry never listed {both:?} for namespace {namespace_id}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let tag = format!("after-leave-ns{namespace_id}");
        let written = write_keys(cluster.addr(1), namespace_id, Some(vault_id), &tag, 5).await;
        acks.entry(namespace_id).or_default().extend(written);
        let scope_list = [(namespace_id, None), (namespace_id, Some(vault_id))];
        assert_converged(&cluster, &[0, 1], &scope_list, &acks[&namespace_id], namespace_id).await;
    }
    assert!(
        // Logged by `_system`'s leader, which may have been the node that left.
        (0..3).any(|i| cluster.stderr(i).contains("event=group_replica_adding")),
        "no replacement was logged"
    );
}

/// The node id of the node at index `i`.
/// The data groups node `i` released its copy of (D92): their directories hold `released`.
fn released_groups(cluster: &Cluster, i: usize) -> Vec<(usize, u32)> {
    let groups = cluster.nodes[i].data_dir.join("groups");
    let Ok(entries) = std::fs::read_dir(groups) else { return Vec::new() };
    entries
        .flatten()
        .filter(|e| e.path().join("released").exists())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix('g')?.parse::<u32>().ok())
        .map(|group| (i, group))
        .collect()
}

/// Takes the announcements of heights `from..=to` from `stream`, checking they come one by one.
async fn next_blocks(
    stream: &mut ledger_wire::client::BlockStream,
    from: u64,
    to: u64,
) -> Vec<ledger_core::types::BlockAnnouncement> {
    let mut blocks = Vec::new();
    for height in from..=to {
        let next = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .unwrap_or_else(|_| panic!("no block {height} within 30 s"));
        match next.expect("stream") {
            ledger_wire::client::StreamNext::Block(block) => {
                assert_eq!(block.height, height, "announcements are consecutive");
                blocks.push(block);
            }
            ledger_wire::client::StreamNext::End(status) => {
                panic!("stream ended before {height}: {status:?}")
            }
        }
    }
    blocks
}

fn sorted_id(ids: &BTreeMap<u64, usize>, i: usize) -> u64 {
    *ids.iter().find(|(_, n)| **n == i).map(|(id, _)| id).expect("the node's id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t29_a_lost_node_is_replaced_in_its_data_groups_by_the_spare_one() {
    // SPEC §10.5–10.6 (D90): four nodes, two data groups of three voters (the default factor).
    // A node of both groups is killed; once `_system`'s leader removes it for its silence, each
    // group has first taken the node it lacked, so both end with the three survivors as voters,
    // and every acknowledged write is on each of them.
    let _one = one_cluster();
    let flags: Vec<&str> = NODE_FLAGS
        .iter()
        .copied()
        .chain(["--initial-groups", "2", "--node-heartbeat-timeout-secs", "2"])
        .collect();
    let mut cluster = Cluster::start(4, &flags);
    let ids = node_ids(&cluster, &[0, 1, 2, 3]).await;
    let sorted: Vec<u64> = ids.keys().copied().collect();
    let initial: BTreeMap<u32, Vec<u64>> = BTreeMap::from([
        (1, vec![sorted[0], sorted[1], sorted[2]]),
        (2, vec![sorted[0], sorted[1], sorted[3]]),
    ]);
    wait_data_groups(&cluster, &ids, &[0, 1, 2, 3], &initial).await;
    let admin_index = ids[&sorted[0]];
    let admin = connect(cluster.addr(admin_index)).await;
    let mut scopes = Vec::new();
    let mut acks: BTreeMap<i64, Vec<Ack>> = BTreeMap::new();
    for n in 0..2 {
        let (namespace_id, vault_id) = create_scope(&admin, &format!("loss-{n}")).await;
        let written = write_keys(cluster.addr(admin_index), namespace_id, Some(vault_id), "before", 10).await;
        acks.insert(namespace_id, written);
        scopes.push((namespace_id, vault_id));
    }
    // A stream of each vault through the node outside its group (relayed from a member, D91)
    // goes on across the loss of a member, whichever member it was relayed from.
    let mut streams = Vec::new();
    for &(namespace_id, vault_id) in &scopes {
        let (group, members) = namespace_members(&admin, namespace_id).await;
        let outside = (0..4).find(|i| !members.contains(&sorted_id(&ids, *i))).expect("a node outside");
        let before = tip(&admin, namespace_id, Some(vault_id)).await;
        let client = connect(cluster.addr(outside)).await;
        let mut stream = client.watch_blocks(namespace_id, Some(vault_id), 1).await.expect("watch");
        next_blocks(&mut stream, 1, before.height).await;
        streams.push((namespace_id, vault_id, group, stream, before.height));
    }
    // The node with the second lowest id is a voter of both groups.
    let lost = ids[&sorted[1]];
    cluster.kill9(lost);
    let survivors: Vec<usize> = (0..4).filter(|i| *i != lost).collect();
    let mut three = vec![sorted[0], sorted[2], sorted[3]];
    three.sort_unstable();
    let after: BTreeMap<u32, Vec<u64>> = (1..=2).map(|g| (g, three.clone())).collect();
    wait_data_groups(&cluster, &ids, &survivors, &after).await;
    let log: String = survivors.iter().map(|&i| cluster.stderr(i)).collect();
    assert!(log.contains("event=node_removed"), "no removal event");
    assert!(log.contains("event=group_replica_adding"), "no replacement event");
    for &(namespace_id, vault_id) in &scopes {
        let deadline = Instant::now() + Duration::from_secs(30);
        while namespace_members(&admin, namespace_id).await.1 != three {
            assert!(Instant::now() < deadline, "the registry never listed {three:?} for {namespace_id}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let written = write_keys(cluster.addr(survivors[1]), namespace_id, Some(vault_id), "after", 10).await;
        acks.entry(namespace_id).or_default().extend(written);
        let scope_list = [(namespace_id, None), (namespace_id, Some(vault_id))];
        assert_converged(&cluster, &survivors, &scope_list, &acks[&namespace_id], namespace_id).await;
    }
    for (namespace_id, vault_id, group, mut stream, watched) in streams {
        let after = tip(&admin, namespace_id, Some(vault_id)).await;
        let blocks = next_blocks(&mut stream, watched + 1, after.height).await;
        assert_eq!(blocks.last().map(|b| b.block_hash), Some(after.block_hash), "group {group}'s stream");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t30_a_node_that_joins_full_groups_takes_its_share_of_replicas() {
    // SPEC §10.5–10.6 (D90): three nodes, four data groups of two voters (hosted 3, 3, 2). A
    // fourth node joins: no group is short, so it joins `_system` only, and then `_system`'s
    // leader moves replicas onto it one at a time (add, then remove) until every node hosts two
    // groups. Every group keeps two voters, the registry follows, and nothing is lost.
    let _one = one_cluster();
    let flags: Vec<&str> = NODE_FLAGS
        .iter()
        .copied()
        .chain(["--initial-groups", "4", "--replication-factor", "2", "--replica-release-secs", "1"])
        .collect();
    let mut cluster = Cluster::start(3, &flags);
    let ids = node_ids(&cluster, &[0, 1, 2]).await;
    let admin = connect(cluster.addr(0)).await;
    let mut scopes = Vec::new();
    let mut acks: BTreeMap<i64, Vec<Ack>> = BTreeMap::new();
    for n in 0..4 {
        let (namespace_id, vault_id) = create_scope(&admin, &format!("share-{n}")).await;
        let written = write_keys(cluster.addr(n % 3), namespace_id, Some(vault_id), "before", 10).await;
        acks.insert(namespace_id, written);
        scopes.push((namespace_id, vault_id));
    }
    let joiner = cluster.start_joining(&flags[..NODE_FLAGS.len()]);
    let joined = node_ids(&cluster, &[joiner]).await;
    let mut all = ids.clone();
    all.extend(joined);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut hosted = BTreeMap::new();
        let mut groups: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for (&id, &i) in &all {
            let mine = data_group_voters(&cluster, i).await;
            hosted.insert(id, mine.len());
            groups.extend(mine);
        }
        let balanced =
            hosted.values().all(|n| *n == 2) && groups.len() == 4 && groups.values().all(|v| v.len() == 2);
        if balanced {
            break;
        }
        assert!(Instant::now() < deadline, "replicas never spread: hosted {hosted:?}, groups {groups:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log: String = (0..=joiner).map(|i| cluster.stderr(i)).collect();
    assert!(log.contains("event=group_replica_moved"), "no move was logged");
    // The two copies the moves left behind are emptied (D92): each is released by its node a
    // second after `_system` lists the group without it, and keeps only a `released` marker.
    let deadline = Instant::now() + Duration::from_secs(60);
    let released = loop {
        let released: Vec<(usize, u32)> = (0..=joiner).flat_map(|i| released_groups(&cluster, i)).collect();
        if released.len() == 2 {
            break released;
        }
        assert!(Instant::now() < deadline, "copies released: {released:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for &(i, group) in &released {
        assert!(!data_group_voters(&cluster, i).await.contains_key(&group), "node {i} released {group}");
        assert!(cluster.stderr(i).contains("event=group_replica_released"), "node {i} logged no release");
    }
    let live: Vec<usize> = (0..=joiner).collect();
    for &(namespace_id, vault_id) in &scopes {
        let (group, _) = namespace_members(&admin, namespace_id).await;
        let voters = {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let mut found = None;
                for &i in &live {
                    if let Some(v) = data_group_voters(&cluster, i).await.get(&group) {
                        found = Some(v.clone());
                    }
                }
                let found = found.expect("a member reports the group");
                if namespace_members(&admin, namespace_id).await.1 == found {
                    break found;
                }
                assert!(Instant::now() < deadline, "the registry never listed {found:?} for group {group}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        assert_eq!(voters.len(), 2);
        let written = write_keys(cluster.addr(joiner), namespace_id, Some(vault_id), "after", 10).await;
        acks.entry(namespace_id).or_default().extend(written);
        let scope_list = [(namespace_id, None), (namespace_id, Some(vault_id))];
        assert_converged(&cluster, &live, &scope_list, &acks[&namespace_id], namespace_id).await;
    }
    // All four killed and restarted: each comes back a member of the same two groups and
    // outside the others, and still serves every namespace.
    cluster.kill9_together(&live);
    for &i in &live {
        cluster.restart(i);
    }
    node_ids(&cluster, &live).await;
    for &(namespace_id, vault_id) in &scopes {
        let written = write_keys(
            cluster.addr(n_outside(&cluster, &live, namespace_id).await),
            namespace_id,
            Some(vault_id),
            "restarted",
            5,
        )
        .await;
        acks.entry(namespace_id).or_default().extend(written);
        let scope_list = [(namespace_id, None), (namespace_id, Some(vault_id))];
        assert_converged(&cluster, &live, &scope_list, &acks[&namespace_id], namespace_id).await;
    }
    for &i in &live {
        assert_eq!(data_group_voters(&cluster, i).await.len(), 2, "node {i} after the restart");
    }
}

/// A node of `live` that is not a member of the namespace's group.
async fn n_outside(cluster: &Cluster, live: &[usize], namespace_id: i64) -> usize {
    let client = connect(cluster.addr(live[0])).await;
    let (group, _) = namespace_members(&client, namespace_id).await;
    for &i in live {
        if !data_group_voters(cluster, i).await.contains_key(&group) {
            return i;
        }
    }
    panic!("every node is a member of group {group}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t31_a_stream_through_a_node_outside_the_group_outlives_each_of_its_members() {
    // SPEC §5.1 item 5, §10.5 (D91): four nodes, one data group of three voters, so one node is
    // outside it and relays a `WatchBlocks` stream from a member. Each member in turn is killed,
    // the group writes on without it, and it is restarted: whichever member the relay used, the
    // stream goes on, opened again at another member from the next height, with every block in
    // order and the hashes the members have.
    let _one = one_cluster();
    let flags: Vec<&str> = NODE_FLAGS.iter().copied().chain(["--initial-groups", "1"]).collect();
    let mut cluster = Cluster::start(4, &flags);
    let ids = node_ids(&cluster, &[0, 1, 2, 3]).await;
    let sorted: Vec<u64> = ids.keys().copied().collect();
    let initial: BTreeMap<u32, Vec<u64>> = BTreeMap::from([(1, sorted[..3].to_vec())]);
    wait_data_groups(&cluster, &ids, &[0, 1, 2, 3], &initial).await;
    let outside = ids[&sorted[3]];
    let members: Vec<usize> = sorted[..3].iter().map(|id| ids[id]).collect();
    let client = connect(cluster.addr(outside)).await;
    let (namespace_id, vault_id) = create_scope(&client, "relayed").await;
    let scope_list = [(namespace_id, None), (namespace_id, Some(vault_id))];
    let mut acks = write_keys(cluster.addr(outside), namespace_id, Some(vault_id), "first", 3).await;
    let mut stream = client.watch_blocks(namespace_id, Some(vault_id), 1).await.expect("watch");
    let mut watched = 0;
    for &member in &members {
        cluster.kill9(member);
        let tag = format!("without-{member}");
        acks.extend(write_keys(cluster.addr(outside), namespace_id, Some(vault_id), &tag, 3).await);
        let live: Vec<usize> = (0..4).filter(|i| *i != member).collect();
        let tips = assert_converged(&cluster, &live, &scope_list, &acks, namespace_id).await;
        let tip = &tips[&(namespace_id, Some(vault_id))];
        let blocks = next_blocks(&mut stream, watched + 1, tip.height).await;
        assert_eq!(blocks.last().map(|b| b.block_hash), Some(tip.block_hash), "without node {member}");
        watched = tip.height;
        cluster.restart(member);
        assert_converged(&cluster, &[0, 1, 2, 3], &scope_list, &acks, namespace_id).await;
    }
    assert!(
        cluster.stderr(outside).contains("event=watch_relay_resumed"),
        "the relay never had to open its stream again"
    );
    stream.cancel().await.expect("cancel");
}

/// Node `i`'s Raft status of `group` (`GetGroupStatus`).
async fn group_status_of(cluster: &Cluster, i: usize, group: u32) -> ledger_wire::messages::GroupStatusInfo {
    let client = connect(cluster.addr(i)).await;
    match client.call(Request::GetGroupStatus).await.expect("GetGroupStatus") {
        Response::GetGroupStatus { groups, .. } => {
            groups.into_iter().find(|g| g.group_id == group).expect("the group's status")
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t32_a_voter_cut_off_and_back_leaves_the_leader_in_place() {
    // D93 (SPEC §10.8: the majority side keeps its leader; a healed partition converges): a
    // follower cut off from the others for many election timeouts asks for pre-votes, which
    // nobody can grant it, so its term never rises; when it is back, the data group's leader and
    // term are those of before, and the follower catches up.
    let _one = one_cluster();
    let flags: Vec<&str> = NODE_FLAGS.iter().copied().chain(["--test-faults", "true"]).collect();
    let cluster = Cluster::start(3, &flags);
    let ids = node_ids(&cluster, &[0, 1, 2]).await;
    let admin = connect(cluster.addr(0)).await;
    let (namespace_id, vault_id) = create_scope(&admin, "pre-vote").await;
    let mut acks = write_keys(cluster.addr(0), namespace_id, Some(vault_id), "before", 5).await;
    let leader = leader_of(&admin, &ids, namespace_id, Some(vault_id)).await;
    let (group, _) = namespace_members(&admin, namespace_id).await;
    let follower = (0..3).find(|i| *i != leader).expect("a follower");
    let before = group_status_of(&cluster, leader, group).await;
    assert_eq!(before.role, "leader");
    partition(&cluster, &ids, Some(follower)).await;
    acks.extend(write_keys(cluster.addr(leader), namespace_id, Some(vault_id), "cut", 10).await);
    // Ten election timeouts and more (the default is 150–300 ms).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let cut = group_status_of(&cluster, follower, group).await;
    assert_eq!(cut.term, before.term, "the cut-off voter raised its term");
    partition(&cluster, &ids, None).await;
    acks.extend(write_keys(cluster.addr(follower), namespace_id, Some(vault_id), "healed", 5).await);
    let scopes = [(namespace_id, None), (namespace_id, Some(vault_id))];
    assert_converged(&cluster, &[0, 1, 2], &scopes, &acks, namespace_id).await;
    let after = group_status_of(&cluster, leader, group).await;
    assert_eq!((after.role.as_str(), after.term), ("leader", before.term), "the leader was deposed");
}
