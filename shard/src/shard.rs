//! The owner struct of a core shard and its inbox loop (SPEC §8.1, §10.9). The loop never
//! blocks: reads are answered inline from the group's applied state (linearizable ones after a
//! spawned read-index check), writes are validated and queued to the group's block builder, and
//! admin work runs in spawned tasks. On core 0 it also creates `_system` and the registry's
//! bootstrap records before reporting ready.

// Errors travel as the wire `Status` (SPEC §4.5), built once at this edge; boxing it would
// only add an allocation to every error path.
#![allow(clippy::result_large_err)]

use crate::admin;
use crate::admin::internal::{self, InternalMsg};
use crate::peer::forward::{self, Forwarded};
use crate::peer::pool::PeerPool;
use crate::read::reads::{self, TokenKey};
use crate::round::group::{Group, PendingTx, Waiter, IDEM_CACHE_PER_CLIENT_MAX};
use crate::round::idem_cache::IdemCache;
use crate::round::rate_limit::{retry_after_ms, RateLimiter};
use crate::{config::ShardConfig, error::ShardError, msg::Caller, msg::ShardMsg, reply::ReplySender};
use futures::channel::oneshot;
use ledger_core::types::{CoreId, GroupId, NamespaceId, Operation, ScopeKey, VaultId};
use ledger_core::validate::{validate_client_id, validate_client_operations_with_limit, validate_sequence};
use ledger_core::ValidationError;
use ledger_wire::messages::{
    ErrorDetail, Request, RequestEnvelope, Response, ResponseEnvelope, Status, StatusCode,
};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

/// Everything `run_shard` needs; built by the server for each core.
pub struct ShardSpec {
    pub core: CoreId,
    pub config: Arc<ShardConfig>,
    /// The groups this core owns (from the node's placement table, SPEC §10.5).
    pub groups: Vec<GroupId>,
    pub inbox: flume::Receiver<ShardMsg>,
    /// Inbox senders of every core, indexed by `CoreId` (this core's own included).
    pub cores: Vec<flume::Sender<ShardMsg>>,
    /// group → owning core for the whole node.
    pub placement: Arc<BTreeMap<GroupId, CoreId>>,
    /// Fired once every owned group is open and led (and, on core 0, `_system` exists).
    pub ready: futures::channel::oneshot::Sender<()>,
}

/// One core's service state, shared by its inbox loop and the tasks it spawns (same thread).
pub struct Shard {
    pub core: CoreId,
    pub config: Arc<ShardConfig>,
    /// Open groups. Changes only when a group reopens itself after a storage error
    /// (maintenance/reopen.rs); take what you need out of it, never hold the borrow across an await.
    pub groups: RefCell<BTreeMap<GroupId, Rc<Group>>>,
    pub cores: Vec<flume::Sender<ShardMsg>>,
    pub placement: Arc<BTreeMap<GroupId, CoreId>>,
    /// The cluster's page-token MAC key (SPEC §5.7), once known on this core.
    pub token_key: Cell<Option<TokenKey>>,
    /// Serializes registry mutations on core 0 (counters are read from committed state).
    pub admin_lock: futures::lock::Mutex<()>,
    /// `WatchBlocks` streams of this core's scopes (watch.rs).
    pub watches: Rc<crate::read::watch::Watches>,
    /// Groups of this core that could not be opened, with why: their requests are answered
    /// `Unavailable` and the node's health names them.
    pub failed: RefCell<BTreeMap<GroupId, String>>,
    /// This core's connections to the other nodes (raft calls and forwarded requests).
    pub peers: Rc<PeerPool>,
    /// The core's idempotency cache, shared by its groups.
    cache: Rc<RefCell<IdemCache>>,
    /// Write rate limit of the namespaces whose groups this core leads (SPEC §8.9).
    limiter: RefCell<RateLimiter>,
    /// Block builder tasks, awaited at shutdown (queued work is still built).
    builders: RefCell<Vec<glommio::task::JoinHandle<()>>>,
    /// Groups waiting to reopen after a storage error, with the cause (maintenance/reopen.rs).
    pub reopening: RefCell<BTreeMap<GroupId, String>>,
    /// When each group last reopened, and how many relapses in a row led to it (reopen.rs).
    pub reopened: RefCell<BTreeMap<GroupId, (std::time::Instant, u32)>>,
    /// Set by `shutdown`: nothing reopens any more.
    closing: Cell<bool>,
    /// On core 0 of a cluster node: which members the `_system` leader found silent (D69).
    pub node_watch: RefCell<crate::admin::node_loss::NodeWatch>,
    /// On core 0 of a `_system` learner: voters' routing answers reused while its copy is stale.
    pub learner_routes: RefCell<crate::admin::learner_routes::LearnerRoutes>,
    /// On core 0: the peers this node heard of from others (discovery gossip, D76).
    pub peer_gossip: RefCell<crate::admin::peer_cache::Gossip>,
    /// Every data group's members as `_system` last listed them (`admin/internal.rs`).
    pub group_members: RefCell<crate::peer::outside::GroupMembers>,
    /// On core 0: until when this node was drained by a whole-node stepdown (D70).
    drained_until: Cell<Option<std::time::Instant>>,
}

