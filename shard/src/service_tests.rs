//! End-to-end tests of the shard service layer: one core running `run_shard` in a glommio
//! executor on a temporary data directory, driven through its inbox exactly as the router
//! drives it (namespace resolution on core 0, then `ShardMsg::Group` / `ShardMsg::Admin`).
#![allow(clippy::unwrap_used, clippy::result_large_err)]

use crate::config::ShardConfig;
use crate::msg::ShardMsg;
use crate::shard::{run_shard, ShardSpec};
use ledger_core::types::*;
use ledger_wire::messages::*;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A running node (core 0 runs in the test's executor, other cores in their own threads);
/// shards are shut down explicitly with `stop`.
pub(crate) struct Node {
    inbox: flume::Sender<ShardMsg>,
    /// Every core's inbox and the group → core placement, for routing like the router does.
    cores: Vec<flume::Sender<ShardMsg>>,
    placement: BTreeMap<GroupId, CoreId>,
    others: Vec<glommio::ExecutorJoinHandle<()>>,
    replies: flume::Receiver<ResponseEnvelope>,
    reply: flume::Sender<ResponseEnvelope>,
    next_id: std::cell::Cell<u64>,
    shard: glommio::task::JoinHandle<()>,
}

fn config(dir: &Path) -> ShardConfig {
    ShardConfig::for_tests(dir.to_path_buf())
}

pub(crate) async fn start(dir: PathBuf, cfg: impl FnOnce(&mut ShardConfig)) -> Node {
    start_cores(dir, cfg, [(GroupId(0), CoreId(0)), (GroupId(1), CoreId(0))].into()).await
}

/// Starts one shard per core named in `placement`; core 0 runs on the current executor.
pub(crate) async fn start_cores(
    dir: PathBuf,
    cfg: impl FnOnce(&mut ShardConfig),
    placement: BTreeMap<GroupId, CoreId>,
) -> Node {
    let mut c = config(&dir);
    cfg(&mut c);
    let config = Arc::new(c);
    let ncores = placement.values().map(|c| c.0 as usize + 1).max().unwrap();
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..ncores).map(|_| flume::bounded(8192)).unzip();
    let placement_arc = Arc::new(placement.clone());
    let mut shard = None;
    let mut others = Vec::new();
    let mut readies = Vec::new();
    for (i, inbox) in receivers.into_iter().enumerate() {
        let (ready_tx, ready_rx) = futures::channel::oneshot::channel();
        readies.push(ready_rx);
        let spec = ShardSpec {
            core: CoreId(i as u16),
            config: config.clone(),
            groups: placement.iter().filter(|(_, c)| c.0 as usize == i).map(|(g, _)| *g).collect(),
            inbox,
            cores: senders.clone(),
            placement: placement_arc.clone(),
            ready: ready_tx,
        };
        if i == 0 {
            shard = Some(
                glommio::spawn_local(async move {
                    run_shard(spec).await.unwrap();
                })
                .detach(),
            );
        } else {
            others.push(
                glommio::LocalExecutorBuilder::default()
                    .name(&format!("test-core-{i}"))
                    .spawn(move || async move {
                        run_shard(spec).await.unwrap();
                    })
                    .unwrap(),
            );
        }
    }
    for ready in readies {
        ready.await.unwrap();
    }
    let (reply, replies) = flume::unbounded();
    Node {
        inbox: senders[0].clone(),
        cores: senders,
        placement,
        others,
        replies,
        reply,
        next_id: std::cell::Cell::new(1),
        shard: shard.unwrap(),
    }
}

impl Node {
    pub(crate) async fn stop(self) {
        for core in self.cores.iter().rev() {
            let (done, wait) = futures::channel::oneshot::channel();
            core.send_async(ShardMsg::Shutdown { done }).await.unwrap();
            wait.await.unwrap();
        }
        self.shard.await;
        for other in self.others {
            other.join().unwrap();
        }
    }

    /// Sends an internal message to core 0 (gc_tests.rs runs work on a group through it).
    pub(crate) async fn send_internal(&self, msg: crate::admin::internal::InternalMsg) {
        self.inbox.send_async(ShardMsg::Internal(msg)).await.unwrap();
    }

    /// The inbox of the core that owns `group`.
    fn core_of(&self, group: GroupId) -> &flume::Sender<ShardMsg> {
        &self.cores[self.placement[&group].0 as usize]
    }

    async fn resolve(&self, namespace_id: i64) -> Option<GroupId> {
        let (tx, rx) = futures::channel::oneshot::channel();
        self.inbox.send_async(ShardMsg::ResolveNamespace { namespace_id, reply: tx }).await.unwrap();
        rx.await.unwrap().unwrap()
    }

    /// Sends one request the way the router would and waits for its answer.
    pub(crate) async fn call(&self, request: Request) -> Result<Response, Status> {
        let request_id = self.next_id.get();
        self.next_id.set(request_id + 1);
        let namespace = scope_namespace(&request);
        let envelope = RequestEnvelope { request_id, deadline_ms: 0, on_behalf_of: None, request };
        match namespace {
            None => self
                .inbox
                .send_async(ShardMsg::Admin {
                    envelope,
                    reply: self.reply.clone(),
                    forwarded: false,
                    caller: crate::msg::Caller::internal(std::time::Duration::from_secs(30)),
                })
                .await
                .unwrap(),
            Some(ns) => match self.resolve(ns).await {
                Some(group) => {
                    let msg = ShardMsg::Group {
                        group,
                        envelope,
                        reply: self.reply.clone(),
                        forwarded: false,
                        caller: crate::msg::Caller::internal(std::time::Duration::from_secs(30)),
                    };
                    self.core_of(group).send_async(msg).await.unwrap();
                }
                None => return Err(Status::not_found("namespace not found (router)")),
            },
        }
        let env = self.replies.recv_async().await.unwrap();
        assert_eq!(env.request_id, request_id);
        env.result
    }

    /// Sends many requests at once (pipelined) and returns the answers in request order.
    async fn call_all(&self, requests: Vec<Request>) -> Vec<Result<Response, Status>> {
        self.call_all_noting(requests, || ()).await.into_iter().map(|(r, ())| r).collect()
    }

    /// [`Self::call_all`], with what `note` returned as each answer arrived.
    pub(crate) async fn call_all_noting<T>(
        &self,
        requests: Vec<Request>,
        note: impl Fn() -> T,
    ) -> Vec<(Result<Response, Status>, T)> {
        self.call_all_spaced(requests, None, note).await
    }

    /// Sends the requests `gap` apart (all at once without one), then collects the answers in
    /// request order, each with what `note` returned as it arrived.
    async fn call_all_spaced<T>(
        &self,
        requests: Vec<Request>,
        gap: Option<std::time::Duration>,
        note: impl Fn() -> T,
    ) -> Vec<(Result<Response, Status>, T)> {
        let mut ids = Vec::new();
        let mut groups = Vec::new();
        for request in &requests {
            groups.push(self.resolve(scope_namespace(request).unwrap()).await.unwrap());
        }
        // Without a gap everything is sent without yielding, so the inbox holds all of it at once.
        for (request, group) in requests.into_iter().zip(groups) {
            if let (Some(gap), false) = (gap, ids.is_empty()) {
                glommio::timer::sleep(gap).await;
            }
            let request_id = self.next_id.get();
            self.next_id.set(request_id + 1);
            let envelope = RequestEnvelope { request_id, deadline_ms: 0, on_behalf_of: None, request };
            self.core_of(group)
                .try_send(ShardMsg::Group {
                    group,
                    envelope,
                    reply: self.reply.clone(),
                    forwarded: false,
                    caller: crate::msg::Caller::internal(std::time::Duration::from_secs(30)),
                })
                .unwrap();
            ids.push(request_id);
        }
        let mut got = BTreeMap::new();
        while got.len() < ids.len() {
            let env = self.replies.recv_async().await.unwrap();
            got.insert(env.request_id, (env.result, note()));
        }
        ids.iter().map(|id| got.remove(id).unwrap()).collect()
    }

    pub(crate) async fn create_namespace(&self, name: &str) -> i64 {
        match self.call(Request::CreateNamespace { name: name.into(), group_id: None }).await.unwrap() {
            Response::CreateNamespace { namespace_id, .. } => namespace_id,
            other => panic!("unexpected {other:?}"),
        }
    }

    pub(crate) async fn create_vault(&self, namespace_id: i64) -> (i64, BlockHeader) {
        let req = Request::CreateVault {
            namespace_id,
            replication_factor: 0,
            initial_nodes: vec![],
            retention_policy: None,
        };
        match self.call(req).await.unwrap() {
            Response::CreateVault { vault_id, genesis } => (vault_id, genesis),
            other => panic!("unexpected {other:?}"),
        }
    }

