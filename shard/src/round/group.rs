//! The block builder of one Raft group on its leader (SPEC §8.2–§8.3): a bounded pending queue of
//! accepted client transactions, and a loop that turns them into one `GroupBlock` at a time.
//!
//! A round opens when a transaction is queued and fewer than `in_flight_limit()` blocks are
//! proposed but not yet applied. Blocks are pipelined (docs/decisions.md D7): each draft builds on
//! the committed state plus the deltas of the blocks still in flight (`BlockDraft::over`), so the
//! next block's dry run overlaps the previous block's fsync, and every replica still replays
//! and checks exactly the roots the leader proposed. A round closes when the batch is full, when
//! `batch_max_delay_ms` has passed, or at once when eager commit is on (with no block in flight,
//! after waiting up to `batch_fill_wait_us`, or the last block's time when longer, for as many
//! transactions as the last round took, D51, D59). The dry run uses
//! `core::state::BlockDraft` per touched scope: scope checks, the §6.3 sequence check,
//! TxId/timestamp/actor assignment and the all-or-nothing apply. The deltas go into
//! `GroupData.speculative` so apply can commit them without recomputation. Scope lifecycle
//! commands (`AdminCommand`) are proposed only when no block is in flight, which keeps the
//! predicted `committed_index` of each block exact.

// Errors travel as the wire `Status` (SPEC §4.5), built once at this edge; boxing it would
// only add an allocation to every error path.
#![allow(clippy::result_large_err)]

use crate::config::ShardConfig;
pub use crate::constants::IDEM_CACHE_PER_CLIENT_MAX;
use crate::constants::{CATCH_UP_WAIT_MS, FILL_WAIT_BLOCK_TIME_MAX_US, PENDING_QUEUE_FACTOR};
use crate::metrics::{CommitReason, ProofKind};
use crate::raft::type_config::LedgerRaft;
use crate::reply::ReplySender;
use crate::round::group_data::{GroupData, SpeculativeBlock};
use crate::round::idem_cache::IdemCache;
use crate::round::tree_worker::{BuiltTree, TreeJob, TreeParent, TreeSlot};
use crate::yield_once::YieldOnce;
use futures::channel::oneshot;
use ledger_core::hash::{group_hash, tx_merkle_proof};
use ledger_core::state::{BlockContext, BlockDraft, ScopeMeta, SealedDraft, SequenceCheck};
use ledger_core::types::*;
use ledger_wire::messages::{
    ErrorDetail, Response, ResponseEnvelope, Status, StatusCode, WriteResult, WriteSuccess,
};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Where the outcome of one queued transaction goes.
pub enum Waiter {
    /// A client request: answer on its connection's channel.
    Client { request_id: u64, reply: ReplySender },
    /// A write issued by this server (registry transactions, bootstrap).
    Internal(oneshot::Sender<Result<WriteResult, Status>>),
}

