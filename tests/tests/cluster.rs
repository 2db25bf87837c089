//! The cluster (SPEC §10, issue 14): three real `ledger-server` processes on one machine,
//! bootstrapped with `--bootstrap-expect 3 --peers …`. Every test ends by checking that every
//! acknowledged write is on every replica and that the replicas agree on each scope's tip
//! height, block hash and state root (SPEC §12 invariants 1–3, 14, 24–26).

use ledger_core::types::ReadConsistency;
use ledger_tests::cluster::Cluster;
use ledger_tests::scope::{connect, create_scope, retry_transient, set, tip, walk_chain, ScopeTip};
use ledger_wire::client::{Client, RetryPolicy, WriteOutcome, WriteSession};
use ledger_wire::messages::{Request, Response, StatusCode};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One core per node: three nodes share this machine's two CPUs.
const NODE_FLAGS: &[&str] = &["--cores", "1", "--requests-timeout-secs", "5"];

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
    let mut cluster = Cluster::start(3, NODE_FLAGS);
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
    if groups[0] != groups[1] {
        assert_ne!(leaders[0], leaders[1], "groups {groups:?} are both led by node {}", leaders[0]);
    }
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