    pub(crate) async fn write(
        &self,
        ns: i64,
        vault: Option<i64>,
        client: &str,
        seq: u64,
        ops: Vec<Operation>,
    ) -> WriteResult {
        let req = Request::Write {
            namespace_id: ns,
            vault_id: vault,
            client_id: client.into(),
            sequence: seq,
            operations: ops,
            include_tx_proof: false,
        };
        match self.call(req).await.unwrap() {
            Response::Write(r) => r,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// `GetClientState`'s last committed sequence of `client`.
    pub(crate) async fn last_sequence(&self, ns: i64, vault: Option<i64>, client: &str) -> u64 {
        let req = Request::GetClientState { namespace_id: ns, vault_id: vault, client_id: client.into() };
        match self.call(req).await.unwrap() {
            Response::GetClientState { last_committed_sequence } => last_committed_sequence,
            other => panic!("unexpected {other:?}"),
        }
    }

    pub(crate) async fn read(&self, ns: i64, vault: Option<i64>, key: &str) -> Option<Vec<u8>> {
        let req = Request::Read {
            namespace_id: ns,
            vault_id: vault,
            key: key.into(),
            consistency: ReadConsistency::Linearizable,
        };
        match self.call(req).await.unwrap() {
            Response::Read { value, .. } => value,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn scope_namespace(request: &Request) -> Option<i64> {
    use Request::*;
    match request {
        Read { namespace_id, .. }
        | BatchRead { namespace_id, .. }
        | GetBlock { namespace_id, .. }
        | GetBlockRange { namespace_id, .. }
        | GetTip { namespace_id, .. }
        | GetClientState { namespace_id, .. }
        | ListRelationships { namespace_id, .. }
        | ListResources { namespace_id, .. }
        | ListEntities { namespace_id, .. }
        | Write { namespace_id, .. }
        | BatchWrite { namespace_id, .. }
        | GetVault { namespace_id, .. }
        | CheckIntegrity { namespace_id, .. }
        | CreateSnapshot { namespace_id, .. } => Some(*namespace_id),
        ForceGc { namespace_id: Some(namespace_id), .. } => Some(*namespace_id),
        _ => None,
    }
}

pub(crate) fn set(key: &str, value: &[u8]) -> Operation {
    Operation::SetEntity { key: key.into(), value: value.to_vec(), expires_at: None, condition: None }
}

fn set_if(key: &str, value: &[u8], condition: SetCondition) -> Operation {
    Operation::SetEntity {
        key: key.into(),
        value: value.to_vec(),
        expires_at: None,
        condition: Some(condition),
    }
}

pub(crate) fn rel(resource: &str, relation: &str, subject: &str) -> Operation {
    Operation::CreateRelationship {
        resource: resource.into(),
        relation: relation.into(),
        subject: subject.into(),
    }
}

pub(crate) fn success(r: WriteResult) -> WriteSuccess {
    match r {
        WriteResult::Success(s) => s,
        WriteResult::Error(e) => panic!("write failed: {e:?}"),
    }
}

fn failure(r: WriteResult) -> WriteError {
    match r {
        WriteResult::Error(e) => e,
        WriteResult::Success(s) => panic!("write unexpectedly succeeded: {s:?}"),
    }
}

/// Runs `test` inside a fresh glommio executor with a temporary data directory.
pub(crate) fn run<F, Fut>(test: F)
where
    F: FnOnce(PathBuf) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move { test(path).await })
        .unwrap()
        .join()
        .unwrap();
    drop(dir);
}

/// Namespace and vault lifecycle through the registry: ids from the counters, placement in the
/// only data group, duplicate and malformed names refused, genesis at height 0, GetVault and
/// ListVaults describe the vault, GetNamespace works by id and by name, and the health check is
/// Healthy.
#[test]
fn t10_create_namespace_and_vault() {
    run(|dir| async move {
        let node = start(dir, |_| {}).await;
        match node.call(Request::CreateNamespace { name: "acme".into(), group_id: None }).await.unwrap() {
            Response::CreateNamespace { namespace_id, group_id } => {
                assert_eq!((namespace_id, group_id), (1, 1))
            }
            other => panic!("unexpected {other:?}"),
        }
        let dup =
            node.call(Request::CreateNamespace { name: "acme".into(), group_id: None }).await.unwrap_err();
        assert_eq!(dup.code, StatusCode::AlreadyExists);
        let bad =
            node.call(Request::CreateNamespace { name: "a b".into(), group_id: None }).await.unwrap_err();
        assert_eq!(bad.code, StatusCode::InvalidArgument);
        let missing =
            node.call(Request::CreateNamespace { name: "x".into(), group_id: Some(9) }).await.unwrap_err();
        assert_eq!(missing.code, StatusCode::NotFound);
        assert_eq!(node.create_namespace("beta").await, 2);

        let (vault, genesis) = node.create_vault(1).await;
        assert_eq!(vault, 1);
        assert_eq!((genesis.height, genesis.namespace_id, genesis.vault_id), (0, 1, 1));
        assert_eq!(genesis.previous_hash, ZERO_HASH);
        assert_eq!(genesis.state_root, ZERO_HASH);
        assert_eq!(node.create_vault(2).await.0, 2);

        match node.call(Request::GetVault { namespace_id: 1, vault_id: 1 }).await.unwrap() {
            Response::GetVault(info) => {
                assert_eq!((info.namespace_id, info.vault_id, info.height, info.group_id), (1, 1, 0, 1));
                assert_eq!(info.status, VaultStatus::Active);
                assert_eq!(info.health, VaultHealth::Healthy);
            }
            other => panic!("unexpected {other:?}"),
        }
        // A vault addressed under another namespace does not exist there.
        let wrong = node.call(Request::GetVault { namespace_id: 2, vault_id: 1 }).await.unwrap_err();
        assert_eq!(wrong.code, StatusCode::NotFound);
        let wrong_read = node
            .call(Request::Read {
                namespace_id: 2,
                vault_id: Some(1),
                key: "k".into(),
                consistency: Default::default(),
            })
            .await
            .unwrap_err();
        assert_eq!(wrong_read.code, StatusCode::NotFound);

        match node.call(Request::ListVaults).await.unwrap() {
            Response::ListVaults { vaults } => {
                assert_eq!(
                    vaults.iter().map(|v| (v.namespace_id, v.vault_id)).collect::<Vec<_>>(),
                    vec![(1, 1), (2, 2)]
                )
            }
            other => panic!("unexpected {other:?}"),
        }
        for by in [NamespaceSelector::Id(1), NamespaceSelector::Name("acme".into())] {
            match node.call(Request::GetNamespace { by }).await.unwrap() {
                Response::GetNamespace(info) => {
                    assert_eq!((info.namespace_id, info.name.as_str(), info.group_id), (1, "acme", 1));
                    assert_eq!(info.status, NamespaceStatus::Active);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let none = node
            .call(Request::GetNamespace { by: NamespaceSelector::Name("nope".into()) })
            .await
            .unwrap_err();
        assert_eq!(none.code, StatusCode::NotFound);
        match node.call(Request::HealthCheck { namespace_id: None, vault_id: None }).await.unwrap() {
            Response::HealthCheck { status, .. } => assert_eq!(status, HealthStatus::Healthy),
            other => panic!("unexpected {other:?}"),
        }
        match node.call(Request::GetNodeInfo).await.unwrap() {
            Response::GetNodeInfo { node_id, is_cluster_member, .. } => {
                assert_eq!(node_id, 1);
                assert!(is_cluster_member);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(node.resolve(1).await, Some(GroupId(1)));
        assert_eq!(node.resolve(99).await, None);
        node.stop().await;
    });
}

/// Every SetEntity condition of SPEC §3.3, its failure code, and that a failed condition
/// consumes no sequence; versions are the vault height of the block that set the key.
#[test]
fn t11_write_conditions() {
    run(|dir| async move {
        let node = start(dir, |_| {}).await;
        let ns = node.create_namespace("acme").await;
        let (v, _) = node.create_vault(ns).await;
        let vault = Some(v);
        let s = success(node.write(ns, vault, "c", 1, vec![set("k", b"1")]).await);
        assert_eq!(s.block_height, 1);
        assert_eq!(s.statuses, vec![vec![OpStatus::Created]]);
        assert_eq!(s.actor, "client:c");

        let e =
            failure(node.write(ns, vault, "c", 2, vec![set_if("k", b"2", SetCondition::MustNotExist)]).await);
        assert_eq!((e.code, e.key.as_str(), e.current_version), (WriteErrorCode::KeyExists, "k", Some(1)));
        let e =
            failure(node.write(ns, vault, "c", 2, vec![set_if("nope", b"2", SetCondition::MustExist)]).await);
        assert_eq!(e.code, WriteErrorCode::KeyNotFound);
        let e = failure(
            node.write(ns, vault, "c", 2, vec![set_if("k", b"2", SetCondition::VersionEquals(7))]).await,
        );
        assert_eq!(e.code, WriteErrorCode::VersionMismatch);
        let e = failure(
            node.write(ns, vault, "c", 2, vec![set_if("k", b"2", SetCondition::ValueEquals(b"x".to_vec()))])
                .await,
        );
        assert_eq!((e.code, e.current_value.as_deref()), (WriteErrorCode::ValueMismatch, Some(&b"1"[..])));

        // The same sequence 2 is still next: none of the failures consumed it.
        let s = success(
            node.write(ns, vault, "c", 2, vec![set_if("k", b"2", SetCondition::VersionEquals(1))]).await,
        );
        assert_eq!((s.block_height, s.statuses.clone()), (2, vec![vec![OpStatus::Updated]]));
        success(
            node.write(ns, vault, "c", 3, vec![set_if("k", b"3", SetCondition::ValueEquals(b"2".to_vec()))])
                .await,
        );
        success(node.write(ns, vault, "c", 4, vec![set_if("k", b"4", SetCondition::MustExist)]).await);
        success(node.write(ns, vault, "c", 5, vec![set_if("n", b"1", SetCondition::MustNotExist)]).await);
        assert_eq!(node.read(ns, vault, "k").await.as_deref(), Some(&b"4"[..]));
        assert_eq!(node.read(ns, vault, "n").await.as_deref(), Some(&b"1"[..]));
        let s =
            success(node.write(ns, vault, "c", 6, vec![Operation::DeleteEntity { key: "n".into() }]).await);
        assert_eq!(s.statuses, vec![vec![OpStatus::Deleted]]);
        assert_eq!(node.read(ns, vault, "n").await, None);

        // Namespace scope writes work; relationships there and reserved keys are refused at intake.
        success(node.write(ns, None, "c", 1, vec![set("profile", b"p")]).await);
        let bad = node
            .call(Request::Write {
                namespace_id: ns,
                vault_id: None,
                client_id: "c".into(),
                sequence: 2,
                operations: vec![rel("doc:1", "viewer", "user:1")],
                include_tx_proof: false,
            })
            .await
            .unwrap_err();
        assert_eq!(bad.code, StatusCode::InvalidArgument);
        let reserved = node
            .call(Request::Write {
                namespace_id: ns,
                vault_id: vault,
                client_id: "c".into(),
                sequence: 7,
                operations: vec![set("_meta:x", b"")],
                include_tx_proof: false,
            })
            .await
            .unwrap_err();
        assert_eq!(reserved.code, StatusCode::PermissionDenied);

        // With include_tx_proof the header and a verifying Merkle proof come back.
        let req = Request::Write {
            namespace_id: ns,
            vault_id: vault,
            client_id: "c".into(),
            sequence: 7,
            operations: vec![set("p", b"q")],
            include_tx_proof: true,
        };
        let Response::Write(WriteResult::Success(s)) = node.call(req).await.unwrap() else { panic!() };
        let header = s.block_header.unwrap();
        assert_eq!(header.height, s.block_height);
        assert!(ledger_core::hash::verify_tx_proof(&s.tx_proof.unwrap(), &header.tx_merkle_root));
        match node.call(Request::GetTip { namespace_id: ns, vault_id: vault }).await.unwrap() {
            Response::GetTip { height, block_hash, state_root } => {
                assert_eq!(height, header.height);
                assert_eq!(block_hash, ledger_core::hash::block_hash(&header));
                assert_eq!(state_root, header.state_root);
            }
            other => panic!("unexpected {other:?}"),
        }
        node.stop().await;
    });
}

/// BatchWrite is one transaction: a failing condition in a later group rolls back every group;
/// a successful one returns statuses per group and later groups see earlier groups' effects.
#[test]
fn t12_batch_write_atomicity() {
    run(|dir| async move {
        let node = start(dir, |_| {}).await;
        let ns = node.create_namespace("acme").await;
        let (v, _) = node.create_vault(ns).await;
        let batch = |seq, groups| Request::BatchWrite {
            namespace_id: ns,
            vault_id: Some(v),
            client_id: "b".into(),
            sequence: seq,
            groups,
            include_tx_proof: false,
        };
        let r = node
            .call(batch(
                1,
                vec![
                    vec![set("a", b"1"), rel("doc:1", "viewer", "user:1")],
                    vec![set_if("a", b"2", SetCondition::MustNotExist)],
                ],
            ))
            .await
            .unwrap();
        let Response::Write(WriteResult::Error(e)) = r else { panic!("{r:?}") };
        assert_eq!((e.code, e.key.as_str()), (WriteErrorCode::KeyExists, "a"));
        assert_eq!(node.read(ns, Some(v), "a").await, None);

        let r = node
            .call(batch(
                1,
                vec![
                    vec![set("a", b"1"), rel("doc:1", "viewer", "user:1")],
                    vec![set_if("a", b"2", SetCondition::MustExist)],
                    vec![],
                ],
            ))
            .await
            .unwrap();
        let Response::Write(WriteResult::Success(s)) = r else { panic!("{r:?}") };
        assert_eq!(
            s.statuses,
            vec![vec![OpStatus::Created, OpStatus::Created], vec![OpStatus::Updated], vec![]]
        );
        assert_eq!(node.read(ns, Some(v), "a").await.as_deref(), Some(&b"2"[..]));
        match node.call(Request::GetBlock { namespace_id: ns, vault_id: Some(v), height: 1 }).await.unwrap() {
            Response::GetBlock { block, body_pruned } => {
                assert!(!body_pruned);
                assert_eq!(block.transactions.len(), 1);
                assert_eq!(block.transactions[0].operations.len(), 3);
                assert_eq!(block.transactions[0].id, s.tx_id);
            }
            other => panic!("unexpected {other:?}"),
        }
        node.stop().await;
    });
}

/// SPEC §6.3: a retried sequence gets the cached response verbatim; a gap names the last
/// committed sequence; 0 is invalid; concurrent duplicates in one round share one outcome;
/// many clients' writes are batched into fewer blocks.
#[test]
fn t13_sequences_and_idempotency() {
    run(|dir| async move {
        let node = start(dir, |_| {}).await;
        let ns = node.create_namespace("acme").await;
        let (v, _) = node.create_vault(ns).await;
        let vault = Some(v);
        let first = success(node.write(ns, vault, "c", 1, vec![set("k", b"1")]).await);
        let again = success(node.write(ns, vault, "c", 1, vec![set("k", b"1")]).await);
        assert_eq!(first, again);
        let e = failure(node.write(ns, vault, "c", 3, vec![set("k", b"3")]).await);
        assert_eq!((e.code, e.last_committed_sequence), (WriteErrorCode::SequenceGap, Some(1)));
        let zero = node
            .call(Request::Write {
                namespace_id: ns,
                vault_id: vault,
                client_id: "c".into(),
                sequence: 0,
                operations: vec![set("k", b"0")],
                include_tx_proof: false,
            })
            .await
            .unwrap_err();
        assert_eq!(zero.code, StatusCode::InvalidArgument);

        // Pipelined: seq 2 twice and seq 3, plus 20 other clients, all at once.
        let w = |client: &str, seq: u64, key: &str| Request::Write {
            namespace_id: ns,
            vault_id: vault,
            client_id: client.into(),
            sequence: seq,
            operations: vec![set(key, b"v")],
            include_tx_proof: false,
        };
        let mut reqs = vec![w("c", 2, "x"), w("c", 2, "x"), w("c", 3, "y")];
        for i in 0..20 {
            reqs.push(w(&format!("other-{i}"), 1, &format!("o{i}")));
        }
        let answers = node.call_all(reqs).await;
        let results: Vec<WriteSuccess> = answers
            .into_iter()
            .map(|r| match r.unwrap() {
                Response::Write(w) => success(w),
                o => panic!("{o:?}"),
            })
            .collect();
        assert_eq!(results[0], results[1]);
        assert!(results[2].block_height >= results[0].block_height);
        let heights: std::collections::BTreeSet<u64> = results.iter().map(|r| r.block_height).collect();
        assert!(heights.len() < results.len(), "expected batching, got heights {heights:?}");
        assert_eq!(node.last_sequence(ns, vault, "c").await, 3);
        node.stop().await;
    });
}

fn list_entities(
    ns: i64,
    vault: Option<i64>,
    prefix: &str,
    limit: u32,
    token: String,
    include_expired: bool,
) -> Request {
    Request::ListEntities {
        namespace_id: ns,
        vault_id: vault,
        key_prefix: prefix.into(),
        at_height: None,
        include_expired,
        limit,
        page_token: token,
        consistency: ReadConsistency::Eventual,
    }
}

/// ListEntities / ListRelationships / ListResources paginate with §5.7 tokens: pages are
/// disjoint and complete, a changed filter or another scope is refused with the exact messages,
/// a garbage token is "invalid page token", and a moved height is HeightUnavailable.
#[test]
fn t14_list_pagination() {
    run(|dir| async move {
        let node = start(dir, |_| {}).await;
        let ns = node.create_namespace("acme").await;
        let (v, _) = node.create_vault(ns).await;
        let vault = Some(v);
        let ops: Vec<Operation> =
            (0..25).map(|i| set(&format!("user:{i:02}"), b"x")).chain([set("zz", b"")]).collect();
        success(node.write(ns, vault, "c", 1, ops).await);
        let mut keys = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let r = node.call(list_entities(ns, vault, "user:", 10, token.clone(), false)).await.unwrap();
            let Response::ListEntities { entities, next_page_token, block_height } = r else { panic!() };
            assert_eq!(block_height, 1);
            keys.extend(entities.into_iter().map(|e| e.key));
            pages += 1;
            if next_page_token.is_empty() {
                break;
            }
            token = next_page_token;
        }
        assert_eq!(pages, 3);
        assert_eq!(keys, (0..25).map(|i| format!("user:{i:02}")).collect::<Vec<_>>());

        let r = node.call(list_entities(ns, vault, "user:", 10, String::new(), false)).await.unwrap();
        let Response::ListEntities { next_page_token: t1, .. } = r else { panic!() };
        let e = node.call(list_entities(ns, vault, "user:1", 10, t1.clone(), false)).await.unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (StatusCode::InvalidArgument, "query parameters changed; start new pagination")
        );
        let e = node.call(list_entities(ns, None, "user:", 10, t1.clone(), false)).await.unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (StatusCode::InvalidArgument, "page token does not match request")
        );
        let e = node.call(list_entities(ns, vault, "user:", 10, "garbage".into(), false)).await.unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (StatusCode::InvalidArgument, "invalid page token"));
        success(node.write(ns, vault, "c", 2, vec![set("other", b"")]).await);
        // The pagination stays at its pinned height 1 although the scope moved on (SPEC §5.7).
        let r = node.call(list_entities(ns, vault, "user:", 10, t1, false)).await.unwrap();
        let Response::ListEntities { entities, block_height, .. } = r else { panic!() };
        assert_eq!(block_height, 1);
        assert!(entities.iter().all(|e| e.key.starts_with("user:")));

        // Relationships: 5 viewers of doc:1 and 3 editors of doc:2, paged by 3.
        let mut ops: Vec<Operation> = (0..5).map(|i| rel("doc:1", "viewer", &format!("user:{i}"))).collect();
        ops.extend((0..3).map(|i| rel("doc:2", "editor", &format!("user:{i}"))));
        ops.push(rel("folder:1", "owner", "user:0"));
        success(node.write(ns, vault, "c", 3, ops).await);
        let list_rel =
            |resource: Option<&str>, subject: Option<&str>, token: String| Request::ListRelationships {
                namespace_id: ns,
                vault_id: v,
                resource: resource.map(Into::into),
                relation: None,
                subject: subject.map(Into::into),
                at_height: None,
                limit: 3,
                page_token: token,
                consistency: ReadConsistency::Eventual,
            };
        for (resource, subject, expected) in
            [(Some("doc:1"), None, 5), (None, Some("user:0"), 3), (None, None, 9)]
        {
            let mut all = Vec::new();
            let mut token = String::new();
            loop {
                let r = node.call(list_rel(resource, subject, token)).await.unwrap();
                let Response::ListRelationships { relationships, next_page_token, .. } = r else { panic!() };
                assert!(relationships.len() <= 3);
                all.extend(relationships);
                if next_page_token.is_empty() {
                    break;
                }
                token = next_page_token;
            }
            assert_eq!(all.len(), expected, "{resource:?} {subject:?}");
            let mut sorted = all.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), all.len());
        }
        let list_res = |token: String| Request::ListResources {
            namespace_id: ns,
            vault_id: v,
            resource_type: "doc".into(),
            at_height: None,
            limit: 1,
            page_token: token,
            consistency: ReadConsistency::Eventual,
        };
        let Response::ListResources { resources, next_page_token, .. } =
            node.call(list_res(String::new())).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(resources, vec!["doc:1".to_string()]);
        let Response::ListResources { resources, next_page_token, .. } =
            node.call(list_res(next_page_token)).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(resources, vec!["doc:2".to_string()]);
        assert!(next_page_token.is_empty());

        // ListNamespaces paginates too.
        node.create_namespace("beta").await;
        node.create_namespace("gamma").await;
        let Response::ListNamespaces { namespaces, next_page_token } =
            node.call(Request::ListNamespaces { page_token: String::new(), page_size: 2 }).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(namespaces.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), vec!["acme", "beta"]);
        let Response::ListNamespaces { namespaces, next_page_token } =
            node.call(Request::ListNamespaces { page_token: next_page_token, page_size: 2 }).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(namespaces.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), vec!["gamma"]);
        assert!(next_page_token.is_empty());
        node.stop().await;
    });
}