impl Waiter {
    pub fn send(self, result: Result<WriteResult, Status>) {
        match self {
            Waiter::Client { request_id, reply } => {
                let result = result.map(Response::Write);
                // A closed channel means the connection went away; nothing is left to tell.
                let _ = reply.try_send(ResponseEnvelope { request_id, result, leader_hint: None });
            }
            Waiter::Internal(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

/// One transaction waiting for a block (already validated statelessly).
pub struct PendingTx {
    pub scope: ScopeKey,
    pub client_id: String,
    pub sequence: u64,
    pub actor: String,
    pub operations: Vec<Operation>,
    /// Sizes of the operation groups of a `BatchWrite` (a `Write` has one group).
    pub group_sizes: Vec<usize>,
    pub include_tx_proof: bool,
    pub waiter: Waiter,
    /// When the client stops waiting (SPEC §4.1); `None` for the server's own transactions.
    pub deadline: Option<Instant>,
}

/// Scope lifecycle work for the builder loop (SPEC §8.4 `AdminCommand`).
#[derive(Debug, Clone)]
pub enum ScopeCommand {
    Create { scope: ScopeKey, retention: RetentionPolicy },
    SetStatus { scope: ScopeKey, status: VaultStatus },
}

struct PendingAdmin {
    command: ScopeCommand,
    reply: oneshot::Sender<Result<ScopeMeta, Status>>,
}

/// A single-waiter wake-up flag for the builder task (same core only).
#[derive(Default)]
struct Signal {
    raised: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    fn raise(&self) {
        self.raised.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    fn wait(&self) -> SignalWait<'_> {
        SignalWait { signal: self }
    }
}

struct SignalWait<'a> {
    signal: &'a Signal,
}

impl Future for SignalWait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.raised.replace(false) {
            return Poll::Ready(());
        }
        *self.signal.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// The leader's wall clock as a block timestamp.
pub fn now_ts() -> Timestamp {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Timestamp { secs: d.as_secs() as i64, nanos: d.subsec_nanos() }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// `Unavailable` with `VaultUnavailable{health}` for a non-Healthy scope.
pub fn vault_unavailable(scope: ScopeKey, health: &VaultHealth) -> Status {
    Status {
        code: StatusCode::Unavailable,
        message: format!("scope {scope} is not healthy"),
        leader_hint: None,
        detail: Some(ErrorDetail::VaultUnavailable { health: health.clone() }),
    }
}

/// Why writes to a scope are refused now, if they are: deleted, read-only, or not healthy.
pub fn refusal_of_scope(key: ScopeKey, meta: &ScopeMeta) -> Option<Status> {
    match meta.status {
        VaultStatus::Active => {}
        VaultStatus::Deleted => return Some(Status::not_found(format!("scope {key} is deleted"))),
        VaultStatus::ReadOnly => {
            return Some(Status::new(StatusCode::PermissionDenied, format!("scope {key} is read-only")))
        }
    }
    (meta.health != VaultHealth::Healthy).then(|| vault_unavailable(key, &meta.health))
}

/// A Raft group on its owning core: the openraft handle, the applied state and the builder.
pub struct Group {
    pub id: GroupId,
    /// The core that owns the group (its Raft log is that core's, `raft/core_log.rs`).
    pub core: Cell<u16>,
    pub raft: LedgerRaft,
    /// One membership change of this group at a time (SPEC §10.7; admin/membership.rs).
    pub membership_lock: futures::lock::Mutex<()>,
    pub data: Rc<RefCell<GroupData>>,
    config: Arc<ShardConfig>,
    cache: Rc<RefCell<IdemCache>>,
    queue: RefCell<VecDeque<PendingTx>>,
    admin: RefCell<VecDeque<PendingAdmin>>,
    signal: Signal,
    /// Blocks proposed and not yet answered (≤ `config.blocks_in_flight_max`).
    in_flight: Cell<usize>,
    /// The last round gave the tree thread at least `pipeline_tree_changes_min` leaf changes:
    /// let the next rounds overlap it (up to `blocks_in_flight_max`); otherwise one block at a
    /// time (D48).
    pipelined: Cell<bool>,
    /// Log index the next proposal will get (valid while blocks are in flight).
    next_log_index: Cell<u64>,
    stopping: Cell<bool>,
    /// Timestamp of the last block this node built (block timestamps never go backwards).
    last_ts: Cell<Timestamp>,
    /// Rounds drafted whose trees are being built, oldest first (D21).
    sealing: RefCell<VecDeque<SealingBlock>>,
    /// Resolves when the newest drafted round was proposed (`true`) or abandoned.
    last_round: RefCell<Option<oneshot::Receiver<bool>>>,
    /// Transactions the last round took: the clients a closed loop sends back next (D51).
    last_batch: Cell<usize>,
    /// How long the last committed block took from its round's close to its answer (D59).
    last_block_time: Cell<Duration>,
    /// A round was abandoned: its reserved log index went unused, so the next round waits for
    /// the blocks in flight to drain and predicts indexes afresh.
    resync_log_index: Cell<bool>,
    /// Every transaction taken into a block that has not been answered yet, with the retries of
    /// it that arrived meanwhile: they wait for that block's outcome and get the same answer
    /// (SPEC §6.3 answers duplicates from committed client state only).
    in_flight_txs: RefCell<HashMap<TxKey, Vec<Waiter>>>,
    /// Condition failures judged over blocks not yet committed (this round's own earlier
    /// transactions, or blocks in flight): answered only once the block they depend on commits
    /// as built, else `Unavailable` — a rejection must never reveal state that may never commit
    /// (found by the linearizability test, D32).
    deferred: RefCell<Vec<DeferredRejection>>,
    /// Set while leadership is handed to another voter (ops/leadership.rs): no new block is
    /// proposed, so the successor is not behind when it is asked to elect itself.
    handing_over: Cell<bool>,
    /// When the oldest transaction still queued arrived (`batch_wait_ms`, metrics.rs).
    first_queued: Cell<Option<Instant>>,
    /// Where requests go while this node is outside the group (SPEC §10.5; `is_outside`).
    pub outside: RefCell<crate::peer::outside::OutsideRoute>,
}

/// One transaction's identity for duplicate detection: scope, client id, sequence.
type TxKey = (ScopeKey, String, u64);

impl Group {
    pub fn config(&self) -> &Arc<ShardConfig> {
        &self.config
    }

    pub fn new(
        id: GroupId,
        raft: LedgerRaft,
        data: Rc<RefCell<GroupData>>,
        config: Arc<ShardConfig>,
        cache: Rc<RefCell<IdemCache>>,
    ) -> Rc<Group> {
        Rc::new(Group {
            id,
            core: Cell::new(0),
            raft,
            membership_lock: futures::lock::Mutex::new(()),
            data,
            config,
            cache,
            queue: RefCell::new(VecDeque::new()),
            admin: RefCell::new(VecDeque::new()),
            signal: Signal::default(),
            in_flight: Cell::new(0),
            pipelined: Cell::new(false),
            next_log_index: Cell::new(0),
            stopping: Cell::new(false),
            last_ts: Cell::new(Timestamp::default()),
            sealing: RefCell::new(VecDeque::new()),
            last_round: RefCell::new(None),
            last_batch: Cell::new(0),
            last_block_time: Cell::new(Duration::ZERO),
            resync_log_index: Cell::new(false),
            in_flight_txs: RefCell::new(HashMap::new()),
            deferred: RefCell::new(Vec::new()),
            handing_over: Cell::new(false),
            first_queued: Cell::new(None),
            outside: RefCell::new(Default::default()),
        })
    }

    fn queue_cap(&self) -> usize {
        PENDING_QUEUE_FACTOR * self.config.batch_max_size.max(1)
    }

    /// Queues a validated transaction; `Err` gives the waiter back with the refusal.
    pub fn submit(&self, tx: PendingTx) -> Result<(), (Waiter, Status)> {
        if self.stopping.get() {
            return Err((tx.waiter, Status::unavailable("shard is shutting down")));
        }
        if self.queue.borrow().len() >= self.queue_cap() {
            return Err((tx.waiter, Status::exhausted(format!("group {} write queue is full", self.id))));
        }
        self.queue.borrow_mut().push_back(tx);
        if self.queue.borrow().len() == 1 {
            self.first_queued.set(Some(Instant::now()));
        }
        self.signal.raise();
        Ok(())
    }

    /// Queues a scope lifecycle command; resolves with the scope's metadata once applied.
    pub async fn scope_command(&self, command: ScopeCommand) -> Result<ScopeMeta, Status> {
        if self.stopping.get() {
            return Err(Status::unavailable("shard is shutting down"));
        }
        let (reply, rx) = oneshot::channel();
        self.admin.borrow_mut().push_back(PendingAdmin { command, reply });
        self.signal.raise();
        rx.await.unwrap_or_else(|_| Err(Status::unavailable("group closed")))
    }

    /// Asks the builder to finish: queued work is still built, new work is refused.
    /// `stop` was called: the group is closing (its background tasks end).
    pub fn is_stopping(&self) -> bool {
        self.stopping.get()
    }

    pub fn stop(&self) {
        self.stopping.set(true);
        self.signal.raise();
    }

    /// While set, no new block is proposed (ops/leadership.rs hands leadership over); clearing
    /// it wakes the builder.
    /// A leadership transfer of this group is under way (`ops/leadership.rs`).
    pub fn is_handing_over(&self) -> bool {
        self.handing_over.get()
    }

    pub fn set_handing_over(&self, on: bool) {
        self.handing_over.set(on);
        self.signal.raise();
    }

    pub fn pending(&self) -> usize {
        self.queue.borrow().len()
    }

    /// The leader hint of SPEC §4.5 for `NotLeader` answers.
    pub fn leader_hint(&self) -> Option<(u64, String)> {
        // Borrowed, not cloned: this runs for every forwarded request and heartbeat tick.
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let leader = m.current_leader?;
        let addr =
            m.membership_config.membership().get_node(&leader).map(|n| n.addr.clone()).unwrap_or_default();
        Some((leader, addr))
    }

    /// Whether this node hosts this data group without being one of its members, voter or
    /// learner, or not listed by `_system` as one (SPEC §10.5, D90): its copy holds no data (or
    /// stale data), so every request for the group is sent on to the members
    /// (`peer/outside.rs`). A member not yet reached by the leader that initialized the group,
    /// or a learner still catching up, counts as outside until it is one. `_system` has every
    /// node.
    pub fn is_outside(&self) -> bool {
        if self.config.cluster.is_none() || self.id.0 == 0 {
            return false;
        }
        let in_raft = {
            let m = self.raft.metrics();
            let m = m.borrow();
            m.membership_config.membership().get_node(&self.config.node_id).is_some()
        };
        // A replica removed while it was up may never get the entry that removes it: once
        // `_system` lists the members without it, its copy is stale and no longer served.
        !in_raft || self.outside.borrow().lists_others_only(self.config.node_id)
    }

    /// The node to send a request for this group to: the leader this node knows, or while it
    /// is outside the group, a member (`peer/outside.rs`).
    pub fn route_hint(&self) -> Option<(u64, String)> {
        self.leader_hint().or_else(|| {
            self.is_outside().then(|| self.outside.borrow().target(self.config.node_id)).flatten()
        })
    }

    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.current_leader == Some(self.config.node_id) && m.state == openraft::ServerState::Leader
    }

    /// SPEC §8.6 `stale`: this replica has not heard from a leader (or, leading, from a quorum)
    /// for more than 2 × the election timeout, so its reads may be older than replication lag.
    pub fn is_stale(&self) -> bool {
        use crate::raft::contact::Standing;
        let window = Duration::from_millis(self.config.raft_election_max_ms.saturating_mul(2));
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let me = self.config.node_id;
        let standing = if m.current_leader == Some(me) && m.state == openraft::ServerState::Leader {
            Standing::Leader { self_id: me, voters: m.membership_config.membership().voter_ids() }
        } else {
            Standing::Follower
        };
        let data = self.data.borrow();
        data.contact.is_stale(standing, std::time::Instant::now(), window)
    }

    /// Why openraft stopped this group, if it did (a log write failed: disk full, I/O error,
    /// or a failed apply). Such a group leads nothing until it is reopened.
    pub fn stopped(&self) -> Option<String> {
        self.raft.metrics().borrow().running_state.as_ref().err().map(|fatal| fatal.to_string())
    }

    /// The storage error openraft stopped this group on, if that is why it stopped (not a
    /// shutdown); maintenance/reopen.rs reopens such a group once its disk works.
    pub fn storage_failure(&self) -> Option<String> {
        match self.raft.metrics().borrow().running_state.as_ref() {
            Err(openraft::error::Fatal::StorageError(e)) => Some(e.to_string()),
            _ => None,
        }
    }

    fn not_leader(&self) -> Status {
        if let Some(fatal) = self.stopped() {
            // Not a leadership question: a client told NotLeader would look for another node.
            return Status::unavailable(format!(
                "group {} stopped on a storage error and takes no writes until it reopens (once its disk takes writes again): {fatal}",
                self.id
            ));
        }
        Status {
            code: StatusCode::NotLeader,
            message: format!("this node does not lead group {}", self.id),
            leader_hint: self.leader_hint(),
            detail: None,
        }
    }

    /// The builder loop; runs until `stop`, an empty queue and no block in flight.
    pub async fn run(self: Rc<Self>) {
        loop {
            let idle = self.queue.borrow().is_empty() && self.admin.borrow().is_empty();
            if idle {
                if self.stopping.get() && self.in_flight.get() == 0 {
                    return;
                }
                self.signal.wait().await;
                continue;
            }
            if !self.admin.borrow().is_empty() {
                // Admin entries go between blocks, never beside one (exact index prediction).
                if self.in_flight.get() > 0 {
                    self.signal.wait().await;
                    continue;
                }
                let admin: Vec<PendingAdmin> = self.admin.borrow_mut().drain(..).collect();
                for a in admin {
                    let result = self.propose_scope_command(a.command).await;
                    let _ = a.reply.send(result);
                }
                continue;
            }
            if self.handing_over.get() && !self.stopping.get() {
                self.signal.wait().await;
                continue;
            }
            if self.in_flight.get() >= self.in_flight_limit()
                || (self.resync_log_index.get() && self.in_flight.get() > 0)
            {
                self.signal.wait().await;
                continue;
            }
            self.resync_log_index.set(false);
            if self.in_flight.get() == 0 {
                self.wait_caught_up().await;
            }
            let reason = self.close_round().await;
            let batch = self.take_batch();
            if batch.is_empty() {
                continue;
            }
            self.note_round(reason, batch.len());
            self.last_batch.set(batch.len());
            self.round(batch).await;
        }
    }

    /// Blocks this group may have in flight now (D48). A second block in flight takes clients
    /// from the next one, and gains nothing measurable: before D50 it queued behind the first
    /// one's fsync in openraft (D8); since D50 it joins that fsync, and was measured again
    /// without gain. The exception is a large state tree job on the tree thread (many changes
    /// in a large vault, D21), which the next rounds then build behind this block.
    fn in_flight_limit(&self) -> usize {
        if self.pipelined.get() {
            self.config.blocks_in_flight_max.max(1)
        } else {
            1
        }
    }

    /// SPEC §8.2 step 2: up to `batch_max_size` queued transactions in arrival order. One whose
    /// deadline passed while it was queued is answered `DeadlineExceeded` and dropped, never
    /// applied (SPEC §4.1); once taken, a transaction is built and committed whatever its deadline
    /// (a retry with its sequence gets its outcome, SPEC §6.3).
    fn take_batch(&self) -> Vec<PendingTx> {
        let max = self.config.batch_max_size.max(1);
        let (batch, expired) = take_live(&mut self.queue.borrow_mut(), max, Instant::now());
        for p in expired {
            p.waiter.send(Err(crate::shard::deadline_exceeded()));
        }
        batch
    }

    /// SPEC §8.2 step 1: build only on fully applied state (a new leader's no-op included).
    async fn wait_caught_up(&self) {
        let wait = self.raft.wait(Some(Duration::from_millis(CATCH_UP_WAIT_MS)));
        let _ = wait
            .metrics(
                |m| m.last_applied.map(|l| l.index).unwrap_or(0) >= m.last_log_index.unwrap_or(0),
                "applied == last log index",
            )
            .await;
    }

    /// SPEC §8.3: eager ⇒ close once the already-arrived messages are queued; otherwise wait for
    /// a full batch or the delay, whichever comes first.
    async fn close_round(&self) -> CommitReason {
        let max = self.config.batch_max_size.max(1);
        if self.config.batch_eager_commit {
            // Lets other tasks of the executor run once (the inbox loop enqueues what has arrived).
            YieldOnce::default().await;
            self.wait_for_last_round_size(max).await;
            return if self.queue.borrow().len() >= max { CommitReason::Size } else { CommitReason::Eager };
        }
        self.wait_for_queue(max, Duration::from_millis(self.config.batch_max_delay_ms)).await;
        if self.queue.borrow().len() >= max {
            CommitReason::Size
        } else {
            CommitReason::Timeout
        }
    }

    /// D51: with no block in flight, waits (up to [`fill_wait_bound`]) for the queue to hold as
    /// many transactions as the last round took. Clients answered by that round send their next
    /// writes only after its reply, so a round closed at once takes just the clients that were
    /// not in it, and a group's clients split over twice the blocks, each paying a block's fixed
    /// cost. A lone client refills its one slot at once and never waits; pipelined rounds (a large
    /// tree job, D48) do not wait either.
    async fn wait_for_last_round_size(&self, max: usize) {
        let configured = Duration::from_micros(self.config.batch_fill_wait_us);
        if configured.is_zero() || self.in_flight.get() > 0 || self.pipelined.get() {
            return;
        }
        let bound = fill_wait_bound(configured, self.last_block_time.get());
        self.wait_for_queue(self.last_batch.get().min(max), bound).await;
    }

    /// Waits until `len` transactions are queued, `bound` has passed, or the group stops. A
    /// signal only means "something changed"; the loop re-checks the queue each time.
    async fn wait_for_queue(&self, len: usize, bound: Duration) {
        let opened = Instant::now();
        while self.queue.borrow().len() < len && !self.stopping.get() {
            let Some(left) = bound.checked_sub(opened.elapsed()).filter(|left| !left.is_zero()) else {
                break;
            };
            let timer = glommio::timer::sleep(left);
            futures::pin_mut!(timer);
            let wake = self.signal.wait();
            futures::pin_mut!(wake);
            futures::future::select(timer, wake).await;
        }
    }

    /// Counts a closed round (SPEC §11.3 `batch_size`, `batch_wait_ms`, `*_commits_total`). The
    /// wait is the oldest queued transaction's; one left behind by a full round counts from then.
    fn note_round(&self, reason: CommitReason, transactions: usize) {
        let waited = self.first_queued.take().map(|t| t.elapsed()).unwrap_or_default();
        if !self.queue.borrow().is_empty() {
            self.first_queued.set(Some(Instant::now()));
        }
        crate::metrics::with(|m| m.round_closed(self.id.0, reason, transactions, waited));
    }

    /// The block timestamp: leader clock at round open, never before the group's previous block.
    fn block_timestamp(&self, data: &GroupData) -> Timestamp {
        let prev = data.scopes.values().map(|s| s.meta.last_block_ts).max().unwrap_or_default();
        let ts = now_ts().max(prev).max(self.last_ts.get());
        self.last_ts.set(ts);
        ts
    }

    async fn propose_scope_command(&self, command: ScopeCommand) -> Result<ScopeMeta, Status> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        let (scope, payload) = {
            let data = self.data.borrow();
            match &command {
                ScopeCommand::Create { scope, retention } => {
                    if let Some(existing) = data.scopes.get(scope) {
                        return Ok(existing.meta.clone());
                    }
                    let cmd = AdminCommand::CreateScope {
                        namespace_id: scope.namespace_id.0,
                        vault_id: scope.vault_id.0,
                        retention_policy: *retention,
                        timestamp: self.block_timestamp(&data),
                        leader_id: self.config.node_id,
                    };
                    (*scope, cmd)
                }
                ScopeCommand::SetStatus { scope, status } => {
                    let Some(existing) = data.scopes.get(scope) else {
                        return Err(Status::not_found(format!("scope {scope} not found")));
                    };
                    if existing.meta.status == *status {
                        return Ok(existing.meta.clone());
                    }
                    let cmd = AdminCommand::SetScopeStatus {
                        namespace_id: scope.namespace_id.0,
                        vault_id: scope.vault_id.0,
                        status: *status,
                    };
                    (*scope, cmd)
                }
            }
        };
        assert!(self.in_flight.get() == 0, "admin entries are proposed only between blocks");
        let result = self.raft.client_write(LogPayload::Admin(payload)).await;
        match result {
            Ok(_) => {
                let data = self.data.borrow();
                data.scopes.get(&scope).map(|s| s.meta.clone()).ok_or_else(|| {
                    Status::internal(format!("scope {scope} missing after its admin entry applied"))
                })
            }
            Err(e) => Err(self.proposal_failed(&e)),
        }
    }

    /// A proposal that did not commit (leadership lost, quorum lost, shutdown) is `Unavailable`
    /// (SPEC §8.2 step 5): the client retries with the same sequence, which §6.3 makes safe. The
    /// current leader, if known, rides along as the hint.
    fn proposal_failed<E: std::error::Error>(&self, e: &openraft::error::RaftError<u64, E>) -> Status {
        if let openraft::error::RaftError::Fatal(fatal) = e {
            crate::event!(error, "group_stopped", group = %self.id, error = ?fatal);
            return Status::unavailable(format!(
                "group {} stopped on a storage error and takes no writes until it reopens (once its disk takes writes again): {fatal}",
                self.id
            ));
        }
        Status {
            code: StatusCode::Unavailable,
            message: format!("proposal to group {} did not commit: {e}", self.id),
            leader_hint: self.leader_hint(),
            detail: None,
        }
    }

    /// One block round (SPEC §8.2 steps 2–5): the dry run, then a task that awaits the round's
    /// trees and the round before it, completes the block and proposes it (so blocks reach the log
    /// in draft order) and answers its transactions. This returns after the dry run, so the next
    /// round is drafted while this one's trees are built and its block is made durable (D21).
    async fn round(self: &Rc<Self>, batch: Vec<PendingTx>) {
        if !self.is_leader() {
            let status = self.not_leader();
            for p in batch {
                p.waiter.send(Err(status.clone()));
            }
            return;
        }
        if self.in_flight.get() == 0 {
            let last = self.raft.metrics().borrow().last_log_index.unwrap_or(0);
            self.next_log_index.set(last + 1);
            // Every earlier round has finished and said whether it was proposed; this one
            // builds on committed state alone, so it follows none of them. Keeping the link made
            // one abandoned round doom every later one ("the block before it was abandoned").
            self.last_round.replace(None);
        }
        let round_closed = Instant::now();
        let Some(drafted) = self.dry_run(batch) else { return };
        assert!(self.in_flight.get() < self.config.blocks_in_flight_max.max(1), "too many blocks in flight");
        self.in_flight.set(self.in_flight.get() + 1);
        self.next_log_index.set(self.next_log_index.get() + 1);
        // Rounds complete and propose in the order they were drafted: each waits for the one
        // before it, and learns whether that one was proposed.
        let (completed, completed_rx) = oneshot::channel::<bool>();
        let predecessor = self.last_round.replace(Some(completed_rx));
        let group = self.clone();
        glommio::spawn_local(async move {
            let Drafted { ctx, jobs, accepted, group_height } = drafted;
            let trees_started = Instant::now();
            let trees = futures::future::join_all(jobs.into_iter().map(TreeJob::wait)).await;
            let trees_took = trees_started.elapsed();
            let nodes_hashed: u64 = trees.iter().flatten().map(|t| t.nodes_hashed).sum();
            let predecessor_proposed = match predecessor {
                Some(proposed) => proposed.await.unwrap_or(false),
                None => true,
            };
            let built = match group.complete_round(ctx, trees, accepted, group_height, predecessor_proposed) {
                Ok(built) => built,
                Err((status, accepted)) => {
                    group.abandon_round(group_height, status, accepted);
                    let _ = completed.send(false);
                    return;
                }
            };
            let Built { block, mut accepted } = built;
            let raft = group.raft.clone();
            let mut proposal =
                Box::pin(
                    async move { raft.client_write(LogPayload::Block(std::sync::Arc::new(block))).await },
                );
            // The first poll hands the entry to openraft's core (an unbounded channel send), so
            // the next round's block, proposed once told below, reaches the log after this one.
            let proposed = Instant::now();
            crate::metrics::with(|m| m.block_proposed(group.id.0, trees_took, nodes_hashed));
            let first = futures::poll!(proposal.as_mut());
            let _ = completed.send(true);
            let result = match first {
                std::task::Poll::Ready(result) => result,
                std::task::Poll::Pending => {
                    // A block that cannot commit (the group lost its majority) keeps its writers
                    // waiting no longer than the request deadline (SPEC §8.5: `Unavailable`);
                    // the entry itself stays proposed and may still commit later.
                    let deadline = glommio::timer::Timer::new(group.config.forward_timeout);
                    match futures::future::select(proposal, deadline).await {
                        futures::future::Either::Left((result, _)) => result,
                        futures::future::Either::Right((_, proposal)) => {
                            group.answer_stalled(group_height, &mut accepted);
                            proposal.await
                        }
                    }
                }
            };
            if result.is_ok() {
                crate::metrics::with(|m| m.block_applied(proposed.elapsed()));
                group.last_block_time.set(round_closed.elapsed());
            }
            group.finish_round(group_height, result, accepted);
        })
        .detach();
    }

    /// A round that cannot be proposed: its writes are answered `status` (the client retries with
    /// the same sequence, SPEC §6.3), and the log index it reserved is given up, so the next round
    /// waits for the blocks in flight to drain and then predicts indexes afresh.
    fn abandon_round(&self, group_height: u64, status: Status, accepted: Vec<Accepted>) {
        self.release_deferred(group_height, false, &[]);
        for a in accepted {
            for w in self.waiters_of(a).0 {
                w.send(Err(status.clone()));
            }
        }
        self.in_flight.set(self.in_flight.get() - 1);
        self.resync_log_index.set(true);
        self.signal.raise();
    }

    /// Answers the transactions of one proposed block once openraft resolved it.
    fn finish_round(
        &self,
        group_height: u64,
        result: Result<
            openraft::raft::ClientWriteResponse<crate::raft::type_config::TypeConfig>,
            openraft::error::RaftError<u64, openraft::error::ClientWriteError<u64, openraft::BasicNode>>,
        >,
        accepted: Vec<Accepted>,
    ) {
        self.in_flight.set(self.in_flight.get() - 1);
        self.signal.raise();
        let (failure, not_applied) = match result {
            Ok(response) => {
                let not_applied: Vec<ScopeKey> = match response.data {
                    crate::raft::state_machine::ApplyResult::Block {
                        group_height: applied,
                        diverged,
                        skipped,
                        ..
                    } => {
                        assert_eq!(applied, group_height, "apply answered another block");
                        diverged.into_iter().chain(skipped).collect()
                    }
                    _ => accepted.iter().map(|a| a.scope).collect(),
                };
                (None, not_applied)
            }
            Err(e) => {
                // Proposals built on this one cannot commit as built either.
                self.data.borrow_mut().speculative.retain(|s| s.group_height < group_height);
                (Some(self.proposal_failed(&e)), Vec::new())
            }
        };
        self.release_deferred(group_height, failure.is_none(), &not_applied);
        let mut cache = self.cache.borrow_mut();
        for a in accepted {
            let failure = failure.clone().or_else(|| {
                not_applied
                    .contains(&a.scope)
                    .then(|| Status::unavailable("block was applied differently than built; retry the write"))
            });
            match failure {
                Some(status) => {
                    for w in self.waiters_of(a).0 {
                        w.send(Err(status.clone()));
                    }
                }
                None => {
                    cache.insert(a.scope, &a.client_id, a.sequence, a.success.clone());
                    let (waiters, success) = self.waiters_of(a);
                    for w in waiters {
                        w.send(Ok(WriteResult::Success(success.clone())));
                    }
                }
            }
        }
    }

    /// Answers the writers of a block that did not commit within the request deadline with
    /// `Unavailable` (outcome unknown: a retry with the same sequence learns it), leaving the
    /// block in flight: `finish_round` answers whoever joins it later.
    fn answer_stalled(&self, group_height: u64, accepted: &mut [Accepted]) {
        self.release_deferred(group_height, false, &[]);
        let status = Status {
            code: StatusCode::Unavailable,
            message: format!(
                "block of group {} not committed within {} ms (no majority?); retry with the same sequence",
                self.id,
                self.config.forward_timeout.as_millis()
            ),
            leader_hint: self.leader_hint(),
            detail: None,
        };
        let mut in_flight = self.in_flight_txs.borrow_mut();
        for a in accepted.iter_mut() {
            let key = (a.scope, a.client_id.clone(), a.sequence);
            let retries = in_flight.get_mut(&key).map(std::mem::take).unwrap_or_default();
            for w in a.waiters.drain(..).chain(retries) {
                w.send(Err(status.clone()));
            }
        }
    }

    /// The block at `group_height` committed as built (`committed`, with `not_applied` scopes
    /// excepted) or did not: rejections that depended on it (and on nothing later) get their
    /// answer; if it did not, every rejection waiting on it or a later block is `Unavailable`
    /// (a retry judges the condition again).
    fn release_deferred(&self, group_height: u64, committed: bool, not_applied: &[ScopeKey]) {
        let due: Vec<DeferredRejection> = {
            let mut deferred = self.deferred.borrow_mut();
            let (due, keep) = std::mem::take(&mut *deferred)
                .into_iter()
                .partition(|d| !committed || d.after_height <= group_height);
            *deferred = keep;
            due
        };
        for d in due {
            if committed && !not_applied.contains(&d.scope) {
                d.waiter.send(Ok(d.result));
            } else {
                let message = format!(
                    "the condition was judged over group {} block {} which did not commit as built; retry the write",
                    self.id, d.after_height
                );
                d.waiter.send(Err(Status::unavailable(message)));
            }
        }
    }

    /// An answered transaction's waiters: its own and the retries that arrived while it was in
    /// flight. It leaves the in-flight set, so a later retry is judged by committed state.
    /// Also hands back the transaction's success (moved, not copied).
    fn waiters_of(&self, accepted: Accepted) -> (Vec<Waiter>, WriteSuccess) {
        let key = (accepted.scope, accepted.client_id, accepted.sequence);
        let retries = self.in_flight_txs.borrow_mut().remove(&key);
        assert!(retries.is_some(), "an accepted transaction is in the in-flight set until answered");
        let mut waiters = accepted.waiters;
        waiters.extend(retries.into_iter().flatten());
        (waiters, accepted.success)
    }

    /// The dry run: validates and applies every transaction to its scope's draft (over the
    /// sealed rounds before it), answers the rejected ones, seals the drafts, queues their trees
    /// on the tree thread and parks them in `sealing`; returns what completing the round needs.
    fn dry_run(&self, batch: Vec<PendingTx>) -> Option<Drafted> {
        let term = self.raft.metrics().borrow().current_term;
        let data_ref = self.data.borrow();
        let data: &GroupData = &data_ref;
        let sealing_ref = self.sealing.borrow();
        let sealing: &VecDeque<SealingBlock> = &sealing_ref;
        let ts = self.block_timestamp(data);
        let ctx = BlockContext {
            timestamp: ts,
            leader_id: self.config.node_id,
            term,
            committed_index: self.next_log_index.get(),
        };
        let Drafts { drafts, accepted, rejected } = self.draft_batch(data, sealing, batch, ts);
        let sealed: Vec<(ScopeKey, SealedDraft)> =
            drafts.into_iter().filter(|(_, draft)| !draft.is_empty()).map(|(k, d)| (k, d.seal())).collect();
        let in_flight_height = match (sealing.back(), data.speculative.back()) {
            (Some(last), _) => Some(last.group_height),
            (None, Some(last)) => Some(last.group_height),
            (None, None) => None,
        };
        let group_height = in_flight_height.unwrap_or(data.group_height) + 1;
        // A rejection depends on this round's block if it has one (earlier transactions of the
        // round may be what failed the condition), else on the newest block in flight.
        let depends_on = if sealed.is_empty() { in_flight_height } else { Some(group_height) };
        self.answer_or_defer(rejected, depends_on);
        if sealed.is_empty() {
            assert!(accepted.is_empty());
            return None;
        }
        let (jobs, scopes, threaded_changes) = submit_trees(data, sealing, sealed);
        drop(sealing_ref);
        self.pipelined.set(threaded_changes >= self.config.pipeline_tree_changes_min);
        self.sealing.borrow_mut().push_back(SealingBlock { group_height, scopes });
        Some(Drafted { ctx, jobs, accepted, group_height })
    }

    /// Applies each transaction of `batch` to its scope's draft, over the blocks in flight: a
    /// transaction of a missing or refused scope, a retry of one in flight and one out of sequence
    /// are answered (or joined) at once; the rest are accepted or rejected by their operations.
    fn draft_batch<'a>(
        &self,
        data: &'a GroupData,
        sealing: &'a VecDeque<SealingBlock>,
        batch: Vec<PendingTx>,
        ts: Timestamp,
    ) -> Drafts<'a> {
        let mut drafts: BTreeMap<ScopeKey, BlockDraft<'a>> = BTreeMap::new();
        let mut accepted: Vec<Accepted> = Vec::new();
        let mut per_scope: BTreeMap<ScopeKey, usize> = BTreeMap::new();
        let mut rejected: Vec<(ScopeKey, Waiter, WriteResult)> = Vec::new();
        let mut cache = self.cache.borrow_mut();
        for p in batch {
            let Some(scope) = data.scopes.get(&p.scope) else {
                p.waiter.send(Err(Status::not_found(format!("scope {} not found", p.scope))));
                continue;
            };
            if let Some(refusal) = refusal_of_scope(p.scope, &scope.meta) {
                p.waiter.send(Err(refusal));
                continue;
            }
            let tx_key = (p.scope, p.client_id.clone(), p.sequence);
            if let Some(retries) = self.in_flight_txs.borrow_mut().get_mut(&tx_key) {
                // The same sequence again while its first copy is in a block not yet answered
                // (this round's or an earlier one's): it gets that block's outcome.
                retries.push(p.waiter);
                continue;
            }
            let draft =
                drafts.entry(p.scope).or_insert_with(|| draft_over_in_flight(data, sealing, p.scope, scope));
            if let Some(answer) = answer_out_of_sequence(draft, &mut cache, &p) {
                p.waiter.send(answer);
                continue;
            }
            let tx = Transaction {
                id: *uuid::Uuid::new_v4().as_bytes(),
                client_id: p.client_id.clone(),
                sequence: p.sequence,
                operations: p.operations,
                timestamp: ts,
                actor: p.actor.clone(),
            };
            let tx_id = tx.id;
            match draft.try_apply(tx) {
                Ok(statuses) => {
                    let index = per_scope.entry(p.scope).or_insert(0);
                    self.in_flight_txs.borrow_mut().insert(tx_key, Vec::new());
                    accepted.push(Accepted {
                        scope: p.scope,
                        client_id: p.client_id,
                        sequence: p.sequence,
                        index_in_entry: *index,
                        include_tx_proof: p.include_tx_proof,
                        waiters: vec![p.waiter],
                        success: WriteSuccess {
                            tx_id,
                            block_height: 0,
                            tx_timestamp: ts,
                            actor: p.actor,
                            block_header: None,
                            tx_proof: None,
                            statuses: split_statuses(statuses, &p.group_sizes),
                        },
                    });
                    *index += 1;
                }
                Err(e) => rejected.push((p.scope, p.waiter, WriteResult::Error(e))),
            }
        }
        Drafts { drafts, accepted, rejected }
    }

