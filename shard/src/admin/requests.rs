//! Node-level and registry requests, served by core 0, which owns group 0 and so the `_system`
//! namespace (SPEC §5.3, §5.4, §10.4). Registry mutations are `_system` transactions (client and
//! actor `system:admin`, sequence = that client's next) built by group 0's block builder; scope
//! creation and status changes in a data group are `AdminCommand`s proposed by the core owning
//! that group (`internal`). Mutations run one at a time (the admin lock), so id counters and
//! group loads are always read from committed state.

// Errors travel as the wire `Status` (SPEC §4.5), built once at this edge; boxing it would
// only add an allocation to every error path.
#![allow(clippy::result_large_err)]

use crate::admin::internal::{CoreHealth, InternalMsg};
use crate::admin::learner_routes;
use crate::admin::registry::{self as reg, GroupRecord, NamespaceRecord, NodeRecord, VaultRecord};
use crate::msg::ShardMsg;
use crate::peer::forward::{self, Forwarded};
use crate::peer::outside::GroupMembers;
use crate::read::page_token::{query_hash, PageToken, MSG_INVALID};
use crate::reply::ReplySender;
use crate::round::group::{now_ts, PendingTx, ScopeCommand, Waiter};
use crate::shard::Shard;
use crate::ShardError;
use futures::channel::oneshot;
use ledger_core::constants::page_size;
use ledger_core::state::ScopeState;
use ledger_core::types::*;
use ledger_wire::messages::{
    HealthStatus, NamespaceInfo, NamespaceSelector, Request, RequestEnvelope, Response, ResponseEnvelope,
    Status, StatusCode, VaultInfo, WriteResult, WriteSuccess,
};
use ledger_wire::peer::MembershipChange;
use std::rc::Rc;
use std::time::Instant;

pub const SYSTEM_SCOPE: ScopeKey = ScopeKey { namespace_id: NamespaceId(0), vault_id: VaultId(0) };

/// Filter of ListNamespaces for its page tokens: there is none, so the hash is of this unit.
#[derive(rkyv::Archive, rkyv::Serialize)]
struct NamespacesFilter {
    kind: u8,
}

fn status(code: StatusCode, message: impl Into<String>) -> Status {
    Status::new(code, message)
}

/// Answers one `ShardMsg::Admin` (spawned by the inbox loop; may await).
pub async fn handle(
    shard: Rc<Shard>,
    envelope: RequestEnvelope,
    reply: ReplySender,
    forwarded: bool,
    caller: crate::msg::Caller,
) {
    // Admin work is not queued behind a builder, so only a request that waited in the inbox past
    // its deadline is refused; a started one runs to its own bounded end.
    if caller.expired() {
        let status = crate::shard::deadline_exceeded();
        let _ = reply.try_send(ResponseEnvelope {
            request_id: envelope.request_id,
            result: Err(status),
            leader_hint: None,
        });
        return;
    }
    if shard.config.cluster.is_some()
        && !matches!(
            envelope.request,
            Request::GetNodeInfo
                | Request::GetPeers { .. }
                | Request::AnnouncePeer { .. }
                | Request::HealthCheck { .. }
        )
    {
        wait_for_system(&shard).await;
    }
    let result = if !forwarded && changes_registry(&envelope.request) && !system_leader(&shard) {
        // Registry changes are `_system` transactions: its leader makes them (SPEC §8.1).
        match system_group(&shard) {
            Ok(group) => {
                let timeout = match envelope.request {
                    Request::JoinCluster { .. } | Request::LeaveCluster { .. } => {
                        crate::admin::membership::change_timeout() * shard.placement.len().max(1) as u32
                    }
                    _ => shard.config.forward_timeout,
                };
                match forward::to_leader(&shard.peers, &group, envelope.request.clone(), timeout).await {
                    Forwarded::Answer(result) => result,
                    Forwarded::Local => answer(&shard, envelope.request).await,
                }
            }
            Err(status) => Err(status),
        }
    } else {
        answer(&shard, envelope.request).await
    };
    let _ = reply.try_send(ResponseEnvelope { request_id: envelope.request_id, result, leader_hint: None });
}

