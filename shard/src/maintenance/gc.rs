//! GC of expired entities (SPEC §3.8). Expired rows stay in state, and in the state root, until a
//! committed `ExpireEntity` removes them. Every `gc_interval_secs` the leader of each group scans
//! its healthy scopes for rows with `0 < expires_at <= now` and submits, per scope, one ordinary
//! transaction of up to `GC_EXPIRE_PER_SCOPE_MAX` `ExpireEntity{key, expired_at: expires_at}` as
//! client and actor `system:gc`, with that client's next sequence in the scope. Followers never
//! run it; `ForceGc` (`ledger-admin force-gc`) runs one cycle at once. The transaction goes
//! through the block builder like a client's, so every replica applies the same removals and the
//! roots agree; apply removes a row only if its `expires_at` still equals `expired_at`, so a row
//! re-set after the scan survives (the clock is never read at apply).
//!
//! The scan reads committed state in key order, `GC_SCAN_CHUNK_ROWS` rows at a time, and the
//! periodic cycle runs on a low-share task queue of the core: requests go first (like the
//! background integrity check).

// Errors travel as the wire `Status` (SPEC §4.5), built once at this edge.
#![allow(clippy::result_large_err)]

use crate::constants::{GC_EXPIRE_PER_SCOPE_MAX, GC_SCAN_CHUNK_ROWS};
use crate::round::group::{now_secs, refusal_of_scope, Group, PendingTx, Waiter};
use futures::channel::oneshot;
use ledger_core::state::{is_expired, ScopeState};
use ledger_core::types::{OpStatus, Operation, ScopeKey};
use ledger_wire::messages::{Response, Status, StatusCode, WriteResult};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::Bound;
use std::rc::Rc;
use std::time::Duration;

/// The GC's client id and actor (SPEC §3.8, §4.1).
pub const GC_CLIENT: &str = "system:gc";

/// Shares of the GC queue against the default queue's 1000 (as the integrity check's).
const GC_SHARES: usize = 10;

/// What one GC cycle did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcOutcome {
    /// Rows removed (`ExpireEntity` operations that applied with status `Expired`).
    pub expired: u64,
    /// Scopes scanned (namespace scopes included).
    pub scopes: u64,
    /// Scopes whose transaction did not commit, with why (the next cycle tries again).
    pub errors: Vec<String>,
}

impl GcOutcome {
    pub fn add(&mut self, other: GcOutcome) {
        self.expired += other.expired;
        self.scopes += other.scopes;
        self.errors.extend(other.errors);
    }
}

/// This core's GC counters per group (`gc_cycles_total`, `gc_expired_total`).
#[derive(Debug, Default, Clone)]
pub struct GcCounters {
    pub cycles: HashMap<u32, u64>,
    pub expired: HashMap<u32, u64>,
}

thread_local! {
    static COUNTERS: RefCell<GcCounters> = RefCell::new(GcCounters::default());
    /// One cycle per group at a time (the periodic one and `ForceGc`): a cycle takes the GC
    /// client's next sequence from committed state, so it waits for the previous one's.
    static LOCKS: RefCell<HashMap<u32, Rc<futures::lock::Mutex<()>>>> = RefCell::new(HashMap::new());
}

pub fn counters() -> GcCounters {
    COUNTERS.with(|c| c.borrow().clone())
}

/// One step of a scope's scan: looks at up to `rows` rows after `after` (from the first if
/// `None`) and adds an `ExpireEntity` for each row with `0 < expires_at <= now_secs` to `found`,
/// until it holds `max`. Returns the key to resume after, or `None` when the scan is over (the
/// last row was seen, or `found` is full).
pub fn scan_step(
    scope: &ScopeState,
    after: Option<&str>,
    now_secs: u64,
    rows: usize,
    max: usize,
    found: &mut Vec<Operation>,
) -> Option<String> {
    let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut last: Option<&String> = None;
    for (seen, (key, row)) in scope.entities_from(lower).enumerate() {
        if found.len() >= max {
            return None;
        }
        if seen == rows {
            return last.cloned();
        }
        if is_expired(row.expires_at, now_secs) {
            found.push(Operation::ExpireEntity { key: key.clone(), expired_at: row.expires_at });
        }
        last = Some(key);
    }
    None
}

