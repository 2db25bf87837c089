//! Metrics and health over HTTP (SPEC §11.3–§11.5, issue 16 item 2): a real three-node cluster,
//! each node with its own metrics endpoint, takes writes and reads through the client library;
//! every node's `GET /metrics` is scraped twice with a plain HTTP GET and parsed with a
//! Prometheus text parser (`prometheus-parse`). The test checks the families and their labels,
//! that counters and indexes move between the scrapes, and that `/health` and `/ready` answer.

use ledger_core::verify::TrustedBlock;
use ledger_tests::cluster::free_addr;
use ledger_tests::scope::{connect, create_scope, set};
use ledger_tests::ServerProcess;
use ledger_wire::client::{RetryPolicy, VerifiedReadOptions, WriteOutcome, WriteSession};
use prometheus_parse::{Sample, Scrape, Value};
use std::io::{Read, Write};
use std::time::Duration;

/// Every family the endpoint exports (docs/operations.md "Metrics"), with the labels each
/// series of it must carry.
const FAMILIES: &[(&str, &[&str])] = &[
    ("raft_term", &["group"]),
    ("raft_commit_index", &["group"]),
    ("raft_apply_index", &["group"]),
    ("raft_leader", &["group"]),
    ("raft_replication_lag", &["group", "follower"]),
    ("raft_proposals_pending", &["group"]),
    ("raft_leader_changes_total", &["group"]),
    ("group_height", &["group"]),
    ("blocks_per_second", &["group"]),
    ("chain_height", &["namespace", "vault"]),
    ("chain_tip_age_seconds", &["namespace", "vault"]),
    ("state_tree_keys", &["namespace", "vault"]),
    ("vault_recovery_attempts_total", &["namespace", "vault"]),
    ("vault_recovery_success_total", &["namespace", "vault"]),
    ("state_root_divergence_total", &["group"]),
    ("determinism_bug_total", &["group"]),
    ("vault_recovery_exhausted", &["namespace", "vault"]),
    ("vault_health", &["state"]),
    ("vault_health_ratio", &[]),
    ("requests_total", &["op", "status"]),
    ("request_latency_seconds", &["op"]),
    ("request_latency_p50", &["op"]),
    ("request_latency_p99", &["op"]),
    ("request_latency_p999", &["op"]),
    ("read_latency_ms", &[]),
    ("write_latency_ms", &[]),
    ("write_raft_latency_ms", &[]),
    ("reads_per_second", &[]),
    ("writes_per_second", &[]),
    ("idempotency_cache_hits_total", &["core"]),
    ("idempotency_cache_misses_total", &["core"]),
    ("idempotency_cache_evictions_total", &["core"]),
    ("idempotency_cache_size", &["core"]),
    ("serialization_decode_seconds", &["direction", "kind"]),
    ("serialization_encode_seconds", &["direction", "kind"]),
    ("serialization_bytes", &["direction", "kind"]),
    ("merkle_proof_generation_seconds", &["kind"]),
    ("snapshot_restore_seconds", &["group"]),
    ("state_nodes_hashed_per_block", &["group"]),
    ("core_queue_depth", &["core"]),
    ("core_busy_ratio", &["core"]),
    ("core_groups", &["core"]),
    ("core_connections", &["core"]),
    ("connection_handoffs_total", &["core"]),
    ("active_connections", &[]),
    ("rate_limit_exceeded_total", &["namespace"]),
    ("gc_cycles_total", &["group"]),
    ("gc_expired_total", &["group"]),
    ("disk_usage_ratio", &[]),
    ("storage_bytes", &["group", "file"]),
    ("learner_refresh_total", &[]),
    ("learner_cache_stale_total", &[]),
];

/// Families that appear once the node has proposed blocks or taken snapshots (the leader of a
/// group): checked on the nodes that have them.
const LEADER_FAMILIES: &[(&str, &[&str])] = &[
    ("raft_proposals_total", &["group"]),
    ("eager_commits_total", &["group"]),
    ("timeout_commits_total", &["group"]),
    ("size_commits_total", &["group"]),
    ("batch_size", &["group"]),
    ("batch_wait_ms", &["group"]),
    ("state_root_computation_duration_seconds", &["group"]),
];