/// A fresh cluster creates `_system` and its bootstrap records (written in one transaction with
/// the page-token key) moments after it forms: registry requests that arrive before wait for
/// them (up to the forwarding timeout) instead of failing.
async fn wait_for_system(shard: &Shard) {
    let deadline = std::time::Instant::now() + shard.config.forward_timeout;
    let ready = || with_system(shard, page_token_key).ok().flatten().is_some();
    while !ready() && std::time::Instant::now() < deadline {
        glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn changes_registry(request: &Request) -> bool {
    matches!(
        request,
        Request::CreateNamespace { .. }
            | Request::DeleteNamespace { .. }
            | Request::CreateVault { .. }
            | Request::DeleteVault { .. }
            | Request::JoinCluster { .. }
            | Request::LeaveCluster { .. }
            | Request::NodeStopping { .. }
    )
}

/// SPEC §10.6 on the `_system` leader: the change in every group concerned, one at a time
/// (`_system` first when adding, last when removing); stops at the first group that refuses.
/// A node is added to the data groups that have fewer voters than the replication factor asks;
/// a node that goes is first replaced in each of its data groups by a spare node, if there is
/// one (SPEC §10.5, `replicas.rs`), so that a group's voters never drop below what it had.
pub(crate) async fn change_membership_everywhere(
    shard: &Shard,
    change: MembershipChange,
) -> Result<Vec<(u32, Vec<u64>)>, Status> {
    if shard.config.cluster.is_none() {
        return Err(status(
            StatusCode::FailedPrecondition,
            "this node runs alone (bootstrap_expect 1): start the cluster with --bootstrap-expect N --peers …",
        ));
    }
    let _serial = shard.admin_lock.lock().await;
    crate::event!(info, "membership_change_started", change = ?change);
    let joining = matches!(change, MembershipChange::Add { .. });
    let (view, unusable) = with_system(shard, |s| {
        (crate::admin::replicas::ReplicaView::read(s), crate::admin::replicas::unusable_nodes(shard, s))
    })?;
    let mut done: Vec<(u32, Vec<u64>)> = Vec::new();
    let after = |done: &[(u32, Vec<u64>)]| {
        let done = done.to_vec();
        move |mut s: Status| {
            s.message = format!("{} (groups changed before it: {done:?})", s.message);
            s
        }
    };
    for group in crate::admin::membership::order(shard.placement.keys().copied(), joining) {
        if !view.concerns(group.0, &change) {
            continue;
        }
        if let MembershipChange::Remove { node_id } = &change {
            let spare = view.spare(group.0, |id| id == *node_id || unusable.contains(&id));
            if let Some((spare, address)) = spare.filter(|_| view.has_member(group.0, *node_id)) {
                crate::event!(info, "group_replica_adding", group = %group, node = spare, replacing = *node_id);
                let add = MembershipChange::Add { node_id: spare, address };
                let voters = change_group(shard, group, add).await.map_err(after(&done))?;
                done.push((group.0, voters));
            }
        }
        let voters = change_group(shard, group, change.clone()).await.map_err(after(&done))?;
        crate::event!(info, "membership_changed", group = %group, change = ?change, voters = ?voters);
        done.push((group.0, voters));
    }
    // The registry follows (SPEC §10.4): each data group's members and the node's record.
    let mut ops = with_system(shard, |s| group_member_ops(s, &done))?;
    ops.extend(with_system(shard, |s| {
        let mut ops = Vec::new();
        match &change {
            MembershipChange::Add { node_id, address } => {
                let node = NodeRecord { node_id: *node_id, address: address.clone() };
                ops.push(reg::set(reg::node_key(*node_id), reg::encode(&node)));
            }
            MembershipChange::Remove { node_id } => {
                if reg::record::<NodeRecord>(s, &reg::node_key(*node_id)).is_some() {
                    ops.push(Operation::DeleteEntity { key: reg::node_key(*node_id) });
                }
                if s.get_entity(&reg::node_stopped_key(*node_id)).is_some() {
                    ops.push(Operation::DeleteEntity { key: reg::node_stopped_key(*node_id) });
                }
            }
        }
        ops
    })?);
    if !ops.is_empty() {
        system_tx_ok(shard, ops).await?;
    }
    Ok(done)
}

/// One membership change of one group, made by its owning core (here or at the group's leader);
/// returns the group's voters afterwards.
pub(crate) async fn change_group(
    shard: &Shard,
    group: GroupId,
    change: MembershipChange,
) -> Result<Vec<u64>, Status> {
    let (tx, rx) = oneshot::channel();
    send_to_owner(shard, group, InternalMsg::ChangeMembership { group, change, reply: tx }).await?;
    rx.await.map_err(|_| Status::unavailable("membership change dropped"))?
}

/// The registry writes that record each changed group's voters (the last entry of a group wins).
fn group_member_ops(system: &ScopeState, changed: &[(u32, Vec<u64>)]) -> Vec<Operation> {
    let last: std::collections::BTreeMap<u32, &Vec<u64>> = changed.iter().map(|(g, v)| (*g, v)).collect();
    let mut ops = Vec::new();
    for (group, voters) in last {
        if let Some(mut record) = group_record(system, group).filter(|r| &r.members != voters) {
            record.members = voters.clone();
            ops.push(reg::set(reg::group_key(group), reg::encode(&record)));
        }
    }
    ops
}

/// Records changed groups' voters in `_system`.
pub(crate) async fn record_group_members(shard: &Shard, changed: &[(u32, Vec<u64>)]) -> Result<(), Status> {
    let ops = with_system(shard, |s| group_member_ops(s, changed))?;
    if !ops.is_empty() {
        system_tx_ok(shard, ops).await?;
    }
    Ok(())
}

fn system_leader(shard: &Shard) -> bool {
    shard.group(GroupId(0)).is_some_and(|g| g.is_leader())
}

async fn answer(shard: &Rc<Shard>, request: Request) -> Result<Response, Status> {
    match request {
        Request::CreateNamespace { name, group_id } => create_namespace(shard, name, group_id).await,
        Request::DeleteNamespace { namespace_id } => delete_namespace(shard, namespace_id).await,
        Request::GetNamespace { by } => get_namespace_confirmed(shard, by).await.map(Response::GetNamespace),
        Request::ListNamespaces { page_token, page_size } => list_namespaces(shard, &page_token, page_size),
        Request::CreateVault { namespace_id, retention_policy, .. } => {
            create_vault(shard, namespace_id, retention_policy.unwrap_or_default()).await
        }
        Request::DeleteVault { namespace_id, vault_id } => delete_vault(shard, namespace_id, vault_id).await,
        Request::GetVault { namespace_id, vault_id } => {
            let group = namespace_group(shard, namespace_id)?;
            let scope = ScopeKey::new(NamespaceId(namespace_id), Some(VaultId(vault_id)));
            scope_info(shard, group, scope).await.map(Response::GetVault)
        }
        Request::ListVaults => Ok(Response::ListVaults { vaults: list_vaults(shard).await }),
        Request::GetNodeInfo => Ok(node_info(shard)),
        Request::GetPeers { max_peers } => crate::admin::peer_cache::get_peers(shard, max_peers),
        Request::GetSystemState { if_version_greater_than } => system_state(shard, if_version_greater_than),
        Request::AnnouncePeer { peer } => {
            let accepted = shard.peer_gossip.borrow_mut().merge(&peer, crate::admin::peer_cache::unix_now());
            crate::event!(info, "peer_announced", node = peer.node_id, accepted);
            Ok(Response::AnnouncePeer { accepted })
        }
        Request::NodeStopping { node_id } => {
            let secs = crate::admin::peer_cache::unix_now() as i64;
            let op = reg::set(reg::node_stopped_key(node_id), secs.to_le_bytes().to_vec());
            system_tx_ok(shard, vec![op]).await?;
            crate::event!(info, "node_stopping_recorded", node = node_id);
            Ok(Response::NodeStopping)
        }
        Request::HealthCheck { namespace_id: None, .. } => Ok(node_health(shard).await),
        Request::HealthCheck { namespace_id: Some(ns), vault_id } => {
            let group = namespace_group(shard, ns)?;
            let scope = ScopeKey::new(NamespaceId(ns), vault_id.map(VaultId));
            let (tx, rx) = oneshot::channel();
            send_to_owner(shard, group, InternalMsg::ScopeHealth { group, scope, reply: tx }).await?;
            let (status, message, details) =
                rx.await.map_err(|_| Status::unavailable("health check dropped"))??;
            Ok(Response::HealthCheck { status, message, details })
        }
        Request::JoinCluster { node_id, address } => {
            let groups = change_membership_everywhere(
                shard,
                MembershipChange::Add { node_id, address: address.clone() },
            )
            .await?;
            Ok(Response::JoinCluster { groups })
        }
        Request::LeaveCluster { node_id } => {
            let groups = change_membership_everywhere(shard, MembershipChange::Remove { node_id }).await?;
            Ok(Response::LeaveCluster { groups })
        }
        Request::SetPartition { blocked_nodes } => {
            if !shard.config.faults.peer_faults_enabled() {
                return Err(status(
                    StatusCode::PermissionDenied,
                    "the fault switch is off: SetPartition needs a server started with --test-faults",
                ));
            }
            crate::event!(warn, "partition_set", node = shard.config.node_id, blocked = ?blocked_nodes);
            shard.config.faults.set_partition(blocked_nodes.iter().copied());
            Ok(Response::SetPartition { blocked_nodes })
        }
        Request::GetClusterInfo => crate::ops::cluster::cluster_info(shard),
        Request::GetGroupStatus => Ok(Response::GetGroupStatus {
            node_id: shard.config.node_id,
            groups: group_statuses(shard).await,
        }),
        Request::LagReport { group_id } => lag_report(shard, group_id).await,
        Request::TransferLeadership { node_id, group_id, successor } => {
            if node_id != shard.config.node_id {
                return transfer_elsewhere(shard, node_id, group_id, successor).await;
            }
            let statuses = group_statuses(shard).await;
            crate::ops::leadership::transfer(shard, statuses, group_id, successor).await
        }
        Request::GetEvents { since_secs, filter, min_level, limit } => {
            crate::events::query(shard, since_secs, filter, min_level, limit).await
        }
        Request::ForceGc { namespace_id: None, vault_id } => force_gc_node(shard, vault_id).await,
        other => Err(Status::invalid(format!("{} is not an admin request", other.op_name()))),
    }
}

/// `ForceGc` without a scope (SPEC §5.3 item 31): a GC cycle of every group this node leads,
/// on the cores owning them; `FailedPrecondition` when it leads none.
async fn force_gc_node(shard: &Shard, vault_id: Option<i64>) -> Result<Response, Status> {
    if vault_id.is_some() {
        return Err(Status::invalid("ForceGc with a vault needs its namespace"));
    }
    let mut total: Option<crate::maintenance::gc::GcOutcome> = None;
    for outcome in fan_out(shard, |reply| InternalMsg::ForceGc { reply }).await.into_iter().flatten() {
        total.get_or_insert_with(Default::default).add(outcome);
    }
    let total = total.ok_or_else(|| {
        status(
            StatusCode::FailedPrecondition,
            format!(
                "node {} leads no group: GC runs on each group's leader (ask that node, or name a scope)",
                shard.config.node_id
            ),
        )
    })?;
    Ok(crate::maintenance::gc::response(total))
}

/// Every group of this node with its Raft status, by group id.
pub(crate) async fn group_statuses(shard: &Shard) -> Vec<ledger_wire::messages::GroupStatusInfo> {
    let mut all: Vec<_> =
        fan_out(shard, |reply| InternalMsg::GroupStatus { reply }).await.into_iter().flatten().collect();
    all.sort_by_key(|g| g.group_id);
    all
}

/// `LagReport` (SPEC §5.3 item 33): each group's entry from its leader.
async fn lag_report(shard: &Shard, group_id: Option<u32>) -> Result<Response, Status> {
    let mut ids: Vec<GroupId> = shard.placement.keys().copied().collect();
    ids.sort();
    if let Some(g) = group_id {
        if !ids.contains(&GroupId(g)) {
            return Err(Status::not_found(format!("group {g} is not hosted on this node")));
        }
        ids.retain(|id| id.0 == g);
    }
    let mut waits = Vec::new();
    for group in ids {
        let (tx, rx) = oneshot::channel();
        send_to_owner(shard, group, InternalMsg::GroupLag { group, reply: tx }).await?;
        waits.push((group, rx));
    }
    let mut groups = Vec::new();
    for (group, rx) in waits {
        match rx.await {
            Ok(Ok(lag)) => groups.push(lag),
            // A group without a reachable leader: reported with no leader and no followers.
            Ok(Err(_)) | Err(_) => groups.push(ledger_wire::messages::GroupLag {
                group_id: group.0,
                leader: None,
                leader_last_index: 0,
                followers: Vec::new(),
            }),
        }
    }
    Ok(Response::LagReport { groups })
}

/// `TransferLeadership` for another node: sent there (it answers for itself).
pub(crate) async fn transfer_elsewhere(
    shard: &Shard,
    node_id: u64,
    group_id: Option<u32>,
    successor: Option<u64>,
) -> Result<Response, Status> {
    let addr = system_group(shard)?
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&node_id)
        .map(|n| n.addr.clone())
        .ok_or_else(|| Status::not_found(format!("node {node_id} is not a member of the cluster")))?;
    let request = Request::TransferLeadership { node_id, group_id, successor };
    let timeout = shard.config.forward_timeout;
    match shard.peers.call(node_id, &addr, request, timeout).await {
        Ok(answer) => answer,
        Err(e) => Err(Status::unavailable(format!("node {node_id}: {e}"))),
    }
}

fn system_group(shard: &Shard) -> Result<Rc<crate::round::group::Group>, Status> {
    shard.group(GroupId(0)).ok_or_else(|| Status::unavailable("group 0 is not on this core"))
}

/// Runs `f` on the committed `_system` scope.
pub(crate) fn with_system<T>(shard: &Shard, f: impl FnOnce(&ScopeState) -> T) -> Result<T, Status> {
    let group = system_group(shard)?;
    let data = group.data.borrow();
    let system =
        data.scopes.get(&SYSTEM_SCOPE).ok_or_else(|| Status::unavailable("_system is not created yet"))?;
    Ok(f(system))
}

/// Commits one `_system` transaction as `system:admin` and returns its outcome.
async fn system_tx(shard: &Shard, operations: Vec<Operation>) -> Result<WriteResult, Status> {
    let group = system_group(shard)?;
    let sequence = with_system(shard, |s| s.client_state(reg::SYSTEM_CLIENT).last_committed_seq + 1)?;
    let (tx, rx) = oneshot::channel();
    let pending = PendingTx {
        scope: SYSTEM_SCOPE,
        client_id: reg::SYSTEM_CLIENT.into(),
        sequence,
        actor: reg::SYSTEM_CLIENT.into(),
        group_sizes: vec![operations.len()],
        operations,
        include_tx_proof: false,
        waiter: Waiter::Internal(tx),
        deadline: None,
    };
    if let Err((waiter, status)) = group.submit(pending) {
        waiter.send(Err(status));
    }
    rx.await.map_err(|_| Status::unavailable("registry write dropped"))?
}

/// A registry transaction that must succeed (its conditions were checked under the admin lock).
pub(crate) async fn system_tx_ok(shard: &Shard, operations: Vec<Operation>) -> Result<WriteSuccess, Status> {
    match system_tx(shard, operations).await? {
        WriteResult::Success(s) => Ok(s),
        WriteResult::Error(e) => {
            Err(Status::internal(format!("registry write failed: {:?} {}", e.code, e.message)))
        }
    }
}

/// Sends an internal message to the core owning `group` (this core included).
pub(crate) async fn send_to_owner(shard: &Shard, group: GroupId, msg: InternalMsg) -> Result<(), Status> {
    let core = shard
        .placement
        .get(&group)
        .copied()
        .ok_or_else(|| Status::unavailable(format!("group {group} is not hosted on this node")))?;
    let inbox =
        shard.cores.get(core.0 as usize).ok_or_else(|| Status::internal(format!("no core {core}")))?;
    inbox.send_async(ShardMsg::Internal(msg)).await.map_err(|_| Status::unavailable("node is shutting down"))
}

async fn scope_command(shard: &Shard, group: GroupId, command: ScopeCommand) -> Result<BlockHeader, Status> {
    let (tx, rx) = oneshot::channel();
    send_to_owner(shard, group, InternalMsg::ScopeCommand { group, command, reply: tx }).await?;
    rx.await.map_err(|_| Status::unavailable("scope command dropped"))?
}

async fn scope_info(shard: &Shard, group: GroupId, scope: ScopeKey) -> Result<VaultInfo, Status> {
    let (tx, rx) = oneshot::channel();
    send_to_owner(shard, group, InternalMsg::ScopeInfo { group, scope, reply: tx }).await?;
    rx.await.map_err(|_| Status::unavailable("scope info dropped"))?
}

/// The live namespace record, or `NotFound`.
fn live_namespace(shard: &Shard, namespace_id: i64) -> Result<NamespaceRecord, Status> {
    with_system(shard, |s| reg::record::<NamespaceRecord>(s, &reg::ns_key(namespace_id)))?
        .filter(|r| r.status == NamespaceStatus::Active)
        .ok_or_else(|| Status::not_found(format!("namespace {namespace_id} not found")))
}

fn namespace_group(shard: &Shard, namespace_id: i64) -> Result<GroupId, Status> {
    if namespace_id == 0 {
        return Ok(GroupId(0));
    }
    live_namespace(shard, namespace_id).map(|r| GroupId(r.group_id))
}

/// `ShardMsg::ResolveNamespace`: the group of a live namespace, from the committed registry.
pub fn resolve_namespace(shard: &Shard, namespace_id: i64) -> Option<GroupId> {
    namespace_group(shard, namespace_id).ok()
}

/// Answers a `ResolveNamespace`. A miss is not believed at once: this replica of `_system` may
/// lag its leader, and a leader just elected may not have applied its predecessor's last
/// entries. So a miss is checked on the leader against its read index (SPEC §8.6) before it is
/// answered "unknown"; a failure to check is `Unavailable` (retryable), never `NotFound`.
pub fn resolve_namespace_for(
    shard: &Rc<Shard>,
    namespace_id: i64,
    reply: oneshot::Sender<Result<Option<GroupId>, Status>>,
) {
    if learner_copy_is_stale(shard) {
        resolve_on_stale_learner(shard, namespace_id, reply);
        return;
    }
    let local = resolve_namespace(shard, namespace_id);
    if local.is_some() {
        let _ = reply.send(Ok(local));
        return;
    }
    let shard = shard.clone();
    glommio::spawn_local(async move {
        let _ = reply.send(confirm_namespace_miss(&shard, namespace_id).await);
    })
    .detach();
}

/// Whether this node is a learner of `_system` whose copy is older than `learner_cache_ttl`
/// (SPEC §10.4). A fresh learner forgets the voters' answers it reused while stale.
fn learner_copy_is_stale(shard: &Shard) -> bool {
    let Ok(group) = system_group(shard) else { return false };
    if shard.config.cluster.is_none() || group.raft.metrics().borrow().state != openraft::ServerState::Learner
    {
        return false;
    }
    let heard = group.data.borrow().contact.heard();
    let fresh = learner_routes::copy_is_fresh(heard, Instant::now(), shard.config.learner_cache_ttl);
    if fresh {
        shard.learner_routes.borrow_mut().forget_all();
    }
    !fresh
}

/// A stale learner's lookup: a voter's answer, reused for `learner_refresh`, else asked anew;
/// its own copy when no voter answers within `learner_refresh`.
fn resolve_on_stale_learner(
    shard: &Rc<Shard>,
    namespace_id: i64,
    reply: oneshot::Sender<Result<Option<GroupId>, Status>>,
) {
    crate::metrics::with(|m| m.learner_cache_stale += 1);
    let refresh = shard.config.learner_refresh;
    if let Some(answer) = shard.learner_routes.borrow().reuse(namespace_id, Instant::now(), refresh) {
        let _ = reply.send(Ok(answer));
        return;
    }
    let shard = shard.clone();
    glommio::spawn_local(async move {
        // A cut-off learner must not hold the lookup for the whole forward timeout: it waits
        // for a voter's answer as long as it would reuse one.
        let asked = glommio::timer::timeout(refresh, async {
            Ok(confirm_namespace_miss(&shard, namespace_id).await)
        });
        let answer =
            match asked.await.unwrap_or_else(|_| Err(Status::unavailable("no voter answered in time"))) {
                Ok(group) => {
                    crate::metrics::with(|m| m.learner_refreshes += 1);
                    shard.learner_routes.borrow_mut().remember(namespace_id, Instant::now(), group, refresh);
                    Ok(group)
                }
                // No voter answers (this learner is cut off): its own copy still routes, as any
                // replica in a minority serves eventual reads flagged `stale` (SPEC §10.8).
                Err(status) => resolve_namespace(&shard, namespace_id).map(Some).ok_or(status),
            };
        let _ = reply.send(answer);
    })
    .detach();
}

/// The group of `namespace_id` as the `_system` leader knows it at its read index. A failed
/// check is `Unavailable` without a leader hint: the hint would name `_system`'s leader, not the
/// namespace's, and a client would follow it.
async fn confirm_namespace_miss(shard: &Shard, namespace_id: i64) -> Result<Option<GroupId>, Status> {
    confirm_namespace_miss_at_leader(shard, namespace_id).await.map_err(|status| {
        Status::unavailable(format!("namespace {namespace_id} could not be looked up: {}", status.message))
    })
}

async fn confirm_namespace_miss_at_leader(
    shard: &Shard,
    namespace_id: i64,
) -> Result<Option<GroupId>, Status> {
    let group = system_group(shard)?;
    if shard.config.cluster.is_some() && !group.is_leader() {
        let request = Request::GetNamespace { by: NamespaceSelector::Id(namespace_id) };
        match forward::to_leader(&shard.peers, &group, request, shard.config.forward_timeout).await {
            Forwarded::Answer(Ok(Response::GetNamespace(info))) if info.status == NamespaceStatus::Active => {
                return Ok(Some(GroupId(info.group_id)))
            }
            Forwarded::Answer(Ok(Response::GetNamespace(_))) => return Ok(None),
            Forwarded::Answer(Err(status)) if status.code == StatusCode::NotFound => return Ok(None),
            Forwarded::Answer(Err(status)) => return Err(status),
            Forwarded::Answer(Ok(other)) => {
                return Err(Status::internal(format!("GetNamespace was answered with {other:?}")))
            }
            Forwarded::Local => {}
        }
    }
    crate::read::reads::ensure_linearizable(&group).await?;
    Ok(resolve_namespace(shard, namespace_id))
}

/// `GetNamespace`: a miss on the `_system` leader is checked again at its read index, so a
/// leader just elected does not deny a namespace its predecessor created (a follower's answer
/// is its own replica's, as for any eventual read).
async fn get_namespace_confirmed(shard: &Shard, by: NamespaceSelector) -> Result<NamespaceInfo, Status> {
    match get_namespace(shard, by.clone()) {
        Err(status) if status.code == StatusCode::NotFound && system_leader(shard) => {
            crate::read::reads::ensure_linearizable(&*system_group(shard)?).await?;
            get_namespace(shard, by)
        }
        answer => answer,
    }
}

fn group_record(system: &ScopeState, group: u32) -> Option<GroupRecord> {
    reg::record::<GroupRecord>(system, &reg::group_key(group))
}

async fn create_namespace(shard: &Shard, name: String, group_id: Option<u32>) -> Result<Response, Status> {
    reg::validate_namespace_name(&name).map_err(Status::invalid)?;
    let _serial = shard.admin_lock.lock().await;
    let (existing, id, group) = with_system(shard, |s| {
        let existing = reg::namespace_by_name(s, &name).filter(|r| r.status == NamespaceStatus::Active);
        let id = reg::counter(s, reg::KEY_SEQ_NAMESPACE);
        let group = match group_id {
            Some(g) => group_record(s, g).ok_or_else(|| Status::not_found(format!("group {g} not found"))),
            None => reg::least_loaded(&reg::groups(s))
                .and_then(|g| group_record(s, g))
                .ok_or_else(|| Status::unavailable("no data group exists")),
        };
        (existing, id, group)
    })?;
    if existing.is_some() {
        return Err(status(StatusCode::AlreadyExists, format!("namespace {name:?} already exists")));
    }
    let mut group = group?;
    let record = NamespaceRecord {
        namespace_id: id,
        name: name.clone(),
        group_id: group.group_id,
        status: NamespaceStatus::Active,
        config_version: 1,
        vaults_live: 0,
        created_at: now_ts(),
        deleted_at: None,
    };
    group.namespaces += 1;
    let ops = vec![
        reg::set_counter(reg::KEY_SEQ_NAMESPACE, id + 1),
        reg::set(reg::ns_key(id), reg::encode(&record)),
        reg::set_if_absent(reg::ns_name_key(&name), id.to_le_bytes().to_vec()),
        reg::set(reg::group_key(group.group_id), reg::encode(&group)),
    ];
    match system_tx(shard, ops).await? {
        WriteResult::Success(_) => {}
        WriteResult::Error(e) if e.code == WriteErrorCode::KeyExists => {
            return Err(status(StatusCode::AlreadyExists, format!("namespace {name:?} already exists")));
        }
        WriteResult::Error(e) => {
            return Err(Status::internal(format!("registry write failed: {:?} {}", e.code, e.message)));
        }
    }
    let scope = ScopeKey { namespace_id: NamespaceId(id), vault_id: VaultId(0) };
    scope_command(
        shard,
        GroupId(group.group_id),
        ScopeCommand::Create { scope, retention: RetentionPolicy::default() },
    )
    .await?;
    Ok(Response::CreateNamespace { namespace_id: id, group_id: group.group_id })
}

async fn delete_namespace(shard: &Shard, namespace_id: i64) -> Result<Response, Status> {
    if namespace_id == 0 {
        return Err(status(StatusCode::PermissionDenied, "the _system namespace cannot be deleted"));
    }
    let _serial = shard.admin_lock.lock().await;
    let mut record = live_namespace(shard, namespace_id)?;
    if record.vaults_live > 0 {
        return Err(status(
            StatusCode::FailedPrecondition,
            format!("namespace {namespace_id} still has {} non-deleted vaults", record.vaults_live),
        ));
    }
    let deleted_at = now_ts();
    let mut group = with_system(shard, |s| group_record(s, record.group_id))?
        .ok_or_else(|| Status::internal(format!("group {} has no registry record", record.group_id)))?;
    group.namespaces = group.namespaces.saturating_sub(1);
    record.status = NamespaceStatus::Deleted;
    record.deleted_at = Some(deleted_at);
    record.config_version += 1;
    let ops = vec![
        reg::set(reg::ns_key(namespace_id), reg::encode(&record)),
        Operation::DeleteEntity { key: reg::ns_name_key(&record.name) },
        reg::set(reg::group_key(group.group_id), reg::encode(&group)),
    ];
    system_tx_ok(shard, ops).await?;
    let scope = ScopeKey { namespace_id: NamespaceId(namespace_id), vault_id: VaultId(0) };
    scope_command(
        shard,
        GroupId(record.group_id),
        ScopeCommand::SetStatus { scope, status: VaultStatus::Deleted },
    )
    .await?;
    Ok(Response::DeleteNamespace { deleted_at })
}

/// `GetSystemState` (SPEC §5.5 item 40) from this node's replica of `_system`.
fn system_state(shard: &Shard, if_version_greater_than: u64) -> Result<Response, Status> {
    let (version, members) = crate::admin::peer_cache::members_seen(shard)?;
    if version <= if_version_greater_than {
        return Ok(Response::GetSystemState { version, nodes: Vec::new(), namespaces: Vec::new() });
    }
    let nodes = members
        .into_iter()
        .map(|m| ledger_wire::messages::SystemNode {
            node_id: m.node_id,
            addresses: m.ip.map(|ip| vec![ip.to_string()]).unwrap_or_else(|| vec![m.address.clone()]),
            port: m.port,
            capabilities: ledger_wire::messages::NodeCapabilities {
                can_lead: m.voter,
                max_vaults: 0,
                cores: if m.node_id == shard.config.node_id { shard.cores.len() as u16 } else { 0 },
            },
            last_heartbeat: m.last_seen,
        })
        .collect();
    let mut namespaces = vec![system_namespace_info(shard)?];
    for record in with_system(shard, reg::namespaces)? {
        namespaces.push(namespace_info(shard, &record)?);
    }
    Ok(Response::GetSystemState { version, nodes, namespaces })
}

fn namespace_info(shard: &Shard, record: &NamespaceRecord) -> Result<NamespaceInfo, Status> {
    let group = with_system(shard, |s| group_record(s, record.group_id))?;
    let leader_hint = shard.group(GroupId(record.group_id)).and_then(|g| g.leader_hint()).map(|(id, _)| id);
    Ok(NamespaceInfo {
        namespace_id: record.namespace_id,
        name: record.name.clone(),
        group_id: record.group_id,
        member_nodes: group.map(|g| g.members).unwrap_or_default(),
        leader_hint,
        config_version: record.config_version,
        status: record.status,
    })
}

fn system_namespace_info(shard: &Shard) -> Result<NamespaceInfo, Status> {
    let group = system_group(shard)?;
    let metrics = group.raft.metrics().borrow().clone();
    Ok(NamespaceInfo {
        namespace_id: 0,
        name: "_system".into(),
        group_id: 0,
        member_nodes: metrics.membership_config.membership().voter_ids().collect(),
        leader_hint: metrics.current_leader,
        config_version: metrics.last_applied.map(|l| l.index).unwrap_or(0),
        status: NamespaceStatus::Active,
    })
}

fn get_namespace(shard: &Shard, by: NamespaceSelector) -> Result<NamespaceInfo, Status> {
    let record = match by {
        NamespaceSelector::Id(0) => return system_namespace_info(shard),
        NamespaceSelector::Name(name) if name == "_system" => return system_namespace_info(shard),
        NamespaceSelector::Id(id) => {
            with_system(shard, |s| reg::record::<NamespaceRecord>(s, &reg::ns_key(id)))?
                .ok_or_else(|| Status::not_found(format!("namespace {id} not found")))?
        }
        NamespaceSelector::Name(name) => with_system(shard, |s| reg::namespace_by_name(s, &name))?
            .ok_or_else(|| Status::not_found(format!("namespace {name:?} not found")))?,
    };
    namespace_info(shard, &record)
}

/// ListNamespaces: every user namespace (deleted ones too, with their status), ascending by id,
/// paginated with a §5.7 token whose namespace and vault are 0 and whose key is the last id.
fn list_namespaces(shard: &Shard, token: &str, requested: u32) -> Result<Response, Status> {
    let key = shard.token_key.get().ok_or_else(|| Status::unavailable("page token key not loaded yet"))?;
    let qh = query_hash(&NamespacesFilter { kind: 0 });
    let after = if token.is_empty() {
        None
    } else {
        let t = PageToken::decode(token, &key)?;
        // The registry is not a client scope: pages are served from current state.
        t.check(0, 0, qh, None)?;
        let id: [u8; 8] = t.last_key.as_slice().try_into().map_err(|_| Status::invalid(MSG_INVALID))?;
        Some(i64::from_be_bytes(id))
    };
    let limit = page_size(requested);
    let records = with_system(shard, reg::namespaces)?;
    let mut page: Vec<&NamespaceRecord> =
        records.iter().filter(|r| after.is_none_or(|a| r.namespace_id > a)).take(limit + 1).collect();
    let more = page.len() > limit;
    page.truncate(limit);
    let next_page_token = match (more, page.last()) {
        (true, Some(last)) => PageToken {
            namespace_id: 0,
            vault_id: 0,
            last_key: last.namespace_id.to_be_bytes().to_vec(),
            at_height: 0,
            query_hash: qh,
        }
        .encode(&key),
        _ => String::new(),
    };
    let namespaces = page.into_iter().map(|r| namespace_info(shard, r)).collect::<Result<Vec<_>, _>>()?;
    Ok(Response::ListNamespaces { namespaces, next_page_token })
}

async fn create_vault(
    shard: &Shard,
    namespace_id: i64,
    retention: RetentionPolicy,
) -> Result<Response, Status> {
    if namespace_id == 0 {
        return Err(status(StatusCode::PermissionDenied, "the _system namespace has no vaults"));
    }
    let _serial = shard.admin_lock.lock().await;
    let mut record = live_namespace(shard, namespace_id)?;
    let (id, group) =
        with_system(shard, |s| (reg::counter(s, reg::KEY_SEQ_VAULT), group_record(s, record.group_id)))?;
    let mut group =
        group.ok_or_else(|| Status::internal(format!("group {} has no registry record", record.group_id)))?;
    record.vaults_live += 1;
    record.config_version += 1;
    group.vaults += 1;
    let vault = VaultRecord {
        vault_id: id,
        namespace_id,
        group_id: record.group_id,
        status: VaultStatus::Active,
        retention,
    };
    let ops = vec![
        reg::set_counter(reg::KEY_SEQ_VAULT, id + 1),
        reg::set(reg::ns_key(namespace_id), reg::encode(&record)),
        reg::set(reg::group_key(group.group_id), reg::encode(&group)),
        reg::set(reg::vault_key(id), reg::encode(&vault)),
    ];
    system_tx_ok(shard, ops).await?;
    let scope = ScopeKey { namespace_id: NamespaceId(namespace_id), vault_id: VaultId(id) };
    let genesis =
        scope_command(shard, GroupId(record.group_id), ScopeCommand::Create { scope, retention }).await?;
    Ok(Response::CreateVault { vault_id: id, genesis })
}

async fn delete_vault(shard: &Shard, namespace_id: i64, vault_id: i64) -> Result<Response, Status> {
    if vault_id == 0 {
        return Err(Status::invalid("DeleteVault needs a vault_id; delete the namespace instead"));
    }
    let _serial = shard.admin_lock.lock().await;
    let mut record = live_namespace(shard, namespace_id)?;
    let group_id = GroupId(record.group_id);
    let scope = ScopeKey { namespace_id: NamespaceId(namespace_id), vault_id: VaultId(vault_id) };
    let mut vault = with_system(shard, |s| reg::record::<VaultRecord>(s, &reg::vault_key(vault_id)))?
        .filter(|v| v.namespace_id == namespace_id && v.status != VaultStatus::Deleted)
        .ok_or_else(|| {
            Status::not_found(format!("vault {vault_id} not found in namespace {namespace_id}"))
        })?;
    vault.status = VaultStatus::Deleted;
    let mut group = with_system(shard, |s| group_record(s, record.group_id))?
        .ok_or_else(|| Status::internal(format!("group {} has no registry record", record.group_id)))?;
    record.vaults_live = record.vaults_live.saturating_sub(1);
    record.config_version += 1;
    group.vaults = group.vaults.saturating_sub(1);
    let ops = vec![
        reg::set(reg::ns_key(namespace_id), reg::encode(&record)),
        reg::set(reg::group_key(group.group_id), reg::encode(&group)),
        reg::set(reg::vault_key(vault_id), reg::encode(&vault)),
    ];
    let deleted_at = now_ts();
    system_tx_ok(shard, ops).await?;
    match scope_command(shard, group_id, ScopeCommand::SetStatus { scope, status: VaultStatus::Deleted })
        .await
    {
        // A scope whose creation never ran has nothing to mark; the registry already says Deleted.
        Err(e) if e.code == StatusCode::NotFound => {}
        other => {
            other?;
        }
    }
    Ok(Response::DeleteVault { deleted_at })
}

/// Asks every core (this one included) and collects the answers.
pub(crate) async fn fan_out<T>(shard: &Shard, make: impl Fn(oneshot::Sender<T>) -> InternalMsg) -> Vec<T> {
    let mut waits = Vec::new();
    for inbox in &shard.cores {
        let (tx, rx) = oneshot::channel();
        if inbox.send_async(ShardMsg::Internal(make(tx))).await.is_ok() {
            waits.push(rx);
        }
    }
    let mut out = Vec::new();
    for rx in waits {
        if let Ok(v) = rx.await {
            out.push(v);
        }
    }
    out
}

async fn list_vaults(shard: &Shard) -> Vec<VaultInfo> {
    let mut vaults: Vec<VaultInfo> =
        fan_out(shard, |reply| InternalMsg::ListVaults { reply }).await.into_iter().flatten().collect();
    // The vaults of groups this node is not a member of (SPEC §10.5) are described by their
    // members; one that cannot be reached right now is left out.
    let me = shard.config.node_id;
    let elsewhere: Vec<(GroupId, ScopeKey)> = with_system(shard, |s| {
        let outside = reg::groups_without(s, me);
        reg::vaults(s)
            .into_iter()
            .filter(|v| outside.contains(&v.group_id))
            .map(|v| {
                let scope = ScopeKey::new(NamespaceId(v.namespace_id), Some(VaultId(v.vault_id)));
                (GroupId(v.group_id), scope)
            })
            .collect()
    })
    .unwrap_or_default();
    for (group, scope) in elsewhere {
        match scope_info(shard, group, scope).await {
            Ok(info) => vaults.push(info),
            Err(e) => crate::event!(warn, "vault_not_described", scope = %scope, error = %e),
        }
    }
    vaults.sort_by_key(|v| (v.namespace_id, v.vault_id));
    vaults
}

fn node_info(shard: &Shard) -> Response {
    let (is_cluster_member, term) = match shard.group(GroupId(0)) {
        Some(g) => {
            let m = g.raft.metrics().borrow().clone();
            (m.membership_config.membership().get_node(&shard.config.node_id).is_some(), m.current_term)
        }
        None => (false, 0),
    };
    Response::GetNodeInfo {
        node_id: shard.config.node_id,
        address: shard.config.advertise_addr.clone(),
        is_cluster_member,
        term,
        cores: shard.cores.len() as u16,
        groups: shard.placement.keys().map(|g| g.0).collect(),
        draining: shard.is_draining(),
        data_groups: shard.placement.keys().filter(|g| g.0 != 0).count() as u32,
        replication_factor: cluster_replication_factor(shard).unwrap_or(shard.config.replication_factor),
    }
}

/// The cluster's replication factor as `_system` records it (`None` before it is known here).
pub(crate) fn cluster_replication_factor(shard: &Shard) -> Option<u32> {
    with_system(shard, |s| s.get_entity(reg::KEY_REPLICATION_FACTOR).map(|_| reg::replication_factor(s)))
        .ok()
        .flatten()
}

/// SPEC §11.5 node level: Unavailable if a hosted group has no leader, Degraded if a local
/// scope is not Healthy, else Healthy; `details` names the offenders.
async fn node_health(shard: &Shard) -> Response {
    let reports: Vec<CoreHealth> = fan_out(shard, |reply| InternalMsg::Health { reply }).await;
    let mut unavailable = Vec::new();
    let mut degraded = Vec::new();
    for r in reports {
        unavailable.extend(r.unavailable);
        degraded.extend(r.degraded);
    }
    let (status, message) = if !unavailable.is_empty() {
        (HealthStatus::Unavailable, format!("{} group(s) failed or without a leader", unavailable.len()))
    } else if !degraded.is_empty() {
        (HealthStatus::Degraded, format!("{} scope(s) not healthy", degraded.len()))
    } else {
        (HealthStatus::Healthy, "ok".to_string())
    };
    unavailable.extend(degraded);
    Response::HealthCheck { status, message, details: unavailable }
}

/// Core 0 at start: create `_system` (once) and the registry's bootstrap records — the
/// page-token key, one `group:{id}` per data group of this node, this node's `node:{id}` and the
/// group counter — in one `system:admin` transaction. Only the group-0 leader does this.
pub async fn bootstrap(shard: &Shard) -> Result<(), ShardError> {
    let fail = |what: &str, s: Status| ShardError::Bootstrap(format!("{what}: {s}"));
    let group = system_group(shard).map_err(|s| fail("group 0", s))?;
    if !group.is_leader() {
        // A follower's registry arrives through replication; the key is loaded if it has it.
        shard.token_key.set(with_system(shard, page_token_key).ok().flatten());
        return Ok(());
    }
    let exists = group.data.borrow().scopes.contains_key(&SYSTEM_SCOPE);
    if !exists {
        group
            .scope_command(ScopeCommand::Create {
                scope: SYSTEM_SCOPE,
                retention: RetentionPolicy::default(),
            })
            .await
            .map_err(|s| fail("creating _system", s))?;
    }
    // Every initial member (SPEC §10.2), or this node alone.
    let members: std::collections::BTreeMap<u64, String> = match &shard.config.cluster {
        Some(plan) => plan.members.clone(),
        None => [(shard.config.node_id, shard.config.advertise_addr.clone())].into(),
    };
    // Each data group's initial voters (SPEC §10.5): the plan's choice, or this node alone.
    let group_members = |g: GroupId| -> Vec<u64> {
        match &shard.config.cluster {
            Some(plan) if !plan.members.is_empty() => {
                let mut ids: Vec<u64> = plan.members_of(g).into_iter().map(|(id, _)| id).collect();
                ids.sort_unstable();
                ids
            }
            _ => members.keys().copied().collect(),
        }
    };
    let replication_factor = shard.config.cluster.as_ref().map_or(0, |plan| plan.replication_factor);
    let ops = with_system(shard, |s| {
        let mut ops = Vec::new();
        if s.get_entity(reg::KEY_PAGE_TOKEN).is_none() {
            ops.push(reg::set_if_absent(reg::KEY_PAGE_TOKEN, rand::random::<[u8; 32]>().to_vec()));
        }
        let mut max_group = 0u32;
        for (&g, &core) in shard.placement.iter() {
            max_group = max_group.max(g.0);
            if g.0 == 0 || group_record(s, g.0).is_some() {
                continue;
            }
            let rec = GroupRecord {
                group_id: g.0,
                members: group_members(g),
                core_hint: core.0,
                namespaces: 0,
                vaults: 0,
            };
            ops.push(reg::set(reg::group_key(g.0), reg::encode(&rec)));
        }
        if s.get_entity(reg::KEY_REPLICATION_FACTOR).is_none() {
            let value = i64::from(replication_factor).to_le_bytes().to_vec();
            ops.push(reg::set_if_absent(reg::KEY_REPLICATION_FACTOR, value));
        }
        if reg::counter(s, reg::KEY_SEQ_GROUP) <= i64::from(max_group) {
            ops.push(reg::set_counter(reg::KEY_SEQ_GROUP, i64::from(max_group) + 1));
        }
        for (&node_id, address) in &members {
            let node = NodeRecord { node_id, address: address.clone() };
            if reg::record::<NodeRecord>(s, &reg::node_key(node.node_id)).as_ref() != Some(&node) {
                ops.push(reg::set(reg::node_key(node.node_id), reg::encode(&node)));
            }
        }
        ops
    })
    .map_err(|s| fail("reading _system", s))?;
    if !ops.is_empty() {
        match system_tx(shard, ops).await.map_err(|s| fail("registry bootstrap", s))? {
            WriteResult::Success(_) => {}
            WriteResult::Error(e) => {
                return Err(ShardError::Bootstrap(format!("registry bootstrap: {}", e.message)))
            }
        }
    }
    let key = with_system(shard, page_token_key).map_err(|s| fail("reading the page token key", s))?;
    shard.token_key.set(key);
    Ok(())
}

fn page_token_key(system: &ScopeState) -> Option<[u8; 32]> {
    system.get_entity(reg::KEY_PAGE_TOKEN).and_then(|r| <[u8; 32]>::try_from(r.value.as_slice()).ok())
}

/// Core 0, group-0 leader, after start: makes every data group agree with the registry. A
/// registry write commits before its scope command runs, so a crash or a lost leadership in
/// between leaves a namespace or vault without its scope (or a deleted one still Active); this
/// re-issues the missing idempotent `CreateScope` / `SetScopeStatus` for groups hosted here.
pub async fn reconcile(shard: Rc<Shard>) {
    let _serial = shard.admin_lock.lock().await;
    let me = shard.config.node_id;
    let Ok((namespaces, vaults, outside)) =
        with_system(&shard, |s| (reg::namespaces(s), reg::vaults(s), reg::groups_without(s, me)))
    else {
        return;
    };
    let mut wanted: Vec<(GroupId, ScopeKey, VaultStatus, RetentionPolicy)> = Vec::new();
    for n in &namespaces {
        let status = match n.status {
            NamespaceStatus::Active => VaultStatus::Active,
            NamespaceStatus::Deleted => VaultStatus::Deleted,
        };
        let key = ScopeKey { namespace_id: NamespaceId(n.namespace_id), vault_id: VaultId(0) };
        wanted.push((GroupId(n.group_id), key, status, RetentionPolicy::default()));
    }
    for v in &vaults {
        let key = ScopeKey { namespace_id: NamespaceId(v.namespace_id), vault_id: VaultId(v.vault_id) };
        wanted.push((GroupId(v.group_id), key, v.status, v.retention));
    }
    let present: std::collections::BTreeMap<ScopeKey, VaultStatus> =
        fan_out(&shard, |reply| InternalMsg::ScopeStatuses { reply }).await.into_iter().flatten().collect();
    for (group, scope, status, retention) in wanted {
        if !shard.placement.contains_key(&group) {
            continue;
        }
        if outside.contains(&group.0) {
            // Not a member (SPEC §10.5): its scopes are not here to compare, so the idempotent
            // command goes to the group's leader, where it changes nothing if nothing is missing.
            let mut commands = vec![ScopeCommand::SetStatus { scope, status }];
            if status == VaultStatus::Active {
                commands.insert(0, ScopeCommand::Create { scope, retention });
            }
            for command in commands {
                match scope_command(&shard, group, command).await {
                    Ok(_) => {}
                    // A scope deleted before it was ever created: nothing to mark.
                    Err(e) if e.code == StatusCode::NotFound => {}
                    Err(e) => {
                        crate::event!(warn, "reconcile_failed", scope = %scope, action = "remote", error = %e)
                    }
                }
            }
            continue;
        }
        let have = present.get(&scope).copied();
        if have.is_none() && status == VaultStatus::Active {
            if let Err(e) = scope_command(&shard, group, ScopeCommand::Create { scope, retention }).await {
                crate::event!(warn, "reconcile_failed", scope = %scope, action = "create", error = %e);
            }
        }
        if have.is_some_and(|h| h != status) {
            if let Err(e) = scope_command(&shard, group, ScopeCommand::SetStatus { scope, status }).await {
                crate::event!(warn, "reconcile_failed", scope = %scope, action = "set_status", error = %e);
            }
        }
    }
}

/// Each data group's members with their addresses, as `_system` lists them.
fn group_members(system: &ScopeState) -> GroupMembers {
    let addresses = reg::node_addresses(system);
    reg::groups(system)
        .into_iter()
        .filter(|g| g.group_id != 0)
        .map(|g| {
            let members =
                g.members.iter().filter_map(|id| addresses.get(id).map(|addr| (*id, addr.clone()))).collect();
            (GroupId(g.group_id), members)
        })
        .collect()
}

/// Sends every core the data groups' members whenever `_system` changed them (`sent`: the
/// registry's applied index and the list last sent), so that a core outside a group knows where
/// to send its requests (SPEC §10.5).
fn send_group_members(shard: &Shard, sent: &mut Option<(u64, GroupMembers)>) {
    let Some(system) = shard.group(GroupId(0)) else { return };
    let applied = system.data.borrow().applied_index;
    if sent.as_ref().is_some_and(|(at, _)| *at == applied) {
        return;
    }
    let Ok(members) = with_system(shard, group_members) else { return };
    if sent.as_ref().is_some_and(|(_, last)| *last == members) {
        *sent = Some((applied, members));
        return;
    }
    let mut delivered = true;
    for (i, core) in shard.cores.iter().enumerate() {
        if i != shard.core.0 as usize {
            delivered &=
                core.try_send(ShardMsg::Internal(InternalMsg::GroupMembers(members.clone()))).is_ok();
        }
    }
    crate::admin::internal::set_group_members(shard, members.clone());
    // A full inbox: sent again at the next tick.
    *sent = delivered.then_some((applied, members));
}

/// How often (in keeper ticks) the `_system` leader looks for data groups short of members.
const REPLICAS_CHECK_TICKS: u32 = 10;

/// Core 0 of a cluster member, for the node's life: whenever this node leads `_system` in a new
/// term, it makes sure the registry's bootstrap records exist and reconciles the data groups
/// with the registry (what a single node does once at start); on every node it picks up the
/// page-token key once `_system` holds it and hands it to the other cores.
pub async fn registry_keeper(shard: Rc<Shard>) {
    let weak = Rc::downgrade(&shard);
    drop(shard);
    let mut kept_term = None;
    let mut members_sent: Option<(u64, GroupMembers)> = None;
    let mut ticks_since_replicas = 0u32;
    loop {
        {
            let Some(shard) = weak.upgrade() else { return };
            send_group_members(&shard, &mut members_sent);
            if shard.token_key.get().is_none() {
                if let Ok(Some(key)) = with_system(&shard, page_token_key) {
                    shard.token_key.set(Some(key));
                    for (i, other) in shard.cores.iter().enumerate() {
                        if i != shard.core.0 as usize {
                            let _ = other.try_send(ShardMsg::Internal(InternalMsg::PageTokenKey(key)));
                        }
                    }
                }
            }
            if let Ok(group) = system_group(&shard) {
                if group.stopped().is_some() {
                    return;
                }
                let term = group.raft.metrics().borrow().current_term;
                if group.is_leader() && kept_term != Some(term) {
                    match bootstrap(&shard).await {
                        Ok(()) => {
                            kept_term = Some(term);
                            reconcile(shard.clone()).await;
                        }
                        Err(e) => crate::event!(error, "registry_bootstrap_failed", term, error = %e),
                    }
                } else if group.is_leader() {
                    crate::admin::system_voters::keep(&shard).await;
                    ticks_since_replicas += 1;
                    if ticks_since_replicas >= REPLICAS_CHECK_TICKS {
                        ticks_since_replicas = 0;
                        crate::admin::replicas::keep(&shard).await;
                    }
                }
            }
        }
        glommio::timer::sleep(std::time::Duration::from_millis(crate::constants::REGISTRY_KEEPER_TICK_MS))
            .await;
    }
}