    /// Rejected transactions are answered now if they depend on no block, else once the block
    /// they depend on (`after_height`) is answered: earlier transactions of that block may be what
    /// failed their conditions.
    fn answer_or_defer(&self, rejected: Vec<(ScopeKey, Waiter, WriteResult)>, depends_on: Option<u64>) {
        match depends_on {
            None => {
                for (_, waiter, result) in rejected {
                    waiter.send(Ok(result));
                }
            }
            Some(after_height) => self.deferred.borrow_mut().extend(
                rejected.into_iter().map(|(scope, waiter, result)| DeferredRejection {
                    after_height,
                    scope,
                    waiter,
                    result,
                }),
            ),
        }
    }

    /// Finishes the oldest sealed round with its built trees (D21): checks that everything it
    /// was built on is still the chain's tip (else the error to answer its writes with), fills in
    /// the headers, and pushes the block to `speculative`, ready to propose.
    #[allow(clippy::type_complexity)]
    fn complete_round(
        &self,
        ctx: BlockContext,
        trees: Vec<Option<BuiltTree>>,
        mut accepted: Vec<Accepted>,
        group_height: u64,
        predecessor_proposed: bool,
    ) -> Result<Built, (Status, Vec<Accepted>)> {
        let sealed = self.sealing.borrow_mut().pop_front();
        let Some(sealed) = sealed.filter(|s| s.group_height == group_height) else {
            unreachable!("rounds complete in the order they were sealed")
        };
        let abandoned = |why: &str, accepted| {
            let message = format!(
                "group {} block {group_height} was abandoned while it was built ({why}); retry the write",
                self.id
            );
            Err((Status::unavailable(message), accepted))
        };
        if let Some(why) = self.reason_to_abandon(predecessor_proposed) {
            return abandoned(why, accepted);
        }
        let data = self.data.borrow();
        let (parent_height, previous_group_hash) = match data.speculative.back() {
            Some(last) => (last.group_height, last.group_hash),
            None => (data.group_height, data.last_group_hash),
        };
        if parent_height + 1 != group_height {
            return abandoned("the block before it failed", accepted);
        }
        let completed = match complete_scopes(&data, sealed, trees, &accepted, &ctx) {
            Ok(completed) => completed,
            Err(why) => return abandoned(why, accepted),
        };
        drop(data);
        note_successes(&mut accepted, &completed.headers);
        let block = GroupBlock {
            group_id: self.id.0,
            group_height,
            previous_group_hash,
            vault_entries: completed.entries,
            timestamp: ctx.timestamp,
            leader_id: self.config.node_id,
            term: ctx.term,
            committed_index: ctx.committed_index,
        };
        let group_hash = group_hash(&block);
        let deltas = completed.deltas;
        self.data.borrow_mut().speculative.push_back(SpeculativeBlock { group_height, group_hash, deltas });
        Ok(Built { block, accepted })
    }

