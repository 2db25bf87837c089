//! Core-to-core calls that are not client requests (SPEC §10.9: cores share nothing and talk
//! only through their inboxes). Core 0 runs the registry (`admin`) and asks the core owning a
//! data group to create or change a scope there, to describe a scope, or to report its vaults
//! and health; it also hands out the cluster's page-token key.

// Errors travel as the wire `Status` (SPEC §4.5), built once at this edge; boxing it would
// only add an allocation to every error path.
#![allow(clippy::result_large_err)]

use crate::peer::forward::{self, Forwarded};
use crate::read::reads::{vault_info, TokenKey};
use crate::round::group::ScopeCommand;
use crate::shard::Shard;
use futures::channel::oneshot;
use ledger_core::types::{BlockHeader, GroupId, ScopeKey, VaultHealth, VaultStatus};
use ledger_wire::messages::{HealthStatus, Request, Response, Status, VaultInfo};
use ledger_wire::peer::{PeerRequest, PeerResponse, WireScopeCommand};
use std::rc::Rc;

/// What one core reports for the node-level health check (SPEC §11.5).
#[derive(Debug, Default)]
pub struct CoreHealth {
    /// Groups without a known leader (no reachable quorum from here).
    pub unavailable: Vec<(String, String)>,
    /// Scopes that are not Healthy.
    pub degraded: Vec<(String, String)>,
}

/// A scope-level health answer: status, message, details (SPEC §5.4).
pub type ScopeHealthReport = (HealthStatus, String, Vec<(String, String)>);

/// Work a unit test runs on a core (`InternalMsg::Test`).
#[cfg(test)]
pub type TestWork = Box<dyn FnOnce(&Rc<Shard>) + Send>;

pub enum InternalMsg {
    /// Propose a scope lifecycle command in a group this core owns; the reply carries the
    /// scope's metadata once the entry is applied.
    /// If this node does not lead the group, its leader proposes it (peer/forward.rs).
    ScopeCommand {
        group: GroupId,
        command: ScopeCommand,
        reply: oneshot::Sender<Result<BlockHeader, Status>>,
    },
    /// Describe one scope of a group this core owns.
    ScopeInfo { group: GroupId, scope: ScopeKey, reply: oneshot::Sender<Result<VaultInfo, Status>> },
    /// Every vault (not namespace scopes) of this core's groups.
    ListVaults { reply: oneshot::Sender<Vec<VaultInfo>> },
    /// Every scope of this core's groups with its status (registry reconciliation).
    ScopeStatuses { reply: oneshot::Sender<Vec<(ScopeKey, VaultStatus)>> },
    /// Node-level health of this core's groups and scopes.
    Health { reply: oneshot::Sender<CoreHealth> },
    /// Scope-level health (SPEC §5.4 with a scope).
    ScopeHealth { group: GroupId, scope: ScopeKey, reply: oneshot::Sender<Result<ScopeHealthReport, Status>> },
    /// Core 0 → every core: the cluster's page-token key (SPEC §5.7).
    PageTokenKey(TokenKey),
    /// Core 0 → every core: each data group's members as `_system` lists them, for the groups
    /// this node is outside of (SPEC §10.5, `peer/outside.rs`).
    GroupMembers(crate::peer::outside::GroupMembers),
    /// Core 0 (the `_system` leader) → the core owning `group`: make one membership change of it
    /// (here if this node leads it, else on its leader); the reply carries its voters afterwards.
    ChangeMembership {
        group: GroupId,
        change: ledger_wire::peer::MembershipChange,
        reply: oneshot::Sender<Result<Vec<u64>, Status>>,
    },
    /// Any core → core 0: send me the page-token key.
    GetPageTokenKey { reply: oneshot::Sender<Option<TokenKey>> },
    /// Raft status of this core's groups (`GetGroupStatus`).
    GroupStatus { reply: oneshot::Sender<Vec<ledger_wire::messages::GroupStatusInfo>> },
    /// One group's replication lag, from its leader (`LagReport`).
    GroupLag { group: GroupId, reply: oneshot::Sender<Result<ledger_wire::messages::GroupLag, Status>> },
    /// Hand the leadership of a group this node leads to `successor` (`TransferLeadership`);
    /// the reply carries the leader afterwards.
    HandOver { group: GroupId, successor: u64, reply: oneshot::Sender<Result<u64, Status>> },
    /// `ForceGc` without a scope: one GC cycle of every group of this core that this node
    /// leads (`None`: it leads none of them).
    ForceGc { reply: oneshot::Sender<Option<crate::maintenance::gc::GcOutcome>> },
    /// Unit tests: run this on the core (it may spawn work there).
    #[cfg(test)]
    Test(TestWork),
}

