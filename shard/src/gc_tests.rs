//! Service tests of the GC of expired entities (SPEC §3.8, maintenance/gc.rs) on one node:
//! `ForceGc` of a scope and of the node, the GC transaction in the chain, and the race of a row
//! re-set between the scan and the apply.
#![allow(clippy::unwrap_used, clippy::result_large_err)]

use crate::admin::internal::InternalMsg;
use crate::maintenance::gc::{self, GC_CLIENT};
use crate::round::group::{now_secs, Group};
use crate::service_tests::{run, start, success, Node};
use futures::channel::oneshot;
use ledger_core::types::*;
use ledger_wire::messages::*;
use std::future::Future;
use std::rc::Rc;

/// Runs `f` with group `group` on core 0 (where the tests' groups live) and returns its result.
async fn with_group<T, Fut>(
    node: &Node,
    group: GroupId,
    f: impl FnOnce(Rc<Group>) -> Fut + Send + 'static,
) -> T
where
    T: Send + 'static,
    Fut: Future<Output = T> + 'static,
{
    let (tx, rx) = oneshot::channel();
    node.send_internal(InternalMsg::Test(Box::new(move |shard| {
        let group = shard.group(group).unwrap();
        glommio::spawn_local(async move {
            let _ = tx.send(f(group).await);
        })
        .detach();
    })))
    .await;
    rx.await.unwrap()
}

fn set_ttl(key: &str, value: &[u8], expires_at: u64) -> Operation {
    Operation::SetEntity {
        key: key.into(),
        value: value.to_vec(),
        expires_at: Some(expires_at),
        condition: None,
    }
}

fn force_gc(namespace_id: Option<i64>, vault_id: Option<i64>) -> Request {
    Request::ForceGc { namespace_id, vault_id }
}

