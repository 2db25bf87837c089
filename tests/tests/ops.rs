//! Operating a 3-node cluster with `ledger-admin` (issue 16 items 1, 4, 5; SPEC §9.8–9.9,
//! §11.2): the vault-repair runbook end to end (a vault diverges on one follower, shows in
//! `vault-status` and `compare-state-roots`, the others keep serving, `recover-vault` repairs
//! it), automatic recovery, `stepdown` moving and spreading leaderships, `cluster-status` and
//! `lag-report`, and an unreachable node (exit 3).

use ledger_tests::cluster::Cluster;
use ledger_tests::scope::{connect, create_scope, retry_transient, set};
use serde_json::Value;
use std::time::{Duration, Instant};

/// One core per node: three nodes share this machine's two CPUs. Test-only requests on.
const NODE_FLAGS: &[&str] = &["--cores", "1", "--requests-timeout-secs", "5", "--test-faults", "true"];

/// One cluster at a time (see cluster.rs).
static ONE_CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_cluster() -> std::sync::MutexGuard<'static, ()> {
    ONE_CLUSTER.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `ledger-admin --addr ADDR ARGS…`; returns (exit code, stdout, stderr).
fn admin(addr: &str, args: &[&str]) -> (i32, String, String) {
    ledger_tests::ledger_admin(addr, 20, args)
}

