//! The background integrity check (SPEC §9.7): every `integrity_interval_secs`, each group runs
//! the quick check of every scope it hosts, from a low-share task queue of the core so that
//! requests go first; one checkpoint per round, and the chain and body scans on a thread at the
//! lowest CPU priority (`integrity::check_low_priority`). Findings are reported, never fixed: one `integrity_issue` event per issue,
//! counters for `/metrics`, and the last result per scope for `vault-status`.

use crate::round::group::{now_ts, Group};
use ledger_core::types::{ScopeKey, Timestamp, VaultStatus};
use ledger_wire::messages::IntegrityIssue;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

/// Shares of the integrity queue against the default queue's 1000: it runs when the core has
/// nothing else to do, or 1 % of the time under load.
const INTEGRITY_SHARES: usize = 10;

/// The last background check of one scope.
#[derive(Debug, Clone)]
pub struct IntegrityRecord {
    pub checked_at: Timestamp,
    pub issues: Vec<IntegrityIssue>,
}

/// This core's background-check counters, per group (for `/metrics`).
#[derive(Debug, Default, Clone)]
pub struct IntegrityCounters {
    pub checks: HashMap<u32, u64>,
    pub issues: HashMap<u32, u64>,
}

thread_local! {
    static LAST: RefCell<HashMap<(u32, ScopeKey), IntegrityRecord>> = RefCell::new(HashMap::new());
    static COUNTERS: RefCell<IntegrityCounters> = RefCell::new(IntegrityCounters::default());
}

/// The last background check of `scope` in `group` on this core, if one ran.
pub fn last(group: u32, scope: ScopeKey) -> Option<IntegrityRecord> {
    LAST.with(|l| l.borrow().get(&(group, scope)).cloned())
}

pub fn counters() -> IntegrityCounters {
    COUNTERS.with(|c| c.borrow().clone())
}

/// Starts the group's background check on this core's low-priority queue (no-op when the
/// interval is 0).
pub fn start(group: Rc<Group>) {
    let interval = group.config().integrity_interval_secs;
    if interval == 0 {
        return;
    }
    let task = run(group, Duration::from_secs(interval));
    crate::maintenance::low_priority::spawn("integrity", INTEGRITY_SHARES, task);
}

async fn run(group: Rc<Group>, interval: Duration) {
    let stopped = group.data.borrow().snapshots.stopped.clone();
    // Held weakly while asleep: a closed group (a storage-error reopen, D56) must release its
    // files now, not at the next check an hour later.
    let weak = Rc::downgrade(&group);
    drop(group);
    loop {
        glommio::timer::sleep(interval).await;
        let Some(group) = weak.upgrade() else { return };
        if stopped.get() {
            return;
        }
        let Some(checkpointer) = crate::raft::state_machine::checkpointer_of(group.id) else { continue };
        let scopes: Vec<ScopeKey> = group
            .data
            .borrow()
            .scopes
            .values()
            .filter(|s| s.meta.status != VaultStatus::Deleted)
            .map(|s| s.meta.key)
            .collect();
        let results = match crate::maintenance::integrity::check_low_priority(
            &group.data,
            &checkpointer,
            &scopes,
        )
        .await
        {
            Ok(results) => results,
            Err(e) => {
                tracing::warn!(group = group.id.0, error = %e, "background integrity check failed");
                continue;
            }
        };
        for (scope, result) in results {
            match result {
                Ok(issues) => record(group.id.0, scope, issues),
                Err(e) => {
                    tracing::warn!(group = group.id.0, %scope, error = %e, "background integrity check failed")
                }
            }
        }
    }
}

fn record(group: u32, scope: ScopeKey, issues: Vec<IntegrityIssue>) {
    for issue in &issues {
        crate::ops::vault_repair::note_event(
            "integrity_issue",
            Some(group),
            Some(scope),
            format!(
                "scope {scope} height {}: {} ({})",
                issue.block_height,
                issue.issue_type.as_str(),
                issue.description
            ),
        );
    }
    COUNTERS.with(|c| {
        let mut c = c.borrow_mut();
        *c.checks.entry(group).or_default() += 1;
        *c.issues.entry(group).or_default() += issues.len() as u64;
    });
    LAST.with(|l| l.borrow_mut().insert((group, scope), IntegrityRecord { checked_at: now_ts(), issues }));
}