    /// Why a round whose trees are built can no longer be proposed, judged before its scopes:
    /// the block before it was abandoned, an injected fault, or this node no longer leads.
    fn reason_to_abandon(&self, predecessor_proposed: bool) -> Option<&'static str> {
        if !predecessor_proposed {
            return Some("the block before it was abandoned");
        }
        if self.config.faults.take_round_abandon() {
            return Some("injected fault");
        }
        if !self.is_leader() {
            return Some("leadership moved");
        }
        None
    }
}

/// What a round's dry run made of its batch: a draft per scope, the transactions accepted into
/// them, and those rejected by their operations (answered now or after the block they depend on).
struct Drafts<'a> {
    drafts: BTreeMap<ScopeKey, BlockDraft<'a>>,
    accepted: Vec<Accepted>,
    rejected: Vec<(ScopeKey, Waiter, WriteResult)>,
}

/// A scope's draft for this round, over its blocks proposed and sealed before it.
fn draft_over_in_flight<'a>(
    data: &'a GroupData,
    sealing: &'a VecDeque<SealingBlock>,
    key: ScopeKey,
    scope: &'a ledger_core::state::ScopeState,
) -> BlockDraft<'a> {
    let pending = data
        .speculative
        .iter()
        .flat_map(|s| s.deltas.iter().filter(|(k, _)| *k == key).map(|(_, d)| d))
        .collect();
    let sealed =
        sealing.iter().flat_map(|b| b.scopes.iter().filter(|s| s.key == key).map(|s| &s.draft)).collect();
    BlockDraft::over_sealed(scope, pending, sealed)
}

