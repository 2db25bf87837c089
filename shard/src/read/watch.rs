//! `WatchBlocks` streams served by one core (SPEC §4.3, §5.1 item 5, §8.8): the registry of the
//! streams whose scope lives in this core's groups, fed by every group's `on_block_applied` hook.
//!
//! A stream starts in *replay*: a task reads block headers `next_height..=tip` from the archive
//! in chunks and sends their announcements. When it reaches the tip it switches the stream to
//! *live* in the same synchronous step that read the tip, so the next block apply announces is
//! exactly `next_height`: no gap and no duplicate between the phases. Live announcements below
//! `next_height` are dropped; one above it (the scope skipped ahead) sends the stream back to
//! replay. The pure rule is `Cursor`.
//!
//! Backpressure: each stream shares a counter with its connection's write task, which releases
//! one unit per `StreamItem` it has written to the socket. A live block that finds
//! `stream_buffer` items still buffered ends the stream with `ResourceExhausted` (the client
//! resubscribes from its last height + 1); replay waits for room instead, up to
//! `WATCH_REPLAY_STALL_MS_MAX`. A sweep ends streams whose scope stopped being Healthy
//! (`Unavailable`) or was deleted (`NotFound`), and forgets streams whose connection is gone.

// Errors travel as the wire `Status` (SPEC §4.5), as in shard.rs.
#![allow(clippy::result_large_err)]

use crate::constants::{
    WATCHERS_PER_CORE_MAX, WATCH_CREDIT_POLL_MS, WATCH_REPLAY_CHUNK_BLOCKS, WATCH_REPLAY_STALL_MS_MAX,
    WATCH_SWEEP_MS,
};
use crate::read::reads::readable_scope;
use crate::round::group_data::GroupData;
use ledger_core::hash::block_hash;
use ledger_core::types::{BlockAnnouncement, GroupId, NamespaceId, ScopeKey, VaultId};
use ledger_wire::messages::{Status, StatusCode, StreamEnd, StreamItem, StreamPayload};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a stream sends to its connection's write task, in order; `End` is the last event.
pub enum StreamEvent {
    /// One item. The write task subtracts one from `buffered` once the frame is on the socket.
    Item {
        item: StreamItem,
        buffered: Arc<AtomicUsize>,
    },
    End(StreamEnd),
    /// The `StreamEnd` of a request the router refused before any stream existed (the id may
    /// name another, open stream of the connection, which this must not close).
    Refused(StreamEnd),
}

/// A connection's stream channel (unbounded; each stream bounds its own share by `buffered`).
pub type StreamSender = flume::Sender<StreamEvent>;

/// A stream, named node-wide: the router's connection number and the opening request's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamKey {
    pub connection: u64,
    pub request_id: u64,
}

/// A `WatchBlocks` request as the router hands it to the core owning the scope's group.
pub struct WatchRequest {
    pub key: StreamKey,
    pub namespace_id: i64,
    pub vault_id: Option<i64>,
    pub start_height: u64,
    pub sink: StreamSender,
    /// Opened by another node relaying it for its client (D91): never relayed again.
    pub from_peer: bool,
}

/// Ends `key` at once with `status` (a stream refused before it reached a watcher registry).
pub fn refuse(sink: &StreamSender, key: StreamKey, status: Status) {
    let _ = sink.send(StreamEvent::End(StreamEnd { request_id: key.request_id, status }));
}

// ---------------------------------------------------------------------------------------------
// The delivery rule (pure)

/// What to do with a live announcement (SPEC §8.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveStep {
    /// It is `next_height`: send it.
    Deliver,
    /// Already sent, or replay will read it from the archive: drop it.
    Drop,
    /// It skips ahead of `next_height`: the stream goes back to replay from the archive.
    CatchUp,
}

/// What the replay task does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayStep {
    /// `next_height` is past the tip: the stream is live now.
    GoLive,
    /// Read and send the archived blocks `from..=to`.
    Read { from: u64, to: u64 },
    /// The client's buffer is full: try again later.
    Wait,
}

