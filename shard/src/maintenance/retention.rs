//! Body compaction of `Compacted{retention_blocks}` vaults (SPEC §9.5): every
//! `retention_interval_secs` (300 s), for each such scope covered by a snapshot at vault height
//! S, the bodies of its vault blocks below `min(S, tip − retention_blocks)` are deleted from
//! `blocks.redb`. Headers and index rows are never deleted (SPEC §12 invariant 18), so chain
//! checks, inclusion proofs with a client-supplied transaction and `GetBlock` (empty transactions,
//! `body_pruned: true`) keep working; replay then starts from a snapshot (integrity.rs).
//!
//! Every body below S is durable before the deletion: the snapshot at S was taken after a
//! checkpoint that flushed the archive up to it, and only bodies at or below S are touched.

use crate::error::ShardError;
use crate::round::group_data::GroupData;
use crate::storage::archive::BODIES;
use crate::storage::archive_scan::ArchiveScan;
use ledger_core::types::{RetentionMode, RetentionPolicy, ScopeKey};
use redb::{Database, Durability};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

/// Bodies of vault heights `< bound` may be deleted (SPEC §9.5); `None`: keep every body (Full
/// retention, or no snapshot covers the scope yet).
pub fn compaction_bound(policy: RetentionPolicy, tip: u64, snapshot_height: Option<u64>) -> Option<u64> {
    if policy.mode != RetentionMode::Compacted {
        return None;
    }
    let snapshot_height = snapshot_height?;
    Some(snapshot_height.min(tip.saturating_sub(policy.retention_blocks)))
}

/// Deletes `scope`'s bodies of vault heights in `from..bound` (height 0 has none) in one durable
/// transaction; returns how many rows were deleted. Blocking.
pub fn delete_bodies(db: &Database, scope: ScopeKey, from: u64, bound: u64) -> Result<u64, ShardError> {
    let from = from.max(1);
    if from >= bound {
        return Ok(0);
    }
    let rows = ArchiveScan::begin(db)?.index_range(scope, from..bound)?;
    let mut txn = db.begin_write().map_err(|e| ShardError::redb("blocks.redb begin_write", e))?;
    txn.set_durability(Durability::Immediate).map_err(|e| ShardError::redb("blocks.redb durability", e))?;
    let mut deleted = 0;
    {
        let mut bodies = txn.open_table(BODIES).map_err(|e| ShardError::redb("blocks.redb open", e))?;
        for (_, group_height, entry) in rows {
            if bodies
                .remove((group_height, entry))
                .map_err(|e| ShardError::redb("blocks.redb remove", e))?
                .is_some()
            {
                deleted += 1;
            }
        }
    }
    txn.commit().map_err(|e| ShardError::redb("blocks.redb commit", e))?;
    Ok(deleted)
}

/// The scopes to compact now: `(scope, from, bound)` with `from < bound` (on the core).
fn plan(data: &GroupData) -> Vec<(ScopeKey, u64, u64)> {
    let done = data.snapshots.compacted_below.borrow();
    data.scopes
        .values()
        .filter_map(|scope| {
            let key = scope.meta.key;
            let snapshot = data.snapshots.newest_scope(key).map(|(_, s)| s.vault_height);
            let bound = compaction_bound(scope.meta.retention, scope.meta.height, snapshot)?;
            let from = done.get(&key.scope_id()).copied().unwrap_or(1);
            (from < bound).then_some((key, from, bound))
        })
        .collect()
}

/// One retention pass over the group: plans on the core, deletes on a blocking thread. Returns
/// the number of bodies deleted. Must run inside the owning executor.
pub async fn run_pass(data: &Rc<RefCell<GroupData>>) -> Result<u64, ShardError> {
    // Serialized with snapshot builds and integrity checks (they read the same bodies).
    let lock = data.borrow().snapshots.lock.clone();
    let _one_at_a_time = lock.lock().await;
    let (work, db): (Vec<_>, Option<Arc<Database>>) = {
        let data = data.borrow();
        (plan(&data), data.archive.db().cloned())
    };
    let Some(db) = db else { return Ok(0) };
    if work.is_empty() {
        return Ok(0);
    }
    let group = data.borrow().group_id;
    let scopes = work.len();
    let done = work.iter().map(|(key, _, bound)| (key.scope_id(), *bound)).collect::<Vec<_>>();
    let deleted = glommio::executor()
        .spawn_blocking(move || -> Result<u64, ShardError> {
            let mut total = 0;
            for (key, from, bound) in work {
                total += delete_bodies(&db, key, from, bound)?;
            }
            Ok(total)
        })
        .await?;
    let data = data.borrow();
    data.snapshots.compacted_below.borrow_mut().extend(done);
    crate::event!(info, "retention_run", group = %group, scopes, bodies_deleted = deleted);
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::storage::archive::VAULT_INDEX;
    use ledger_core::types::{NamespaceId, VaultId};

    fn compacted(retention_blocks: u64) -> RetentionPolicy {
        RetentionPolicy { mode: RetentionMode::Compacted, retention_blocks }
    }

    /// Proves the SPEC §9.5 bound: min(S, tip − retention_blocks); nothing without a snapshot or
    /// under Full retention; a young chain (tip < retention_blocks) keeps everything.
    #[test]
    fn t01_compaction_bound() {
        assert_eq!(compaction_bound(compacted(100), 1000, Some(500)), Some(500));
        assert_eq!(compaction_bound(compacted(100), 550, Some(500)), Some(450));
        assert_eq!(compaction_bound(compacted(100), 50, Some(40)), Some(0));
        assert_eq!(compaction_bound(compacted(0), 300, Some(300)), Some(300));
        assert_eq!(compaction_bound(compacted(100), 1000, None), None);
        assert_eq!(compaction_bound(RetentionPolicy::default(), 1000, Some(900)), None);
    }

    /// Proves `delete_bodies` removes exactly the bodies of heights `from..bound` of its scope:
    /// another scope's bodies, the bound itself and every index row stay.
    #[test]
    fn t02_delete_bodies_only_below_bound() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("blocks.redb")).unwrap();
        let a = ScopeKey { namespace_id: NamespaceId(1), vault_id: VaultId(2) };
        let b = ScopeKey { namespace_id: NamespaceId(1), vault_id: VaultId(3) };
        let txn = db.begin_write().unwrap();
        {
            let mut index = txn.open_table(VAULT_INDEX).unwrap();
            let mut bodies = txn.open_table(BODIES).unwrap();
            for h in 1..=10u64 {
                // Group block h carries a (entry 0) and b (entry 1).
                index.insert((a.scope_id(), h), (h, 0u32)).unwrap();
                index.insert((b.scope_id(), h), (h, 1u32)).unwrap();
                bodies.insert((h, 0u32), [1u8].as_slice()).unwrap();
                bodies.insert((h, 1u32), [2u8].as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
        assert_eq!(delete_bodies(&db, a, 0, 6).unwrap(), 5);
        assert_eq!(delete_bodies(&db, a, 1, 6).unwrap(), 0);
        let scan = ArchiveScan::begin(&db).unwrap();
        for h in 1..=10u64 {
            assert_eq!(scan.body(h, 0).unwrap().is_some(), h >= 6, "scope a height {h}");
            assert!(scan.body(h, 1).unwrap().is_some(), "scope b height {h}");
        }
        assert_eq!(scan.index_range(a, 1..11).unwrap().len(), 10);
    }
}