/// The node index of node id `id`.
fn index_of(cluster: &Cluster, status: &Value, id: u64) -> usize {
    let addr = status["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["node_id"].as_u64() == Some(id)))
        .and_then(|n| n["address"].as_str())
        .unwrap_or_else(|| panic!("node {id} not in {status}"));
    cluster.addrs().iter().position(|a| a == addr).unwrap_or_else(|| panic!("{addr} is not a node"))
}

/// `vault-status` on `addr` once that node knows the vault. A node that follows the vault's group
/// learns a commit a few milliseconds after the leader answered it (D58): eventual, like every
/// read of a node's own replica.
fn vault_status_once_known(addr: &str, scope: &[&str]) -> Value {
    let args = [&["--format", "json", "vault-status"][..], scope].concat();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, out, err) = ledger_tests::ledger_admin(addr, 20, &args);
        if let Ok(value) = serde_json::from_str::<Value>(out.trim()) {
            return value;
        }
        assert!(code != 0 && err.contains("NotFound"), "vault-status: {code} {out} {err}");
        assert!(Instant::now() < deadline, "the node never learned the vault: {err}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until every replica has applied the leader's tip of the scope with the same root
/// (`compare-state-roots` exits 0), so that what a test does next to one follower does not race
/// the others' last commits.
fn wait_replicas_agree(addr: &str, scope: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, roots) =
            ledger_tests::ledger_admin_json(addr, &[&["compare-state-roots"][..], scope].concat());
        if code == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the replicas never agreed: {roots}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn write_keys(addr: &str, ns: i64, vault: i64, client_id: &str, from: u64, n: u64) {
    let client = connect(addr).await;
    for i in from..from + n {
        let result = retry_transient(|| {
            let client = client.clone();
            let client_id = client_id.to_string();
            async move {
                client.write(ns, Some(vault), client_id, i, vec![set(format!("k{i}"), format!("v{i}"))]).await
            }
        })
        .await
        .expect("write");
        assert!(matches!(result, ledger_wire::messages::WriteResult::Success(_)), "write {i}: {result:?}");
    }
}

#[test]
fn t01_runbook_diverged_vault_is_seen_and_recovered_by_hand() {
    let _one = one_cluster();
    let mut flags = NODE_FLAGS.to_vec();
    flags.extend_from_slice(&["--vault-auto-recovery", "false"]);
    let mut cluster = Cluster::start_with_metrics(3, &flags);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let status = ledger_tests::wait_cluster_healthy(cluster.addr(0));
    assert_eq!(status["nodes"].as_array().map(Vec::len), Some(3), "{status}");
    let (ns, vault) = rt.block_on(async {
        let client = connect(cluster.addr(0)).await;
        create_scope(&client, "runbook").await
    });
    let ns_arg = ns.to_string();
    let vault_arg = vault.to_string();
    let scope: [&str; 4] = ["--namespace", &ns_arg, "--vault", &vault_arg];
    let info = vault_status_once_known(cluster.addr(0), &scope);
    let leader = info["leader"].as_u64().expect("vault has a leader");
    let leader_i = index_of(&cluster, &status, leader);
    let follower = (0..3).find(|i| *i != leader_i).expect("a follower");
    rt.block_on(write_keys(cluster.addr(leader_i), ns, vault, "writer", 1, 20));
    wait_replicas_agree(cluster.addr(leader_i), &scope);

    // Diverge the vault on one follower.
    let (code, out, err) = admin(cluster.addr(follower), &[&["simulate-divergence"][..], &scope].concat());
    assert_eq!(code, 0, "simulate-divergence: {out} {err}");

    // vault-status on that follower: Diverged, exit 1.
    let (code, out, _) = admin(cluster.addr(follower), &[&["vault-status"][..], &scope].concat());
    assert_eq!(code, 1, "vault-status of a Diverged vault exits 1: {out}");
    assert!(out.contains("diverged at height"), "{out}");
    assert!(out.contains("expected root") && out.contains("computed root"), "{out}");

    // compare-state-roots: the follower alone mismatches, exit 1.
    let (code, roots) = ledger_tests::ledger_admin_json(
        cluster.addr(follower),
        &[&["compare-state-roots"][..], &scope].concat(),
    );
    assert_eq!(code, 1, "{roots}");
    let replicas = roots["replicas"].as_array().expect("replicas");
    assert_eq!(replicas.len(), 3, "{roots}");
    let mismatched: Vec<u64> = replicas
        .iter()
        .filter(|r| r["matches_leader"] == false)
        .filter_map(|r| r["node_id"].as_u64())
        .collect();
    let follower_id = status["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["address"].as_str() == Some(cluster.addr(follower))))
        .and_then(|n| n["node_id"].as_u64())
        .expect("follower id");
    assert_eq!(mismatched, vec![follower_id], "{roots}");

    // The divergence is in the follower's event log.
    let (code, out, err) =
        admin(cluster.addr(follower), &["logs", "--since", "1h", "--filter", "state_root_divergence"]);
    assert_eq!(code, 0, "logs: {out} {err}");
    assert!(
        out.lines().any(|l| l.contains("state_root_divergence") && l.contains(&format!("{ns}/{vault}"))),
        "{out}"
    );

    // /metrics on the follower: one diverged scope, the divergence counted, health ratio < 1.
    let metrics = cluster.nodes[follower].metrics_addr.clone().expect("metrics endpoint");
    let (code, text, err) = admin(cluster.addr(follower), &["--metrics-addr", &metrics, "metrics"]);
    assert_eq!(code, 0, "metrics: {err}");
    let sample = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in the exposition"))
    };
    assert_eq!(sample("vault_health{state=\"diverged\"}"), 1.0);
    assert!(sample("vault_health_ratio") < 1.0);
    assert!(
        text.lines().any(|l| l.starts_with("state_root_divergence_total") && l.ends_with(" 1")),
        "{text}"
    );

    // The cluster keeps serving the vault: writes through the leader commit.
    rt.block_on(write_keys(cluster.addr(leader_i), ns, vault, "writer", 21, 10));
    // Node health shows the follower degraded; the whole cluster is not healthy.
    let (code, cs) = ledger_tests::ledger_admin_json(cluster.addr(leader_i), &["cluster-status"]);
    assert_eq!(code, 1, "{cs}");
    assert_eq!(cs["status"], "degraded", "{cs}");

    // recover-vault on the follower: rebuilt past the writes made while it was Diverged.
    let (code, out, err) = admin(cluster.addr(follower), &[&["recover-vault"][..], &scope].concat());
    assert_eq!(code, 0, "recover-vault: {out} {err}");
    assert!(out.starts_with("recovered"), "{out}");
    // A healthy vault is not recovered without --force.
    let (code, _, err) = admin(cluster.addr(follower), &[&["recover-vault"][..], &scope].concat());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("Healthy"), "{err}");
    let (code, out, _) = admin(cluster.addr(follower), &[&["vault-status"][..], &scope].concat());
    assert_eq!(code, 0, "{out}");
    let (_, text, _) = admin(cluster.addr(follower), &["--metrics-addr", &metrics, "metrics"]);
    assert!(text.lines().any(|l| l == "vault_health{state=\"diverged\"} 0"), "{text}");
    assert!(text.lines().any(|l| l == "vault_health_ratio 1"), "{text}");
    // Every replica agrees with the leader at the leader's height (30 blocks past genesis).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, roots) = ledger_tests::ledger_admin_json(
            cluster.addr(follower),
            &[&["compare-state-roots"][..], &scope].concat(),
        );
        if code == 0 {
            assert_eq!(roots["height"].as_u64(), Some(30), "{roots}");
            break;
        }
        assert!(Instant::now() < deadline, "roots never matched again: {roots}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, out, _) =
        admin(cluster.addr(follower), &["logs", "--since", "1h", "--filter", "vault_recovered"]);
    assert_eq!(out.lines().count(), 1, "one recovery: {out}");

    // And --force rebuilds a healthy vault.
    let (code, out, err) =
        admin(cluster.addr(follower), &[&["recover-vault", "--force"][..], &scope].concat());
    assert_eq!(code, 0, "recover-vault --force: {out} {err}");
    // The recovered replica serves its reads again and they match.
    rt.block_on(async {
        let client = connect(cluster.addr(follower)).await;
        let value = client
            .read_with(ns, Some(vault), "k30", ledger_core::types::ReadConsistency::Eventual)
            .await
            .expect("read on the recovered follower");
        assert_eq!(value.as_deref(), Some(b"v30".as_slice()));
    });
    let _ = &mut cluster;
}

#[test]
fn t02_automatic_recovery_heals_a_diverged_vault() {
    let _one = one_cluster();
    let cluster = Cluster::start(3, NODE_FLAGS);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let status = ledger_tests::wait_cluster_healthy(cluster.addr(0));
    let (ns, vault) = rt.block_on(async {
        let client = connect(cluster.addr(0)).await;
        create_scope(&client, "auto").await
    });
    let ns_arg = ns.to_string();
    let vault_arg = vault.to_string();
    let scope: [&str; 4] = ["--namespace", &ns_arg, "--vault", &vault_arg];
    let info = vault_status_once_known(cluster.addr(0), &scope);
    let leader_i = index_of(&cluster, &status, info["leader"].as_u64().expect("leader"));
    let follower = (0..3).find(|i| *i != leader_i).expect("a follower");
    rt.block_on(write_keys(cluster.addr(leader_i), ns, vault, "w", 1, 5));
    wait_replicas_agree(cluster.addr(leader_i), &scope);
    let (code, out, err) = admin(cluster.addr(follower), &[&["simulate-divergence"][..], &scope].concat());
    assert_eq!(code, 0, "{out} {err}");
    // watch-recovery prints the transitions and exits 0 once Healthy (attempt 1 runs at once).
    let (code, out, err) =
        admin(cluster.addr(follower), &[&["watch-recovery", "--interval-secs", "1"][..], &scope].concat());
    assert_eq!(code, 0, "watch-recovery: {out} {err}");
    assert!(out.lines().last().is_some_and(|l| l.ends_with("healthy")), "{out}");
    let (code, roots) = ledger_tests::ledger_admin_json(
        cluster.addr(follower),
        &[&["compare-state-roots"][..], &scope].concat(),
    );
    assert_eq!(code, 0, "{roots}");
}

#[test]
fn t03_stepdown_moves_and_spreads_leaderships() {
    let _one = one_cluster();
    let mut flags = NODE_FLAGS.to_vec();
    flags.extend_from_slice(&["--groups-per-core", "5"]);
    let cluster = Cluster::start(3, &flags);
    let status = ledger_tests::wait_cluster_healthy(cluster.addr(0));
    let groups = status["groups"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(groups, 6, "group 0 and five data groups: {status}");
    // The node that leads the most groups steps down.
    let nodes = status["nodes"].as_array().expect("nodes");
    let busiest = nodes.iter().max_by_key(|n| n["groups_led"].as_u64()).expect("a node");
    let id = busiest["node_id"].as_u64().expect("id");
    let led = busiest["groups_led"].as_u64().unwrap_or(0);
    assert!(led > 0, "{status}");
    let id_arg = id.to_string();
    // Asked through another node: the request goes to the node stepping down.
    let other =
        cluster.addrs().into_iter().find(|a| Some(a.as_str()) != busiest["address"].as_str()).expect("other");
    let (code, moved) = ledger_tests::ledger_admin_json(&other, &["stepdown", "--node", &id_arg]);
    assert_eq!(code, 0, "stepdown: {moved}");
    assert_eq!(moved["moved"].as_array().map(Vec::len), Some(led as usize), "{moved}");
    let after = ledger_tests::wait_cluster_healthy(cluster.addr(0));
    let leads: Vec<(u64, u64)> = after["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| (n["node_id"].as_u64().unwrap_or(0), n["groups_led"].as_u64().unwrap_or(0)))
        .collect();
    let of_stepped = leads.iter().find(|(n, _)| *n == id).map(|(_, l)| *l);
    assert_eq!(of_stepped, Some(0), "node {id} still leads groups: {after}");
    // Spread: the other two nodes lead 3 and 3 of the 6 groups, give or take one.
    let others: Vec<u64> = leads.iter().filter(|(n, _)| *n != id).map(|(_, l)| *l).collect();
    assert_eq!(others.iter().sum::<u64>(), 6, "{after}");
    assert!(
        others.iter().max().unwrap_or(&0) - others.iter().min().unwrap_or(&0) <= 2,
        "not spread: {after}"
    );
    // Writes still commit, and the lag report has every group with a leader.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let client = connect(cluster.addr(0)).await;
        let (ns, vault) = create_scope(&client, "after-stepdown").await;
        write_keys(cluster.addr(0), ns, vault, "w", 1, 5).await;
    });
    let (code, lag) = ledger_tests::ledger_admin_json(cluster.addr(1), &["lag-report"]);
    assert_eq!(code, 0, "{lag}");
    assert_eq!(lag["groups"].as_array().map(Vec::len), Some(6), "{lag}");
    // Text output is an aligned table with a header.
    let (code, out, _) = admin(cluster.addr(2), &["cluster-status"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("GROUP") && out.contains("NODE") && out.trim_end().ends_with("healthy"), "{out}");
}

#[test]
fn t04_unreachable_node_exits_3_with_one_line() {
    let addr = ledger_tests::cluster::free_addr();
    for command in [&["cluster-status"][..], &["lag-report"], &["stepdown", "--node", "1"]] {
        let (code, out, err) = admin(&addr, command);
        assert_eq!(code, 3, "{command:?}: {out} {err}");
        assert_eq!(err.trim().lines().count(), 1, "{command:?}: {err}");
        assert!(out.is_empty(), "{out}");
    }
}

#[test]
fn t05_clear_vault_state_offline_then_rebuilt_at_start() {
    // SPEC §9.9's offline tool: refused while the server holds the data directory; with the
    // server stopped it clears the vault's rows and marks it Diverged; the next start rebuilds
    // it from the archive (automatic recovery) and it serves the same data and root again.
    let dir = ledger_tests::temp_dir("clear-vault");
    let data_dir = dir.path().join("node");
    let server = ledger_tests::ServerProcess::start(&data_dir, &[]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (ns, vault) = rt.block_on(async {
        let client = connect(&server.addr).await;
        let (ns, vault) = create_scope(&client, "clear").await;
        write_keys(&server.addr, ns, vault, "w", 1, 10).await;
        (ns, vault)
    });
    let (ns_arg, vault_arg) = (ns.to_string(), vault.to_string());
    let scope: [&str; 4] = ["--namespace", &ns_arg, "--vault", &vault_arg];
    let (_, before) =
        ledger_tests::ledger_admin_json(&server.addr, &[&["vault-status"][..], &scope].concat());
    let dir_arg = data_dir.display().to_string();
    let offline: Vec<&str> = [&["clear-vault-state"][..], &scope, &["--data-dir", &dir_arg]].concat();
    let (code, out, err) = admin(&server.addr, &offline);
    assert_eq!(code, 1, "refused while running: {out} {err}");
    assert!(err.contains("locked"), "{err}");
    assert_eq!(server.stop(), Some(0));
    let (code, cleared) = ledger_tests::ledger_admin_json("127.0.0.1:1", &offline);
    assert_eq!(code, 0, "{cleared}");
    assert!(cleared["rows_removed"].as_u64().unwrap_or(0) >= 10, "{cleared}");
    let server = ledger_tests::ServerProcess::restart(&data_dir, &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, after) =
            ledger_tests::ledger_admin_json(&server.addr, &[&["vault-status"][..], &scope].concat());
        if code == 0 {
            assert_eq!(after["state_root"], before["state_root"], "{after}");
            assert_eq!(after["height"], before["height"], "{after}");
            break;
        }
        assert!(Instant::now() < deadline, "never rebuilt: {after}");
        std::thread::sleep(Duration::from_millis(200));
    }
    rt.block_on(async {
        let client = connect(&server.addr).await;
        let value = client
            .read_with(ns, Some(vault), "k7", ledger_core::types::ReadConsistency::Eventual)
            .await
            .expect("read after the rebuild");
        assert_eq!(value.as_deref(), Some(b"v7".as_slice()));
    });
    assert_eq!(server.stop(), Some(0));
}