/// One stream's position: the next height it must send, and whether live announcements are
/// delivered (live) or left to the replay task (replay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    next_height: u64,
    live: bool,
}

impl Cursor {
    /// A stream that starts by replaying from `start_height` (≥ 1).
    pub fn new(start_height: u64) -> Cursor {
        Cursor { next_height: start_height, live: false }
    }

    pub fn next_height(&self) -> u64 {
        self.next_height
    }

    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Applies a live announcement of `height`.
    pub fn on_live(&mut self, height: u64) -> LiveStep {
        if !self.live || height < self.next_height {
            return LiveStep::Drop;
        }
        if height > self.next_height {
            self.live = false;
            return LiveStep::CatchUp;
        }
        self.next_height += 1;
        LiveStep::Deliver
    }

    /// Plans the next replay step against the scope's current `tip`, sending at most `budget`
    /// blocks. Must be called in the same synchronous step that read `tip`.
    pub fn plan_replay(&mut self, tip: u64, budget: usize) -> ReplayStep {
        assert!(!self.live, "a live stream does not replay");
        if self.next_height > tip {
            self.live = true;
            return ReplayStep::GoLive;
        }
        if budget == 0 {
            return ReplayStep::Wait;
        }
        let span = u64::try_from(budget - 1).unwrap_or(u64::MAX);
        ReplayStep::Read { from: self.next_height, to: tip.min(self.next_height.saturating_add(span)) }
    }

    /// Records that the archived block `height` was sent.
    pub fn on_replayed(&mut self, height: u64) {
        assert!(!self.live, "replayed a block while live");
        assert!(height == self.next_height, "replay out of order");
        self.next_height += 1;
    }
}

// ---------------------------------------------------------------------------------------------
// The registry

struct Watcher {
    key: StreamKey,
    group: GroupId,
    scope: ScopeKey,
    namespace_id: i64,
    vault_id: Option<i64>,
    cursor: Cell<Cursor>,
    sink: StreamSender,
    buffered: Arc<AtomicUsize>,
    ended: Cell<bool>,
}

/// Every open stream of this core, by key and by scope.
pub struct Watches {
    stream_buffer: usize,
    groups: RefCell<BTreeMap<GroupId, Rc<RefCell<GroupData>>>>,
    streams: RefCell<BTreeMap<StreamKey, Rc<Watcher>>>,
    by_scope: RefCell<BTreeMap<ScopeKey, BTreeMap<StreamKey, Rc<Watcher>>>>,
    /// Streams of groups this node is outside of, relayed from a member (`peer/watch_relay.rs`,
    /// D91): how to stop each, with the status to end it with.
    relays: RefCell<BTreeMap<StreamKey, flume::Sender<Status>>>,
    closed: Cell<bool>,
}

impl Watches {
    /// An empty registry whose streams buffer at most `stream_buffer` items each.
    pub fn new(stream_buffer: usize) -> Rc<Watches> {
        Rc::new(Watches {
            stream_buffer: stream_buffer.max(1),
            groups: RefCell::new(BTreeMap::new()),
            streams: RefCell::new(BTreeMap::new()),
            by_scope: RefCell::new(BTreeMap::new()),
            relays: RefCell::new(BTreeMap::new()),
            closed: Cell::new(false),
        })
    }

    /// Serves streams of `group` and installs its apply hook. Call again after the group's
    /// `GroupData` is replaced. The hook holds the registry weakly: no cycle through GroupData.
    pub fn attach(self: &Rc<Self>, group: GroupId, data: &Rc<RefCell<GroupData>>) {
        self.groups.borrow_mut().insert(group, data.clone());
        let weak = Rc::downgrade(self);
        data.borrow_mut().on_block_applied = Some(Rc::new(move |announcement: &BlockAnnouncement| {
            if let Some(watches) = weak.upgrade() {
                watches.announce(announcement);
            }
        }));
    }

    /// Lets go of a group's state while it is closed to be reopened (its files must be free);
    /// its streams stay open and follow the reopened group once it is attached again.
    pub fn detach(&self, group: GroupId) {
        self.groups.borrow_mut().remove(&group);
    }

