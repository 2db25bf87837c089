//! GC of expired entities on a 3-node cluster (issue 17 item 5; SPEC §3.8, §11.2 `force-gc`,
//! §11.3 `gc_*`): rows with a short TTL are removed by the leader's periodic GC and by
//! `ledger-admin force-gc` (of a vault, of a namespace scope, of every group a node leads), as
//! `ExpireEntity` transactions of `system:gc` in the chain; every replica's state root agrees
//! afterwards, and the GC counters show in `/metrics`. The race of a row re-set between the
//! scan and the apply is proven deterministically in shard/src/gc_tests.rs.

use ledger_core::types::{Block, Operation};
use ledger_tests::cluster::Cluster;
use ledger_tests::scope::{connect, create_scope, retry_transient, set, walk_chain};
use ledger_wire::client::Client;
use ledger_wire::messages::{Request, Response, WriteResult};
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One core per node: three nodes share this machine's two CPUs.
const NODE_FLAGS: &[&str] = &["--cores", "1", "--requests-timeout-secs", "5"];

/// One cluster at a time (see cluster.rs).
static ONE_CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_cluster() -> std::sync::MutexGuard<'static, ()> {
    ONE_CLUSTER.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

fn admin(addr: &str, args: &[&str]) -> (i32, String, String) {
    ledger_tests::ledger_admin(addr, 20, args)
}

fn ttl(key: &str, expires_at: u64) -> Operation {
    Operation::SetEntity {
        key: key.into(),
        value: key.as_bytes().to_vec(),
        expires_at: Some(expires_at),
        condition: None,
    }
}

async fn write(client: &Client, ns: i64, vault: Option<i64>, sequence: u64, ops: Vec<Operation>) {
    let result =
        retry_transient(|| client.write(ns, vault, "app", sequence, ops.clone())).await.expect("write");
    assert!(matches!(result, WriteResult::Success(_)), "write {sequence}: {result:?}");
}

/// Every committed row of the scope, expired ones included (key, expires_at), from `addr`.
async fn raw_keys(addr: &str, ns: i64, vault: Option<i64>) -> Vec<String> {
    let client = connect(addr).await;
    let request = Request::ListEntities {
        namespace_id: ns,
        vault_id: vault,
        key_prefix: String::new(),
        at_height: None,
        include_expired: true,
        limit: 0,
        page_token: String::new(),
        consistency: ledger_core::types::ReadConsistency::Linearizable,
    };
    match retry_transient(|| client.call(request.clone())).await.expect("ListEntities") {
        Response::ListEntities { entities, .. } => entities.into_iter().map(|e| e.key).collect(),
        other => panic!("unexpected {other:?}"),
    }
}

/// The `system:gc` transactions of the scope's chain: (sequence, [(key, expired_at)]).
fn gc_transactions(chain: &BTreeMap<u64, Block>) -> Vec<(u64, Vec<(String, u64)>)> {
    let mut out = Vec::new();
    for block in chain.values() {
        for tx in block.transactions.iter().filter(|tx| tx.actor == "system:gc") {
            assert_eq!(tx.client_id, "system:gc");
            let expired = tx
                .operations
                .iter()
                .map(|op| match op {
                    Operation::ExpireEntity { key, expired_at } => (key.clone(), *expired_at),
                    other => panic!("a GC transaction holds {other:?}"),
                })
                .collect();
            out.push((tx.sequence, expired));
        }
    }
    out
}