/// The whole scan of one scope in committed state, chunk by chunk (the core may run other work
/// between chunks; rows changed meanwhile are judged again at apply).
pub(crate) async fn scan(group: &Group, key: ScopeKey, now_secs: u64) -> Vec<Operation> {
    let mut found = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let resume = {
            let data = group.data.borrow();
            let Some(scope) = data.scopes.get(&key) else { return found };
            scan_step(
                scope,
                after.as_deref(),
                now_secs,
                GC_SCAN_CHUNK_ROWS,
                GC_EXPIRE_PER_SCOPE_MAX,
                &mut found,
            )
        };
        match resume {
            Some(next) => after = Some(next),
            None => return found,
        }
        glommio::yield_if_needed().await;
    }
}

/// Queues the scope's `ExpireEntity` transaction as `system:gc` with that client's next
/// sequence; the receiver resolves with its outcome.
pub fn submit(
    group: &Group,
    key: ScopeKey,
    operations: Vec<Operation>,
) -> Result<oneshot::Receiver<Result<WriteResult, Status>>, Status> {
    let sequence = {
        let data = group.data.borrow();
        let scope =
            data.scopes.get(&key).ok_or_else(|| Status::not_found(format!("scope {key} not found")))?;
        scope.client_state(GC_CLIENT).last_committed_seq + 1
    };
    let (tx, rx) = oneshot::channel();
    let pending = PendingTx {
        scope: key,
        client_id: GC_CLIENT.into(),
        sequence,
        actor: GC_CLIENT.into(),
        group_sizes: vec![operations.len()],
        operations,
        include_tx_proof: false,
        waiter: Waiter::Internal(tx),
        deadline: None,
    };
    group.submit(pending).map_err(|(_, status)| status)?;
    Ok(rx)
}

/// Rows a committed GC transaction removed.
fn expired_by(result: Result<WriteResult, Status>) -> Result<u64, String> {
    match result {
        Ok(WriteResult::Success(s)) => {
            Ok(s.statuses.iter().flatten().filter(|st| **st == OpStatus::Expired).count() as u64)
        }
        Ok(WriteResult::Error(e)) => Err(format!("{:?}: {}", e.code, e.message)),
        Err(status) => Err(status.message),
    }
}

/// A scope the GC may write: exists, active and healthy. `Err` says why not (for `ForceGc` of
/// one scope; a cycle over every scope simply skips it).
fn collectable(group: &Group, key: ScopeKey) -> Result<(), Status> {
    let data = group.data.borrow();
    let scope = crate::read::reads::existing_scope(&data, key)?;
    refusal_of_scope(key, &scope.meta).map_or(Ok(()), Err)
}