/// SPEC §3.8: an expired entity reads as absent (Read, BatchRead, ListEntities) but is still
/// listed with include_expired, and it still counts as present for MustNotExist.
#[test]
fn t15_ttl_filtering() {
    run(|dir| async move {
        let node = start(dir, |_| {}).await;
        let ns = node.create_namespace("acme").await;
        let past = crate::round::group::now_secs() - 10;
        let future = crate::round::group::now_secs() + 3600;
        let ops = vec![
            Operation::SetEntity {
                key: "old".into(),
                value: b"o".to_vec(),
                expires_at: Some(past),
                condition: None,
            },
            Operation::SetEntity {
                key: "new".into(),
                value: b"n".to_vec(),
                expires_at: Some(future),
                condition: None,
            },
        ];
        success(node.write(ns, None, "c", 1, ops).await);
        assert_eq!(node.read(ns, None, "old").await, None);
        assert_eq!(node.read(ns, None, "new").await.as_deref(), Some(&b"n"[..]));
        let r = node
            .call(Request::BatchRead {
                namespace_id: ns,
                vault_id: None,
                keys: vec!["old".into(), "new".into(), "none".into()],
                consistency: ReadConsistency::Eventual,
            })
            .await
            .unwrap();
        let Response::BatchRead { results, .. } = r else { panic!() };
        assert_eq!(results.iter().map(|r| r.found).collect::<Vec<_>>(), vec![false, true, false]);
        let Response::ListEntities { entities, .. } =
            node.call(list_entities(ns, None, "", 0, String::new(), false)).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(entities.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(), vec!["new"]);
        let Response::ListEntities { entities, .. } =
            node.call(list_entities(ns, None, "", 0, String::new(), true)).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(entities.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(), vec!["new", "old"]);
        let e = failure(
            node.write(ns, None, "c", 2, vec![set_if("old", b"x", SetCondition::MustNotExist)]).await,
        );
        assert_eq!(e.code, WriteErrorCode::KeyExists);
        node.stop().await;
    });
}

