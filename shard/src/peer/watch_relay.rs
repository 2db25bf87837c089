//! `WatchBlocks` on a node outside the vault's group (SPEC §10.5, D91). The node's copy of the
//! group holds no blocks, so it opens the same stream at one of the group's members (over this
//! core's peer connection to it) and relays each announcement to its client, renamed to the
//! client's request id. The relay keeps the stream's promise (consecutive heights, no gap, no
//! duplicate): when the member's stream breaks (the member died or left, its stream was
//! refused as unavailable) it opens the stream again at another member from the next height.
//! It gives up, with `Unavailable` and a member as the hint, only after
//! `WATCH_RELAY_ATTEMPTS_MAX` attempts in a row delivered nothing. Cancels and shutdown reach
//! it through the core's watch registry (`Watches::open_relay`).

// Errors travel as the wire `Status` (SPEC §4.5), as in shard.rs.
#![allow(clippy::result_large_err)]

use crate::constants::{WATCH_RELAY_ATTEMPTS_MAX, WATCH_RELAY_OPEN_TIMEOUT, WATCH_RELAY_PAUSE};
use crate::peer::pool::{PeerStream, PeerStreamEvent};
use crate::read::watch::{refuse, StreamEvent, WatchRequest};
use crate::shard::Shard;
use futures::future::{select, Either};
use ledger_core::types::GroupId;
use ledger_wire::messages::{Request, Status, StatusCode, StreamItem, StreamPayload};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Starts relaying `request` for `group`, which this node is outside of.
pub fn open(shard: &Rc<Shard>, group: GroupId, request: WatchRequest) {
    match shard.watches.open_relay(request.key, request.start_height) {
        Ok(stop) => {
            glommio::spawn_local(relay(Rc::downgrade(shard), group, request, stop)).detach();
        }
        Err(status) => refuse(&request.sink, request.key, status),
    }
}

async fn relay(shard: Weak<Shard>, group: GroupId, request: WatchRequest, stop: flume::Receiver<Status>) {
    let end = Relay { shard: &shard, group, request: &request, stop: &stop }.run().await;
    if let Some(shard) = shard.upgrade() {
        shard.watches.relay_ended(request.key);
    }
    if let Some(status) = end {
        refuse(&request.sink, request.key, status);
    }
}

/// Whether a member's `StreamEnd` only says that member cannot serve the stream now, so
/// another member (or the same one later) may: anything else is the stream's own answer
/// (unknown vault, bad height, pruned history) and is passed to the client.
pub fn member_may_recover(code: StatusCode) -> bool {
    matches!(
        code,
        StatusCode::Unavailable
            | StatusCode::NotLeader
            | StatusCode::Cancelled
            | StatusCode::DeadlineExceeded
            | StatusCode::ResourceExhausted
            | StatusCode::Internal
    )
}

/// Why one member's stream stopped.
enum Stopped {
    /// The stream is over: end the client's with this status (`None`: its connection is gone).
    End(Option<Status>),
    /// The member failed it; try again from the next height.
    Member(String),
}

struct Relay<'a> {
    shard: &'a Weak<Shard>,
    group: GroupId,
    request: &'a WatchRequest,
    stop: &'a flume::Receiver<Status>,
}