impl Shard {
    pub fn is_closing(&self) -> bool {
        self.closing.get()
    }

    /// Drained by a whole-node stepdown within the last `for_`: the leader balancer gives this
    /// node no leadership (D70).
    pub fn drain_for(&self, for_: std::time::Duration) {
        self.drained_until.set(Some(std::time::Instant::now() + for_));
    }

    pub fn is_draining(&self) -> bool {
        self.drained_until.get().is_some_and(|until| std::time::Instant::now() < until)
    }

    pub fn group(&self, id: GroupId) -> Option<Rc<Group>> {
        self.groups.borrow().get(&id).cloned()
    }

    /// The open groups, in id order (a copy: safe to iterate across awaits).
    pub fn group_list(&self) -> Vec<Rc<Group>> {
        self.groups.borrow().values().cloned().collect()
    }

    /// Entries in the core's idempotency cache (`idempotency_cache_size`).
    pub fn idem_cache_len(&self) -> usize {
        self.cache.borrow().len()
    }

    /// Why group `id` cannot serve, if it failed to open (or is reopening).
    pub fn failure_of(&self, id: GroupId) -> Option<String> {
        self.failed.borrow().get(&id).cloned()
    }

    /// Opens group `id` (SPEC §9.6 recovery) and starts its block builder and maintenance task.
    pub async fn open_group(&self, id: GroupId) -> Result<Rc<Group>, ShardError> {
        let (raft, data) =
            crate::raft::state_machine::open_group(&self.config, id, self.core.0, self.peers.clone()).await?;
        self.watches.attach(id, &data);
        let group = Group::new(id, raft, data, self.config.clone(), self.cache.clone());
        group.core.set(self.core.0);
        if let Some(members) = self.group_members.borrow().get(&id) {
            group.outside.borrow_mut().set_members(members.clone());
        }
        self.builders.borrow_mut().push(glommio::spawn_local(group.clone().run()).detach());
        glommio::spawn_local(crate::maintenance::task::run(group.clone(), self.config.clone())).detach();
        crate::maintenance::background_integrity::start(group.clone());
        crate::maintenance::gc::start(group.clone());
        self.groups.borrow_mut().insert(id, group.clone());
        self.failed.borrow_mut().remove(&id);
        Ok(group)
    }
}

/// Runs the shard until `ShardMsg::Shutdown`. Must be called inside the core's glommio executor.
pub async fn run_shard(spec: ShardSpec) -> Result<(), ShardError> {
    let ShardSpec { core, config, groups: owned, inbox, cores, placement, ready } = spec;
    let shard = new_shard(core, config, cores, placement);
    open_owned_groups(&shard, owned).await?;
    spawn_core_tasks(&shard);
    start_core0_duties(&shard).await?;
    let _ = ready.send(());
    if core.0 == 0 && shard.config.cluster.is_none() && shard.group(GroupId(0)).is_some_and(|g| g.is_leader())
    {
        glommio::spawn_local(admin::requests::reconcile(shard.clone())).detach();
    }
    serve_inbox(&shard, inbox).await
}