/// Hands each sealed draft's leaf changes to the group's trees (on the executor or the tree
/// thread, D49/D21), chained on its parent tree; returns the jobs, the sealing scopes and how many
/// changes went to the tree thread.
fn submit_trees(
    data: &GroupData,
    sealing: &VecDeque<SealingBlock>,
    sealed: Vec<(ScopeKey, SealedDraft)>,
) -> (Vec<TreeJob>, Vec<SealingScope>, usize) {
    let trees = data.trees.clone();
    let mut jobs = Vec::with_capacity(sealed.len());
    let mut scopes = Vec::with_capacity(sealed.len());
    let mut threaded_changes = 0usize;
    for (key, mut draft) in sealed {
        let parent = match draft.parent_tree.take() {
            Some(tree) => TreeParent::Built(tree),
            None => {
                // The draft follows a sealed block of its scope: chain on that block's tree.
                let slot = sealing
                    .iter()
                    .rev()
                    .find_map(|b| b.scopes.iter().find(|s| s.key == key).map(|s| s.tree.clone()));
                let Some(slot) = slot else {
                    unreachable!("a draft over sealed blocks has a sealed predecessor of its scope")
                };
                TreeParent::After(slot)
            }
        };
        let leaves = data.scopes.get(&key).map_or(0, |scope| scope.tree().len());
        if trees.is_threaded(leaves, draft.changes.len()) {
            threaded_changes += draft.changes.len();
        }
        let job = trees.submit(parent, std::mem::take(&mut draft.changes), leaves);
        scopes.push(SealingScope { key, draft, tree: job.slot() });
        jobs.push(job);
    }
    (jobs, scopes, threaded_changes)
}

