//! A replica's replay of a committed block with its state trees built on the group's tree
//! thread (D86). A follower re-runs every block it applies (SPEC §8.4); the state tree update of
//! a large vault took about a millisecond of its executor per full block, during which the
//! AppendEntries it had to answer waited. Here the executor runs the block's transactions and
//! seals them, the tree thread applies the leaf changes while the executor serves other work,
//! and the finished deltas go to `apply_block` like a leader's speculative ones: used only if
//! they are the entry's block on the scope as it is then. Whatever fails or does not fit here is
//! left to the ordinary replay in `apply_block`, which reports it.

use crate::round::group_data::GroupData;
use crate::round::tree_worker::{TreeJob, TreeParent};
use ledger_core::state::{BlockContext, ScopeDelta, SealedReplay};
use ledger_core::types::{GroupBlock, ScopeKey, VaultHealth};
use std::cell::RefCell;
use std::rc::Rc;

/// The deltas of `gb`'s vault entries whose trees are large enough for the tree thread, replayed
/// on the group's state as it is now (which must be the block just below `gb`). Empty for a
/// block this replica proposed (its deltas are kept already) and for anything unusual.
pub async fn prepare(data: &Rc<RefCell<GroupData>>, gb: &GroupBlock) -> Vec<(ScopeKey, ScopeDelta)> {
    let ctx = BlockContext::of_group_block(gb);
    let mut deltas = Vec::new();
    let mut jobs: Vec<(ScopeKey, SealedReplay, TreeJob)> = Vec::new();
    {
        let data = data.borrow();
        let proposed_here = data.speculative.iter().any(|s| s.group_height == gb.group_height);
        if data.fault.is_some() || proposed_here || gb.group_height != data.group_height + 1 {
            return Vec::new();
        }
        for entry in &gb.vault_entries {
            let key = super::state_machine::scope_key(entry.namespace_id, entry.vault_id);
            let Some(scope) = data.scopes.get(&key) else { continue };
            let leaves = scope.tree().len();
            // Each operation changes at most one leaf: too few to reach the thread stay inline.
            let ops: usize = entry.transactions.iter().map(|tx| tx.operations.len()).sum();
            if scope.meta.health != VaultHealth::Healthy || !data.trees.is_threaded(leaves, ops) {
                continue;
            }
            let Ok(Ok(mut replay)) = crate::isolation::catch(|| scope.replay_sealed(entry)) else { continue };
            let (parent, changes) = replay.take_tree_work();
            if !data.trees.is_threaded(leaves, changes.len()) {
                // Fewer changes than operations (several on one key): the tree is small work, done
                // here rather than running the transactions again in the apply.
                let finished = crate::isolation::catch(|| replay.finish(parent.with_updates(changes), &ctx));
                if let Ok(Ok(delta)) = finished {
                    deltas.push((key, delta));
                }
                continue;
            }
            let job = data.trees.submit(TreeParent::Built(parent), changes, leaves);
            jobs.push((key, replay, job));
        }
    }
    for (key, replay, job) in jobs {
        let Some(built) = job.wait().await else { continue };
        if let Ok(Ok(delta)) = crate::isolation::catch(|| replay.finish(built.tree, &ctx)) {
            deltas.push((key, delta));
        }
    }
    deltas
}