/// One GC cycle of the group on its leader: of scope `only`, or of every scope it may write.
/// `forced` (`ForceGc`) records the cycle's event even when nothing expired.
pub async fn cycle(group: &Group, only: Option<ScopeKey>, forced: bool) -> Result<GcOutcome, Status> {
    if !group.is_leader() {
        return Err(Status::new(
            StatusCode::FailedPrecondition,
            format!("this node does not lead group {}: GC runs on its leader", group.id),
        ));
    }
    let lock = LOCKS.with(|l| l.borrow_mut().entry(group.id.0).or_default().clone());
    let _one_at_a_time = lock.lock().await;
    let scopes: Vec<ScopeKey> = match only {
        Some(key) => {
            collectable(group, key)?;
            vec![key]
        }
        None => {
            let keys: Vec<ScopeKey> = group.data.borrow().scopes.keys().copied().collect();
            keys.into_iter().filter(|k| collectable(group, *k).is_ok()).collect()
        }
    };
    let now = now_secs();
    let mut outcome = GcOutcome { scopes: scopes.len() as u64, ..GcOutcome::default() };
    // Every scope's transaction is queued before any is awaited: they share the next blocks.
    let mut waits = Vec::new();
    for key in scopes {
        let operations = scan(group, key, now).await;
        if operations.is_empty() {
            continue;
        }
        match submit(group, key, operations) {
            Ok(rx) => waits.push((key, rx)),
            Err(status) => outcome.errors.push(format!("{key}: {}", status.message)),
        }
    }
    for (key, rx) in waits {
        let result = rx.await.unwrap_or_else(|_| Err(Status::unavailable("GC transaction dropped")));
        match expired_by(result) {
            Ok(n) => outcome.expired += n,
            Err(why) => outcome.errors.push(format!("{key}: {why}")),
        }
    }
    COUNTERS.with(|c| {
        let mut c = c.borrow_mut();
        *c.cycles.entry(group.id.0).or_default() += 1;
        *c.expired.entry(group.id.0).or_default() += outcome.expired;
    });
    if forced || outcome.expired > 0 || !outcome.errors.is_empty() {
        crate::event!(
            info,
            "gc_cycle",
            group = %group.id,
            expired = outcome.expired,
            scopes = outcome.scopes,
            forced = forced,
            errors = outcome.errors.len(),
            "GC of group {} expired {} entities in {} scopes{}",
            group.id,
            outcome.expired,
            outcome.scopes,
            outcome.errors.first().map(|e| format!("; failed: {e}")).unwrap_or_default()
        );
    } else {
        crate::event!(debug, "gc_cycle", group = %group.id, expired = 0u64, scopes = outcome.scopes);
    }
    Ok(outcome)
}

/// The `ForceGc` answer for a cycle (or the sum of several).
pub fn response(outcome: GcOutcome) -> Response {
    let message = match outcome.errors.len() {
        0 => String::new(),
        n => format!("{n} scope(s) not collected (the next cycle retries): {}", outcome.errors.join("; ")),
    };
    Response::ForceGc {
        success: outcome.errors.is_empty(),
        message,
        expired_count: outcome.expired,
        vaults_scanned: outcome.scopes,
    }
}

/// `ForceGc` without a scope, on one core: a cycle of every group of this core that this node
/// leads; `None` when it leads none of them.
pub async fn cycle_led_groups(groups: Vec<Rc<Group>>) -> Option<GcOutcome> {
    let mut total: Option<GcOutcome> = None;
    for group in groups.into_iter().filter(|g| g.is_leader()) {
        let sum = total.get_or_insert_with(GcOutcome::default);
        match cycle(&group, None, true).await {
            Ok(outcome) => sum.add(outcome),
            Err(status) => sum.errors.push(format!("group {}: {}", group.id, status.message)),
        }
    }
    total
}

/// Starts the group's periodic GC on this core's low-priority queue (no-op when the interval
/// is 0). It runs on every replica and does nothing unless this one leads the group.
pub fn start(group: Rc<Group>) {
    let interval = group.config().gc_interval_secs;
    if interval == 0 {
        return;
    }
    crate::maintenance::low_priority::spawn("gc", GC_SHARES, run(group, Duration::from_secs(interval)));
}