/// A round's scopes completed into vault entries: the entries, their deltas for apply, and each
/// scope's header with its transaction hashes (kept only when a writer asked for a proof).
struct CompletedScopes {
    entries: Vec<VaultEntry>,
    deltas: Vec<(ScopeKey, ledger_core::state::ScopeDelta)>,
    headers: BTreeMap<ScopeKey, (BlockHeader, Vec<Hash>)>,
}

/// Completes each sealed scope's draft with its built tree on top of the scope's tip; `Err` names
/// why the round must be abandoned (a vault gone, a tree never built, a chain that moved).
fn complete_scopes(
    data: &GroupData,
    sealed: SealingBlock,
    trees: Vec<Option<BuiltTree>>,
    accepted: &[Accepted],
    ctx: &BlockContext,
) -> Result<CompletedScopes, &'static str> {
    let mut completed = CompletedScopes { entries: Vec::new(), deltas: Vec::new(), headers: BTreeMap::new() };
    for (scope, built) in sealed.scopes.into_iter().zip(trees) {
        let SealingScope { key, draft, .. } = scope;
        let Some((tip_height, tip_hash, tip_root)) = scope_tip(data, key) else {
            return Err("its vault is gone");
        };
        let Some(built) = built else {
            return Err("the tree it follows was never built");
        };
        let follows_tip = tip_height + 1 == draft.height()
            && draft.previous_hash().is_none_or(|hash| hash == tip_hash)
            && built.parent_root == tip_root;
        if !follows_tip {
            return Err("its vault's chain moved");
        }
        let (entry, delta) = draft.complete(built.tree, tip_hash, ctx);
        // The draft already hashed every transaction; copy the leaves only for proofs.
        let wants_proof = accepted.iter().any(|a| a.scope == key && a.include_tx_proof);
        let leaves = if wants_proof { delta.tx_hashes.clone() } else { Vec::new() };
        completed.headers.insert(key, (delta.header.clone(), leaves));
        completed.entries.push(entry);
        completed.deltas.push((key, delta));
    }
    Ok(completed)
}