    /// Open streams on this core, relayed ones included.
    pub fn len(&self) -> usize {
        self.streams.borrow().len() + self.relays.borrow().len()
    }

    /// Items a stream may have buffered for its connection.
    pub fn stream_buffer(&self) -> usize {
        self.stream_buffer
    }

    /// Registers a stream this core relays from a group's member; the receiver yields the
    /// status to end it with when it is cancelled or the node shuts down.
    pub fn open_relay(&self, key: StreamKey, start_height: u64) -> Result<flume::Receiver<Status>, Status> {
        if self.closed.get() {
            return Err(Status::unavailable("node is shutting down"));
        }
        if start_height == 0 {
            return Err(Status::invalid("start_height must be at least 1"));
        }
        if self.streams.borrow().contains_key(&key) || self.relays.borrow().contains_key(&key) {
            return Err(Status::invalid(format!(
                "request id {} already names an open stream",
                key.request_id
            )));
        }
        if self.len() >= WATCHERS_PER_CORE_MAX {
            return Err(Status::exhausted(format!("more than {WATCHERS_PER_CORE_MAX} streams on this core")));
        }
        // One slot: the first stop wins, later ones find it full.
        let (stop, stopped) = flume::bounded(1);
        self.relays.borrow_mut().insert(key, stop);
        Ok(stopped)
    }

    /// A relayed stream ended (it sent its own `StreamEnd`).
    pub fn relay_ended(&self, key: StreamKey) {
        self.relays.borrow_mut().remove(&key);
    }

    fn stop_relay(&self, key: StreamKey, status: Status) {
        if let Some(stop) = self.relays.borrow_mut().remove(&key) {
            let _ = stop.try_send(status);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Opens a stream (SPEC §5.1 item 5); any refusal ends it at once with a `StreamEnd`.
    pub fn open(self: &Rc<Self>, group: GroupId, request: WatchRequest) {
        let WatchRequest { key, namespace_id, vault_id, start_height, sink, .. } = request;
        if let Err(status) = self.check_open(group, key, namespace_id, vault_id, start_height) {
            refuse(&sink, key, status);
            return;
        }
        let scope = ScopeKey::new(NamespaceId(namespace_id), vault_id.map(VaultId));
        let watcher = Rc::new(Watcher {
            key,
            group,
            scope,
            namespace_id,
            vault_id,
            cursor: Cell::new(Cursor::new(start_height)),
            sink,
            buffered: Arc::new(AtomicUsize::new(0)),
            ended: Cell::new(false),
        });
        self.streams.borrow_mut().insert(key, watcher.clone());
        self.by_scope.borrow_mut().entry(scope).or_default().insert(key, watcher.clone());
        glommio::spawn_local(replay(self.clone(), watcher)).detach();
    }

    fn check_open(
        &self,
        group: GroupId,
        key: StreamKey,
        namespace_id: i64,
        vault_id: Option<i64>,
        start_height: u64,
    ) -> Result<(), Status> {
        if self.closed.get() {
            return Err(Status::unavailable("node is shutting down"));
        }
        if start_height == 0 {
            return Err(Status::invalid("start_height must be at least 1"));
        }
        if self.streams.borrow().contains_key(&key) {
            return Err(Status::invalid(format!(
                "request id {} already names an open stream",
                key.request_id
            )));
        }
        if self.len() >= WATCHERS_PER_CORE_MAX {
            return Err(Status::exhausted(format!("more than {WATCHERS_PER_CORE_MAX} streams on this core")));
        }
        let data = self
            .groups
            .borrow()
            .get(&group)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("group {group} is not served on this core")))?;
        let data = data.borrow();
        readable_scope(&data, namespace_id, vault_id).map(|_| ())
    }

    /// Ends `key` with `StreamEnd{Cancelled}` (client `CancelStream`, or its connection closed);
    /// an unknown key is ignored.
    pub fn cancel(&self, key: StreamKey) {
        self.stop_relay(key, Status::new(StatusCode::Cancelled, "stream cancelled"));
        self.end(key, Some(Status::new(StatusCode::Cancelled, "stream cancelled")));
    }

