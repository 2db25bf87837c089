//! The Raft log shared by a core's groups (issue 15 item 1, D38), in the real server binary: many
//! groups on two cores write at once, the process is killed with `kill -9`, and every
//! acknowledged write of every group is there after the restart; each core has its own log
//! directory and no group keeps a log of its own; a restart with fewer cores than the data
//! directory's groups are placed on moves those groups, logs included (D77).
#![allow(clippy::unwrap_used)]

use ledger_core::types::ReadConsistency;
use ledger_tests::scope::{connect, create_scope, retry_transient, set};
use ledger_tests::{run_server_to_exit, temp_dir, ServerProcess};
use ledger_wire::client::{RetryPolicy, WriteOutcome, WriteSession};
use ledger_wire::messages::{NamespaceSelector, Request, Response};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const FLAGS: &[&str] = &["--cores", "2", "--groups-per-core", "3"];
const NAMESPACES: usize = 6;

/// An acknowledged write: namespace, vault, key, value.
type Ack = (i64, i64, String, Vec<u8>);

#[test]
fn t01_groups_of_two_cores_share_their_core_logs_across_kill_9() {
    let dir = temp_dir("core-log");
    let data_dir = dir.path().join("node");
    let server = ServerProcess::start(&data_dir, FLAGS);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let acked: Arc<Mutex<Vec<Ack>>> = Arc::default();
    let (scopes, groups) = rt.block_on(async {
        let client = connect(&server.addr).await;
        let mut scopes = Vec::new();
        let mut groups = std::collections::BTreeSet::new();
        for i in 0..NAMESPACES {
            let (ns, vault) = create_scope(&client, &format!("ns{i}")).await;
            match client.call(Request::GetNamespace { by: NamespaceSelector::Id(ns) }).await {
                Ok(Response::GetNamespace(info)) => {
                    groups.insert(info.group_id);
                }
                other => panic!("{other:?}"),
            }
            scopes.push((ns, vault));
        }
        (scopes, groups)
    });
    assert!(groups.len() >= 4, "the namespaces landed in {groups:?}: too few groups to share the logs");

    // One writer per namespace, all at once; kill -9 while they write.
    rt.block_on(async {
        let mut tasks = Vec::new();
        for (i, (ns, vault)) in scopes.iter().copied().enumerate() {
            let (addr, acked) = (server.addr.clone(), acked.clone());
            tasks.push(tokio::spawn(async move {
                let client = connect(&addr).await;
                let policy = RetryPolicy {
                    base: Duration::from_millis(5),
                    cap: Duration::from_millis(20),
                    max_attempts: 3,
                    jitter: false,
                };
                let mut session = WriteSession::new(client, ns, Some(vault))
                    .with_client_id(format!("writer-{i}"))
                    .with_retry_policy(policy);
                for n in 0u64.. {
                    let (key, value) = (format!("k{n}"), format!("v{i}-{n}").into_bytes());
                    match session.write(vec![set(key.clone(), value.clone())]).await {
                        Ok(WriteOutcome::Committed { .. }) => {
                            acked.lock().unwrap().push((ns, vault, key, value))
                        }
                        Ok(other) => panic!("{other:?}"),
                        Err(_) => return,
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        server.kill9();
        for task in tasks {
            task.await.unwrap();
        }
    });
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "only {} writes were acknowledged", acked.len());

    // Layout: one log per core, none per group.
    for core in ["core-00", "core-01"] {
        let segments = std::fs::read_dir(data_dir.join("log").join(core)).unwrap().count();
        assert!(segments >= 1, "{core} has no segment");
    }
    for group in std::fs::read_dir(data_dir.join("groups")).unwrap() {
        assert!(!group.unwrap().path().join("raft.redb").exists(), "a group kept a log of its own");
    }

    let server = ServerProcess::restart(&data_dir, FLAGS);
    rt.block_on(every_ack_reads_back(&server.addr, &scopes, &acked));
    assert_eq!(server.stop(), Some(0));

    // Fewer cores than the groups are placed on (SPEC §10.5, D77): the groups of core 1 move to
    // core 0, their logs with them, and nothing acknowledged is lost.
    let moves = |server: &ServerProcess| server.stderr().matches("event=group_moved").count();
    let server = ServerProcess::restart(&data_dir, &["--cores", "1", "--groups-per-core", "3"]);
    let moved = moves(&server);
    assert_eq!(moved, 3, "core 1's three groups move:\n{}", server.stderr());
    assert!(server.stderr().contains("from_core=1 to_core=0"), "{}", server.stderr());
    assert!(!data_dir.join("log").join("core-01").exists(), "core 1's log was not set aside");
    rt.block_on(every_ack_reads_back(&server.addr, &scopes, &acked));
    let after = rt.block_on(async {
        let (ns, vault) = scopes[scopes.len() - 1];
        let mut session = WriteSession::new(connect(&server.addr).await, ns, Some(vault));
        match session.write(vec![set("after-move".to_string(), b"yes".to_vec())]).await.unwrap() {
            WriteOutcome::Committed { .. } => (ns, vault, "after-move".to_string(), b"yes".to_vec()),
            other => panic!("{other:?}"),
        }
    });
    assert_eq!(server.stop(), Some(0));
    // Restarts keep the new placement: with one core again, and with two (nothing moves back).
    let acked: Vec<Ack> = acked.into_iter().chain([after]).collect();
    for cores in ["1", "2"] {
        let server = ServerProcess::restart(&data_dir, &["--cores", cores, "--groups-per-core", "3"]);
        assert_eq!(moves(&server), moved, "a group moved again:\n{}", server.stderr());
        rt.block_on(every_ack_reads_back(&server.addr, &scopes, &acked));
        assert_eq!(server.stop(), Some(0));
    }
}

/// Every acknowledged write reads back (linearizable), namespace by namespace.
async fn every_ack_reads_back(addr: &str, scopes: &[(i64, i64)], acked: &[Ack]) {
    let client = connect(addr).await;
    for (ns, vault) in scopes {
        let mine: Vec<_> = acked.iter().filter(|a| a.0 == *ns).collect();
        for chunk in mine.chunks(400) {
            let keys: Vec<String> = chunk.iter().map(|a| a.2.clone()).collect();
            let values = retry_transient(|| {
                client.batch_read(*ns, Some(*vault), keys.clone(), ReadConsistency::Linearizable)
            })
            .await
            .unwrap();
            for (ack, item) in chunk.iter().zip(values) {
                assert_eq!(item.key, ack.2);
                assert_eq!(
                    item.value.as_deref(),
                    Some(ack.3.as_slice()),
                    "namespace {ns} key {} lost",
                    item.key
                );
            }
        }
    }
}

#[test]
fn t02_a_data_directory_from_before_the_core_log_is_refused_not_started_empty() {
    // A group with a `raft.redb` of its own and nothing in its core's log was written by an older
    // version (D38): starting it from an empty log would lose its history, so the node refuses,
    // naming the file.
    let dir = temp_dir("core-log-old");
    let data_dir = dir.path().join("node");
    let server = ServerProcess::start(&data_dir, &["--cores", "1"]);
    assert_eq!(server.stop(), Some(0));
    std::fs::remove_dir_all(data_dir.join("log")).unwrap();
    std::fs::write(data_dir.join("groups/g00000/raft.redb"), b"an old per-group log").unwrap();
    let (code, _, stderr) = run_server_to_exit(&data_dir, &["--cores", "1"], Duration::from_secs(30));
    assert_ne!(code, Some(0));
    assert!(stderr.contains("older version") && stderr.contains("raft.redb"), "{stderr}");
}