/// After a restart the persisted client state survives: GetClientState reports the last
/// sequence, a retry of it (its cached response is gone) is AlreadyCommitted with the original
/// tx id and height, the next sequence commits, and the registry keeps its counters.
#[test]
fn t16_restart_keeps_client_state() {
    run(|dir| async move {
        let node = start(dir.clone(), |_| {}).await;
        let ns = node.create_namespace("acme").await;
        let (v, _) = node.create_vault(ns).await;
        success(node.write(ns, Some(v), "c", 1, vec![set("a", b"1")]).await);
        let last = success(node.write(ns, Some(v), "c", 2, vec![set("b", b"2")]).await);
        node.stop().await;

        let node = start(dir, |_| {}).await;
        let r = node
            .call(Request::GetClientState { namespace_id: ns, vault_id: Some(v), client_id: "c".into() })
            .await;
        assert_eq!(r.unwrap(), Response::GetClientState { last_committed_sequence: 2 });
        let e = failure(node.write(ns, Some(v), "c", 2, vec![set("b", b"2")]).await);
        assert_eq!(e.code, WriteErrorCode::AlreadyCommitted);
        assert_eq!(e.committed_tx_id, Some(last.tx_id));
        assert_eq!(e.committed_block_height, Some(last.block_height));
        let s = success(node.write(ns, Some(v), "c", 3, vec![set("c", b"3")]).await);
        assert_eq!(s.block_height, 3);
        assert_eq!(node.read(ns, Some(v), "a").await.as_deref(), Some(&b"1"[..]));
        assert_eq!(node.create_namespace("beta").await, 2);
        assert_eq!(node.create_vault(2).await.0, 2);
        node.stop().await;
    });
}