    /// Ends every stream with `Unavailable` and refuses new ones (node shutdown).
    pub fn close_all(&self) {
        self.closed.set(true);
        let keys: Vec<StreamKey> = self.streams.borrow().keys().copied().collect();
        for key in keys {
            self.end(key, Some(Status::unavailable("node is shutting down")));
        }
        let relays: Vec<StreamKey> = self.relays.borrow().keys().copied().collect();
        for key in relays {
            self.stop_relay(key, Status::unavailable("node is shutting down"));
        }
    }

    /// Removes `key`; sends its `StreamEnd` when `status` is given.
    fn end(&self, key: StreamKey, status: Option<Status>) {
        let Some(watcher) = self.streams.borrow_mut().remove(&key) else { return };
        watcher.ended.set(true);
        let mut by_scope = self.by_scope.borrow_mut();
        if let Some(streams) = by_scope.get_mut(&watcher.scope) {
            streams.remove(&key);
            if streams.is_empty() {
                by_scope.remove(&watcher.scope);
            }
        }
        drop(by_scope);
        if let Some(status) = status {
            refuse(&watcher.sink, key, status);
        }
    }

    /// The apply hook: one committed block of some scope of this core. Runs inside apply, so it
    /// only sends and (re)schedules replays; it never touches `GroupData`.
    fn announce(self: &Rc<Self>, announcement: &BlockAnnouncement) {
        let scope =
            ScopeKey::new(NamespaceId(announcement.namespace_id), Some(VaultId(announcement.vault_id)));
        let watchers: Vec<Rc<Watcher>> = match self.by_scope.borrow().get(&scope) {
            Some(streams) => streams.values().cloned().collect(),
            None => return,
        };
        for watcher in watchers {
            let mut cursor = watcher.cursor.get();
            let step = cursor.on_live(announcement.height);
            watcher.cursor.set(cursor);
            match step {
                LiveStep::Drop => {}
                LiveStep::CatchUp => {
                    glommio::spawn_local(replay(self.clone(), watcher)).detach();
                }
                LiveStep::Deliver => {
                    if watcher.buffered.load(Ordering::Acquire) >= self.stream_buffer {
                        let status = Status::exhausted(format!(
                            "stream buffer of {} items is full; resubscribe from height {}",
                            self.stream_buffer, announcement.height
                        ));
                        self.end(watcher.key, Some(status));
                    } else if !self.send(&watcher, announcement.clone()) {
                        self.end(watcher.key, None);
                    }
                }
            }
        }
    }

    /// Queues one item for the connection; false when the connection is gone.
    fn send(&self, watcher: &Watcher, announcement: BlockAnnouncement) -> bool {
        watcher.buffered.fetch_add(1, Ordering::AcqRel);
        let item =
            StreamItem { request_id: watcher.key.request_id, item: StreamPayload::Block(announcement) };
        watcher.sink.send(StreamEvent::Item { item, buffered: watcher.buffered.clone() }).is_ok()
    }

    /// One synchronous replay step of `watcher` (see `Cursor::plan_replay`).
    fn replay_step(&self, watcher: &Watcher) -> Replayed {
        let Some(data) = self.groups.borrow().get(&watcher.group).cloned() else {
            return Replayed::End(Some(Status::unavailable(format!("group {} closed", watcher.group))));
        };
        let data = data.borrow();
        let tip = match readable_scope(&data, watcher.namespace_id, watcher.vault_id) {
            Ok(scope) => scope.meta.height,
            Err(status) => return Replayed::End(Some(status)),
        };
        let buffered = watcher.buffered.load(Ordering::Acquire);
        let budget = self.stream_buffer.saturating_sub(buffered).min(WATCH_REPLAY_CHUNK_BLOCKS);
        let mut cursor = watcher.cursor.get();
        let step = cursor.plan_replay(tip, budget);
        watcher.cursor.set(cursor);
        let (from, to) = match step {
            ReplayStep::GoLive => return Replayed::Live,
            ReplayStep::Wait => return Replayed::Wait,
            ReplayStep::Read { from, to } => (from, to),
        };
        for height in from..=to {
            let header = match data.archive.get_header(watcher.scope, height) {
                Ok(Some(header)) => header,
                Ok(None) => {
                    return Replayed::End(Some(Status::new(
                        StatusCode::FailedPrecondition,
                        format!("block {height} of {} is not in the archive", watcher.scope),
                    )))
                }
                Err(e) => return Replayed::End(Some(Status::internal(format!("archive: {e}")))),
            };
            let announcement = BlockAnnouncement {
                namespace_id: header.namespace_id,
                vault_id: header.vault_id,
                height,
                block_hash: block_hash(&header),
                state_root: header.state_root,
                timestamp: header.timestamp,
            };
            if !self.send(watcher, announcement) {
                return Replayed::End(None);
            }
            let mut cursor = watcher.cursor.get();
            cursor.on_replayed(height);
            watcher.cursor.set(cursor);
        }
        Replayed::Sent
    }

