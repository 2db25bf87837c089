//! Service side of snapshots, retention and integrity checks: the `CreateSnapshot` and
//! `CheckIntegrity` request handlers (SPEC §5.3 items 27–28) and each group's maintenance task,
//! which takes snapshots on the SPEC §9.4 triggers (`snapshot_interval_blocks` group blocks since
//! the last one, or `snapshot_interval_secs` with something applied) and runs the retention pass
//! every `retention_interval_secs` (SPEC §9.5). The work itself lives in snapshot.rs,
//! retention.rs and integrity.rs; everything heavy runs on blocking threads.

// Errors travel as the wire `Status` (SPEC §4.5), built once at this edge.
#![allow(clippy::result_large_err)]

use crate::config::ShardConfig;
use crate::constants::{INTEGRITY_EVENTS_MAX, MAINTENANCE_TICK_MS};
use crate::read::reads;
use crate::round::group::Group;
use crate::storage::checkpoint::Checkpointer;
use ledger_core::types::{NamespaceId, ScopeKey, VaultId};
use ledger_wire::messages::{Response, Status};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn checkpointer(group: &Group) -> Result<Rc<Checkpointer>, Status> {
    crate::raft::state_machine::checkpointer_of(group.id)
        .ok_or_else(|| Status::unavailable(format!("group {} is not open on this core", group.id)))
}

/// `CreateSnapshot`: snapshots the scope's group now and answers with the scope's height and
/// root in it and the file's path.
pub async fn create_snapshot(
    group: &Group,
    config: &ShardConfig,
    namespace_id: i64,
    vault_id: Option<i64>,
) -> Result<Response, Status> {
    let key = ScopeKey::new(NamespaceId(namespace_id), vault_id.map(VaultId));
    reads::existing_scope(&group.data.borrow(), key)?;
    let checkpointer = checkpointer(group)?;
    let entry = crate::storage::snapshot::create(&group.data, &checkpointer, config)
        .await
        .map_err(|e| Status::internal(format!("snapshot of group {}: {e}", group.id)))?;
    let scope =
        entry.header.scope(key).ok_or_else(|| Status::internal(format!("snapshot does not hold {key}")))?;
    Ok(Response::CreateSnapshot {
        block_height: scope.vault_height,
        state_root: scope.state_root,
        snapshot_path: entry.path.display().to_string(),
    })
}

/// `CheckIntegrity`: the quick or full check of SPEC §9.7 (works on Diverged scopes too).
pub async fn check_integrity(
    group: &Group,
    namespace_id: i64,
    vault_id: Option<i64>,
    full_check: bool,
) -> Result<Response, Status> {
    let key = ScopeKey::new(NamespaceId(namespace_id), vault_id.map(VaultId));
    reads::existing_scope(&group.data.borrow(), key)?;
    let checkpointer = checkpointer(group)?;
    let issues = crate::maintenance::integrity::check(&group.data, &checkpointer, key, full_check)
        .await
        .map_err(|e| Status::internal(format!("integrity check of {key}: {e}")))?;
    crate::event!(
        info,
        "integrity_checked",
        group = %group.id,
        scope = %key,
        full = full_check,
        issues = issues.len()
    );
    for issue in issues.iter().take(INTEGRITY_EVENTS_MAX) {
        crate::event!(
            error,
            "integrity_issue",
            group = %group.id,
            scope = %key,
            height = issue.block_height,
            issue = issue.issue_type.as_str(),
            "{}",
            issue.description
        );
    }
    Ok(Response::CheckIntegrity { healthy: issues.is_empty(), issues })
}

/// Whether the SPEC §9.4 triggers call for a snapshot now.
pub fn snapshot_due(config: &ShardConfig, group_height: u64, last_height: u64, since_last: Duration) -> bool {
    let advanced = group_height > last_height;
    let by_blocks = config.snapshot_interval_blocks > 0
        && group_height >= last_height.saturating_add(config.snapshot_interval_blocks);
    let by_time = config.snapshot_interval_secs > 0
        && advanced
        && since_last >= Duration::from_secs(config.snapshot_interval_secs);
    by_blocks || by_time
}

/// The group's maintenance task; ends when the group's catalog is stopped (close).
pub async fn run(group: Rc<Group>, config: Arc<ShardConfig>) {
    let stopped = group.data.borrow().snapshots.stopped.clone();
    // Held weakly while asleep, so that a closed group releases its files at once (D56).
    let weak = Rc::downgrade(&group);
    drop(group);
    let mut last_retention = Instant::now();
    let retention_every = Duration::from_secs(config.retention_interval_secs);
    loop {
        glommio::timer::sleep(Duration::from_millis(MAINTENANCE_TICK_MS)).await;
        let Some(group) = weak.upgrade() else { return };
        if stopped.get() {
            return;
        }
        let Some(checkpointer) = crate::raft::state_machine::checkpointer_of(group.id) else { continue };
        let due = {
            let data = group.data.borrow();
            let last = data.snapshots.newest().map(|e| e.header.group_height).unwrap_or(0);
            snapshot_due(&config, data.group_height, last, data.snapshots.last_at.get().elapsed())
        };
        if due {
            if let Err(e) = crate::storage::snapshot::create(&group.data, &checkpointer, &config).await {
                crate::event!(error, "snapshot_failed", group = %group.id, error = %e);
            }
        }
        if last_retention.elapsed() >= retention_every {
            last_retention = Instant::now();
            if let Err(e) = crate::maintenance::retention::run_pass(&group.data).await {
                crate::event!(error, "retention_failed", group = %group.id, error = %e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Proves the snapshot triggers: every N group blocks, or after the interval when something
    /// was applied since the last snapshot; never for an idle group; 0 disables a trigger.
    #[test]
    fn t01_snapshot_triggers() {
        let mut config = ShardConfig::for_tests(std::path::PathBuf::new());
        config.snapshot_interval_blocks = 100;
        config.snapshot_interval_secs = 60;
        let (short, long) = (Duration::from_secs(1), Duration::from_secs(61));
        assert!(!snapshot_due(&config, 99, 0, short));
        assert!(snapshot_due(&config, 100, 0, short));
        assert!(snapshot_due(&config, 101, 0, long));
        assert!(!snapshot_due(&config, 100, 100, long));
        config.snapshot_interval_blocks = 0;
        assert!(!snapshot_due(&config, 1000, 0, short));
        config.snapshot_interval_secs = 0;
        assert!(!snapshot_due(&config, 1000, 0, long));
    }
}