/// Handles one internal message; never blocks the inbox loop (async work is spawned).
pub fn handle(shard: &Rc<Shard>, msg: InternalMsg) {
    match msg {
        #[cfg(test)]
        InternalMsg::Test(f) => f(shard),
        InternalMsg::ForceGc { reply } => spawn_force_gc(shard, reply),
        InternalMsg::ScopeCommand { group, command, reply } => {
            spawn_scope_command(shard, group, command, reply)
        }
        InternalMsg::ScopeInfo { group, scope, reply } => match shard.group(group).filter(|g| g.is_outside())
        {
            Some(g) => {
                let request =
                    Request::GetVault { namespace_id: scope.namespace_id.0, vault_id: scope.vault_id.0 };
                spawn_at_members(shard, g, request, reply, |response| match response {
                    Response::GetVault(info) => Some(info),
                    _ => None,
                })
            }
            None => {
                let _ = reply.send(scope_info(shard, group, scope));
            }
        },
        InternalMsg::ListVaults { reply } => {
            let _ = reply.send(vault_list(shard));
        }
        InternalMsg::ScopeStatuses { reply } => {
            let _ = reply.send(scope_statuses(shard));
        }
        InternalMsg::Health { reply } => {
            let _ = reply.send(core_health(shard));
        }
        InternalMsg::ScopeHealth { group, scope, reply } => match shard.group(group) {
            Some(g) if g.is_outside() => {
                let request = Request::HealthCheck {
                    namespace_id: Some(scope.namespace_id.0),
                    vault_id: (!scope.is_namespace_scope()).then_some(scope.vault_id.0),
                };
                spawn_at_members(shard, g, request, reply, |response| match response {
                    Response::HealthCheck { status, message, details } => Some((status, message, details)),
                    _ => None,
                })
            }
            Some(g) => {
                let _ = reply.send(scope_health(&g, scope));
            }
            None => {
                let _ = reply
                    .send(Err(Status::unavailable(format!("group {group} is not on core {}", shard.core))));
            }
        },
        InternalMsg::PageTokenKey(key) => shard.token_key.set(Some(key)),
        InternalMsg::GroupMembers(members) => set_group_members(shard, members),
        InternalMsg::ChangeMembership { group, change, reply } => {
            spawn_change_membership(shard, group, change, reply)
        }
        InternalMsg::GetPageTokenKey { reply } => {
            let _ = reply.send(shard.token_key.get());
        }
        InternalMsg::GroupStatus { reply } => {
            let _ = reply.send(group_statuses(shard));
        }
        InternalMsg::GroupLag { group, reply } => spawn_group_lag(shard, group, reply),
        InternalMsg::HandOver { group, successor, reply } => spawn_hand_over(shard, group, successor, reply),
    }
}

/// Asks the members of `group`, which this node is outside of (SPEC §10.5), to answer
/// `request`, in a spawned task, and replies with what `pick` takes from their answer.
fn spawn_at_members<T: 'static>(
    shard: &Rc<Shard>,
    group: Rc<crate::round::group::Group>,
    request: Request,
    reply: oneshot::Sender<Result<T, Status>>,
    pick: impl FnOnce(Response) -> Option<T> + 'static,
) {
    let shard = shard.clone();
    glommio::spawn_local(async move {
        let answer = match forward::to_leader(&shard.peers, &group, request, shard.config.forward_timeout)
            .await
        {
            Forwarded::Answer(Ok(response)) => pick(response)
                .ok_or_else(|| Status::internal(format!("a member of group {} answered oddly", group.id))),
            Forwarded::Answer(Err(status)) => Err(status),
            Forwarded::Local => Err(Status::unavailable(format!("group {} has no member here", group.id))),
        };
        let _ = reply.send(answer);
    })
    .detach();
}

/// Hands each of this core's groups its members as `_system` lists them (used while this node
/// is outside a group).
pub fn set_group_members(shard: &Shard, members: crate::peer::outside::GroupMembers) {
    for (group, list) in &members {
        if let Some(g) = shard.group(*group) {
            g.outside.borrow_mut().set_members(list.clone());
        }
    }
    // Kept for a group that opens again later (a reopen, a released copy, D92): its new
    // instance starts with the list instead of waiting for the registry's next change.
    *shard.group_members.borrow_mut() = members;
}