/// The observations of the histogram series of `name` whose labels include `labels`, summed
/// (each series' count is its largest cumulative bucket).
fn observations(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    series(scrape, name)
        .into_iter()
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
            other => panic!("{name} is not a histogram: {other:?}"),
        })
        .sum()
}

/// A plain HTTP/1.1 GET; returns (status line, content type, body).
fn http_get(addr: &str, path: &str) -> (String, String, String) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a header and a body");
    let status = head.lines().next().unwrap_or_default().to_string();
    let content_type =
        head.lines().find_map(|l| l.strip_prefix("Content-Type: ")).unwrap_or_default().to_string();
    (status, content_type, body.to_string())
}

fn scrape(addr: &str) -> Scrape {
    let (status, content_type, body) = http_get(addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(content_type, "text/plain; version=0.0.4");
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("the exposition parses")
}

fn series<'a>(scrape: &'a Scrape, name: &str) -> Vec<&'a Sample> {
    scrape.samples.iter().filter(|s| s.metric == name).collect()
}

fn number(sample: &Sample) -> f64 {
    match &sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{} is not a number: {other:?}", sample.metric),
    }
}

/// The value of the one series of `name` whose labels include `labels`.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = series(scrape, name)
        .into_iter()
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(number)
        .collect();
    assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}");
    found[0]
}

fn sum(scrape: &Scrape, name: &str) -> f64 {
    series(scrape, name).into_iter().map(number).sum()
}

fn check_families(node: usize, scrape: &Scrape, families: &[(&str, &[&str])]) {
    for (name, labels) in families {
        let found = series(scrape, name);
        assert!(!found.is_empty(), "node {node}: family {name} is missing");
        for sample in found {
            for label in *labels {
                assert!(sample.labels.get(label).is_some(), "node {node}: {name} lacks label {label}");
            }
        }
    }
}

/// Writes `count` keys from a session opened on node 0 (the client library moves writes to the
/// leader once it learns it) and reads each back from node 0.
async fn load(addr: &str, namespace_id: i64, vault_id: i64, tag: &str, count: usize) {
    let policy = RetryPolicy {
        base: Duration::from_millis(20),
        cap: Duration::from_millis(200),
        max_attempts: 100,
        jitter: true,
    };
    let mut session = WriteSession::new(connect(addr).await, namespace_id, Some(vault_id))
        .with_client_id(format!("metrics-{tag}"))
        .with_retry_policy(policy);
    let reader = connect(addr).await;
    for n in 0..count {
        let key = format!("{tag}:{n}");
        match session.write(vec![set(key.clone(), b"v".to_vec())]).await.expect("write") {
            WriteOutcome::Committed { .. } | WriteOutcome::AlreadyCommitted { .. } => {}
            WriteOutcome::Rejected(e) => panic!("unconditional write rejected: {e:?}"),
        }
        reader.read(namespace_id, Some(vault_id), key).await.expect("read");
    }
}