async fn run(group: Rc<Group>, interval: Duration) {
    let stopped = group.data.borrow().snapshots.stopped.clone();
    // Held weakly while asleep, so that a closed group releases its files at once (D56).
    let weak = Rc::downgrade(&group);
    drop(group);
    loop {
        glommio::timer::sleep(interval).await;
        let Some(group) = weak.upgrade() else { return };
        if stopped.get() {
            return;
        }
        if !group.is_leader() {
            continue;
        }
        if let Err(status) = cycle(&group, None, false).await {
            tracing::debug!(group = group.id.0, error = %status.message, "GC cycle skipped");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ledger_core::state::{BlockContext, BlockDraft};
    use ledger_core::types::{NamespaceId, RetentionPolicy, Timestamp, Transaction, VaultId};

    fn ctx(height: u64) -> BlockContext {
        BlockContext {
            timestamp: Timestamp { secs: height as i64, nanos: 0 },
            leader_id: 1,
            term: 1,
            committed_index: height,
        }
    }

    /// A scope holding `rows` (key, expires_at).
    fn scope_with(rows: &[(String, u64)]) -> ScopeState {
        let key = ScopeKey::new(NamespaceId(1), Some(VaultId(1)));
        let mut scope = ScopeState::genesis(key, RetentionPolicy::default(), &ctx(0));
        let operations = rows
            .iter()
            .map(|(k, at)| Operation::SetEntity {
                key: k.clone(),
                value: b"v".to_vec(),
                expires_at: (*at != 0).then_some(*at),
                condition: None,
            })
            .collect();
        let mut draft = BlockDraft::new(&scope);
        let tx = Transaction {
            id: [1; 16],
            client_id: "c".into(),
            sequence: 1,
            operations,
            timestamp: ctx(1).timestamp,
            actor: "client:c".into(),
        };
        draft.try_apply(tx).unwrap();
        let (_, delta) = draft.finish(&ctx(1));
        scope.commit(delta);
        scope
    }

    fn keys(found: &[Operation]) -> Vec<(String, u64)> {
        found
            .iter()
            .map(|op| match op {
                Operation::ExpireEntity { key, expired_at } => (key.clone(), *expired_at),
                other => panic!("not an ExpireEntity: {other:?}"),
            })
            .collect()
    }

    fn full_scan(scope: &ScopeState, now: u64, rows: usize, max: usize) -> Vec<Operation> {
        let mut found = Vec::new();
        let mut after = None;
        while let Some(next) = scan_step(scope, after.as_deref(), now, rows, max, &mut found) {
            after = Some(next);
        }
        found
    }

    /// Proves which rows the scan picks: `0 < expires_at <= now` (never-expiring rows and rows
    /// expiring after now are left), each with its own `expires_at` as `expired_at`; the result
    /// is the same whatever the chunk size.
    #[test]
    fn t01_scan_picks_rows_expired_at_or_before_now() {
        let rows = vec![
            ("a".to_string(), 0),
            ("b".to_string(), 99),
            ("c".to_string(), 100),
            ("d".to_string(), 101),
            ("e".to_string(), 1),
            ("f".to_string(), u64::MAX),
        ];
        let scope = scope_with(&rows);
        let want = vec![("b".to_string(), 99), ("c".to_string(), 100), ("e".to_string(), 1)];
        for chunk in [1, 2, 5, 6, 100] {
            assert_eq!(keys(&full_scan(&scope, 100, chunk, 1000)), want, "chunk {chunk}");
        }
        assert!(full_scan(&scope, 0, 3, 1000).is_empty());
        assert_eq!(keys(&full_scan(&scope, 98, 3, 1000)), vec![("e".to_string(), 1)]);
    }

    /// Proves the per-scope cap: of 2500 expired rows a cycle takes the first 1000 in key order,
    /// and a later cycle (after they are gone) the next ones; a step over a chunk returns where
    /// to resume.
    #[test]
    fn t02_scan_stops_at_the_cap() {
        let rows: Vec<(String, u64)> = (0..2500).map(|i| (format!("k{i:05}"), 10)).collect();
        let scope = scope_with(&rows);
        let found = full_scan(&scope, 10, GC_SCAN_CHUNK_ROWS, GC_EXPIRE_PER_SCOPE_MAX);
        assert_eq!(found.len(), GC_EXPIRE_PER_SCOPE_MAX);
        let found = keys(&found);
        assert_eq!(found.first().unwrap().0, "k00000");
        assert_eq!(found.last().unwrap().0, "k00999");
        let mut partial = Vec::new();
        let resume = scan_step(&scope, None, 10, 300, 1000, &mut partial);
        assert_eq!(resume.as_deref(), Some("k00299"));
        assert_eq!(partial.len(), 300);
        let resume = scan_step(&scope, resume.as_deref(), 10, 300, 400, &mut partial);
        assert_eq!(resume, None, "the cap ends the scan");
        assert_eq!(partial.len(), 400);
    }
}