/// (expired_count, vaults_scanned) of a successful `ForceGc`.
async fn forced(node: &Node, namespace_id: Option<i64>, vault_id: Option<i64>) -> (u64, u64) {
    match node.call(force_gc(namespace_id, vault_id)).await.unwrap() {
        Response::ForceGc { success: true, expired_count, vaults_scanned, .. } => {
            (expired_count, vaults_scanned)
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// All entities of the scope, expired ones included, as (key, expires_at).
async fn raw_rows(node: &Node, ns: i64, vault: Option<i64>) -> Vec<(String, u64)> {
    let request = Request::ListEntities {
        namespace_id: ns,
        vault_id: vault,
        key_prefix: String::new(),
        at_height: None,
        include_expired: true,
        limit: 0,
        page_token: String::new(),
        consistency: ReadConsistency::Eventual,
    };
    match node.call(request).await.unwrap() {
        Response::ListEntities { entities, .. } => {
            entities.into_iter().map(|e| (e.key, e.expires_at)).collect()
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// Proves `ForceGc` end to end on one node: of a vault, it removes exactly the expired rows
/// (a future and a never-expiring row stay) in one block whose transaction is `system:gc`'s
/// (client, actor, sequence 1) with status `Expired` per row; the next run finds nothing; the
/// node-wide form scans every scope (the namespace scope's expired row goes too) and counts
/// them; a vault without a namespace is `InvalidArgument`, an unknown vault `NotFound`; the
/// per-group counters behind `gc_cycles_total` / `gc_expired_total` follow.
#[test]
fn t01_force_gc_removes_expired_rows_as_system_gc() {
    run(|dir| async move {
        let node = start(dir, |_| {}).await;
        let ns = node.create_namespace("acme").await;
        let (vault, _) = node.create_vault(ns).await;
        let now = now_secs();
        let ops = vec![
            set_ttl("gone1", b"1", now - 5),
            set_ttl("gone2", b"2", 1),
            set_ttl("later", b"3", now + 3600),
            crate::service_tests::set("forever", b"4"),
        ];
        success(node.write(ns, Some(vault), "c", 1, ops).await);
        success(node.write(ns, None, "c", 1, vec![set_ttl("ns-gone", b"5", now - 1)]).await);
        let before =
            match node.call(Request::GetTip { namespace_id: ns, vault_id: Some(vault) }).await.unwrap() {
                Response::GetTip { height, .. } => height,
                other => panic!("unexpected {other:?}"),
            };

        assert_eq!(forced(&node, Some(ns), Some(vault)).await, (2, 1));
        let rows = raw_rows(&node, ns, Some(vault)).await;
        assert_eq!(rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), vec!["forever", "later"]);
        assert_eq!(node.last_sequence(ns, Some(vault), GC_CLIENT).await, 1);
        let block = match node
            .call(Request::GetBlock { namespace_id: ns, vault_id: Some(vault), height: before + 1 })
            .await
            .unwrap()
        {
            Response::GetBlock { block, .. } => block,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(block.transactions.len(), 1);
        let tx = &block.transactions[0];
        assert_eq!((tx.client_id.as_str(), tx.actor.as_str(), tx.sequence), (GC_CLIENT, GC_CLIENT, 1));
        let expired: Vec<(String, u64)> = tx
            .operations
            .iter()
            .map(|op| match op {
                Operation::ExpireEntity { key, expired_at } => (key.clone(), *expired_at),
                other => panic!("not an ExpireEntity: {other:?}"),
            })
            .collect();
        assert_eq!(expired, vec![("gone1".to_string(), now - 5), ("gone2".to_string(), 1)]);

        // Nothing left to expire in the vault: no transaction, the sequence stays.
        assert_eq!(forced(&node, Some(ns), Some(vault)).await, (0, 1));
        assert_eq!(node.last_sequence(ns, Some(vault), GC_CLIENT).await, 1);

        // The node-wide cycle: `_system`, the namespace scope and the vault.
        assert_eq!(forced(&node, None, None).await, (1, 3));
        assert!(raw_rows(&node, ns, None).await.is_empty());

        let bad = node.call(force_gc(None, Some(vault))).await.unwrap_err();
        assert_eq!(bad.code, StatusCode::InvalidArgument);
        let missing = node.call(force_gc(Some(ns), Some(vault + 40))).await.unwrap_err();
        assert_eq!(missing.code, StatusCode::NotFound);

        let counters = gc::counters();
        assert_eq!(counters.cycles.get(&1), Some(&3), "{counters:?}");
        assert_eq!(counters.expired.get(&1), Some(&3), "{counters:?}");
        assert_eq!(counters.cycles.get(&0), Some(&1), "{counters:?}");
        node.stop().await;
    });
}

/// Proves SPEC §3.8's last rule deterministically: the GC scans (row `a` expired, `b` expired),
/// then a client re-sets `a` with a new expiry before the GC's transaction is built; the
/// transaction applies `NotFound` for `a` (it survives, with its new value and expiry) and
/// `Expired` for `b`.
#[test]
fn t02_a_row_re_set_after_the_scan_survives() {
    run(|dir| async move {
        let node = start(dir, |_| {}).await;
        let ns = node.create_namespace("acme").await;
        let (vault, _) = node.create_vault(ns).await;
        let now = now_secs();
        let scope = ScopeKey::new(NamespaceId(ns), Some(VaultId(vault)));
        success(
            node.write(
                ns,
                Some(vault),
                "c",
                1,
                vec![set_ttl("a", b"old", now - 5), set_ttl("b", b"b", now - 5)],
            )
            .await,
        );
        let scanned =
            with_group(&node, GroupId(1), move |group| async move { gc::scan(&group, scope, now).await })
                .await;
        assert_eq!(scanned.len(), 2);

        success(node.write(ns, Some(vault), "c", 2, vec![set_ttl("a", b"new", now + 3600)]).await);

        let result = with_group(&node, GroupId(1), move |group| async move {
            gc::submit(&group, scope, scanned).unwrap().await.unwrap()
        })
        .await
        .unwrap();
        let statuses = success(result).statuses;
        assert_eq!(statuses, vec![vec![OpStatus::NotFound, OpStatus::Expired]]);
        assert_eq!(raw_rows(&node, ns, Some(vault)).await, vec![("a".to_string(), now + 3600)]);
        assert_eq!(node.read(ns, Some(vault), "a").await.as_deref(), Some(&b"new"[..]));
        node.stop().await;
    });
}