/// t01: a loaded three-node cluster exports every family with its labels on every node; the
/// leader reports a replication lag per follower; vault_health counts every local scope; the
/// write counters, latencies and commit indexes move between two scrapes; /health and /ready
/// answer 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t01_metrics_of_a_loaded_cluster() {
    let dir = ledger_tests::temp_dir("metrics");
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let metrics: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let peers = addrs.join(",");
    let nodes: Vec<ServerProcess> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let (addr, metrics, peers, dir) =
                    (&addrs[i], &metrics[i], &peers, dir.path().join(format!("n{i}")));
                scope.spawn(move || {
                    let flags = [
                        "--bootstrap-expect",
                        "3",
                        "--peers",
                        peers,
                        "--bootstrap-poll-secs",
                        "1",
                        "--cores",
                        "1",
                        "--requests-timeout-secs",
                        "5",
                        "--metrics-addr",
                        metrics,
                    ];
                    ServerProcess::start_on(&dir, addr, &flags)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("node start")).collect()
    });
    let client = connect(&addrs[0]).await;
    let (namespace_id, vault_id) = create_scope(&client, "metrics").await;
    load(&addrs[0], namespace_id, vault_id, "a", 100).await;
    // A state proof now, then a write with its transaction proof and a read with a chain proof
    // from the block the first read trusted (merkle_proof_generation_seconds, every kind).
    let first_read = client
        .verified_read(namespace_id, Some(vault_id), "a:0", VerifiedReadOptions::default())
        .await
        .expect("verified read");

    let first: Vec<Scrape> = metrics.iter().map(|m| scrape(m)).collect();
    load(&addrs[0], namespace_id, vault_id, "b", 100).await;
    let mut session = WriteSession::new(connect(&addrs[0]).await, namespace_id, Some(vault_id))
        .with_client_id("metrics-proof".to_string());
    match session.write_verified(vec![set("p:0".to_string(), b"v".to_vec())]).await.expect("write") {
        WriteOutcome::Committed { .. } => {}
        other => panic!("a new client's first write: {other:?}"),
    }
    let options = VerifiedReadOptions {
        trusted: Some(TrustedBlock::of(&first_read.block_header)),
        ..VerifiedReadOptions::default()
    };
    let chained = client.verified_read(namespace_id, Some(vault_id), "b:0", options).await.expect("read");
    assert!(chained.chain_proof.is_some(), "the read asked for a chain proof");
    // Every replica applies the second batch before the second scrape.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second: Vec<Scrape> = metrics.iter().map(|m| scrape(m)).collect();

    for (i, scrape) in second.iter().enumerate() {
        check_families(i, scrape, FAMILIES);
        // vault_health has all three states, summing to the local scopes (all active here, so
        // each has its chain_height series).
        for state in ["healthy", "diverged", "recovering"] {
            value(scrape, "vault_health", &[("state", state)]);
        }
        let scopes = series(scrape, "chain_height").len() as f64;
        assert!(scopes >= 3.0, "node {i}: _system, the namespace and the vault: {scopes}");
        assert_eq!(sum(scrape, "vault_health"), scopes, "node {i}");
        assert_eq!(value(scrape, "vault_health", &[("state", "healthy")]), scopes, "node {i}");
        assert_eq!(value(scrape, "vault_health_ratio", &[]), 1.0);
        // Every node replicates every group and applied the writes: commit indexes moved.
        assert!(
            sum(scrape, "raft_commit_index") > sum(&first[i], "raft_commit_index"),
            "node {i}: raft_commit_index did not move"
        );
        assert!(sum(scrape, "raft_apply_index") > sum(&first[i], "raft_apply_index"));
        assert!(value(scrape, "disk_usage_ratio", &[]) > 0.0);
        // Every kind of serialization is exported, and every replica appended log entries.
        for kind in ["wire", "log", "snapshot"] {
            for family in ["serialization_decode_seconds", "serialization_encode_seconds"] {
                assert_eq!(
                    series(scrape, family).iter().filter(|s| s.labels.get("kind") == Some(kind)).count(),
                    1,
                    "node {i}: {family}{{kind={kind}}}"
                );
            }
        }
        let log_encodes = observations(scrape, "serialization_encode_seconds", &[("kind", "log")]);
        assert!(log_encodes >= 200.0, "node {i}: log entries encoded: {log_encodes}");
        assert!(
            observations(scrape, "serialization_bytes", &[("kind", "log"), ("direction", "out")]) >= 200.0
        );
    }
    // The proofs were generated on some node (the one that answered): count them over all.
    let proofs = |kind: &str| -> f64 {
        second.iter().map(|s| observations(s, "merkle_proof_generation_seconds", &[("kind", kind)])).sum()
    };
    assert!(proofs("state") >= 2.0, "state proofs: {}", proofs("state"));
    assert!(proofs("chain") >= 1.0, "chain proofs: {}", proofs("chain"));
    assert!(proofs("tx") >= 1.0, "tx proofs: {}", proofs("tx"));
    // Each group has one leader across the nodes, and that leader reports a lag per follower.
    let groups: std::collections::BTreeSet<String> = series(&second[0], "raft_leader")
        .into_iter()
        .map(|s| s.labels.get("group").unwrap_or_default().to_string())
        .collect();
    assert!(groups.len() >= 2, "group 0 and a data group: {groups:?}");
    let mut leaders_seen = 0;
    for group in &groups {
        let leaders: Vec<usize> =
            (0..3).filter(|&i| value(&second[i], "raft_leader", &[("group", group)]) == 1.0).collect();
        assert_eq!(leaders.len(), 1, "group {group}: leaders {leaders:?}");
        let leader = &second[leaders[0]];
        let followers: Vec<&Sample> = series(leader, "raft_replication_lag")
            .into_iter()
            .filter(|s| s.labels.get("group") == Some(group.as_str()))
            .collect();
        assert_eq!(followers.len(), 2, "group {group}: one lag per follower on its leader");
        if group != "0" {
            check_families(leaders[0], leader, LEADER_FAMILIES);
            // The leader hashed state-tree nodes for each block it proposed in this group.
            let blocks = observations(leader, "state_nodes_hashed_per_block", &[("group", group)]);
            let proposed = value(leader, "raft_proposals_total", &[("group", group)]);
            assert!(
                blocks > 0.0 && blocks == proposed,
                "group {group}: {blocks} blocks, {proposed} proposed"
            );
            leaders_seen += 1;
        }
    }
    assert!(leaders_seen >= 1);
    // The routers of the nodes saw every write and read of the load (the client library sends
    // writes to the leader it learned, so they spread over the nodes): counters moved, and the
    // node that answered most writes has write latencies.
    let ok_writes = |s: &Scrape| {
        series(s, "requests_total")
            .into_iter()
            .filter(|x| x.labels.get("op") == Some("write") && x.labels.get("status") == Some("ok"))
            .map(number)
            .sum::<f64>()
    };
    let before: f64 = first.iter().map(ok_writes).sum();
    let after: f64 = second.iter().map(ok_writes).sum();
    assert!(after >= before + 100.0, "requests_total{{op=write,status=ok}}: {before} then {after}");
    let reads: f64 = second
        .iter()
        .flat_map(|s| series(s, "requests_total"))
        .filter(|x| x.labels.get("op") == Some("read") && x.labels.get("status") == Some("ok"))
        .map(number)
        .sum();
    assert!(reads >= 200.0, "reads counted: {reads}");
    let busiest =
        (0..3).max_by(|&a, &b| ok_writes(&second[a]).total_cmp(&ok_writes(&second[b]))).unwrap_or(0);
    let busiest = &second[busiest];
    assert!(value(busiest, "request_latency_p99", &[("op", "write")]) > 0.0);
    assert!(value(busiest, "request_latency_p99", &[("op", "all")]) > 0.0);
    let histogram = series(busiest, "request_latency_seconds")
        .into_iter()
        .find(|s| s.labels.get("op") == Some("write"))
        .expect("write latency histogram");
    let Value::Histogram(buckets) = &histogram.value else { panic!("not a histogram: {histogram:?}") };
    let total = buckets.iter().map(|b| b.count).fold(0.0, f64::max);
    assert!(total >= ok_writes(busiest), "the write latency histogram counted the writes: {buckets:?}");
    assert!(value(busiest, "writes_per_second", &[]) > 0.0);

    for (i, addr) in metrics.iter().enumerate() {
        let (status, content_type, body) = http_get(addr, "/health");
        assert_eq!(status, "HTTP/1.1 200 OK", "node {i}: {body}");
        assert_eq!(content_type, "application/json");
        let health: serde_json::Value = serde_json::from_str(&body).expect("health is JSON");
        assert_eq!(health["status"], "healthy", "node {i}: {body}");
        let (status, _, body) = http_get(addr, "/ready");
        assert_eq!(status, "HTTP/1.1 200 OK", "node {i}: {body}");
    }
    drop(nodes);
}