/// The scope's tip now: its newest proposed block, else its committed state (height, block hash,
/// state root); `None` if the scope is gone.
fn scope_tip(data: &GroupData, key: ScopeKey) -> Option<(u64, Hash, Hash)> {
    data.speculative
        .iter()
        .rev()
        .find_map(|b| b.deltas.iter().find(|(k, _)| *k == key))
        .map(|(_, d)| (d.header.height, d.block_hash, d.header.state_root))
        .or_else(|| data.scopes.get(&key).map(|s| (s.meta.height, s.meta.last_block_hash, s.meta.state_root)))
}

/// Fills each accepted transaction's answer with its block height and, when asked, its block
/// header and transaction inclusion proof.
fn note_successes(accepted: &mut [Accepted], headers: &BTreeMap<ScopeKey, (BlockHeader, Vec<Hash>)>) {
    for a in accepted {
        // Every accepted transaction's scope has a sealed, non-empty draft.
        let Some((header, leaves)) = headers.get(&a.scope) else { continue };
        a.success.block_height = header.height;
        if a.include_tx_proof {
            a.success.block_header = Some(header.clone());
            let started = Instant::now();
            a.success.tx_proof = Some(tx_merkle_proof(leaves, a.index_in_entry));
            let took = started.elapsed();
            crate::metrics::with(|m| m.proof_generated(ProofKind::Tx, took));
        }
    }
}

/// A dry-run block whose state trees are being built.
/// A rejection waiting for the block at `after_height` (and those before it) to commit.
struct DeferredRejection {
    after_height: u64,
    scope: ScopeKey,
    waiter: Waiter,
    result: WriteResult,
}

struct Drafted {
    ctx: BlockContext,
    jobs: Vec<TreeJob>,
    accepted: Vec<Accepted>,
    group_height: u64,
}

/// A round between its dry run and its completion: the sealed drafts, which later drafts of the
/// same scopes build on, and where each scope's tree will be.
struct SealingBlock {
    group_height: u64,
    scopes: Vec<SealingScope>,
}

struct SealingScope {
    key: ScopeKey,
    draft: SealedDraft,
    tree: Arc<TreeSlot>,
}

struct Accepted {
    scope: ScopeKey,
    client_id: String,
    sequence: u64,
    index_in_entry: usize,
    include_tx_proof: bool,
    waiters: Vec<Waiter>,
    success: WriteSuccess,
}

struct Built {
    block: GroupBlock,
    accepted: Vec<Accepted>,
}

/// Takes up to `max` transactions from the front of `queue` whose deadline is after `now`; also
/// returns those it passed over because their deadline is not (`None` never expires).
fn take_live(queue: &mut VecDeque<PendingTx>, max: usize, now: Instant) -> (Vec<PendingTx>, Vec<PendingTx>) {
    let mut batch = Vec::with_capacity(max.min(queue.len()));
    let mut expired = Vec::new();
    while batch.len() < max {
        let Some(p) = queue.pop_front() else { break };
        if p.deadline.is_some_and(|deadline| deadline <= now) {
            expired.push(p);
        } else {
            batch.push(p);
        }
    }
    (batch, expired)
}

