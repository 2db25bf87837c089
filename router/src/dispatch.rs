//! Hands one request envelope to the core that must answer it (SPEC §8.1 steps 1–2). Never
//! blocks on a core: a full inbox answers `ResourceExhausted` at once (invariant 39).

use crate::listener::RouterContext;
use crate::route::{target_of, Target};
use ledger_core::types::{CoreId, GroupId};
use ledger_shard::read::watch::{StreamKey, WatchRequest};
use ledger_shard::{Caller, ReplySender, ShardMsg};
use ledger_wire::messages::{RequestEnvelope, ResponseEnvelope, Status, StatusCode};
use std::cell::RefCell;
use std::collections::HashMap;

/// Per-core router state. Namespace → group answers are cached forever: a namespace never
/// moves between groups (migration is out of scope, SPEC §10.5), and a deleted namespace is
/// rejected by its group itself.
pub struct Dispatcher {
    context: RouterContext,
    namespace_groups: RefCell<HashMap<i64, GroupId>>,
    /// Namespaces over their write rate limit, as learned from the leaders' refusals (D47).
    throttle: std::rc::Rc<crate::throttle::WriteThrottle>,
}

impl Dispatcher {
    pub fn new(context: RouterContext) -> Self {
        let throttle = std::rc::Rc::new(crate::throttle::WriteThrottle::new(context.settings.rate_limit_rps));
        Dispatcher { context, namespace_groups: RefCell::new(HashMap::new()), throttle }
    }

    /// The core this router runs on.
    pub fn core(&self) -> CoreId {
        self.context.core
    }

    /// The core owning `namespace_id`'s group, if the namespace exists and its group is here.
    pub async fn core_of_namespace(&self, namespace_id: i64) -> Option<CoreId> {
        let group = self.group_of(namespace_id).await.ok().flatten()?;
        self.context.placement.get(&group).copied()
    }

    /// Gives a connection to `core`'s listener (D53); `Err` gives it back if that core is gone.
    pub fn hand_off(
        &self,
        core: CoreId,
        handoff: crate::handoff::Handoff,
    ) -> Result<(), crate::handoff::Handoff> {
        let Some(listener) = self.context.listeners.get(core.0 as usize) else { return Err(handoff) };
        match listener.send(crate::listener::ListenerControl::Adopt(handoff)) {
            Ok(()) => Ok(()),
            Err(flume::SendError(crate::listener::ListenerControl::Adopt(handoff))) => Err(handoff),
            // Not what was sent; nothing to give back.
            Err(_) => Ok(()),
        }
    }

    /// This core's memory of over-limit namespaces (D47).
    pub fn throttle(&self) -> &std::rc::Rc<crate::throttle::WriteThrottle> {
        &self.throttle
    }

    /// Routes and sends `envelope`; every failure is answered on `reply` with a status.
    /// Awaits only the one-time namespace lookup on core 0, never a full inbox.
    /// `forwarded`: it came on a peer connection (another node sent it on to this one).
    pub async fn dispatch(
        &self,
        envelope: RequestEnvelope,
        reply: &ReplySender,
        forwarded: bool,
        caller: Caller,
    ) {
        match target_of(&envelope.request) {
            Target::Admin => {
                let msg = ShardMsg::Admin { envelope, reply: reply.clone(), forwarded, caller };
                self.send(CoreId(0), msg, reply);
            }
            Target::Group(group) => {
                let group = GroupId(group);
                match self.context.placement.get(&group).copied() {
                    Some(core) => {
                        let msg = ShardMsg::Group {
                            group,
                            envelope,
                            reply: reply.clone(),
                            forwarded: true,
                            caller,
                        };
                        self.send(core, msg, reply);
                    }
                    // SPEC §5.6: the sender retries (the group may still be in creation).
                    None => answer(
                        reply,
                        envelope.request_id,
                        Status::not_found(format!("group {group} is not hosted on this node")),
                    ),
                }
            }
            Target::Namespace(namespace_id) => match self.group_of(namespace_id).await {
                Ok(Some(group)) => match self.context.placement.get(&group).copied() {
                    Some(core) => {
                        let msg =
                            ShardMsg::Group { group, envelope, reply: reply.clone(), forwarded, caller };
                        self.send(core, msg, reply);
                    }
                    None => answer(
                        reply,
                        envelope.request_id,
                        Status::unavailable(format!("group {group} is not hosted on this node")),
                    ),
                },
                Ok(None) => answer(
                    reply,
                    envelope.request_id,
                    Status::not_found(format!("namespace {namespace_id} not found")),
                ),
                Err(status) => answer(reply, envelope.request_id, status),
            },
        }
    }