/// Deletion: a namespace with a live vault cannot be deleted; a deleted vault reads and writes
/// as NotFound; then the namespace can be deleted, resolves to nothing and its name is free;
/// `_system` cannot be deleted.
#[test]
fn t17_delete_vault_and_namespace() {
    run(|dir| async move {
        let node = start(dir, |_| {}).await;
        let ns = node.create_namespace("acme").await;
        let (v, _) = node.create_vault(ns).await;
        success(node.write(ns, Some(v), "c", 1, vec![set("a", b"1")]).await);
        let e = node.call(Request::DeleteNamespace { namespace_id: ns }).await.unwrap_err();
        assert_eq!(e.code, StatusCode::FailedPrecondition);
        let e = node.call(Request::DeleteNamespace { namespace_id: 0 }).await.unwrap_err();
        assert_eq!(e.code, StatusCode::PermissionDenied);
        assert!(matches!(
            node.call(Request::DeleteVault { namespace_id: ns, vault_id: v }).await.unwrap(),
            Response::DeleteVault { .. }
        ));
        let e = node
            .call(Request::Read {
                namespace_id: ns,
                vault_id: Some(v),
                key: "a".into(),
                consistency: Default::default(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code, StatusCode::NotFound);
        let e = node
            .call(Request::Write {
                namespace_id: ns,
                vault_id: Some(v),
                client_id: "c".into(),
                sequence: 2,
                operations: vec![set("a", b"2")],
                include_tx_proof: false,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code, StatusCode::NotFound);
        let e = node.call(Request::DeleteVault { namespace_id: ns, vault_id: v }).await.unwrap_err();
        assert_eq!(e.code, StatusCode::NotFound);
        assert!(matches!(
            node.call(Request::DeleteNamespace { namespace_id: ns }).await.unwrap(),
            Response::DeleteNamespace { .. }
        ));
        assert_eq!(node.resolve(ns).await, None);
        match node.call(Request::GetNamespace { by: NamespaceSelector::Id(ns) }).await.unwrap() {
            Response::GetNamespace(info) => assert_eq!(info.status, NamespaceStatus::Deleted),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(node.create_namespace("acme").await, 2);
        node.stop().await;
    });
}

/// Intake limits: queue overflow is ResourceExhausted; too many operations and an empty client
/// id are InvalidArgument; GetBlockRange validates and truncates to the tip; BatchRead caps keys.
#[test]
fn t18_limits() {
    run(|dir| async move {
        let node = start(dir, |c| {
            c.max_ops_per_tx = 3;
            c.batch_max_size = 1;
        })
        .await;
        let ns = node.create_namespace("acme").await;
        let too_many = node
            .call(Request::Write {
                namespace_id: ns,
                vault_id: None,
                client_id: "c".into(),
                sequence: 1,
                operations: (0..4).map(|i| set(&format!("k{i}"), b"")).collect(),
                include_tx_proof: false,
            })
            .await
            .unwrap_err();
        assert_eq!(too_many.code, StatusCode::InvalidArgument);
        let no_client = node
            .call(Request::Write {
                namespace_id: ns,
                vault_id: None,
                client_id: String::new(),
                sequence: 1,
                operations: vec![set("k", b"")],
                include_tx_proof: false,
            })
            .await
            .unwrap_err();
        assert_eq!(no_client.code, StatusCode::InvalidArgument);
        success(node.write(ns, None, "c", 1, vec![set("k", b"")]).await);
        let range = |s, e| Request::GetBlockRange {
            namespace_id: ns,
            vault_id: None,
            start_height: s,
            end_height: e,
        };
        assert_eq!(node.call(range(2, 1)).await.unwrap_err().code, StatusCode::InvalidArgument);
        assert_eq!(node.call(range(0, 1000)).await.unwrap_err().code, StatusCode::InvalidArgument);
        let Response::GetBlockRange { blocks, current_tip } = node.call(range(0, 50)).await.unwrap() else {
            panic!()
        };
        assert_eq!(current_tip, 1);
        assert_eq!(blocks.iter().map(|b| b.header.height).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(blocks[1].header.previous_hash, ledger_core::hash::block_hash(&blocks[0].header));
        let Response::GetBlockRange { blocks, .. } = node.call(range(5, 9)).await.unwrap() else { panic!() };
        assert!(blocks.is_empty());
        let e =
            node.call(Request::GetBlock { namespace_id: ns, vault_id: None, height: 2 }).await.unwrap_err();
        assert_eq!(e.code, StatusCode::NotFound);
        // 30 writes at once against a queue of 10 × batch_max_size(1): the overflow is refused.
        let writes = (0..30)
            .map(|i| Request::Write {
                namespace_id: ns,
                vault_id: None,
                client_id: format!("q{i}"),
                sequence: 1,
                operations: vec![set("q", b"")],
                include_tx_proof: false,
            })
            .collect();
        let answers = node.call_all(writes).await;
        let refused =
            answers.iter().filter(|a| matches!(a, Err(s) if s.code == StatusCode::ResourceExhausted)).count();
        let done =
            answers.iter().filter(|a| matches!(a, Ok(Response::Write(WriteResult::Success(_))))).count();
        assert!(refused > 0, "{answers:?}");
        assert_eq!(refused + done, 30);
        let keys = (0..1001).map(|i| i.to_string()).collect();
        let e = node
            .call(Request::BatchRead {
                namespace_id: ns,
                vault_id: None,
                keys,
                consistency: ReadConsistency::Eventual,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code, StatusCode::InvalidArgument);
        node.stop().await;
    });
}

/// Two cores: group 0 and 1 on core 0, group 2 on core 1. A namespace placed in group 2 gets its
/// scope created by core 1 (internal message), writes and paginated lists are served by core 1
/// (which learned the page-token key from core 0), ListVaults and the health check fan out to
/// both cores, and unplaced namespaces go to the least-loaded group.
#[test]
fn t19_two_cores() {
    run(|dir| async move {
        let placement = [(GroupId(0), CoreId(0)), (GroupId(1), CoreId(0)), (GroupId(2), CoreId(1))].into();
        let node = start_cores(dir, |_| {}, placement).await;
        let r = node.call(Request::CreateNamespace { name: "far".into(), group_id: Some(2) }).await.unwrap();
        assert_eq!(r, Response::CreateNamespace { namespace_id: 1, group_id: 2 });
        // Group 2 now holds one namespace, so the next unplaced one goes to the empty group 1;
        // then both hold one and the tie goes to the lowest id.
        let r = node.call(Request::CreateNamespace { name: "near".into(), group_id: None }).await.unwrap();
        assert_eq!(r, Response::CreateNamespace { namespace_id: 2, group_id: 1 });
        let r = node.call(Request::CreateNamespace { name: "third".into(), group_id: None }).await.unwrap();
        assert_eq!(r, Response::CreateNamespace { namespace_id: 3, group_id: 1 });
        let (v, genesis) = node.create_vault(1).await;
        assert_eq!((v, genesis.namespace_id, genesis.vault_id), (1, 1, 1));
        let ops = (0..5).map(|i| set(&format!("k{i}"), b"v")).collect();
        let s = success(node.write(1, Some(v), "c", 1, ops).await);
        assert_eq!(s.block_height, 1);
        assert_eq!(node.read(1, Some(v), "k3").await.as_deref(), Some(&b"v"[..]));
        let Response::ListEntities { entities, next_page_token, .. } =
            node.call(list_entities(1, Some(v), "k", 2, String::new(), false)).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(entities.len(), 2);
        let Response::ListEntities { entities, .. } =
            node.call(list_entities(1, Some(v), "k", 2, next_page_token, false)).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(entities.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(), vec!["k2", "k3"]);
        node.create_vault(2).await;
        match node.call(Request::ListVaults).await.unwrap() {
            Response::ListVaults { vaults } => {
                let got: Vec<_> = vaults.iter().map(|v| (v.namespace_id, v.vault_id, v.group_id)).collect();
                assert_eq!(got, vec![(1, 1, 2), (2, 2, 1)]);
            }
            other => panic!("unexpected {other:?}"),
        }
        match node.call(Request::HealthCheck { namespace_id: None, vault_id: None }).await.unwrap() {
            Response::HealthCheck { status, .. } => assert_eq!(status, HealthStatus::Healthy),
            other => panic!("unexpected {other:?}"),
        }
        match node.call(Request::HealthCheck { namespace_id: Some(1), vault_id: Some(v) }).await.unwrap() {
            Response::HealthCheck { status, .. } => assert_eq!(status, HealthStatus::Healthy),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            node.call(Request::DeleteVault { namespace_id: 1, vault_id: v }).await.unwrap(),
            Response::DeleteVault { .. }
        ));
        let e = node
            .call(Request::Read {
                namespace_id: 1,
                vault_id: Some(v),
                key: "k1".into(),
                consistency: Default::default(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code, StatusCode::NotFound);
        node.stop().await;
    });
}

/// Rounds drafted while earlier rounds' trees are still being built on the tree thread (D21):
/// with at most 4 transactions per block (its queue then holds 40), 36 pipelined writes make 9 or
/// more rounds, each drafted on
/// sealed ones. Client `c` writes sequences 1..=18, each `Next` only if the sealed rounds' client
/// state is seen; after each, a fresh client writes the same key with `MustNotExist`, which fails
/// only if the rows of the sealed (or same) round are seen. After a restart the state (recomputed
/// and checked against its roots at load) reads the same.
#[test]
fn t20_rounds_build_on_sealed_rounds() {
    run(|dir| async move {
        let node = start(dir.clone(), |c| c.batch_max_size = 4).await;
        let ns = node.create_namespace("acme").await;
        let (v, _) = node.create_vault(ns).await;
        let vault = Some(v);
        let write = |client: String, seq: u64, key: u64| Request::Write {
            namespace_id: ns,
            vault_id: vault,
            client_id: client,
            sequence: seq,
            operations: vec![set_if(&format!("k{key}"), &seq.to_le_bytes(), SetCondition::MustNotExist)],
            include_tx_proof: false,
        };
        let reqs: Vec<Request> = (1..=18u64)
            .flat_map(|seq| [write("c".into(), seq, seq), write(format!("d{seq}"), 1, seq)])
            .collect();
        let answers = node.call_all(reqs).await;
        let mut heights = Vec::new();
        for (i, answer) in answers.into_iter().enumerate() {
            let Ok(Response::Write(result)) = answer else { panic!("write {i}: {answer:?}") };
            match result {
                WriteResult::Success(s) => {
                    assert_eq!(i % 2, 0, "write {i} should have found its key");
                    heights.push(s.block_height);
                }
                WriteResult::Error(e) => {
                    assert_eq!((i % 2, e.code), (1, WriteErrorCode::KeyExists), "write {i}")
                }
            }
        }
        assert_eq!(heights.len(), 18);
        assert!(heights.windows(2).all(|w| w[0] <= w[1]), "heights {heights:?}");
        assert!(heights.last().copied().unwrap_or(0) > 4, "expected many blocks, got {heights:?}");
        for key in 1..=18u64 {
            assert_eq!(node.read(ns, vault, &format!("k{key}")).await, Some(key.to_le_bytes().to_vec()));
        }
        node.stop().await;
        let node = start(dir, |_| {}).await;
        for key in [1u64, 9, 18] {
            assert_eq!(node.read(ns, vault, &format!("k{key}")).await, Some(key.to_le_bytes().to_vec()));
        }
        assert_eq!(node.last_sequence(ns, vault, "c").await, 18);
        node.stop().await;
    });
}

/// Issue 12 item 1 (SPEC §6.3): a retry of sequence s that arrives while s's block is in flight
/// is never answered `AlreadyCommitted`; it waits for that block and gets its outcome. A fault
/// point holds the log append of s's block, the retry is sent and must stay unanswered, then
/// the append fails: both copies get `Unavailable`, and after a restart s is still free, so the
/// client's retry commits it.
#[test]
fn t24_a_rejection_judged_over_an_uncommitted_block_waits_for_it() {
    // Linearizability (D32): `b` is set by a block whose append is held; a put-if-absent of `b`
    // from another client fails its condition only because of that block, so its rejection
    // must not be answered before the block's outcome, and must not stand if it fails.
    use crate::faults::{AppendFault, Faults};
    run(|dir| async move {
        let faults = Arc::new(Faults::default());
        let counters = Arc::new(crate::maintenance::reopen::StorageCounters::default());
        let (armed, counted) = (faults.clone(), counters.clone());
        let node = start(dir.clone(), move |c| {
            c.faults = armed;
            c.storage_counters = counted;
        })
        .await;
        let ns = node.create_namespace("acme").await;
        let (v, _) = node.create_vault(ns).await;
        let vault = Some(v);
        let (reached_tx, reached) = flume::bounded(1);
        let (release, release_rx) = flume::bounded(1);
        faults.fail_next_block_append(AppendFault { reached: reached_tx, release: release_rx });
        let group = node.resolve(ns).await.unwrap();
        let send = |request_id: u64, client: &str, operations: Vec<Operation>| {
            let request = Request::Write {
                namespace_id: ns,
                vault_id: vault,
                client_id: client.into(),
                sequence: 1,
                operations,
                include_tx_proof: false,
            };
            let envelope = RequestEnvelope { request_id, deadline_ms: 0, on_behalf_of: None, request };
            node.core_of(group)
                .try_send(ShardMsg::Group {
                    group,
                    envelope,
                    reply: node.reply.clone(),
                    forwarded: false,
                    caller: crate::msg::Caller::internal(std::time::Duration::from_secs(30)),
                })
                .unwrap();
        };
        send(2001, "setter", vec![set("b", b"2")]);
        reached.recv_async().await.unwrap();
        send(2002, "checker", vec![set_if("b", b"3", SetCondition::MustNotExist)]);
        glommio::timer::sleep(std::time::Duration::from_millis(300)).await;
        assert!(node.replies.is_empty(), "a rejection was answered from a block not yet committed");
        release.send(()).unwrap();
        for _ in 0..2 {
            let env = node.replies.recv_async().await.unwrap();
            let status = env.result.expect_err("nothing may succeed or fail on the failed block's state");
            assert_eq!(status.code, StatusCode::Unavailable, "request {}: {status:?}", env.request_id);
        }
        node.stop().await;
    });
}

/// A node with fault points and storage counters of the test's own, namespace "acme" with one
/// vault, and `a` = 1 committed there by client "c" (sequence 1).
async fn faulty_node(
    dir: &Path,
) -> (Node, Arc<crate::faults::Faults>, Arc<crate::maintenance::reopen::StorageCounters>, i64, Option<i64>) {
    faulty_node_with(dir, |_| {}).await
}

/// [`faulty_node`] with `tweak` applied to its configuration last.
async fn faulty_node_with(
    dir: &Path,
    tweak: impl FnOnce(&mut ShardConfig),
) -> (Node, Arc<crate::faults::Faults>, Arc<crate::maintenance::reopen::StorageCounters>, i64, Option<i64>) {
    let faults = Arc::new(crate::faults::Faults::default());
    let counters = Arc::new(crate::maintenance::reopen::StorageCounters::default());
    let (armed, counted) = (faults.clone(), counters.clone());
    let node = start(dir.to_path_buf(), move |c| {
        c.faults = armed;
        c.storage_counters = counted;
        // The server's default periods, so that the groups' GC and integrity tasks sleep
        // through the test as they would in production: a stopped group must reopen anyway.
        c.gc_interval_secs = 60;
        c.integrity_interval_secs = 3600;
        tweak(c);
    })
    .await;
    let ns = node.create_namespace("acme").await;
    let (v, _) = node.create_vault(ns).await;
    success(node.write(ns, Some(v), "c", 1, vec![set("a", b"1")]).await);
    (node, faults, counters, ns, Some(v))
}

#[test]
fn t21_retry_of_an_in_flight_write_gets_its_block_outcome() {
    use crate::faults::AppendFault;
    run(|dir| async move {
        let (node, faults, counters, ns, vault) = faulty_node(&dir).await;

        let (reached_tx, reached) = flume::bounded(1);
        let (release, release_rx) = flume::bounded(1);
        faults.fail_next_block_append(AppendFault { reached: reached_tx, release: release_rx });
        // The disk stays "full" until the end: the stopped group cannot reopen yet.
        faults.set_storage_full(true);
        let write = || Request::Write {
            namespace_id: ns,
            vault_id: vault,
            client_id: "c".into(),
            sequence: 2,
            operations: vec![set("b", b"2")],
            include_tx_proof: false,
        };
        let group = node.resolve(ns).await.unwrap();
        let send = |request_id: u64, request: Request| {
            let envelope = RequestEnvelope { request_id, deadline_ms: 0, on_behalf_of: None, request };
            node.core_of(group)
                .try_send(ShardMsg::Group {
                    group,
                    envelope,
                    reply: node.reply.clone(),
                    forwarded: false,
                    caller: crate::msg::Caller::internal(std::time::Duration::from_secs(30)),
                })
                .unwrap();
        };
        send(1001, write());
        reached.recv_async().await.unwrap();
        send(1002, write());
        glommio::timer::sleep(std::time::Duration::from_millis(300)).await;
        assert!(node.replies.is_empty(), "the retry was answered before its block's outcome was known");
        release.send(()).unwrap();
        for _ in 0..2 {
            let env = node.replies.recv_async().await.unwrap();
            let status = env.result.expect_err("a write whose append failed must not succeed");
            assert_eq!(status.code, StatusCode::Unavailable, "request {}: {status:?}", env.request_id);
        }
        // The failed append stopped the group (issue 12 item 9, in part): later writes are told
        // why, not NotLeader; reads of the applied state are still served; health says so.
        let status = node.call(write()).await.unwrap_err();
        assert_eq!(status.code, StatusCode::Unavailable, "{status:?}");
        assert!(status.message.contains("storage error"), "{}", status.message);
        let read = Request::Read {
            namespace_id: ns,
            vault_id: vault,
            key: "a".into(),
            consistency: ReadConsistency::Eventual,
        };
        match node.call(read).await.unwrap() {
            Response::Read { value, .. } => assert_eq!(value, Some(b"1".to_vec())),
            other => panic!("{other:?}"),
        }
        match node.call(Request::HealthCheck { namespace_id: None, vault_id: None }).await.unwrap() {
            Response::HealthCheck { status, details, .. } => {
                assert_eq!(status, HealthStatus::Unavailable);
                assert!(
                    details.iter().any(|(what, why)| what == "group:1" && why.contains("stopped")),
                    "{details:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        // The core's storage watch notices the stopped group within a few of its ticks.
        let noticed = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while counters.failures_total.load(Ordering::Relaxed) == 0 {
            assert!(std::time::Instant::now() < noticed, "the stopped group was never reported");
            glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
        }
        let status = node.call(write()).await.unwrap_err();
        assert_eq!(status.code, StatusCode::Unavailable, "still full: {status:?}");
        assert_eq!(counters.failures_total.load(Ordering::Relaxed), 1);
        assert_eq!(counters.groups_stopped.load(Ordering::Relaxed), 1);

        // Issue 12 item 9: once the disk takes writes again the group reopens by itself (no
        // restart) and the retried write commits; the acknowledged one is still there.
        faults.set_storage_full(false);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match node.call(write()).await {
                Ok(Response::Write(WriteResult::Success(_))) => break,
                Ok(other) => panic!("{other:?}"),
                Err(status) => {
                    assert_eq!(status.code, StatusCode::Unavailable, "{status:?}");
                    assert!(std::time::Instant::now() < deadline, "the group never reopened: {status:?}");
                    glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
        assert_eq!(node.read(ns, vault, "a").await, Some(b"1".to_vec()));
        assert_eq!(node.read(ns, vault, "b").await, Some(b"2".to_vec()));
        assert_eq!(counters.reopens_total.load(Ordering::Relaxed), 1);
        assert_eq!(counters.groups_stopped.load(Ordering::Relaxed), 0);
        match node.call(Request::HealthCheck { namespace_id: None, vault_id: None }).await.unwrap() {
            Response::HealthCheck { status, details, .. } => {
                assert_eq!(status, HealthStatus::Healthy, "{details:?}")
            }
            other => panic!("{other:?}"),
        }
        node.stop().await;

        let node = start(dir, |_| {}).await;
        assert_eq!(node.last_sequence(ns, vault, "c").await, 2);
        assert_eq!(node.read(ns, vault, "b").await, Some(b"2".to_vec()));
        success(node.write(ns, vault, "c", 3, vec![set("c", b"3")]).await);
        node.stop().await;
    });
}

#[test]
fn t25_a_group_whose_checkpoints_fail_reopens_itself_and_loses_nothing() {
    // Issue 12 item 9: checkpoint writes that fail (an I/O error latches redb's file until it is
    // reopened) take the group out for a reopen once the disk works, without a node restart.
    run(|dir| async move {
        let (node, faults, counters, ns, vault) = faulty_node(&dir).await;
        let group = node.resolve(ns).await.unwrap();
        faults.fail_checkpoints(group.0, 2);
        success(node.write(ns, vault, "c", 2, vec![set("b", b"2")]).await);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while counters.reopens_total.load(Ordering::Relaxed) == 0 {
            assert!(std::time::Instant::now() < deadline, "the group never reopened");
            glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(counters.failures_total.load(Ordering::Relaxed), 1);
        assert_eq!(counters.groups_stopped.load(Ordering::Relaxed), 0);
        let sequence = 3;
        loop {
            match node
                .call(Request::Write {
                    namespace_id: ns,
                    vault_id: vault,
                    client_id: "c".into(),
                    sequence,
                    operations: vec![set("c", b"3")],
                    include_tx_proof: false,
                })
                .await
            {
                Ok(Response::Write(WriteResult::Success(_))) => break,
                Ok(other) => panic!("{other:?}"),
                // Reopened but still electing itself leader.
                Err(status)
                    if status.code == StatusCode::Unavailable || status.code == StatusCode::NotLeader =>
                {
                    assert!(std::time::Instant::now() < deadline, "no write after the reopen: {status:?}");
                    glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(status) => panic!("{status:?}"),
            }
        }
        for (key, value) in [("a", b"1"), ("b", b"2"), ("c", b"3")] {
            assert_eq!(node.read(ns, vault, key).await, Some(value.to_vec()), "{key}");
        }
        node.stop().await;
        let node = start(dir, |_| {}).await;
        assert_eq!(node.last_sequence(ns, vault, "c").await, 3);
        assert_eq!(node.read(ns, vault, "b").await, Some(b"2".to_vec()));
        node.stop().await;
    });
}

#[test]
fn t26_writes_after_an_abandoned_round_commit() {
    // A round abandoned while it was built (leadership moved, its vault's chain moved, ...)
    // answers its writes Unavailable; the retry, drafted after the pipeline drained, must not
    // inherit that fate. It did: every later round followed the abandoned one's "not proposed"
    // and was abandoned too, so the group took no write again (seen under load in
    // scripts/bench-cluster.sh as "the block before it was abandoned", forever).
    run(|dir| async move {
        let (node, faults, _counters, ns, vault) = faulty_node(&dir).await;
        faults.abandon_next_round();
        let write = |sequence: u64, value: &[u8]| Request::Write {
            namespace_id: ns,
            vault_id: vault,
            client_id: "c".into(),
            sequence,
            operations: vec![set("b", value)],
            include_tx_proof: false,
        };
        let status = node.call(write(2, b"2")).await.unwrap_err();
        assert_eq!(status.code, StatusCode::Unavailable, "{status:?}");
        assert!(status.message.contains("injected fault"), "{}", status.message);
        for (sequence, value) in [(2, b"2"), (3, b"3")] {
            match node.call(write(sequence, value)).await {
                Ok(Response::Write(WriteResult::Success(_))) => {}
                other => panic!("write {sequence} after the abandoned round: {other:?}"),
            }
        }
        assert_eq!(node.read(ns, vault, "b").await, Some(b"3".to_vec()));
        node.stop().await;
    });
}

/// A node with groups 1 and 2 on one core, namespace "one" in group 1 and "two" in group 2, one
/// committed write in each; returns the namespace ids.
async fn two_groups(dir: &Path) -> (Node, i64, i64) {
    let placement = [(GroupId(0), CoreId(0)), (GroupId(1), CoreId(0)), (GroupId(2), CoreId(0))].into();
    let node = start_cores(dir.to_path_buf(), |c| c.groups_per_core = 2, placement).await;
    let mut ids = Vec::new();
    for (name, group) in [("one", 1u32), ("two", 2)] {
        let ns = match node.call(Request::CreateNamespace { name: name.into(), group_id: Some(group) }).await
        {
            Ok(Response::CreateNamespace { namespace_id, .. }) => namespace_id,
            other => panic!("create namespace {name}: {other:?}"),
        };
        assert_eq!(node.resolve(ns).await, Some(GroupId(group)));
        success(node.write(ns, None, "c", 1, vec![set("k", name.as_bytes())]).await);
        ids.push(ns);
    }
    (node, ids[0], ids[1])
}

/// Opens a stopped node's redb file, waiting while the node's I/O threads, which end just after
/// the stop returns, still hold it.
fn open_when_released(path: &Path) -> redb::Database {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match redb::Database::open(path) {
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other.unwrap(),
        }
    }
}

async fn restart_two_groups(dir: &Path) -> Node {
    let placement = [(GroupId(0), CoreId(0)), (GroupId(1), CoreId(0)), (GroupId(2), CoreId(0))].into();
    start_cores(dir.to_path_buf(), |c| c.groups_per_core = 2, placement).await
}

/// The failed group answers reads and writes `Unavailable` naming the failure, the healthy group
/// reads and writes as before, and node health is Unavailable and names the failed group.
async fn check_group_2_failed_group_1_serves(node: &Node, one: i64, two: i64, why: &str, start: u64) {
    let read = Request::Read {
        namespace_id: two,
        vault_id: None,
        key: "k".into(),
        consistency: ReadConsistency::Eventual,
    };
    let e = node.call(read).await.unwrap_err();
    assert_eq!(e.code, StatusCode::Unavailable, "{e:?}");
    assert!(e.message.contains("group 2") && e.message.contains(why), "{}", e.message);
    let write = Request::Write {
        namespace_id: two,
        vault_id: None,
        client_id: "c".into(),
        sequence: 2,
        operations: vec![set("k", b"x")],
        include_tx_proof: false,
    };
    assert_eq!(node.call(write).await.unwrap_err().code, StatusCode::Unavailable);
    assert_eq!(node.read(one, None, "k").await, Some(b"one".to_vec()));
    success(node.write(one, None, "c", start + 2, vec![set("k2", b"more")]).await);
    assert_eq!(node.read(one, None, "k2").await, Some(b"more".to_vec()));
    match node.call(Request::HealthCheck { namespace_id: None, vault_id: None }).await.unwrap() {
        Response::HealthCheck { status, details, .. } => {
            assert_eq!(status, HealthStatus::Unavailable);
            assert!(details.iter().any(|(what, _)| what == "group:2"), "{details:?}");
        }
        other => panic!("{other:?}"),
    }
}

/// Issue 12 item 3, files: a corrupt applied record in group 2's `state.redb` used to fail the
/// node's start (and so every restart). Now group 2 alone stays closed and answers
/// `Unavailable`, group 1 serves, health names group 2, and the same holds at the next start.
#[test]
fn t22_a_group_with_corrupt_state_does_not_stop_the_node() {
    run(|dir| async move {
        let (node, one, two) = two_groups(&dir).await;
        node.stop().await;
        {
            let table: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("applied");
            let db = open_when_released(&dir.join("groups/g00002/state.redb"));
            let txn = db.begin_write().unwrap();
            txn.open_table(table).unwrap().insert("applied", &b"not an applied record"[..]).unwrap();
            txn.commit().unwrap();
        }
        for start in 0..2 {
            let node = restart_two_groups(&dir).await;
            check_group_2_failed_group_1_serves(&node, one, two, "applied record", start).await;
            node.stop().await;
        }
    });
}

/// Issue 12 item 3, log: a log entry that breaks an apply invariant (a copy of group 2's last
/// block appended again, so its group height does not follow) used to panic the core's thread
/// at every start. Now the assert is caught, group 2 is marked failed and answers
/// `Unavailable`, group 1 serves, nothing of the bad apply is checkpointed, and the next start
/// fails group 2 the same way instead of looping.
#[test]
fn t23_a_log_entry_that_breaks_apply_fails_only_its_group() {
    use crate::raft::core_log::offline;
    run(|dir| async move {
        let (node, one, two) = two_groups(&dir).await;
        node.stop().await;
        let config = crate::config::ShardConfig::for_tests(dir.to_path_buf());
        offline::append_copy_of_last_block(crate::raft::open::core_log_dir(&config, 0), GroupId(2)).unwrap();
        for start in 0..2 {
            let node = restart_two_groups(&dir).await;
            check_group_2_failed_group_1_serves(&node, one, two, "group block out of order", start).await;
            node.stop().await;
        }
    });
}

/// SPEC §8.9 queue cap: a group holds at most 10 × `batch_max_size` pending transactions. With
/// rounds held open (eager commit off) and 25 writes arriving in one go, the first 20 are queued
/// and commit, the other 5 are refused `ResourceExhausted` and applied nowhere.
#[test]
fn t27_pending_queue_is_capped_at_ten_batches() {
    run(|dir| async move {
        let node = start(dir, |c| {
            c.batch_max_size = 2;
            c.batch_eager_commit = false;
            c.batch_max_delay_ms = 200;
        })
        .await;
        let ns = node.create_namespace("capped").await;
        let (v, _) = node.create_vault(ns).await;
        let requests = (0..25)
            .map(|i| Request::Write {
                namespace_id: ns,
                vault_id: Some(v),
                client_id: format!("c{i}"),
                sequence: 1,
                operations: vec![set(&format!("k{i}"), b"v")],
                include_tx_proof: false,
            })
            .collect();
        let answers = node.call_all(requests).await;
        for (i, answer) in answers.into_iter().enumerate() {
            let read = node
                .call(Request::Read {
                    namespace_id: ns,
                    vault_id: Some(v),
                    key: format!("k{i}"),
                    consistency: ReadConsistency::Eventual,
                })
                .await
                .unwrap();
            let Response::Read { value, .. } = read else { panic!("{read:?}") };
            if i < 20 {
                assert!(matches!(answer, Ok(Response::Write(WriteResult::Success(_)))), "{i}: {answer:?}");
                assert!(value.is_some(), "queued write {i} not applied");
            } else {
                let status = answer.unwrap_err();
                assert_eq!(status.code, StatusCode::ResourceExhausted, "{i}: {status:?}");
                assert!(status.message.contains("write queue is full"), "{status:?}");
                assert_eq!(value, None, "refused write {i} was applied");
            }
        }
        node.stop().await;
    });
}

/// D51: with eager commit and no block in flight, a round waits (up to `batch_fill_wait_us`) for
/// as many transactions as the group's last round took. Clients that come back one at a time,
/// 10 ms apart, after a round of theirs still share one block; then a lone writer's round waits
/// out the bound once and commits alone, and the next round's target is that one write.
#[test]
fn t28_a_round_waits_for_as_many_writes_as_the_last_round_took() {
    run(|dir| async move {
        let node = start(dir, |c| {
            c.batch_fill_wait_us = 1_000_000;
            // Trees on the executor and one block in flight: the rounds the wait applies to.
            c.tree_thread_min_leaves = u64::MAX;
            c.pipeline_tree_changes_min = usize::MAX;
        })
        .await;
        let ns = node.create_namespace("fill").await;
        let (v, _) = node.create_vault(ns).await;
        let write = |client: usize, seq: u64| Request::Write {
            namespace_id: ns,
            vault_id: Some(v),
            client_id: format!("c{client}"),
            sequence: seq,
            operations: vec![set(&format!("k{client}"), &seq.to_le_bytes())],
            include_tx_proof: false,
        };
        let height = |answer: &Result<Response, Status>| match answer {
            Ok(Response::Write(WriteResult::Success(s))) => s.block_height,
            other => panic!("{other:?}"),
        };
        let first: Vec<u64> =
            node.call_all((0..3).map(|c| write(c, 1)).collect()).await.iter().map(height).collect();
        // The last round took the writes of the highest block (all three, unless they split).
        let top = first.iter().copied().max().unwrap();
        let clients: Vec<usize> = (0..3).filter(|&c| first[c] == top).collect();
        let spaced = clients.iter().map(|&c| write(c, 2)).collect();
        let second = node.call_all_spaced(spaced, Some(std::time::Duration::from_millis(10)), || ()).await;
        let second: Vec<u64> = second.iter().map(|(a, ())| height(a)).collect();
        assert!(second.iter().all(|&h| h == top + 1), "one block for the returning clients: {second:?}");
        // A lone writer: the round waits for the others (up to the bound) and commits alone.
        let lone = height(&node.call(write(0, 3)).await);
        assert_eq!(lone, top + 2);
        let next = height(&node.call(write(0, 4)).await);
        assert_eq!(next, top + 3);
        node.stop().await;
    });
}

/// D57: a group whose snapshots keep failing (the disk passes the reopen's probe, openraft's next
/// snapshot fails again) reopens with a pause that doubles per relapse instead of every few
/// hundred ms, and once the cause is gone it serves again with nothing acknowledged lost.
#[test]
fn t29_a_group_that_relapses_after_each_reopen_backs_off_and_recovers() {
    run(|dir| async move {
        let (node, faults, counters, ns, vault) = faulty_node_with(&dir, |c| {
            // openraft snapshots (and purges) every few entries, and again right after a reopen.
            c.raft_snapshot_logs = 4;
            c.raft_log_keep = 2;
        })
        .await;
        let group = node.resolve(ns).await.unwrap();
        // Writes `k{seq}` with retries: the group is out of service while it reopens.
        let write = |seq: u64| {
            let node = &node;
            async move {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                loop {
                    let request = Request::Write {
                        namespace_id: ns,
                        vault_id: vault,
                        client_id: "c".into(),
                        sequence: seq,
                        operations: vec![set(&format!("k{seq}"), b"v")],
                        include_tx_proof: false,
                    };
                    match node.call(request).await {
                        Ok(Response::Write(WriteResult::Success(_))) => return,
                        // Committed, but its answer was lost to the reopen (SPEC §6.3).
                        Ok(Response::Write(WriteResult::Error(e)))
                            if e.code == WriteErrorCode::AlreadyCommitted =>
                        {
                            return
                        }
                        Ok(other) => panic!("{other:?}"),
                        Err(status)
                            if status.code == StatusCode::Unavailable
                                || status.code == StatusCode::NotLeader =>
                        {
                            assert!(
                                std::time::Instant::now() < deadline,
                                "write {seq} never committed: {status:?}"
                            );
                            glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
                        }
                        Err(status) => panic!("{status:?}"),
                    }
                }
            }
        };
        faults.fail_snapshots(group.0, u32::MAX);
        // Sequence 1 (`a`) is faulty_node's.
        let mut seq = 1;
        while counters.failures_total.load(Ordering::Relaxed) == 0 {
            seq += 1;
            write(seq).await;
        }
        // Writes go on for 3.5 s (each one applied lets openraft try its snapshot again; the last
        // may wait for a later reopen). The n-th reopen comes after pauses of 1, 2, 4 … s, so by
        // then at least 2^(n-2) s have passed: n ≤ 2 + log2(seconds + 1). Without the pauses a
        // reopen takes tens of ms and the watch finds the next failure within 200 ms (~19 here).
        let window = std::time::Instant::now();
        while window.elapsed() < std::time::Duration::from_millis(3_500) {
            seq += 1;
            write(seq).await;
        }
        let reopens = counters.reopens_total.load(Ordering::Relaxed);
        let bound = 2.0 + (window.elapsed().as_secs_f64() + 1.0).log2();
        assert!(reopens >= 2 && reopens as f64 <= bound, "{reopens} reopens in {:?}", window.elapsed());
        assert!(counters.failures_total.load(Ordering::Relaxed) <= reopens + 1);
        faults.fail_snapshots(group.0, 0);
        seq += 1;
        write(seq).await;
        assert_eq!(node.read(ns, vault, "a").await, Some(b"1".to_vec()));
        for k in 2..=seq {
            assert_eq!(node.read(ns, vault, &format!("k{k}")).await, Some(b"v".to_vec()), "k{k}");
        }
        node.stop().await;
        let node = start(dir, |_| {}).await;
        assert_eq!(node.last_sequence(ns, vault, "c").await, seq);
        node.stop().await;
    });
}
