//! One bad group never stops the node, in the real server binary (issue 12 item 3, D27): a
//! log entry that breaks apply in one group must fail that group only. The server's fail-stop
//! panic hook aborts on any other panic (SPEC §10.8), so this checks the two work together: the
//! process stays up across two restarts, the other group serves reads and writes, and the broken
//! one answers `Unavailable`.
#![allow(clippy::unwrap_used)]

use ledger_core::types::{GroupId, ReadConsistency};
use ledger_shard::raft::core_log::offline;
use ledger_shard::storage::log_files::LogDir;
use ledger_tests::scope::{connect, set};
use ledger_tests::{temp_dir, ServerProcess};
use ledger_wire::client::WriteSession;
use ledger_wire::messages::{Request, Response, StatusCode};
use std::time::Duration;

const FLAGS: &[&str] = &["--cores", "1", "--groups-per-core", "2"];

#[test]
fn t01_a_log_entry_that_breaks_apply_fails_one_group_not_the_server() {
    let dir = temp_dir("isolation");
    let data_dir = dir.path().join("node");
    let server = ServerProcess::start(&data_dir, FLAGS);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (one, two) = rt.block_on(async {
        let client = connect(&server.addr).await;
        let mut ids = Vec::new();
        for (name, group) in [("one", 1u32), ("two", 2)] {
            let ns = match client
                .call(Request::CreateNamespace { name: name.into(), group_id: Some(group) })
                .await
            {
                Ok(Response::CreateNamespace { namespace_id, .. }) => namespace_id,
                other => panic!("create namespace {name}: {other:?}"),
            };
            let mut session = WriteSession::new(client.clone(), ns, None).with_client_id("w");
            session.write(vec![set("k", name.as_bytes())]).await.unwrap();
            ids.push(ns);
        }
        (ids[0], ids[1])
    });
    assert_eq!(server.stop(), Some(0));
    // `--cores 1`: every group is in core 0's log.
    offline::append_copy_of_last_block(LogDir::Real(data_dir.join("log/core-00")), GroupId(2)).unwrap();

    for round in 0..2 {
        let server = ServerProcess::restart(&data_dir, FLAGS);
        rt.block_on(async {
            let client = connect(&server.addr).await;
            let read = |ns: i64| Request::Read {
                namespace_id: ns,
                vault_id: None,
                key: "k".into(),
                consistency: ReadConsistency::Linearizable,
            };
            // The good group serves reads and writes.
            match client.call(read(one)).await {
                Ok(Response::Read { value, .. }) => assert_eq!(value, Some(b"one".to_vec())),
                other => panic!("round {round}: read of the good group: {other:?}"),
            }
            let mut session =
                WriteSession::new(client.clone(), one, None).with_client_id(format!("r{round}"));
            session.write(vec![set("after", b"x")]).await.unwrap();
            // The broken one answers Unavailable, and the process is still up afterwards.
            let status = match client.call(read(two)).await {
                Err(ledger_wire::error::ClientError::Status { code, message, .. }) => (code, message),
                other => panic!("round {round}: the broken group answered {other:?}"),
            };
            assert_eq!(status.0, StatusCode::Unavailable, "{status:?}");
            tokio::time::sleep(Duration::from_millis(300)).await;
            client.call(Request::GetNodeInfo).await.expect("the server is still up");
        });
        let stderr = server.stderr();
        assert!(stderr.contains("event=group_apply_failed group=2"), "round {round}:\n{stderr}");
        assert!(!stderr.contains("aborting (fail-stop)"), "round {round}:\n{stderr}");
        assert_eq!(server.stop(), Some(0), "round {round}: the server did not stop cleanly");
    }
}