/// The core's service state before any group is open: empty group maps, its own idempotency
/// cache, rate limiter, watches and peer connections.
fn new_shard(
    core: CoreId,
    config: Arc<ShardConfig>,
    cores: Vec<flume::Sender<ShardMsg>>,
    placement: Arc<BTreeMap<GroupId, CoreId>>,
) -> Rc<Shard> {
    let cache =
        Rc::new(RefCell::new(IdemCache::new(config.idempotency_cache_entries, IDEM_CACHE_PER_CLIENT_MAX)));
    let watches = crate::read::watch::Watches::new(config.stream_buffer);
    let peers = PeerPool::new(&config);
    let limiter = RefCell::new(RateLimiter::new(config.rate_limit_rps));
    let node_heartbeat_timeout_secs = config.node_heartbeat_timeout_secs;
    Rc::new(Shard {
        core,
        config,
        groups: RefCell::new(BTreeMap::new()),
        cores,
        placement,
        token_key: Cell::new(None),
        admin_lock: futures::lock::Mutex::new(()),
        watches,
        failed: RefCell::new(BTreeMap::new()),
        peers,
        cache,
        limiter,
        builders: RefCell::new(Vec::new()),
        reopening: RefCell::new(BTreeMap::new()),
        reopened: RefCell::new(BTreeMap::new()),
        closing: Cell::new(false),
        learner_routes: RefCell::default(),
        group_members: RefCell::default(),
        peer_gossip: RefCell::default(),
        node_watch: RefCell::new(crate::admin::node_loss::NodeWatch::new(std::time::Duration::from_secs(
            node_heartbeat_timeout_secs,
        ))),
        drained_until: Cell::new(None),
    })
}

/// Opens the groups this core owns. Only a failure of `_system` is an error; any other group
/// that fails is recorded in `failed` and left closed.
async fn open_owned_groups(shard: &Shard, owned: Vec<GroupId>) -> Result<(), ShardError> {
    for id in owned {
        match shard.open_group(id).await {
            Ok(_) => {}
            // `_system` routes every request: the node cannot serve without it.
            Err(e) if id == GroupId(0) => return Err(e),
            Err(e) => {
                // One group's broken files or log must not keep the others from serving
                // (SPEC §2 goal 3): it stays closed and its requests are answered Unavailable.
                let cause = std::error::Error::source(&e).map(|c| format!(": {c}")).unwrap_or_default();
                let reason = format!("failed to open: {e}{cause}");
                crate::event!(error, "group_open_failed", group = %id, core = %shard.core, reason = ?reason);
                shard.failed.borrow_mut().insert(id, reason);
            }
        }
    }
    Ok(())
}

/// Spawns the tasks every core runs: the storage watch (reopens), the watch-stream sweep, the
/// vault doctor and, in a cluster, the shared heartbeat tick.
fn spawn_core_tasks(shard: &Rc<Shard>) {
    glommio::spawn_local(crate::maintenance::reopen::storage_watch(Rc::downgrade(shard))).detach();
    glommio::spawn_local(crate::read::watch::sweep_loop(Rc::downgrade(&shard.watches))).detach();
    glommio::spawn_local(crate::ops::vault_repair::doctor(Rc::downgrade(shard))).detach();
    if shard.config.cluster.is_some() {
        glommio::spawn_local(heartbeat_loop(Rc::downgrade(shard))).detach();
        glommio::spawn_local(crate::raft::election::drive(Rc::downgrade(shard))).detach();
        if shard.config.replica_release_secs > 0 {
            glommio::spawn_local(crate::maintenance::release::release_loop(Rc::downgrade(shard))).detach();
        }
    }
}

/// Core 0's extra duties. In a cluster it spawns the registry keeper, the member watch, the
/// leader balancer and the discovery cache keeper; on a single node it creates `_system`'s
/// registry records now and hands the page-token key to the other cores. Other cores: nothing.
async fn start_core0_duties(shard: &Rc<Shard>) -> Result<(), ShardError> {
    if shard.core.0 == 0 && shard.config.cluster.is_some() {
        // Leadership of `_system` comes later and moves: whoever holds it keeps the registry's
        // bootstrap records and scopes in order (admin/requests.rs).
        glommio::spawn_local(admin::requests::registry_keeper(shard.clone())).detach();
        glommio::spawn_local(admin::node_loss::watch_members(Rc::downgrade(shard))).detach();
        glommio::spawn_local(crate::ops::balance::balance_leaders(Rc::downgrade(shard))).detach();
        if let Some(path) = shard.config.discovery_cache_path.clone() {
            let period = crate::constants::PEER_CACHE_CHECK;
            glommio::spawn_local(admin::peer_cache::keep_cache(Rc::downgrade(shard), path, period)).detach();
        }
    } else if shard.core.0 == 0 {
        admin::requests::bootstrap(shard).await?;
        if let Some(key) = shard.token_key.get() {
            for (i, other) in shard.cores.iter().enumerate() {
                if i != 0 {
                    let _ = other.try_send(ShardMsg::Internal(InternalMsg::PageTokenKey(key)));
                }
            }
        }
    }
    Ok(())
}