/// Runs one GC cycle of every group of this core that this node leads, in a spawned task, and
/// replies with its outcome (`None`: it leads none of them).
fn spawn_force_gc(shard: &Rc<Shard>, reply: oneshot::Sender<Option<crate::maintenance::gc::GcOutcome>>) {
    let groups = shard.group_list();
    glommio::spawn_local(async move {
        let _ = reply.send(crate::maintenance::gc::cycle_led_groups(groups).await);
    })
    .detach();
}

/// Proposes a scope command of `group` in a spawned task (here or on its leader) and replies
/// with the scope's genesis header; replies Unavailable at once if the group is not on this core.
fn spawn_scope_command(
    shard: &Rc<Shard>,
    group: GroupId,
    command: ScopeCommand,
    reply: oneshot::Sender<Result<BlockHeader, Status>>,
) {
    match shard.group(group) {
        Some(g) => {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                let _ = reply.send(scope_command_at_leader(&shard, &g, command).await);
            })
            .detach();
        }
        None => {
            let _ =
                reply.send(Err(Status::unavailable(format!("group {group} is not on core {}", shard.core))));
        }
    }
}

/// Describes `scope` of `group`, which must be on this core.
fn scope_info(shard: &Shard, group: GroupId, scope: ScopeKey) -> Result<VaultInfo, Status> {
    match shard.group(group) {
        Some(g) => {
            let data = g.data.borrow();
            match data.scopes.get(&scope) {
                Some(s) => Ok(vault_info(&g, s)),
                None => Err(Status::not_found(format!(
                    "vault {} not found in namespace {}",
                    scope.vault_id, scope.namespace_id
                ))),
            }
        }
        None => Err(Status::unavailable(format!("group {group} is not on core {}", shard.core))),
    }
}

/// Every vault (not namespace scopes) of this core's groups.
fn vault_list(shard: &Shard) -> Vec<VaultInfo> {
    let mut out = Vec::new();
    for g in shard.group_list().into_iter().filter(|g| !g.is_outside()) {
        let data = g.data.borrow();
        out.extend(
            data.scopes.values().filter(|s| !s.meta.key.is_namespace_scope()).map(|s| vault_info(&g, s)),
        );
    }
    out
}

/// Every scope of this core's groups with its status (for the registry's reconciliation).
fn scope_statuses(shard: &Shard) -> Vec<(ScopeKey, VaultStatus)> {
    let mut out = Vec::new();
    for g in shard.group_list().into_iter().filter(|g| !g.is_outside()) {
        out.extend(g.data.borrow().scopes.values().map(|s| (s.meta.key, s.meta.status)));
    }
    out
}

/// This core's part of the node-level health check: groups that failed to open, wait to reopen,
/// stopped or have no leader, and scopes that are not Healthy.
fn core_health(shard: &Shard) -> CoreHealth {
    let mut health = CoreHealth::default();
    for (id, reason) in shard.failed.borrow().iter() {
        health.unavailable.push((format!("group:{id}"), reason.clone()));
    }
    for (id, cause) in shard.reopening.borrow().iter() {
        health.unavailable.push((
            format!("group:{id}"),
            format!("stopped on a storage error, reopens once its disk takes writes again: {cause}"),
        ));
    }
    // A group this node is outside of (SPEC §10.5) is its members' to report.
    for g in shard.group_list().into_iter().filter(|g| !g.is_outside()) {
        let id = g.id;
        if shard.reopening.borrow().contains_key(&id) {
            continue;
        }
        if let Some(fault) = &g.data.borrow().fault {
            health.unavailable.push((format!("group:{id}"), format!("failed: {fault}")));
            continue;
        }
        if let Some(fatal) = g.stopped() {
            health.unavailable.push((format!("group:{id}"), format!("stopped: {fatal}")));
            continue;
        }
        if g.leader_hint().is_none() {
            health.unavailable.push((format!("group:{id}"), "no leader".into()));
        }
        let data = g.data.borrow();
        for s in data.scopes.values() {
            if s.meta.health != VaultHealth::Healthy {
                health.degraded.push((format!("scope:{}", s.meta.key), format!("{:?}", s.meta.health)));
            }
        }
    }
    health
}