    /// Ends streams whose scope is no longer readable and forgets those whose connection closed.
    fn sweep(&self) {
        let watchers: Vec<Rc<Watcher>> = self.streams.borrow().values().cloned().collect();
        for watcher in watchers {
            if watcher.sink.is_disconnected() {
                self.end(watcher.key, None);
                continue;
            }
            let Some(data) = self.groups.borrow().get(&watcher.group).cloned() else { continue };
            let Ok(data) = data.try_borrow() else { continue };
            if let Err(status) = readable_scope(&data, watcher.namespace_id, watcher.vault_id) {
                drop(data);
                self.end(watcher.key, Some(status));
            }
        }
    }
}

/// Outcome of one replay step (lives for one step on the stack; boxing would not pay).
#[allow(clippy::large_enum_variant)]
enum Replayed {
    Live,
    Sent,
    Wait,
    /// The stream is over: with a status to send, or silently (its connection is gone).
    End(Option<Status>),
}

/// Replays `watcher` from the archive until it is live (or ends).
async fn replay(watches: Rc<Watches>, watcher: Rc<Watcher>) {
    let mut stalled_since: Option<Instant> = None;
    loop {
        if watcher.ended.get() {
            return;
        }
        match watches.replay_step(&watcher) {
            Replayed::Live => return,
            Replayed::Sent => {
                stalled_since = None;
                glommio::yield_if_needed().await;
            }
            Replayed::Wait => {
                let since = *stalled_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_millis(WATCH_REPLAY_STALL_MS_MAX) {
                    let status = Status::exhausted(format!(
                        "stream buffer of {} items stayed full for {WATCH_REPLAY_STALL_MS_MAX} ms; \
                         resubscribe from height {}",
                        watches.stream_buffer,
                        watcher.cursor.get().next_height()
                    ));
                    watches.end(watcher.key, Some(status));
                    return;
                }
                glommio::timer::sleep(Duration::from_millis(WATCH_CREDIT_POLL_MS)).await;
            }
            Replayed::End(status) => {
                watches.end(watcher.key, status);
                return;
            }
        }
    }
}