    /// Sends a `WatchBlocks` stream to the core owning its scope's group and returns that core;
    /// every failure ends the stream at once on its sink (`None`).
    pub async fn dispatch_watch(&self, watch: WatchRequest) -> Option<CoreId> {
        let refuse = |watch: WatchRequest, status: Status| {
            ledger_shard::read::watch::refuse(&watch.sink, watch.key, status);
            None
        };
        let namespace_id = watch.namespace_id;
        let group = match self.group_of(namespace_id).await {
            Ok(Some(group)) => group,
            Ok(None) => {
                return refuse(watch, Status::not_found(format!("namespace {namespace_id} not found")))
            }
            Err(status) => return refuse(watch, status),
        };
        let Some(core) = self.context.placement.get(&group).copied() else {
            return refuse(watch, Status::unavailable(format!("group {group} is not hosted on this node")));
        };
        let Some(inbox) = self.context.cores.get(core.0 as usize) else {
            return refuse(watch, Status::internal(format!("core {core} does not exist")));
        };
        match inbox.try_send(ShardMsg::Watch { group, watch }) {
            Ok(()) => Some(core),
            Err(flume::TrySendError::Full(ShardMsg::Watch { watch, .. })) => {
                refuse(watch, Status::exhausted(format!("core {core} queue is full")))
            }
            Err(flume::TrySendError::Disconnected(ShardMsg::Watch { watch, .. })) => {
                refuse(watch, Status::unavailable("node is shutting down"))
            }
            Err(_) => None,
        }
    }

    /// Asks `core` to end the stream `key`. A full inbox does not lose the cancel: it is sent
    /// from a task that waits for room (the read loop itself never waits on a core).
    pub fn cancel_stream(&self, core: CoreId, key: StreamKey) {
        let Some(inbox) = self.context.cores.get(core.0 as usize) else { return };
        if let Err(flume::TrySendError::Full(msg)) = inbox.try_send(ShardMsg::CancelStream { key }) {
            let inbox = inbox.clone();
            glommio::spawn_local(async move {
                let _ = inbox.send_async(msg).await;
            })
            .detach();
        }
    }

    async fn group_of(&self, namespace_id: i64) -> Result<Option<GroupId>, Status> {
        if namespace_id == 0 {
            return Ok(Some(GroupId(0)));
        }
        if let Some(group) = self.namespace_groups.borrow().get(&namespace_id) {
            return Ok(Some(*group));
        }
        let (tx, rx) = futures::channel::oneshot::channel();
        let core0 = self.context.cores.first().ok_or_else(|| Status::unavailable("no cores"))?;
        core0.try_send(ShardMsg::ResolveNamespace { namespace_id, reply: tx }).map_err(|e| match e {
            flume::TrySendError::Full(_) => Status::exhausted("core 0 inbox is full"),
            flume::TrySendError::Disconnected(_) => Status::unavailable("node is shutting down"),
        })?;
        let group = rx.await.map_err(|_| Status::unavailable("namespace lookup was dropped"))??;
        if let Some(group) = group {
            self.namespace_groups.borrow_mut().insert(namespace_id, group);
        }
        Ok(group)
    }

    fn send(&self, core: CoreId, msg: ShardMsg, reply: &ReplySender) {
        let Some(inbox) = self.context.cores.get(core.0 as usize) else {
            if let Some(id) = request_id_of(&msg) {
                answer(reply, id, Status::internal(format!("core {core} does not exist")));
            }
            return;
        };
        match inbox.try_send(msg) {
            Ok(()) => {}
            Err(flume::TrySendError::Full(msg)) => {
                if let Some(id) = request_id_of(&msg) {
                    answer(reply, id, Status::exhausted(format!("core {core} queue is full")));
                }
            }
            Err(flume::TrySendError::Disconnected(msg)) => {
                if let Some(id) = request_id_of(&msg) {
                    answer(reply, id, Status::new(StatusCode::Unavailable, "node is shutting down"));
                }
            }
        }
    }
}

fn request_id_of(msg: &ShardMsg) -> Option<u64> {
    match msg {
        ShardMsg::Group { envelope, .. } | ShardMsg::Admin { envelope, .. } => Some(envelope.request_id),
        _ => None,
    }
}

/// Answers one request with an error status.
pub fn answer(reply: &ReplySender, request_id: u64, status: Status) {
    let _ = reply.send(ResponseEnvelope { request_id, result: Err(status), leader_hint: None });
}