/// Splits one transaction's statuses back into its `BatchWrite` groups.
pub fn split_statuses(statuses: Vec<OpStatus>, group_sizes: &[usize]) -> Vec<Vec<OpStatus>> {
    let mut out = Vec::with_capacity(group_sizes.len());
    let mut it = statuses.into_iter();
    for &n in group_sizes {
        out.push(it.by_ref().take(n).collect());
    }
    out
}

/// How long a round may wait for the clients of the last one (D51, D59): `batch_fill_wait_us`,
/// or the group's last block time (round close to answer) when that is longer, at most
/// `FILL_WAIT_BLOCK_TIME_MAX_US`. A client that misses this round waits for the next one, which
/// opens only when this block is answered, so waiting up to one block time for it costs the
/// round's other writes no more than it spares the straggler, and the block carries it.
fn fill_wait_bound(configured: Duration, last_block_time: Duration) -> Duration {
    configured.max(last_block_time.min(Duration::from_micros(FILL_WAIT_BLOCK_TIME_MAX_US)))
}

/// The answer to a transaction whose sequence is not the client's next (SPEC §6.3): a duplicate of
/// a committed one (from the idempotency cache when it still holds it), one in a block in flight,
/// or a gap. `None`: it is the next.
fn answer_out_of_sequence(
    draft: &BlockDraft<'_>,
    cache: &mut IdemCache,
    p: &PendingTx,
) -> Option<Result<WriteResult, Status>> {
    match draft.check_sequence(&p.client_id, p.sequence) {
        SequenceCheck::Next => None,
        SequenceCheck::Duplicate(state) => Some(Ok(match cache.get(p.scope, &p.client_id, p.sequence) {
            Some(success) => WriteResult::Success(success),
            None => WriteResult::Error(WriteError {
                code: WriteErrorCode::AlreadyCommitted,
                key: String::new(),
                current_version: None,
                current_value: None,
                message: format!(
                    "sequence {} already committed (last committed {})",
                    p.sequence, state.last_committed_seq
                ),
                committed_tx_id: Some(state.last_committed_tx_id),
                committed_block_height: Some(state.last_committed_block_height),
                last_committed_sequence: Some(state.last_committed_seq),
            }),
        })),
        SequenceCheck::InFlight { .. } => {
            // Every sequence a block in flight took is in `in_flight_txs` (checked before this)
            // until that block is answered; answering retryable is safe if that ever fails.
            let message =
                format!("sequence {} is in a block that has not committed yet; retry the write", p.sequence);
            Some(Err(Status::unavailable(message)))
        }
        SequenceCheck::Gap { last } => Some(Ok(WriteResult::Error(WriteError {
            code: WriteErrorCode::SequenceGap,
            key: String::new(),
            current_version: None,
            current_value: None,
            message: format!("sequence {} skips ahead of last committed {last}", p.sequence),
            committed_tx_id: None,
            committed_block_height: None,
            last_committed_sequence: Some(last),
        }))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Statuses of a concatenated batch are handed back per group, empty groups included.
    #[test]
    fn t01_split_statuses() {
        use OpStatus::*;
        let s = vec![Created, Updated, Deleted, NotFound];
        assert_eq!(
            split_statuses(s, &[1, 0, 3]),
            vec![vec![Created], vec![], vec![Updated, Deleted, NotFound]]
        );
        assert_eq!(split_statuses(vec![Created], &[1]), vec![vec![Created]]);
    }

    fn pending(
        sequence: u64,
        deadline: Option<Instant>,
    ) -> (PendingTx, oneshot::Receiver<Result<WriteResult, Status>>) {
        let (tx, rx) = oneshot::channel();
        let p = PendingTx {
            scope: ScopeKey::new(NamespaceId(1), Some(VaultId(1))),
            client_id: "c".into(),
            sequence,
            actor: "client:c".into(),
            operations: Vec::new(),
            group_sizes: vec![0],
            include_tx_proof: false,
            waiter: Waiter::Internal(tx),
            deadline,
        };
        (p, rx)
    }

    /// The builder takes live transactions in arrival order up to the batch size; expired ones
    /// are passed over (not counted against the batch) and handed back to be answered
    /// `DeadlineExceeded`; the server's own (no deadline) never expire; the rest stay queued.
    #[test]
    fn t02_take_live_drops_expired_transactions() {
        let now = Instant::now();
        let past = Some(now - Duration::from_millis(1));
        let at_now = Some(now);
        let future = Some(now + Duration::from_secs(5));
        let deadlines = [past, future, None, at_now, future, past, future, future];
        let mut queue: VecDeque<PendingTx> = VecDeque::new();
        let mut receivers = Vec::new();
        for (i, d) in deadlines.iter().enumerate() {
            let (p, rx) = pending(i as u64 + 1, *d);
            queue.push_back(p);
            receivers.push(rx);
        }
        let (batch, expired) = take_live(&mut queue, 4, now);
        let seqs = |v: &[PendingTx]| v.iter().map(|p| p.sequence).collect::<Vec<_>>();
        assert_eq!(seqs(&batch), vec![2, 3, 5, 7]);
        assert_eq!(seqs(&expired), vec![1, 4, 6]);
        assert_eq!(queue.iter().map(|p| p.sequence).collect::<Vec<_>>(), vec![8]);
        // What the builder does with the expired ones: each waiter learns DeadlineExceeded.
        for p in expired {
            p.waiter.send(Err(crate::shard::deadline_exceeded()));
        }
        let mut first = receivers.remove(0);
        match first.try_recv() {
            Ok(Some(Err(status))) => assert_eq!(status.code, StatusCode::DeadlineExceeded),
            other => panic!("expired write answered {other:?}"),
        }
        let (batch, expired) = take_live(&mut queue, 4, now);
        assert_eq!((seqs(&batch), expired.len()), (vec![8], 0));
    }

    /// D59: the fill wait is the configured bound, stretched to the last block's time when that
    /// is longer, and never past the cap (one stalled block must not slow every later round).
    #[test]
    fn t03_fill_wait_stretches_to_the_last_block_time_up_to_the_cap() {
        let us = Duration::from_micros;
        let cap = us(FILL_WAIT_BLOCK_TIME_MAX_US);
        // No block yet, or blocks faster than the configured bound: the bound.
        assert_eq!(fill_wait_bound(us(200), Duration::ZERO), us(200));
        assert_eq!(fill_wait_bound(us(200), us(150)), us(200));
        // A slower block: as long as it took.
        assert_eq!(fill_wait_bound(us(200), us(900)), us(900));
        // A stalled block (a slow fsync) counts up to the cap only.
        assert_eq!(fill_wait_bound(us(200), Duration::from_millis(250)), cap);
        // A configured bound past the cap is kept (tests wait whole seconds, t28).
        assert_eq!(fill_wait_bound(Duration::from_secs(1), us(900)), Duration::from_secs(1));
    }
}
