//! A property of the state tree shared by its own tests and by the server's, which run it with
//! the server's node-cache allocator installed (`server/tests/t02_tree_under_node_alloc.rs`): build
//! versions from any live version and drop versions in any order, and every live version keeps its
//! root, count, leaves and proofs. It drives the unsafe lineage freeing of `smt.rs` through the
//! public API only, so the same body checks the tree under any allocator.

use crate::smt::SparseMerkleTree;
use crate::smt::{fold_state_path, from_scratch_root, key_hash, leaf_node_hash, leaf_value_hash, Change};
use crate::types::{Hash, ZERO_HASH};
use proptest::prelude::*;
use std::collections::BTreeMap;

/// Keys are single bytes below this, so that updates often hit keys already present.
const KEYS: u8 = 24;

/// One step: which live version to act on (modulo their number), the sets (`Some(value)`) and
/// removes (`None`) to build from it, and the action (0 drops the version instead).
pub type Step = (u16, Vec<(u8, Option<u8>)>, u8);

/// Up to 40 steps of up to 12 changes each.
pub fn steps() -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(
        (
            any::<u16>(),
            proptest::collection::vec((0u8..KEYS, proptest::option::weighted(0.7, 0u8..3)), 0..12),
            0u8..4,
        ),
        1..40,
    )
}

/// Runs `steps` from an empty tree, checking every live version against its model after each step.
/// In debug builds the last drop of each lineage also checks that every node made was freed once.
pub fn versions_under_any_drop_order(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let mut alive: Vec<(SparseMerkleTree, BTreeMap<Hash, Hash>)> =
        vec![(SparseMerkleTree::new(), BTreeMap::new())];
    for (pick, block, action) in steps {
        if action == 0 && alive.len() > 1 {
            drop(alive.swap_remove(usize::from(pick) % alive.len()));
        } else {
            let (tree, model) = &alive[usize::from(pick) % alive.len()];
            let mut model = model.clone();
            let changes: Vec<Change> = block
                .into_iter()
                .map(|(key, value)| {
                    let kh = key_hash(&[key]);
                    let vh = value.map(|v| leaf_value_hash(&[key], &[v], 0, 1));
                    match vh {
                        Some(vh) => model.insert(kh, vh),
                        None => model.remove(&kh),
                    };
                    (kh, vh)
                })
                .collect();
            let next = tree.with_updates(changes);
            alive.push((next, model));
        }
        for (tree, model) in &alive {
            let leaves: Vec<(Hash, Hash)> = model.iter().map(|(k, v)| (*k, *v)).collect();
            prop_assert_eq!(tree.root(), from_scratch_root(leaves.iter().copied()));
            prop_assert_eq!(tree.len(), model.len() as u64);
            prop_assert_eq!(tree.leaves(), leaves);
            for key in 0..KEYS {
                let (leaf, siblings) = tree.prove(&[key]);
                let start = leaf.map_or(ZERO_HASH, |l| leaf_node_hash(&l.key_hash, &l.value_hash));
                prop_assert_eq!(fold_state_path(&key_hash(&[key]), start, &siblings), tree.root());
            }
        }
    }
    Ok(())
}