/// The inbox loop: each message is handled inline or handed to a spawned task, so the loop
/// never blocks; ends (after `shutdown`) on `Shutdown` or when every sender is gone.
async fn serve_inbox(shard: &Rc<Shard>, inbox: flume::Receiver<ShardMsg>) -> Result<(), ShardError> {
    loop {
        let Ok(msg) = inbox.recv_async().await else {
            // Every sender is gone: the node is exiting without a Shutdown.
            shutdown(shard).await;
            return Ok(());
        };
        match msg {
            ShardMsg::Group { group, envelope, reply, forwarded, caller } => {
                on_group_request(shard, group, envelope, reply, forwarded, caller)
            }
            ShardMsg::Admin { envelope, reply, forwarded, caller } => {
                glommio::spawn_local(admin::requests::handle(
                    shard.clone(),
                    envelope,
                    reply,
                    forwarded,
                    caller,
                ))
                .detach();
            }
            ShardMsg::ResolveNamespace { namespace_id, reply } => {
                admin::requests::resolve_namespace_for(shard, namespace_id, reply);
            }
            ShardMsg::Internal(msg) => internal::handle(shard, msg),
            ShardMsg::Watch { group, watch } => match shard.group(group).filter(|g| g.is_outside()) {
                // This node's copy holds no blocks: a member serves the stream (D91).
                Some(_) if !watch.from_peer => crate::peer::watch_relay::open(shard, group, watch),
                // A node relaying it took this node for a member: it tries another.
                Some(g) => {
                    let mut status = Status::unavailable(format!(
                        "node {} is not a member of group {group}",
                        shard.config.node_id
                    ));
                    status.leader_hint = g.route_hint();
                    crate::read::watch::refuse(&watch.sink, watch.key, status);
                }
                None => shard.watches.open(group, watch),
            },
            ShardMsg::CancelStream { key } => shard.watches.cancel(key),
            ShardMsg::Metrics { reply } => {
                let _ = reply.try_send(crate::scrape::collect(shard));
            }
            ShardMsg::Shutdown { done } => {
                shutdown(shard).await;
                let _ = done.send(());
                return Ok(());
            }
        }
    }
}

/// One heartbeat tick for every group this core leads (openraft's own per-group timers are off
/// in a cluster): the empty appends of all groups to one node are queued together, and the peer
/// connection's writer sends them as one frame (D30).
async fn heartbeat_loop(shard: std::rc::Weak<Shard>) {
    let Some(interval) =
        shard.upgrade().map(|s| std::time::Duration::from_millis(s.config.raft_heartbeat_ms))
    else {
        return;
    };
    loop {
        glommio::timer::sleep(interval).await;
        let Some(shard) = shard.upgrade() else { return };
        for group in shard.group_list() {
            // A leader handing over stays silent so that the voters' lease on it runs out.
            if group.is_leader() && !group.is_handing_over() {
                let _ = group.raft.trigger().heartbeat().await;
                crate::admin::membership::complete_joint_config(&group);
            }
        }
    }
}

/// Stops every builder (queued work is still built), then closes the groups: the storage layer
/// checkpoints durably and openraft stops.
async fn shutdown(shard: &Rc<Shard>) {
    shard.closing.set(true);
    shard.watches.close_all();
    for g in shard.group_list() {
        g.stop();
        g.data.borrow().snapshots.stop();
    }
    let builders = std::mem::take(&mut *shard.builders.borrow_mut());
    for b in builders {
        let _ = b.await;
    }
    for g in shard.group_list() {
        crate::raft::state_machine::close_group(&g.raft, &g.data).await;
    }
}

fn reply_err(reply: &ReplySender, request_id: u64, status: Status) {
    let _ = reply.try_send(ResponseEnvelope { request_id, result: Err(status), leader_hint: None });
}

/// A request that waited past its deadline before it was taken up (SPEC §4.1).
pub fn deadline_exceeded() -> Status {
    Status::new(StatusCode::DeadlineExceeded, "the request's deadline passed before it was served")
}