/// Runs the registry's sweep every `WATCH_SWEEP_MS` until the registry closes or is dropped.
pub async fn sweep_loop(watches: Weak<Watches>) {
    loop {
        glommio::timer::sleep(Duration::from_millis(WATCH_SWEEP_MS)).await;
        let Some(watches) = watches.upgrade() else { return };
        if watches.closed.get() {
            return;
        }
        watches.sweep();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use ledger_core::types::VaultHealth;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Drives one `Cursor` the way the registry does: a scope whose tip grows by applied blocks
    /// (each announced live), interleaved with replay steps of random budgets. Returns the
    /// heights the stream sent, in order.
    fn simulate(seed: u64, tip0: u64, start: u64, blocks: u64, skips: bool) -> Vec<u64> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut tip = tip0;
        let mut cursor = Cursor::new(start);
        let mut replaying = true;
        let mut sent = Vec::new();
        let mut applied = 0;
        while applied < blocks || replaying {
            if applied < blocks && rng.gen_bool(0.5) {
                // Apply: the tip moves (sometimes by several heights at once, like a skipped
                // apply followed by a catch-up), then the newest block is announced live.
                let step = if skips && rng.gen_bool(0.1) { rng.gen_range(2..5) } else { 1 };
                tip += step;
                applied += 1;
                match cursor.on_live(tip) {
                    LiveStep::Deliver => sent.push(tip),
                    LiveStep::Drop => {}
                    LiveStep::CatchUp => {
                        assert!(!replaying, "catch-up requested while already replaying");
                        replaying = true;
                    }
                }
            } else if replaying {
                let budget = rng.gen_range(0..4);
                match cursor.plan_replay(tip, budget) {
                    ReplayStep::GoLive => replaying = false,
                    ReplayStep::Wait => assert_eq!(budget, 0),
                    ReplayStep::Read { from, to } => {
                        assert!(to - from < budget as u64);
                        assert!(to <= tip);
                        for h in from..=to {
                            cursor.on_replayed(h);
                            sent.push(h);
                        }
                    }
                }
            }
        }
        assert!(cursor.is_live());
        sent
    }

    #[test]
    fn t01_replay_then_live_is_gap_free() {
        // Proves the replay → live switch sends every height from start to the final tip
        // exactly once and in order, whatever the interleaving of applies and replay steps
        // (200 seeded interleavings, start below, at and above the initial tip).
        for seed in 0..200u64 {
            let tip0 = seed % 7;
            let start = 1 + seed % 9;
            let sent = simulate(seed, tip0, start, 30, false);
            let tip = tip0 + 30;
            let expected: Vec<u64> = (start..=tip).collect();
            assert_eq!(sent, expected, "seed {seed}");
        }
    }

    #[test]
    fn t02_live_skip_ahead_is_filled_from_the_archive() {
        // Proves a live announcement that skips heights sends the stream back to replay, which
        // fills the gap from the archive: the sent heights stay strictly consecutive.
        for seed in 0..200u64 {
            let sent = simulate(seed, 3, 1, 40, true);
            assert_eq!(sent.first(), Some(&1), "seed {seed}");
            assert!(sent.windows(2).all(|w| w[1] == w[0] + 1), "seed {seed}: {sent:?}");
        }
    }

    /// One namespace (7) with a vault (8) in an in-memory group, both at genesis.
    fn group_with_vault() -> (Rc<RefCell<GroupData>>, ScopeKey) {
        use ledger_core::state::{BlockContext, ScopeState};
        use ledger_core::types::{RetentionPolicy, Timestamp};
        let ctx = BlockContext { timestamp: Timestamp::default(), leader_id: 1, term: 1, committed_index: 1 };
        let mut data = GroupData::new(GroupId(1), crate::storage::archive::Archive::in_memory());
        for vault in [0, 8] {
            let key = ScopeKey::new(NamespaceId(7), Some(VaultId(vault)));
            data.scopes.insert(key, ScopeState::genesis(key, RetentionPolicy::default(), &ctx));
        }
        (Rc::new(RefCell::new(data)), ScopeKey::new(NamespaceId(7), Some(VaultId(8))))
    }

    fn announcement(height: u64) -> BlockAnnouncement {
        BlockAnnouncement {
            namespace_id: 7,
            vault_id: 8,
            height,
            block_hash: [height as u8; 32],
            state_root: [1; 32],
            timestamp: Default::default(),
        }
    }

    /// What one stream's connection received: heights, then the end status (if any). Like the
    /// connection's write task, it releases each item's buffer unit (a client that reads).
    fn drain(events: &flume::Receiver<StreamEvent>) -> (Vec<u64>, Option<StatusCode>) {
        let (mut heights, mut end) = (Vec::new(), None);
        while let Ok(event) = events.try_recv() {
            assert!(end.is_none(), "an event after the stream end");
            match event {
                StreamEvent::Item { item, buffered } => {
                    buffered.fetch_sub(1, Ordering::AcqRel);
                    let StreamPayload::Block(block) = item.item;
                    heights.push(block.height);
                }
                StreamEvent::End(e) | StreamEvent::Refused(e) => end = Some(e.status.code),
            }
        }
        (heights, end)
    }

    #[test]
    fn t04_registry_overflow_unhealthy_cancel_and_shutdown() {
        // Proves the registry end to end on one in-memory group: a stream at the tip goes live
        // and gets hook announcements; a client that releases nothing gets exactly
        // `stream_buffer` items then StreamEnd{ResourceExhausted}; a scope turning Diverged ends
        // its stream with Unavailable at the next sweep; cancel ends with Cancelled; shutdown
        // ends the rest with Unavailable and refuses new streams; start 0 is refused.
        let ex = glommio::LocalExecutorBuilder::default().make().unwrap();
        ex.run(async {
            let (data, scope) = group_with_vault();
            let watches = Watches::new(2);
            watches.attach(GroupId(1), &data);
            let hook = data.borrow().on_block_applied.clone().unwrap();
            let open = |request_id: u64, start_height: u64| {
                let (sink, events) = flume::unbounded();
                let key = StreamKey { connection: 1, request_id };
                let request = WatchRequest {
                    key,
                    namespace_id: 7,
                    vault_id: Some(8),
                    start_height,
                    sink,
                    from_peer: false,
                };
                watches.open(GroupId(1), request);
                events
            };
            let slow = open(1, 1);
            let unhealthy = open(2, 1);
            let cancelled = open(3, 1);
            let survivor = open(4, 1);
            let zero = open(5, 0);
            glommio::timer::sleep(std::time::Duration::from_millis(20)).await; // replays go live
            assert_eq!(watches.len(), 4);
            hook(&announcement(1));
            hook(&announcement(2));
            for reading in [&unhealthy, &cancelled, &survivor] {
                assert_eq!(drain(reading), (vec![1, 2], None));
            }
            // `slow` has released nothing: its buffer of 2 is full when block 3 comes.
            hook(&announcement(3));
            assert_eq!(drain(&slow), (vec![1, 2], Some(StatusCode::ResourceExhausted)));
            assert_eq!(drain(&zero), (vec![], Some(StatusCode::InvalidArgument)));
            hook(&announcement(3));
            hook(&announcement(2));

            watches.cancel(StreamKey { connection: 1, request_id: 3 });
            assert_eq!(drain(&cancelled), (vec![3], Some(StatusCode::Cancelled)), "duplicates dropped");

            data.borrow_mut().scopes.get_mut(&scope).unwrap().meta.health =
                VaultHealth::Diverged { expected: [1; 32], computed: [2; 32], at_height: 3 };
            watches.sweep();
            assert_eq!(drain(&unhealthy), (vec![3], Some(StatusCode::Unavailable)));
            data.borrow_mut().scopes.get_mut(&scope).unwrap().meta.health = VaultHealth::Healthy;

            watches.close_all();
            assert_eq!(drain(&survivor), (vec![3], Some(StatusCode::Unavailable)));
            let late = open(6, 1);
            assert_eq!(drain(&late), (vec![], Some(StatusCode::Unavailable)));
            assert!(watches.is_empty());
        });
    }

    #[test]
    fn t03_stale_and_early_live_items_are_dropped() {
        // Proves live items below next_height (duplicates) are dropped, that a replaying stream
        // leaves live items to the archive, and that a start above the tip waits for its height.
        let mut cursor = Cursor::new(5);
        assert_eq!(cursor.on_live(3), LiveStep::Drop, "replaying streams ignore live items");
        assert_eq!(cursor.plan_replay(3, 10), ReplayStep::GoLive, "start 5 > tip 3 waits live");
        assert_eq!(cursor.on_live(4), LiveStep::Drop);
        assert_eq!(cursor.on_live(5), LiveStep::Deliver);
        assert_eq!(cursor.on_live(5), LiveStep::Drop, "a duplicate is dropped");
        assert_eq!(cursor.next_height(), 6);
        assert_eq!(cursor.on_live(8), LiveStep::CatchUp);
        assert!(!cursor.is_live());
        assert_eq!(cursor.plan_replay(8, 0), ReplayStep::Wait);
        assert_eq!(cursor.plan_replay(8, 2), ReplayStep::Read { from: 6, to: 7 });
    }
}