/// Makes one membership change of `group` in a spawned task (here if this node leads it, else
/// on its leader) and replies with its voters afterwards; replies Unavailable at once if the
/// group is not on this core.
fn spawn_change_membership(
    shard: &Rc<Shard>,
    group: GroupId,
    change: ledger_wire::peer::MembershipChange,
    reply: oneshot::Sender<Result<Vec<u64>, Status>>,
) {
    match shard.group(group) {
        Some(g) => {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                let _ = reply.send(crate::admin::membership::change_anywhere(&shard, &g, change).await);
            })
            .detach();
        }
        None => {
            let _ =
                reply.send(Err(Status::unavailable(format!("group {group} is not on core {}", shard.core))));
        }
    }
}

/// Raft status of this core's groups, the ones that failed to open included.
fn group_statuses(shard: &Shard) -> Vec<ledger_wire::messages::GroupStatusInfo> {
    let mut out: Vec<_> = shard
        .group_list()
        .iter()
        .filter(|g| !g.is_outside())
        .map(|g| crate::ops::cluster::group_status(shard, g))
        .collect();
    for (id, reason) in shard.failed.borrow().iter() {
        out.push(crate::ops::cluster::failed_group_status(*id, reason));
    }
    out
}

/// Asks `group`'s leader for its replication lag in a spawned task and replies with it; replies
/// Unavailable at once if the group is not on this core.
fn spawn_group_lag(
    shard: &Rc<Shard>,
    group: GroupId,
    reply: oneshot::Sender<Result<ledger_wire::messages::GroupLag, Status>>,
) {
    match shard.group(group) {
        Some(g) => {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                let _ = reply.send(crate::ops::cluster::lag_at_leader(&shard, &g).await);
            })
            .detach();
        }
        None => {
            let _ =
                reply.send(Err(Status::unavailable(format!("group {group} is not on core {}", shard.core))));
        }
    }
}

/// Hands the leadership of `group` to `successor` in a spawned task and replies with the leader
/// afterwards; replies Unavailable at once if the group is not on this core.
fn spawn_hand_over(
    shard: &Rc<Shard>,
    group: GroupId,
    successor: u64,
    reply: oneshot::Sender<Result<u64, Status>>,
) {
    match shard.group(group) {
        Some(g) => {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                let _ = reply.send(crate::ops::leadership::hand_over(&shard, &g, successor).await);
            })
            .detach();
        }
        None => {
            let _ =
                reply.send(Err(Status::unavailable(format!("group {group} is not on core {}", shard.core))));
        }
    }
}

/// Proposes a scope command here if this node leads the group, else on its leader.
async fn scope_command_at_leader(
    shard: &Shard,
    group: &crate::round::group::Group,
    command: ScopeCommand,
) -> Result<BlockHeader, Status> {
    if shard.config.cluster.is_none() || group.is_leader() {
        return group.scope_command(command).await.map(|meta| meta.genesis);
    }
    let wire = match &command {
        ScopeCommand::Create { scope, retention } => {
            WireScopeCommand::Create { scope: *scope, retention: *retention }
        }
        ScopeCommand::SetStatus { scope, status } => {
            WireScopeCommand::SetStatus { scope: *scope, status: *status }
        }
    };
    let request = Request::Peer(Box::new(PeerRequest::ScopeCommand { group_id: group.id.0, command: wire }));
    match forward::to_leader(&shard.peers, group, request, shard.config.forward_timeout).await {
        Forwarded::Answer(Ok(Response::Peer(PeerResponse::ScopeCommand { genesis }))) => Ok(genesis),
        Forwarded::Answer(Ok(_)) => Err(Status::internal("the group leader answered a scope command oddly")),
        Forwarded::Answer(Err(status)) => Err(status),
        Forwarded::Local => group.scope_command(command).await.map(|meta| meta.genesis),
    }
}

fn scope_health(g: &crate::round::group::Group, scope: ScopeKey) -> Result<ScopeHealthReport, Status> {
    let data = g.data.borrow();
    let s = data.scopes.get(&scope).ok_or_else(|| Status::not_found(format!("scope {scope} not found")))?;
    let mut details =
        vec![("group".to_string(), g.id.to_string()), ("height".to_string(), s.meta.height.to_string())];
    if g.leader_hint().is_none() {
        details.push(("leader".into(), "none".into()));
        return Ok((HealthStatus::Unavailable, format!("group {} has no leader", g.id), details));
    }
    if s.meta.health != VaultHealth::Healthy {
        details.push(("health".into(), format!("{:?}", s.meta.health)));
        return Ok((HealthStatus::Degraded, format!("scope {scope} is not healthy"), details));
    }
    Ok((HealthStatus::Healthy, "ok".into(), details))
}