/// `ResourceExhausted` for a write over its namespace's rate, with when to retry (SPEC §8.9).
fn rate_limited(namespace_id: i64, rps: u32, wait: std::time::Duration) -> Status {
    let ms = retry_after_ms(wait);
    Status {
        code: StatusCode::ResourceExhausted,
        message: format!(
            "namespace {namespace_id} is over its write rate limit ({rps} transactions/s, bursts of {}); retry after {ms} ms",
            u64::from(rps) * 2
        ),
        leader_hint: None,
        detail: Some(ErrorDetail::RetryAfter { ms }),
    }
}

fn validation_status(e: ValidationError) -> Status {
    match e {
        ValidationError::InvalidArgument(m) => Status::invalid(m),
        ValidationError::PermissionDenied(m) => Status::new(StatusCode::PermissionDenied, m),
    }
}

/// `Unavailable` for a group that failed to open or stopped on a failed apply.
pub fn group_failure(shard: &Shard, group_id: GroupId) -> Option<Status> {
    let reason = match shard.failure_of(group_id) {
        Some(reason) => reason,
        None => shard.group(group_id)?.data.borrow().fault.as_ref()?.to_string(),
    };
    Some(Status::unavailable(format!("group {group_id} on this node has failed and is stopped: {reason}")))
}

/// Whether answering `request` here takes the group's leader (SPEC §8.1 step 3, §8.6). One
/// definition with the client's routing (`Request::leader_namespace`), so what a client sends
/// to a learned leader is exactly what a follower would forward.
fn needs_leader(request: &Request) -> bool {
    request.leader_namespace().is_some()
}

/// How a core answers a request for one of its groups, in order: refuse what cannot be served,
/// hand peer traffic to the peer service, forward what needs the leader to it, and serve the
/// rest here.
fn on_group_request(
    shard: &Rc<Shard>,
    group_id: GroupId,
    envelope: RequestEnvelope,
    reply: ReplySender,
    forwarded: bool,
    caller: Caller,
) {
    let request_id = envelope.request_id;
    let Some(group) = group_to_serve(shard, group_id, request_id, &reply, &caller) else {
        return;
    };
    if let Request::Peer(peer) = envelope.request {
        crate::peer::serve::handle(group, *peer, request_id, reply);
        return;
    }
    if group.is_outside() {
        // Not a member (SPEC §10.5): the copy here is empty, so nothing is served from it.
        if forwarded {
            // Sent here as if this node were a member: the sender follows the hint.
            let mut status = Status::new(
                StatusCode::NotLeader,
                format!("node {} is not a member of group {group_id}", shard.config.node_id),
            );
            status.leader_hint = group.route_hint();
            reply_err(&reply, request_id, status);
        } else {
            forward_to_leader(shard, group_id, group, envelope, reply, caller);
        }
        return;
    }
    if !forwarded && needs_leader(&envelope.request) && !group.is_leader() && group.stopped().is_none() {
        forward_to_leader(shard, group_id, group, envelope, reply, caller);
        return;
    }
    serve_request(shard, group, envelope.request, request_id, reply, forwarded, caller);
}

/// The open group a request is for, or `None` once the request has been answered with why it
/// cannot be served: its deadline passed, the group failed, or the group is not on this core.
fn group_to_serve(
    shard: &Shard,
    group_id: GroupId,
    request_id: u64,
    reply: &ReplySender,
    caller: &Caller,
) -> Option<Rc<Group>> {
    if caller.expired() {
        reply_err(reply, request_id, deadline_exceeded());
        return None;
    }
    if let Some(status) = group_failure(shard, group_id) {
        reply_err(reply, request_id, status);
        return None;
    }
    let Some(group) = shard.group(group_id) else {
        reply_err(
            reply,
            request_id,
            Status::not_found(format!("group {group_id} is not on core {}", shard.core)),
        );
        return None;
    };
    Some(group)
}