impl Relay<'_> {
    /// Relays until the stream ends; returns the status to end the client's stream with.
    async fn run(&self) -> Option<Status> {
        let buffered = Arc::new(AtomicUsize::new(0));
        let mut next = self.request.start_height;
        let mut failures = 0usize;
        let mut last = String::from("no member is known yet");
        // The member whose stream broke, until the stream is open again elsewhere.
        let mut broken: Option<u64> = None;
        loop {
            if failures > 0 {
                let pause = glommio::timer::sleep(WATCH_RELAY_PAUSE);
                futures::pin_mut!(pause);
                if let Either::Right((status, _)) = select(pause, self.stop.recv_async()).await {
                    return status.ok();
                }
            }
            let Some(shard) = self.shard.upgrade() else {
                return Some(Status::unavailable("node is shutting down"));
            };
            let Some(group) = shard.group(self.group) else {
                return Some(Status::unavailable(format!("group {} is closed on this node", self.group)));
            };
            if failures >= WATCH_RELAY_ATTEMPTS_MAX {
                let mut status = Status::unavailable(format!(
                    "could not watch group {} at its members ({failures} attempts): {last}; resubscribe from height {next}",
                    self.group
                ));
                status.leader_hint = group.route_hint();
                return Some(status);
            }
            let self_id = shard.config.node_id;
            // Any other member serves the stream, the leader first if one is known. `_system`'s
            // list may name this node by now (it was added meanwhile): the relay goes on all the
            // same, since its own copy may not hold the blocks yet.
            let listed = group.outside.borrow().target(self_id);
            let target = listed.or_else(|| group.route_hint());
            let Some((node, addr)) = target.filter(|(node, _)| *node != self_id) else {
                last = format!("no member of group {} is known", self.group);
                failures += 1;
                continue;
            };
            let peers = shard.peers.clone();
            let buffer = shard.watches.stream_buffer();
            drop(group);
            drop(shard);
            let watch = Request::WatchBlocks {
                namespace_id: self.request.namespace_id,
                vault_id: self.request.vault_id,
                start_height: next,
            };
            let opened = peers.open_stream(node, &addr, watch, buffer, WATCH_RELAY_OPEN_TIMEOUT);
            futures::pin_mut!(opened);
            let stream = match select(opened, self.stop.recv_async()).await {
                Either::Right((status, _)) => return status.ok(),
                Either::Left((Ok(stream), _)) => stream,
                Either::Left((Err(e), _)) => {
                    last = e.to_string();
                    self.member_failed(node);
                    failures += 1;
                    continue;
                }
            };
            if let Some(from) = broken.take() {
                crate::event!(
                    info,
                    "watch_relay_resumed",
                    group = self.group.0,
                    from_node = from,
                    node,
                    height = next
                );
            }
            let before = next;
            match self.forward(stream, &mut next, &buffered, buffer).await {
                Stopped::End(status) => return status,
                Stopped::Member(why) => {
                    last = why;
                    broken = Some(node);
                    self.member_failed(node);
                    if next > before {
                        failures = 0;
                    }
                    failures += 1;
                }
            }
        }
    }

    /// Passes one member's items on until its stream stops.
    async fn forward(
        &self,
        mut stream: PeerStream,
        next: &mut u64,
        buffered: &Arc<AtomicUsize>,
        buffer: usize,
    ) -> Stopped {
        let node = stream.node();
        loop {
            let event = {
                let item = stream.next();
                futures::pin_mut!(item);
                match select(item, self.stop.recv_async()).await {
                    Either::Left((event, _)) => event,
                    Either::Right((status, _)) => return Stopped::End(status.ok()),
                }
            };
            match event {
                Some(PeerStreamEvent::Item(item)) => {
                    let StreamPayload::Block(block) = item.item;
                    if block.height != *next {
                        return Stopped::Member(format!(
                            "node {node} sent height {} where {} was due",
                            block.height, *next
                        ));
                    }
                    if buffered.load(Ordering::Acquire) >= buffer {
                        return Stopped::End(Some(Status::exhausted(format!(
                            "stream buffer of {buffer} items is full; resubscribe from height {}",
                            *next
                        ))));
                    }
                    buffered.fetch_add(1, Ordering::AcqRel);
                    let item = StreamItem {
                        request_id: self.request.key.request_id,
                        item: StreamPayload::Block(block),
                    };
                    let event = StreamEvent::Item { item, buffered: buffered.clone() };
                    if self.request.sink.send(event).is_err() {
                        return Stopped::End(None);
                    }
                    *next += 1;
                }
                Some(PeerStreamEvent::End(status)) if member_may_recover(status.code) => {
                    if let Some(hint) = status.leader_hint.clone() {
                        self.learn_leader(hint);
                    }
                    return Stopped::Member(format!("node {node} ended the stream: {}", status.message));
                }
                Some(PeerStreamEvent::End(status)) => return Stopped::End(Some(status)),
                None => return Stopped::Member(format!("the stream at node {node} broke")),
            }
        }
    }

    fn member_failed(&self, node: u64) {
        if let Some(group) = self.shard.upgrade().and_then(|shard| shard.group(self.group)) {
            group.outside.borrow_mut().failed(node);
        }
    }

    fn learn_leader(&self, hint: (u64, String)) {
        if let Some(group) = self.shard.upgrade().and_then(|shard| shard.group(self.group)) {
            group.outside.borrow_mut().learn_leader(hint);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member that cannot serve now is left for another; the stream's own answers reach the
    /// client.
    #[test]
    fn t01_which_ends_are_retried_at_another_member() {
        for code in [StatusCode::Unavailable, StatusCode::NotLeader, StatusCode::Cancelled] {
            assert!(member_may_recover(code), "{code:?}");
        }
        for code in [StatusCode::NotFound, StatusCode::InvalidArgument, StatusCode::FailedPrecondition] {
            assert!(!member_may_recover(code), "{code:?}");
        }
    }
}