/// `compare-state-roots` until every replica matches the leader (followers apply a moment
/// later); panics with the last answer after 20 s.
fn wait_roots_agree(addr: &str, ns: i64, vault: i64) {
    let (ns, vault) = (ns.to_string(), vault.to_string());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, roots) = ledger_tests::ledger_admin_json(
            addr,
            &["compare-state-roots", "--namespace", &ns, "--vault", &vault],
        );
        if code == 0 {
            assert_eq!(roots["replicas"].as_array().map(Vec::len), Some(3), "{roots}");
            return;
        }
        assert!(Instant::now() < deadline, "state roots never agreed: {roots}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sum of a counter family's samples in a node's exposition text.
fn counter_sum(text: &str, family: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Proves the periodic GC (`--gc-interval-secs 1`): rows whose TTL runs out a few seconds
/// after they are written disappear from committed state by themselves, and rows without or
/// with a later expiry stay; the removal is one or more `system:gc` transactions of
/// `ExpireEntity{key, expired_at = the row's expires_at}`, the replicas' roots agree, and
/// across the three nodes `gc_expired_total` adds up to exactly the rows removed (one leader
/// removed them) while `gc_cycles_total` counts cycles.
#[test]
fn t01_periodic_gc_expires_rows_with_a_short_ttl() {
    let _one = one_cluster();
    let mut flags = NODE_FLAGS.to_vec();
    flags.extend_from_slice(&["--gc-interval-secs", "1"]);
    let cluster = Cluster::start_with_metrics(3, &flags);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    ledger_tests::wait_cluster_healthy(cluster.addr(0));
    let expires_at = now_secs() + 2;
    let (ns, vault) = rt.block_on(async {
        let client = connect(cluster.addr(0)).await;
        let (ns, vault) = create_scope(&client, "periodic").await;
        let ops = vec![
            ttl("short1", expires_at),
            ttl("short2", expires_at),
            ttl("later", now_secs() + 3600),
            set("keep", "k"),
        ];
        write(&client, ns, Some(vault), 1, ops).await;
        (ns, vault)
    });

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let keys = rt.block_on(raw_keys(cluster.addr(1), ns, Some(vault)));
        if keys == ["keep", "later"] {
            break;
        }
        assert!(Instant::now() < deadline, "the periodic GC never removed the expired rows: {keys:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(now_secs() >= expires_at, "a row was removed before it expired");
    wait_roots_agree(cluster.addr(2), ns, vault);

    let chain = rt.block_on(async { walk_chain(&connect(cluster.addr(0)).await, ns, Some(vault)).await });
    let gc = gc_transactions(&chain);
    let mut removed: Vec<(String, u64)> = gc.iter().flat_map(|(_, ops)| ops.clone()).collect();
    removed.sort();
    assert_eq!(
        removed,
        vec![("short1".to_string(), expires_at), ("short2".to_string(), expires_at)],
        "{gc:?}"
    );
    assert_eq!(gc.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), (1..=gc.len() as u64).collect::<Vec<_>>());

    let (mut expired, mut cycles) = (0.0, 0.0);
    for (i, node) in cluster.nodes.iter().enumerate() {
        let metrics = node.metrics_addr.clone().expect("metrics endpoint");
        let (code, text, err) = admin(cluster.addr(i), &["--metrics-addr", &metrics, "metrics"]);
        assert_eq!(code, 0, "metrics: {err}");
        expired += counter_sum(&text, "gc_expired_total");
        cycles += counter_sum(&text, "gc_cycles_total");
    }
    assert_eq!(expired, 2.0, "gc_expired_total over the nodes");
    assert!(cycles >= 1.0, "gc_cycles_total over the nodes: {cycles}");
}

/// Proves `ledger-admin force-gc` with GC otherwise off: of one vault, sent to a node that
/// does not lead its group (forwarded to the leader), it removes the expired rows and prints
/// their count and one scope scanned; of the namespace scope likewise; without a scope, on the
/// node leading the data group, it collects there (exit 0), while a node that leads no group
/// answers exit 1 naming why. Each removal is a `system:gc` transaction with the next
/// sequence; rows not expired stay; every replica's root agrees.
#[test]
fn t02_force_gc_of_a_vault_a_namespace_and_a_node() {
    let _one = one_cluster();
    let mut flags = NODE_FLAGS.to_vec();
    flags.extend_from_slice(&["--gc-interval-secs", "0"]);
    let cluster = Cluster::start(3, &flags);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let status = ledger_tests::wait_cluster_healthy(cluster.addr(0));
    let past = now_secs() - 60;
    let client = rt.block_on(connect(cluster.addr(0)));
    let (ns, vault) = rt.block_on(create_scope(&client, "forced"));
    rt.block_on(write(
        &client,
        ns,
        Some(vault),
        1,
        vec![ttl("a", past), ttl("b", past + 1), set("keep", "k")],
    ));
    rt.block_on(write(&client, ns, None, 1, vec![ttl("n", past), ttl("later", now_secs() + 3600)]));
    let (ns_arg, vault_arg) = (ns.to_string(), vault.to_string());

    // The vault's group leader, and a node that is not it.
    let (_, info) = ledger_tests::ledger_admin_json(
        cluster.addr(0),
        &["vault-status", "--namespace", &ns_arg, "--vault", &vault_arg],
    );
    let leader = info["leader"].as_u64().expect("vault has a leader");
    let addr_of = |id: u64| -> String {
        status["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["node_id"].as_u64() == Some(id)))
            .and_then(|n| n["address"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("node {id} not in {status}"))
    };
    let leader_addr = addr_of(leader);
    let follower_addr = cluster.addrs().into_iter().find(|a| *a != leader_addr).expect("a follower");

    // Of the vault, through a follower.
    let (code, out, err) =
        admin(&follower_addr, &["force-gc", "--namespace", &ns_arg, "--vault", &vault_arg]);
    assert_eq!(code, 0, "force-gc: {out} {err}");
    assert_eq!(out.trim(), "expired 2\nvaults_scanned 1", "{out}");
    assert_eq!(rt.block_on(raw_keys(cluster.addr(2), ns, Some(vault))), ["keep"]);
    wait_roots_agree(cluster.addr(1), ns, vault);

    // Of the namespace scope (no --vault).
    let (code, gc) = ledger_tests::ledger_admin_json(&follower_addr, &["force-gc", "--namespace", &ns_arg]);
    assert_eq!(code, 0, "{gc}");
    assert_eq!((gc["expired_count"].as_u64(), gc["vaults_scanned"].as_u64()), (Some(1), Some(1)), "{gc}");
    assert_eq!(rt.block_on(raw_keys(cluster.addr(1), ns, None)), ["later"]);

    // Of every group a node leads: on the data group's leader it collects the vault's new row.
    rt.block_on(write(&client, ns, Some(vault), 2, vec![ttl("c", past)]));
    let (code, gc) = ledger_tests::ledger_admin_json(&leader_addr, &["force-gc"]);
    assert_eq!(code, 0, "{gc}");
    assert_eq!(gc["expired_count"].as_u64(), Some(1), "{gc}");
    assert!(gc["vaults_scanned"].as_u64() >= Some(2), "the namespace scope and the vault at least: {gc}");
    assert_eq!(rt.block_on(raw_keys(cluster.addr(0), ns, Some(vault))), ["keep"]);
    // Two groups over three nodes: at least one node leads none and refuses.
    let refusals = cluster
        .addrs()
        .iter()
        .map(|addr| admin(addr, &["force-gc"]))
        .filter(|(code, _, err)| *code == 1 && err.contains("leads no group"))
        .count();
    assert!(refusals >= 1, "no node refused a node-wide force-gc");

    wait_roots_agree(cluster.addr(0), ns, vault);
    let chain = rt.block_on(walk_chain(&client, ns, Some(vault)));
    assert_eq!(
        gc_transactions(&chain),
        vec![
            (1, vec![("a".to_string(), past), ("b".to_string(), past + 1)]),
            (2, vec![("c".to_string(), past)]),
        ]
    );
    let ns_chain = rt.block_on(walk_chain(&client, ns, None));
    assert_eq!(gc_transactions(&ns_chain), vec![(1, vec![("n".to_string(), past)])]);
}