/// Forwards a request that needs the leader to it, in a spawned task (SPEC §8.1 step 3). If
/// this node became the leader meanwhile, the request is served here, marked forwarded so it
/// is not sent on again.
fn forward_to_leader(
    shard: &Rc<Shard>,
    group_id: GroupId,
    group: Rc<Group>,
    envelope: RequestEnvelope,
    reply: ReplySender,
    caller: Caller,
) {
    let request_id = envelope.request_id;
    let shard = shard.clone();
    glommio::spawn_local(async move {
        let timeout = shard.config.forward_timeout.min(caller.remaining());
        let on_behalf_of = caller.credential_id.as_deref().map(str::to_string);
        let request = envelope.request.clone();
        match forward::to_leader_for(&shard.peers, &group, request, timeout, on_behalf_of).await {
            Forwarded::Answer(result) => {
                // The leader this node forwarded to (or knows now): the client learns it.
                let leader_hint = group.route_hint().filter(|(id, _)| *id != shard.peers.self_id());
                let _ = reply.try_send(ResponseEnvelope { request_id, result, leader_hint });
            }
            // Became the leader meanwhile; a node outside the group never gets here (its copy
            // has no leader), but if it did, the request would be refused, not served empty.
            Forwarded::Local => on_group_request(&shard, group_id, envelope, reply, true, caller),
        }
    })
    .detach();
}

/// Serves a request on this node by its kind: writes are validated and queued to the group's
/// block builder, block and state reads are answered (inline when they can be), and
/// maintenance and repair requests run in spawned tasks.
fn serve_request(
    shard: &Rc<Shard>,
    group: Rc<Group>,
    request: Request,
    request_id: u64,
    reply: ReplySender,
    forwarded: bool,
    caller: Caller,
) {
    let request = match WriteIntake::from_request(request) {
        Ok(write) => return intake_write(shard, &group, write, request_id, reply, caller),
        Err(request) => request,
    };
    match request {
        Request::GetBlock { namespace_id, vault_id, height } => {
            let result = get_block(&group, namespace_id, vault_id, height);
            let _ = reply.try_send(ResponseEnvelope { request_id, result, leader_hint: None });
        }
        Request::GetBlockRange { namespace_id, vault_id, start_height, end_height } => {
            let result = get_block_range(&group, namespace_id, vault_id, start_height, end_height);
            let _ = reply.try_send(ResponseEnvelope { request_id, result, leader_hint: None });
        }
        request @ (Request::CheckIntegrity { .. }
        | Request::CreateSnapshot { .. }
        | Request::RecoverVault { .. }
        | Request::SimulateDivergence { .. }
        | Request::GetVaultHealth { .. }
        | Request::CompareStateRoots { .. }
        | Request::ForceGc { .. }) => spawn_maintenance(shard, group, request, request_id, reply, forwarded),
        request @ (Request::VerifiedRead { .. } | Request::HistoricalRead { .. }) => {
            crate::raft::core_log::note_read();
            crate::read::proof_reads::handle(group, request, request_id, reply);
        }
        request => answer_read(shard, group, request, request_id, reply),
    }
}

/// Runs a maintenance or vault repair request in a spawned task and replies with its result:
/// each waits on storage or peers, which the inbox loop must not.
fn spawn_maintenance(
    shard: &Rc<Shard>,
    group: Rc<Group>,
    request: Request,
    request_id: u64,
    reply: ReplySender,
    forwarded: bool,
) {
    match request {
        Request::CheckIntegrity { namespace_id, vault_id, full_check } => {
            glommio::spawn_local(async move {
                let result =
                    crate::maintenance::task::check_integrity(&group, namespace_id, vault_id, full_check)
                        .await;
                let _ = reply.try_send(ResponseEnvelope { request_id, result, leader_hint: None });
            })
            .detach();
        }
        Request::CreateSnapshot { namespace_id, vault_id } => {
            let config = shard.config.clone();
            glommio::spawn_local(async move {
                let result =
                    crate::maintenance::task::create_snapshot(&group, &config, namespace_id, vault_id).await;
                let _ = reply.try_send(ResponseEnvelope { request_id, result, leader_hint: None });
            })
            .detach();
        }
        Request::ForceGc { namespace_id, vault_id } => {
            glommio::spawn_local(async move {
                let result = force_gc_scope(&group, namespace_id, vault_id).await;
                let _ = reply.try_send(ResponseEnvelope { request_id, result, leader_hint: None });
            })
            .detach();
        }
        // RecoverVault, SimulateDivergence, GetVaultHealth and CompareStateRoots; `answer`
        // refuses anything else as not a vault repair request.
        request => {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                let result = crate::ops::vault_repair::answer(&shard, &group, request, forwarded).await;
                let _ = reply.try_send(ResponseEnvelope { request_id, result, leader_hint: None });
            })
            .detach();
        }
    }
}

