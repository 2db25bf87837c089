//! Lists pinned below the tip (SPEC §5.7, §8.7): a pagination keeps its first page's height while
//! later blocks commit, and `at_height` lists return the rows as of that height, rebuilt from the
//! archive, with TTL judged at that block's time.
#![allow(clippy::unwrap_used)]

use ledger_core::types::{Operation, ReadConsistency};
use ledger_tests::scope::{connect, create_scope, set};
use ledger_tests::{temp_dir, ServerProcess};
use ledger_wire::client::WriteSession;
use ledger_wire::messages::{Request, Response};

fn list(namespace_id: i64, vault_id: i64, at_height: Option<u64>, limit: u32, page_token: String) -> Request {
    Request::ListEntities {
        namespace_id,
        vault_id: Some(vault_id),
        key_prefix: "k".into(),
        at_height,
        include_expired: false,
        limit,
        page_token,
        consistency: ReadConsistency::Eventual,
    }
}

fn page(response: Response) -> (Vec<String>, u64, String) {
    match response {
        Response::ListEntities { entities, block_height, next_page_token } => {
            (entities.into_iter().map(|e| e.key).collect(), block_height, next_page_token)
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn t01_pagination_keeps_its_height_across_new_blocks() {
    // Writes k1..k5 (one block each), lists two keys per page, commits k0 and deletes k4 between
    // pages, and checks the later pages still show the state at the first page's height; then an
    // `at_height` list shows exactly the keys that existed then; a height above the tip is
    // refused.
    let dir = temp_dir("history-lists");
    let server = ServerProcess::start(dir.path(), &[]);
    let client = connect(&server.addr).await;
    let (ns, vault) = create_scope(&client, "histlists").await;
    let mut session = WriteSession::new(client.clone(), ns, Some(vault));
    for i in 1..=5 {
        session.write(vec![set(format!("k{i}"), "v")]).await.unwrap();
    }
    let (keys, height, token) = page(client.call(list(ns, vault, None, 2, String::new())).await.unwrap());
    assert_eq!(keys, ["k1", "k2"]);
    assert_eq!(height, 5);
    session.write(vec![set("k0", "new")]).await.unwrap();
    session.write(vec![Operation::DeleteEntity { key: "k4".into() }]).await.unwrap();

    let mut all = keys;
    let mut token = token;
    while !token.is_empty() {
        let (keys, height, next) = page(client.call(list(ns, vault, None, 2, token)).await.unwrap());
        assert_eq!(height, 5, "a pagination is served at its pinned height");
        all.extend(keys);
        token = next;
    }
    assert_eq!(all, ["k1", "k2", "k3", "k4", "k5"], "neither k0 nor the deletion of k4 is visible");

    let (now, height, _) = page(client.call(list(ns, vault, None, 100, String::new())).await.unwrap());
    assert_eq!(height, 7);
    assert_eq!(now, ["k0", "k1", "k2", "k3", "k5"]);
    let (then, height, _) = page(client.call(list(ns, vault, Some(3), 100, String::new())).await.unwrap());
    assert_eq!(height, 3);
    assert_eq!(then, ["k1", "k2", "k3"]);
    let err = client.call(list(ns, vault, Some(99), 100, String::new())).await.unwrap_err();
    assert!(err.to_string().contains("at_height out of range"), "{err}");
    server.stop();
}