/// Answers a state read: inline from the group's applied state when it needs neither the
/// read-index check, nor the page-token key this core lacks, nor a historical rebuild; else
/// in a spawned task (`slow_read`).
fn answer_read(shard: &Rc<Shard>, group: Rc<Group>, request: Request, request_id: u64, reply: ReplySender) {
    crate::raft::core_log::note_read();
    let need_key = reads::needs_token_key(&request) && shard.token_key.get().is_none();
    let historical = reads::needs_token_key(&request)
        && reads::historical_list_target(&group, &request, shard.token_key.get().as_ref()).is_some();
    if !reads::needs_linearizable(&request) && !need_key && !historical {
        let result = reads::answer(&group, &request, shard.token_key.get().as_ref());
        let _ = reply.try_send(ResponseEnvelope { request_id, result, leader_hint: None });
        return;
    }
    let shard = shard.clone();
    glommio::spawn_local(async move {
        let result = slow_read(&shard, &group, &request).await;
        let _ = reply.try_send(ResponseEnvelope { request_id, result, leader_hint: None });
    })
    .detach();
}

/// A read that first needs the read-index check and/or the page-token key from core 0.
async fn slow_read(shard: &Shard, group: &Group, request: &Request) -> Result<Response, Status> {
    if reads::needs_token_key(request) && shard.token_key.get().is_none() {
        let core0 = shard.cores.first().ok_or_else(|| Status::internal("no core 0"))?;
        let (tx, rx) = oneshot::channel();
        core0
            .send_async(ShardMsg::Internal(InternalMsg::GetPageTokenKey { reply: tx }))
            .await
            .map_err(|_| Status::unavailable("node is shutting down"))?;
        let key =
            rx.await.ok().flatten().ok_or_else(|| Status::unavailable("page token key not available yet"))?;
        shard.token_key.set(Some(key));
    }
    if reads::needs_linearizable(request) {
        reads::ensure_linearizable(group).await?;
    }
    let token_key = shard.token_key.get();
    if let (Some((scope, height)), Some(key)) =
        (reads::historical_list_target(group, request, token_key.as_ref()), token_key.as_ref())
    {
        // A pagination pinned below the tip reads the state rebuilt at its height (SPEC §5.7,
        // §8.7), with TTL judged at that block's time (§3.8).
        let state = crate::read::history::rebuild(group, scope, height).await?;
        let block_secs = u64::try_from(state.meta.last_block_ts.secs).unwrap_or(0);
        return reads::list_on(&state, request, key, block_secs);
    }
    reads::answer(group, request, token_key.as_ref())
}

/// `ForceGc` of one scope (SPEC §5.3 item 31), on its group's leader (forwarded there).
async fn force_gc_scope(
    group: &Group,
    namespace_id: Option<i64>,
    vault_id: Option<i64>,
) -> Result<Response, Status> {
    let namespace_id =
        namespace_id.ok_or_else(|| Status::invalid("ForceGc of a scope needs its namespace"))?;
    let key = ScopeKey::new(NamespaceId(namespace_id), vault_id.map(VaultId));
    let outcome = crate::maintenance::gc::cycle(group, Some(key), true).await?;
    Ok(crate::maintenance::gc::response(outcome))
}

struct WriteIntake {
    namespace_id: i64,
    vault_id: Option<i64>,
    client_id: String,
    sequence: u64,
    operations: Vec<Operation>,
    sizes: Vec<usize>,
    include_tx_proof: bool,
}

impl WriteIntake {
    /// The write a `Write` or `BatchWrite` request carries (a batch's groups flattened into one
    /// list, their sizes kept), or the request back when it is neither.
    fn from_request(request: Request) -> Result<WriteIntake, Request> {
        let (namespace_id, vault_id, client_id, sequence, operations, sizes, include_tx_proof) = match request
        {
            Request::Write { namespace_id, vault_id, client_id, sequence, operations, include_tx_proof } => {
                let sizes = vec![operations.len()];
                (namespace_id, vault_id, client_id, sequence, operations, sizes, include_tx_proof)
            }
            Request::BatchWrite { namespace_id, vault_id, client_id, sequence, groups, include_tx_proof } => {
                let sizes = groups.iter().map(Vec::len).collect();
                let operations = groups.into_iter().flatten().collect();
                (namespace_id, vault_id, client_id, sequence, operations, sizes, include_tx_proof)
            }
            request => return Err(request),
        };
        Ok(WriteIntake { namespace_id, vault_id, client_id, sequence, operations, sizes, include_tx_proof })
    }
}

/// Stateless validation (SPEC §3.4, §3.6, §3.7, §6.3) before a write may be queued.
fn intake_write(
    shard: &Shard,
    group: &Group,
    w: WriteIntake,
    request_id: u64,
    reply: ReplySender,
    caller: Caller,
) {
    let namespace_scope = w.vault_id.unwrap_or(0) == 0;
    let checked =
        validate_client_id(&w.client_id).and_then(|_| validate_sequence(w.sequence)).and_then(|_| {
            validate_client_operations_with_limit(
                &w.operations,
                namespace_scope,
                w.namespace_id == 0,
                shard.config.max_ops_per_tx,
            )
        });
    if let Err(e) = checked {
        reply_err(&reply, request_id, validation_status(e));
        return;
    }
    // Only the leader's admission counts (a follower forwards, SPEC §8.9); a write that will be
    // answered NotLeader takes no token.
    if group.is_leader() {
        if let Err(wait) = shard.limiter.borrow_mut().admit(w.namespace_id, std::time::Instant::now()) {
            crate::metrics::with(|m| m.rate_limited(w.namespace_id));
            reply_err(&reply, request_id, rate_limited(w.namespace_id, shard.config.rate_limit_rps, wait));
            return;
        }
    }
    let pending = PendingTx {
        scope: ScopeKey::new(NamespaceId(w.namespace_id), w.vault_id.map(VaultId)),
        actor: caller.actor(&w.client_id),
        client_id: w.client_id,
        sequence: w.sequence,
        operations: w.operations,
        group_sizes: w.sizes,
        include_tx_proof: w.include_tx_proof,
        waiter: Waiter::Client { request_id, reply },
        deadline: Some(caller.deadline),
    };
    if let Err((waiter, status)) = group.submit(pending) {
        waiter.send(Err(status));
    }
}

fn get_block(
    group: &Group,
    namespace_id: i64,
    vault_id: Option<i64>,
    height: u64,
) -> Result<Response, Status> {
    let data = group.data.borrow();
    let scope = reads::readable_scope(&data, namespace_id, vault_id)?;
    let key = scope.meta.key;
    if height > scope.meta.height {
        return Err(Status::not_found(format!("block {height} is beyond the tip {}", scope.meta.height)));
    }
    let block = data
        .get_block(key, height)
        .map_err(|e| Status::internal(format!("archive: {e}")))?
        // At or below the tip but not archived: this replica installed a snapshot and is still
        // back-filling its archive from peers (peer/backfill.rs); another replica or a retry has it.
        .ok_or_else(|| {
            Status::unavailable(format!(
                "block {height} of {key} is not in this replica's archive yet (back-fill)"
            ))
        })?;
    let body_pruned = block_body_pruned(&block);
    Ok(Response::GetBlock { block, body_pruned })
}

fn get_block_range(
    group: &Group,
    namespace_id: i64,
    vault_id: Option<i64>,
    start: u64,
    end: u64,
) -> Result<Response, Status> {
    let data = group.data.borrow();
    let scope = reads::readable_scope(&data, namespace_id, vault_id)?;
    let tip = scope.meta.height;
    let range = reads::block_range(start, end, tip)?;
    let blocks = if range.is_empty() {
        Vec::new()
    } else {
        let blocks = data
            .get_range(scope.meta.key, *range.start(), *range.end())
            .map_err(|e| Status::internal(format!("archive: {e}")))?;
        let wanted = (range.end() - range.start() + 1).min(crate::constants::ARCHIVE_RANGE_BLOCKS_MAX);
        if (blocks.len() as u64) < wanted {
            let missing = range.start() + blocks.len() as u64;
            return Err(Status::unavailable(format!(
                "block {missing} of {} is not in this replica's archive yet (back-fill)",
                scope.meta.key
            )));
        }
        blocks
    };
    Ok(Response::GetBlockRange { blocks, current_tip: tip })
}

/// A block above genesis always carries at least one transaction; an empty body means the
/// archive compacted it (SPEC §9.5).
fn block_body_pruned(block: &ledger_core::types::Block) -> bool {
    block.header.height > 0 && block.transactions.is_empty()
}
