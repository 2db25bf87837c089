//! The sparse Merkle state tree of SPEC §7.6 and its proofs (§7.7): a binary radix tree over
//! 256-bit key hashes with every leaf at the shallowest depth where it is alone. The tree is
//! persistent: nodes are immutable `Arc`s carrying their own hash, an update copies only the paths
//! it touches, so `clone()` is O(1), the leader computes a block's tree without disturbing the
//! committed one, and older roots stay alive for as long as someone holds them.

use crate::constants::STATE_PROOF_SIBLINGS_MAX;
use crate::error::ProofError;
use crate::hash::h;
use crate::hash_lanes::{hash_all, INPUT_BYTES};
use crate::types::*;
use std::cell::UnsafeCell;
use std::sync::Arc;

/// Node-hash domain bytes of SPEC §7.6.
const LEAF_DOMAIN: u8 = 0x00;
const INTERNAL_DOMAIN: u8 = 0x01;

/// `H(0x00 ‖ key_hash ‖ value_hash)`. A leaf's hash does not depend on its depth, which is what lets
/// an update move a leaf down or up the tree without re-hashing it.
#[inline]
pub fn leaf_node_hash(key_hash: &Hash, value_hash: &Hash) -> Hash {
    let mut buf = [0u8; 65];
    buf[0] = LEAF_DOMAIN;
    buf[1..33].copy_from_slice(key_hash);
    buf[33..].copy_from_slice(value_hash);
    h(&buf)
}

/// `H(0x01 ‖ left ‖ right)`; an empty child contributes `ZERO_HASH`.
#[inline]
pub fn internal_node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut buf = [0u8; 65];
    buf[0] = INTERNAL_DOMAIN;
    buf[1..33].copy_from_slice(left);
    buf[33..].copy_from_slice(right);
    h(&buf)
}

/// `key_hash = H(local_key)`.
#[inline]
pub fn key_hash(key: &[u8]) -> Hash {
    h(key)
}

/// `value_hash = H(leaf encoding)` with the §7.6 leaf encoding
/// `len(key) u32 LE ‖ key ‖ len(value) u32 LE ‖ value ‖ expires_at u64 BE ‖ version u64 BE`.
pub fn leaf_value_hash(key: &[u8], value: &[u8], expires_at: u64, version: u64) -> Hash {
    let key_len = u32::try_from(key.len()).expect("state key longer than u32::MAX");
    let value_len = u32::try_from(value.len()).expect("state value longer than u32::MAX");
    let mut hasher = blake3::Hasher::new();
    hasher.update(&key_len.to_le_bytes());
    hasher.update(key);
    hasher.update(&value_len.to_le_bytes());
    hasher.update(value);
    hasher.update(&expires_at.to_be_bytes());
    hasher.update(&version.to_be_bytes());
    *hasher.finalize().as_bytes()
}

/// Bit `depth` of a key hash; bit 0 is the most significant bit of byte 0 (SPEC §7.6).
#[inline]
pub fn bit(key_hash: &Hash, depth: usize) -> bool {
    (key_hash[depth / 8] >> (7 - depth % 8)) & 1 == 1
}

/// A node's own hash. An update makes its new nodes first and hashes them afterwards, a whole
/// level of the update at a time ([`PendingHashes`], `hash_lanes.rs`), so the hash is written once
/// after the node exists: by the update that made the node, before the tree holding it is returned.
/// From then on it is only read, so sharing a finished tree between threads is sound.
struct NodeHash(UnsafeCell<Hash>);

// SAFETY: written only while the node is reachable from the update that made it and nothing else
// (see `NodeHash`), then read-only.
unsafe impl Sync for NodeHash {}

impl NodeHash {
    fn pending() -> NodeHash {
        NodeHash(UnsafeCell::new(ZERO_HASH))
    }

    #[inline(always)]
    fn get(&self) -> Hash {
        // SAFETY: no write overlaps a read (see `NodeHash`).
        unsafe { *self.0.get() }
    }

    #[inline(always)]
    fn last_byte(&self) -> u8 {
        // SAFETY: as in `get`.
        unsafe { (*self.0.get())[31] }
    }

    /// SAFETY: the caller is the update that made this node, and nothing has read its hash yet.
    unsafe fn set(&self, hash: Hash) {
        // SAFETY: the caller's contract.
        unsafe { *self.0.get() = hash };
    }
}

impl std::fmt::Debug for NodeHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", crate::hash::to_hex(&self.get()))
    }
}

/// A leaf: 96 bytes, so with the `Arc` counts a 112-byte allocation.
#[derive(Debug)]
struct Leaf {
    /// `leaf_node_hash(key_hash, value_hash)`.
    hash: NodeHash,
    key_hash: Hash,
    value_hash: Hash,
}

/// An internal node: at least two leaves below, at most one child empty. 64 bytes (an 80-byte
/// allocation rather than the 128 bytes of a node sized for a leaf), so walking, copying and
/// dropping touch fewer cache lines and the tree at 1 M leaves takes ~190 MB rather than ~256 MB.
#[derive(Debug)]
struct Internal {
    hash: NodeHash,
    left: Child,
    right: Child,
}

const _: () = assert!(std::mem::size_of::<Internal>() == 64);

/// Sizes of the heap blocks behind a tree's nodes: an `Arc` puts its two counts before the node.
/// Every block of one update is allocated and every block of an old version freed, so the server's
/// allocator keeps freed blocks of exactly these sizes at hand (`server/src/node_alloc.rs`).
pub const NODE_BLOCK_SIZES: [usize; 2] = [
    std::mem::size_of::<Internal>() + 2 * std::mem::size_of::<usize>(),
    std::mem::size_of::<Leaf>() + 2 * std::mem::size_of::<usize>(),
];
/// Alignment of those blocks.
pub const NODE_BLOCK_ALIGN: usize = std::mem::align_of::<usize>();
const _: () = assert!(std::mem::align_of::<Internal>() <= NODE_BLOCK_ALIGN);
const _: () = assert!(std::mem::align_of::<Leaf>() <= NODE_BLOCK_ALIGN);
const _: () = assert!(std::mem::size_of::<Child>() == 16);
// States are built on helper threads and read while the next one is built.
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<SparseMerkleTree>();
};

/// A subtree: empty, a lone leaf, or an internal node.
#[derive(Debug, Clone, Default)]
enum Child {
    #[default]
    Empty,
    Leaf(Arc<Leaf>),
    Internal(Arc<Internal>),
}

impl Child {
    fn hash(&self) -> Hash {
        match self {
            Child::Empty => ZERO_HASH,
            Child::Leaf(leaf) => leaf.hash.get(),
            Child::Internal(node) => node.hash.get(),
        }
    }

    /// The same node (or both empty): nothing below changed.
    fn same(&self, other: &Child) -> bool {
        match (self, other) {
            (Child::Empty, Child::Empty) => true,
            (Child::Leaf(a), Child::Leaf(b)) => Arc::ptr_eq(a, b),
            (Child::Internal(a), Child::Internal(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// Load the lines that cloning, hashing and dropping this node read (its counts and hash; for a
    /// leaf also its key and value) and discard the values. The loads are independent, so issuing
    /// them for a whole level of the tree at once overlaps their cache misses, where the recursive
    /// walk would take them one after another (the atomic count updates of `clone` and `drop` are
    /// locked instructions, which wait for their line before anything later may load).
    #[inline(always)]
    fn touch(&self) {
        match self {
            Child::Empty => {}
            Child::Leaf(leaf) => {
                std::hint::black_box((Arc::strong_count(leaf), leaf.hash.last_byte(), leaf.value_hash[31]));
            }
            Child::Internal(node) => {
                std::hint::black_box((Arc::strong_count(node), node.hash.last_byte()));
            }
        }
    }
}

/// How many nodes the tree's `drop` touches before it releases them: enough misses in flight to
/// fill the core's line-fill buffers, few enough that the lines are still in L1 when used.
const TOUCH_CHUNK: usize = 32;

/// [`update`] warms the subtree below the first node on each path that has at most this many
/// changes: the nodes of one such batch fit in L2 together (the ~20 levels × 2 nodes of a 1000-key
/// batch at 1 M leaves do not, so warming it all first lost the early lines again).
const WARM_CHANGES_MAX: usize = 64;

/// Fetch every node that `update(node, depth, changes)` will read, level by level, so that its
/// depth-first walk finds them in cache. Reads only. The nodes of one level that have changes below
/// them have disjoint non-empty parts of `changes`, so a level has at most
/// [`WARM_CHANGES_MAX`] of them and fits in a fixed array (a heap allocation per warm would cost
/// more than it saves).
fn warm(node: &Child, depth: usize, changes: &[Change]) {
    debug_assert!(changes.len() <= WARM_CHANGES_MAX);
    let Child::Internal(node) = node else {
        return;
    };
    // Two frontiers, the current level's and the next's, used in turn.
    let mut frontiers: [Option<(&Internal, &[Change])>; 2 * WARM_CHANGES_MAX] = [None; 2 * WARM_CHANGES_MAX];
    frontiers[0] = Some((node, changes));
    let (mut level_len, mut depth, mut flip) = (1, depth, false);
    while level_len > 0 && depth < 256 {
        let (even, odd) = frontiers.split_at_mut(WARM_CHANGES_MAX);
        let (level, next) = if flip { (odd, even) } else { (even, odd) };
        let mut next_len = 0;
        for &(node, changes) in level[..level_len].iter().flatten() {
            let mid = changes.partition_point(|(key_hash, _)| !bit(key_hash, depth));
            for (child, part) in [(&node.left, &changes[..mid]), (&node.right, &changes[mid..])] {
                child.touch();
                if let (Child::Internal(child), false) = (child, part.is_empty()) {
                    next[next_len] = Some((child, part));
                    next_len += 1;
                }
            }
        }
        level_len = next_len;
        depth += 1;
        flip = !flip;
    }
}

/// A subtree an update returns and how far it is from hashed: 0 if its hash is known (an old node,
/// or empty), else 1 + the level of its deepest unhashed child (a new leaf is at level 1).
struct Built {
    child: Child,
    level: usize,
}

impl Built {
    fn done(child: Child) -> Built {
        Built { child, level: 0 }
    }
}

/// The nodes an update made, by level, to be hashed once the update's structure is complete: every
/// node of a level has only hashed children, so a level's nodes are hashed together.
#[derive(Default)]
struct PendingHashes {
    levels: Vec<Vec<Child>>,
}

impl PendingHashes {
    fn add(&mut self, level: usize, node: &Child) -> Built {
        if self.levels.len() < level {
            self.levels.resize_with(level, Vec::new);
        }
        self.levels[level - 1].push(node.clone());
        Built { child: node.clone(), level }
    }

    /// Hashes every pending node, lowest level first.
    fn resolve(self) {
        let mut inputs: Vec<[u8; INPUT_BYTES]> = Vec::new();
        let mut hashes: Vec<Hash> = Vec::new();
        for level in &self.levels {
            inputs.clear();
            inputs.extend(level.iter().map(|node| {
                let mut input = [0u8; INPUT_BYTES];
                match node {
                    Child::Leaf(leaf) => {
                        input[0] = LEAF_DOMAIN;
                        input[1..33].copy_from_slice(&leaf.key_hash);
                        input[33..].copy_from_slice(&leaf.value_hash);
                    }
                    Child::Internal(internal) => {
                        // Children are at lower levels: hashed already.
                        input[0] = INTERNAL_DOMAIN;
                        input[1..33].copy_from_slice(&internal.left.hash());
                        input[33..].copy_from_slice(&internal.right.hash());
                    }
                    Child::Empty => unreachable!("an empty subtree is never pending"),
                }
                input
            }));
            hashes.resize(inputs.len(), ZERO_HASH);
            hash_all(&inputs, &mut hashes);
            for (node, hash) in level.iter().zip(&hashes) {
                // SAFETY: this update made the node and nothing has read its hash: it is reachable
                // only from the tree being built, which is returned after this.
                match node {
                    Child::Leaf(leaf) => unsafe { leaf.hash.set(*hash) },
                    Child::Internal(internal) => unsafe { internal.hash.set(*hash) },
                    Child::Empty => {}
                }
            }
        }
    }
}

fn new_leaf(key_hash: Hash, value_hash: Hash, pending: &mut PendingHashes) -> Built {
    let leaf = Child::Leaf(Arc::new(Leaf { hash: NodeHash::pending(), key_hash, value_hash }));
    pending.add(1, &leaf)
}

/// The persistent sparse Merkle tree of one scope. Cloning shares every node.
#[derive(Debug, Clone, Default)]
pub struct SparseMerkleTree {
    root: Child,
    len: u64,
}

impl Drop for SparseMerkleTree {
    /// Free the nodes only this tree holds without recursion, [`TOUCH_CHUNK`] at a time from an
    /// explicit stack, touching each chunk before releasing it so that the cache misses on the
    /// (cold, when an old version leaves the history) nodes overlap.
    fn drop(&mut self) {
        let Child::Internal(root) = std::mem::take(&mut self.root) else {
            return;
        };
        let Some(root) = Arc::into_inner(root) else {
            return;
        };
        let mut stack = Vec::new();
        stack.push(root.left);
        stack.push(root.right);
        let mut chunk: [Child; TOUCH_CHUNK] = Default::default();
        while !stack.is_empty() {
            let from = stack.len().saturating_sub(TOUCH_CHUNK);
            let taken = stack.len() - from;
            for (slot, child) in chunk.iter_mut().zip(stack.drain(from..)) {
                child.touch();
                *slot = child;
            }
            for slot in &mut chunk[..taken] {
                if let Child::Internal(node) = std::mem::take(slot) {
                    if let Some(node) = Arc::into_inner(node) {
                        stack.push(node.left);
                        stack.push(node.right);
                    }
                }
            }
        }
    }
}

/// One requested change: `(key_hash, Some(value_hash))` sets, `(key_hash, None)` removes.
pub type Change = (Hash, Option<Hash>);

impl SparseMerkleTree {
    pub fn new() -> Self {
        SparseMerkleTree { root: Child::Empty, len: 0 }
    }

    /// The state root (`ZERO_HASH` when empty).
    pub fn root(&self) -> Hash {
        self.root.hash()
    }

    /// Number of leaves.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value hash stored for `key_hash`, if any.
    pub fn get(&self, key_hash: &Hash) -> Option<Hash> {
        let mut cur = &self.root;
        let mut depth = 0;
        loop {
            match cur {
                Child::Empty => return None,
                Child::Leaf(leaf) => return (leaf.key_hash == *key_hash).then_some(leaf.value_hash),
                Child::Internal(node) => {
                    cur = if bit(key_hash, depth) { &node.right } else { &node.left };
                    depth += 1;
                }
            }
        }
    }

    /// A new tree with `changes` applied (later duplicates of a key win). Only the paths of the
    /// changed keys are copied and every touched node is hashed once; the receiver is unchanged.
    pub fn with_updates(&self, changes: impl IntoIterator<Item = Change>) -> SparseMerkleTree {
        let mut changes: Vec<Change> = changes.into_iter().collect();
        if changes.is_empty() {
            return self.clone();
        }
        // Stable sort keeps the request order within one key; keep the last change of each run.
        changes.sort_by_key(|change| change.0);
        let mut write = 0;
        for read in 0..changes.len() {
            if read + 1 < changes.len() && changes[read + 1].0 == changes[read].0 {
                continue;
            }
            changes[write] = changes[read];
            write += 1;
        }
        changes.truncate(write);

        let mut len_delta: i64 = 0;
        let mut pending = PendingHashes::default();
        let root = update(&self.root, 0, &changes, false, &mut len_delta, &mut pending).child;
        pending.resolve();
        let len = self.len.checked_add_signed(len_delta).expect("state tree leaf count underflow");
        SparseMerkleTree { root, len }
    }

    /// Build a tree holding exactly `leaves` (`(key_hash, value_hash)`).
    pub fn from_leaves(leaves: impl IntoIterator<Item = (Hash, Hash)>) -> SparseMerkleTree {
        SparseMerkleTree::new().with_updates(leaves.into_iter().map(|(k, v)| (k, Some(v))))
    }

    /// The path for `key` (SPEC §7.7): the leaf where the walk stops (the key's own, another key
    /// sharing the path, or none for an empty subtree) and the siblings from the root down.
    pub fn prove(&self, key: &[u8]) -> (Option<StateLeaf>, Vec<Hash>) {
        self.prove_key_hash(&key_hash(key))
    }

    /// [`Self::prove`] for an already-hashed key.
    pub fn prove_key_hash(&self, key_hash: &Hash) -> (Option<StateLeaf>, Vec<Hash>) {
        let mut siblings = Vec::new();
        let mut cur = &self.root;
        let mut depth = 0;
        loop {
            match cur {
                Child::Empty => return (None, siblings),
                Child::Leaf(leaf) => {
                    let leaf = StateLeaf { key_hash: leaf.key_hash, value_hash: leaf.value_hash };
                    return (Some(leaf), siblings);
                }
                Child::Internal(node) => {
                    let (next, beside) = if bit(key_hash, depth) {
                        (&node.right, &node.left)
                    } else {
                        (&node.left, &node.right)
                    };
                    siblings.push(beside.hash());
                    cur = next;
                    depth += 1;
                }
            }
        }
    }

    /// Every `(key_hash, value_hash)` in key-hash order (for tests and integrity checks).
    pub fn leaves(&self) -> Vec<(Hash, Hash)> {
        fn walk(subtree: &Child, out: &mut Vec<(Hash, Hash)>) {
            match subtree {
                Child::Empty => {}
                Child::Leaf(leaf) => out.push((leaf.key_hash, leaf.value_hash)),
                Child::Internal(node) => {
                    walk(&node.left, out);
                    walk(&node.right, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &mut out);
        out
    }
}

/// Apply the sorted, de-duplicated `changes` (all sharing `node`'s path prefix of `depth` bits) to
/// `node`, returning the new subtree. Untouched subtrees are shared, not copied. New nodes are
/// queued in `pending` to be hashed once the whole update is built.
/// `warmed` says whether an ancestor already ran [`warm`] over this node.
fn update(
    node: &Child,
    depth: usize,
    changes: &[Change],
    warmed: bool,
    len_delta: &mut i64,
    pending: &mut PendingHashes,
) -> Built {
    let Some(first) = changes.first() else {
        return Built::done(node.clone());
    };
    if !warmed && changes.len() <= WARM_CHANGES_MAX {
        warm(node, depth, changes);
    }
    let warmed = warmed || changes.len() <= WARM_CHANGES_MAX;
    match node {
        Child::Empty => {
            if changes.len() == 1 {
                return match first.1 {
                    Some(value_hash) => {
                        *len_delta += 1;
                        new_leaf(first.0, value_hash, pending)
                    }
                    None => Built::done(Child::Empty),
                };
            }
            let (left, right) =
                descend(&Child::Empty, &Child::Empty, depth, changes, warmed, len_delta, pending);
            combine(left, right, pending)
        }
        Child::Leaf(leaf) => {
            if changes.len() == 1 {
                if first.0 == leaf.key_hash {
                    return match first.1 {
                        None => {
                            *len_delta -= 1;
                            Built::done(Child::Empty)
                        }
                        Some(v) if v == leaf.value_hash => Built::done(node.clone()),
                        Some(v) => new_leaf(first.0, v, pending),
                    };
                }
                if first.1.is_none() {
                    // Removing a key that is not here changes nothing.
                    return Built::done(node.clone());
                }
            }
            // Push the leaf one level down (its hash is depth-independent) and merge there.
            let (left, right) = if bit(&leaf.key_hash, depth) {
                descend(&Child::Empty, node, depth, changes, warmed, len_delta, pending)
            } else {
                descend(node, &Child::Empty, depth, changes, warmed, len_delta, pending)
            };
            combine(left, right, pending)
        }
        Child::Internal(internal) => {
            let (new_left, new_right) =
                descend(&internal.left, &internal.right, depth, changes, warmed, len_delta, pending);
            if new_left.child.same(&internal.left) && new_right.child.same(&internal.right) {
                // Only absent keys were removed (or values rewritten unchanged): keep the node.
                return Built::done(node.clone());
            }
            combine(new_left, new_right, pending)
        }
    }
}

/// Split `changes` by bit `depth` and update both children.
fn descend(
    left: &Child,
    right: &Child,
    depth: usize,
    changes: &[Change],
    warmed: bool,
    len_delta: &mut i64,
    pending: &mut PendingHashes,
) -> (Built, Built) {
    // Distinct 256-bit keys always separate before depth 256.
    assert!(depth < 256, "state tree descended past 256 bits");
    let mid = changes.partition_point(|(key_hash, _)| !bit(key_hash, depth));
    let (left_changes, right_changes) = changes.split_at(mid);
    (
        update(left, depth + 1, left_changes, warmed, len_delta, pending),
        update(right, depth + 1, right_changes, warmed, len_delta, pending),
    )
}

/// The node over two children: empty if both are, the lone leaf itself if only a leaf remains
/// (leaves sit at the shallowest unique depth), else a new internal node, hashed with its level.
fn combine(left: Built, right: Built, pending: &mut PendingHashes) -> Built {
    let level = 1 + left.level.max(right.level);
    match (left.child, right.child) {
        (Child::Empty, Child::Empty) => Built::done(Child::Empty),
        (only @ Child::Leaf(_), Child::Empty) | (Child::Empty, only @ Child::Leaf(_)) => {
            Built { child: only, level: level - 1 }
        }
        (left, right) => {
            let node = Child::Internal(Arc::new(Internal { hash: NodeHash::pending(), left, right }));
            pending.add(level, &node)
        }
    }
}

/// The root over `leaves` by direct recursion on the definition of §7.6, sharing no code path with
/// the incremental tree beyond the node-hash functions. For tests and integrity checks (O(n log n)).
pub fn from_scratch_root(leaves: impl IntoIterator<Item = (Hash, Hash)>) -> Hash {
    let mut leaves: Vec<(Hash, Hash)> = leaves.into_iter().collect();
    leaves.sort();
    leaves.dedup_by(|a, b| a.0 == b.0);
    fn root_of(leaves: &[(Hash, Hash)], depth: usize) -> Hash {
        match leaves {
            [] => ZERO_HASH,
            [(key_hash, value_hash)] => leaf_node_hash(key_hash, value_hash),
            _ => {
                let ones = leaves.iter().position(|(k, _)| bit(k, depth)).unwrap_or(leaves.len());
                let left = root_of(&leaves[..ones], depth + 1);
                let right = root_of(&leaves[ones..], depth + 1);
                internal_node_hash(&left, &right)
            }
        }
    }
    root_of(&leaves, 0)
}

/// The root a state-proof path leads to from `cur` at depth `siblings.len()` (SPEC §7.7 step 3).
pub fn fold_state_path(key_hash: &Hash, mut cur: Hash, siblings: &[Hash]) -> Hash {
    for (depth, sibling) in siblings.iter().enumerate().rev() {
        cur = if bit(key_hash, depth) {
            internal_node_hash(sibling, &cur)
        } else {
            internal_node_hash(&cur, sibling)
        };
    }
    cur
}

/// SPEC §7.7 steps 1–4 for a claimed row `(value, expires_at, version)` (membership) or a claim of
/// absence (`None`), against a header the caller already trusts (its block hash was compared with a
/// trusted hash or checked through `hash::verify_chain`).
pub fn verify_state_proof(
    proof: &StateProof,
    key: &[u8],
    claimed: Option<(&[u8], u64, u64)>,
    header: &BlockHeader,
) -> Result<(), ProofError> {
    if proof.key != key {
        return Err(ProofError::KeyMismatch);
    }
    let depth = proof.siblings.len();
    if depth > STATE_PROOF_SIBLINGS_MAX {
        return Err(ProofError::TooManySiblings(depth));
    }
    let kh = key_hash(key);
    let start = match (claimed, &proof.leaf) {
        (Some(_), None) => return Err(ProofError::MissingLeaf),
        (Some((value, expires_at, version)), Some(leaf)) => {
            if leaf.key_hash != kh {
                return Err(ProofError::LeafKeyMismatch);
            }
            if leaf.value_hash != leaf_value_hash(key, value, expires_at, version) {
                return Err(ProofError::ValueMismatch);
            }
            leaf_node_hash(&kh, &leaf.value_hash)
        }
        (None, None) => ZERO_HASH,
        (None, Some(leaf)) => {
            if leaf.key_hash == kh {
                return Err(ProofError::KeyPresent);
            }
            if (0..depth).any(|i| bit(&leaf.key_hash, i) != bit(&kh, i)) {
                return Err(ProofError::LeafOffPath);
            }
            leaf_node_hash(&leaf.key_hash, &leaf.value_hash)
        }
    };
    let computed = fold_state_path(&kh, start, &proof.siblings);
    if computed != proof.state_root {
        return Err(ProofError::RootMismatch { computed, claimed: proof.state_root });
    }
    if proof.state_root != header.state_root {
        return Err(ProofError::HeaderRootMismatch);
    }
    if proof.block_height != header.height {
        return Err(ProofError::HeightMismatch { proof: proof.block_height, header: header.height });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::hash::{hex32, to_hex};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// A row of the spec vectors: `(local_key, value, expires_at, version)`.
    fn leaf_of(key: &str, value: &[u8], expires_at: u64, version: u64) -> (Hash, Hash) {
        (key_hash(key.as_bytes()), leaf_value_hash(key.as_bytes(), value, expires_at, version))
    }

    fn header_with(root: Hash, height: u64) -> BlockHeader {
        BlockHeader {
            height,
            namespace_id: 1,
            vault_id: 1,
            previous_hash: ZERO_HASH,
            tx_merkle_root: crate::hash::EMPTY_HASH,
            state_root: root,
            timestamp: Timestamp::default(),
            leader_id: 0,
            term: 0,
            committed_index: 0,
        }
    }

    fn proof_for(tree: &SparseMerkleTree, key: &[u8], height: u64) -> StateProof {
        let (leaf, siblings) = tree.prove(key);
        StateProof { key: key.to_vec(), leaf, siblings, block_height: height, state_root: tree.root() }
    }

    #[test]
    fn t20_spec_vector_single_entity() {
        // SPEC §7.9: one entity user:1="alice" (expires 0, version 1): key hash, value hash, and a
        // root equal to the leaf node hash.
        let (kh, vh) = leaf_of("user:1", b"alice", 0, 1);
        assert_eq!(to_hex(&kh), "ae688cd5e704f93e3d7e425926fd7961499d6cb601befa39dba2e542287ea750");
        assert_eq!(to_hex(&vh), "2aa516224df2b762aa425e28cc0674f29bc669b5adc5cc46b14183d8ef400b26");
        let tree = SparseMerkleTree::from_leaves([(kh, vh)]);
        let root = hex32("4056f2965a09aaa0216737c1073af2a291c25187340ca974aaf728670c921355");
        assert_eq!(tree.root(), root);
        assert_eq!(leaf_node_hash(&kh, &vh), root);
        assert_eq!(from_scratch_root([(kh, vh)]), root);
        assert_eq!(SparseMerkleTree::new().root(), ZERO_HASH);
        assert_eq!(from_scratch_root([]), ZERO_HASH);
    }

    fn three_rows() -> SparseMerkleTree {
        SparseMerkleTree::from_leaves([
            leaf_of("user:1", b"alice", 0, 1),
            leaf_of("user:2", b"bob", 0, 1),
            leaf_of("rel:doc:readme#viewer@user:1", b"", 0, 1),
        ])
    }

    #[test]
    fn t21_spec_vector_three_rows_and_proofs() {
        // SPEC §7.9: the 3-row root, the exact 6-sibling proof of user:2, and the absent user:3
        // proof (no leaf, 2 siblings); both verify against a header with that root.
        let tree = three_rows();
        let root = hex32("3b9a40480e12865233374a6c14484e529126527bb336cbe511d5a99b7f755eb3");
        assert_eq!(tree.root(), root);
        assert_eq!(tree.len(), 3);
        assert_eq!(from_scratch_root(tree.leaves()), root);

        let (leaf, siblings) = tree.prove(b"user:2");
        let expected = [
            hex32("024e5e18583147ce6d071f3ac315778c1ca08325c596dc952505afd3ae665272"),
            ZERO_HASH,
            ZERO_HASH,
            ZERO_HASH,
            ZERO_HASH,
            hex32("4056f2965a09aaa0216737c1073af2a291c25187340ca974aaf728670c921355"),
        ];
        assert_eq!(siblings, expected);
        let (kh, vh) = leaf_of("user:2", b"bob", 0, 1);
        assert_eq!(leaf, Some(StateLeaf { key_hash: kh, value_hash: vh }));

        let header = header_with(root, 1);
        let proof = proof_for(&tree, b"user:2", 1);
        assert_eq!(verify_state_proof(&proof, b"user:2", Some((b"bob", 0, 1)), &header), Ok(()));
        assert_eq!(
            verify_state_proof(&proof, b"user:2", Some((b"bob", 0, 2)), &header),
            Err(ProofError::ValueMismatch)
        );
        assert_eq!(verify_state_proof(&proof, b"user:2", None, &header), Err(ProofError::KeyPresent));

        let absent = proof_for(&tree, b"user:3", 1);
        assert_eq!(absent.leaf, None);
        assert_eq!(absent.siblings.len(), 2);
        assert_eq!(verify_state_proof(&absent, b"user:3", None, &header), Ok(()));
        assert_eq!(
            verify_state_proof(&absent, b"user:3", Some((b"x", 0, 1)), &header),
            Err(ProofError::MissingLeaf)
        );
        assert_eq!(verify_state_proof(&absent, b"user:4", None, &header), Err(ProofError::KeyMismatch));
        let other_header = header_with(ZERO_HASH, 1);
        assert_eq!(
            verify_state_proof(&absent, b"user:3", None, &other_header),
            Err(ProofError::HeaderRootMismatch)
        );
    }

    #[test]
    fn t22_persistence_and_sharing() {
        // Updates leave the source tree untouched; a no-op update returns the same root; removing
        // everything returns the empty tree; an absent removal keeps the count.
        let base = three_rows();
        let root = base.root();
        let next = base.with_updates([leaf_of("user:9", b"z", 0, 2)].map(|(k, v)| (k, Some(v))));
        assert_eq!(base.root(), root);
        assert_eq!(base.len(), 3);
        assert_eq!(next.len(), 4);
        assert_ne!(next.root(), root);
        let back = next.with_updates([(key_hash(b"user:9"), None)]);
        assert_eq!(back.root(), root);
        assert_eq!(back.len(), 3);
        let noop = base.with_updates([(key_hash(b"nope"), None)]);
        assert_eq!(noop.root(), root);
        assert_eq!(noop.len(), 3);
        let leaves = base.leaves();
        let empty = base.with_updates(leaves.iter().map(|(k, _)| (*k, None)));
        assert_eq!(empty.root(), ZERO_HASH);
        assert!(empty.is_empty());
        // Later duplicates win within one batch.
        let (k, v1) = leaf_of("a", b"1", 0, 1);
        let (_, v2) = leaf_of("a", b"2", 0, 1);
        let t = SparseMerkleTree::new().with_updates([(k, Some(v1)), (k, Some(v2))]);
        assert_eq!(t.get(&k), Some(v2));
        let t = SparseMerkleTree::new().with_updates([(k, Some(v1)), (k, None)]);
        assert!(t.is_empty());
    }

    #[test]
    fn t23_throughput_smoke() {
        // Batch-update throughput at 100k keys (informational; the assertion is generous because
        // test builds are not optimised): 100 blocks of 1000 updates over a 100k-key tree.
        let n = 100_000u32;
        let tree = SparseMerkleTree::from_leaves((0..n).map(|i| {
            let k = i.to_be_bytes();
            (key_hash(&k), leaf_value_hash(&k, &k, 0, 1))
        }));
        assert_eq!(tree.len(), n as u64);
        let start = std::time::Instant::now();
        let mut t = tree.clone();
        let mut updates = 0u64;
        for block in 0..100u32 {
            t = t.with_updates((0..1000u32).map(|j| {
                let k = (block * 7919 + j * 104_729 % n).to_be_bytes();
                (key_hash(&k), Some(leaf_value_hash(&k, &block.to_be_bytes(), 0, 2)))
            }));
            updates += 1000;
        }
        let rate = updates as f64 / start.elapsed().as_secs_f64();
        eprintln!("smt: {rate:.0} key updates/s at {n} keys");
        assert!(rate > 10_000.0);
        assert_eq!(tree.len(), n as u64);
    }

    #[test]
    fn t24_large_batches_match_from_scratch() {
        // Batches larger than one warm-up (sets, rewrites, removes of present and absent keys)
        // over a few thousand keys: each version matches a from-scratch root, and the first
        // version is unchanged after the others are built and dropped.
        let set = |i: u32, v: u32| {
            let k = i.to_be_bytes();
            (key_hash(&k), leaf_value_hash(&k, &v.to_be_bytes(), 0, 1))
        };
        let mut model: BTreeMap<Hash, Hash> = (0..3000).map(|i| set(i, 0)).collect();
        let first = SparseMerkleTree::from_leaves(model.iter().map(|(k, v)| (*k, *v)));
        let first_root = first.root();
        assert_eq!(first_root, from_scratch_root(model.iter().map(|(k, v)| (*k, *v))));
        let mut tree = first.clone();
        for block in 1..6u32 {
            let mut changes = Vec::new();
            for j in 0..700u32 {
                let i = (j * 7919 + block * 104_729) % 4000;
                let (kh, vh) = set(i, block % 2);
                let change = if (i + block) % 3 == 0 { (kh, None) } else { (kh, Some(vh)) };
                match change.1 {
                    Some(vh) => model.insert(kh, vh),
                    None => model.remove(&kh),
                };
                changes.push(change);
            }
            tree = tree.with_updates(changes);
            assert_eq!(tree.root(), from_scratch_root(model.iter().map(|(k, v)| (*k, *v))));
            assert_eq!(tree.len(), model.len() as u64);
        }
        drop(tree);
        assert_eq!(first.root(), first_root);
        assert_eq!(first.len(), 3000);
    }

    fn arb_key() -> impl Strategy<Value = Vec<u8>> {
        // A small key space so that updates hit existing keys often.
        (0u8..40).prop_map(|i| format!("k{i}").into_bytes())
    }

    /// `(key, Some((value, expires_at, version)))` sets, `(key, None)` removes.
    type Row = (Vec<u8>, Option<(Vec<u8>, u64, u64)>);

    fn arb_row() -> impl Strategy<Value = Row> {
        (
            arb_key(),
            proptest::option::weighted(0.7, (proptest::collection::vec(any::<u8>(), 0..4), 0u64..3, 1u64..4)),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn p01_incremental_equals_from_scratch(
            blocks in proptest::collection::vec(proptest::collection::vec(arb_row(), 0..12), 1..8)
        ) {
            // Applying random batches incrementally gives, after every batch, the root of a
            // from-scratch computation over the model's rows, and the tree's count and lookups.
            let mut tree = SparseMerkleTree::new();
            let mut model: BTreeMap<Vec<u8>, Hash> = BTreeMap::new();
            for block in blocks {
                let mut changes = Vec::new();
                for (key, row) in block {
                    let vh = row.map(|(v, e, ver)| leaf_value_hash(&key, &v, e, ver));
                    match vh {
                        Some(vh) => model.insert(key.clone(), vh),
                        None => model.remove(&key),
                    };
                    changes.push((key_hash(&key), vh));
                }
                tree = tree.with_updates(changes);
                let expected = from_scratch_root(model.iter().map(|(k, v)| (key_hash(k), *v)));
                prop_assert_eq!(tree.root(), expected);
                prop_assert_eq!(tree.len(), model.len() as u64);
                for (k, v) in &model {
                    prop_assert_eq!(tree.get(&key_hash(k)), Some(*v));
                }
            }
        }

        #[test]
        fn p02_insertion_order_independent(
            rows in proptest::collection::btree_map(arb_key(), proptest::collection::vec(any::<u8>(), 0..4), 0..30),
            seed in any::<u64>(),
        ) {
            // One-by-one inserts in two different orders and a single batch give the same root.
            let leaves: Vec<(Hash, Hash)> =
                rows.iter().map(|(k, v)| (key_hash(k), leaf_value_hash(k, v, 0, 1))).collect();
            let mut shuffled = leaves.clone();
            // Deterministic shuffle driven by the seed.
            let mut s = seed | 1;
            for i in (1..shuffled.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                shuffled.swap(i, (s % (i as u64 + 1)) as usize);
            }
            let mut forward = SparseMerkleTree::new();
            for (k, v) in &leaves { forward = forward.with_updates([(*k, Some(*v))]); }
            let mut other = SparseMerkleTree::new();
            for (k, v) in &shuffled { other = other.with_updates([(*k, Some(*v))]); }
            let batch = SparseMerkleTree::from_leaves(shuffled.iter().copied());
            prop_assert_eq!(forward.root(), other.root());
            prop_assert_eq!(forward.root(), batch.root());
            prop_assert_eq!(forward.root(), from_scratch_root(leaves));
        }

        #[test]
        fn p03_proofs_verify_and_detect_tampering(
            rows in proptest::collection::btree_map(arb_key(), (proptest::collection::vec(any::<u8>(), 0..4), 0u64..3, 1u64..4), 0..30),
            probe in arb_key(),
            flip in any::<u8>(),
        ) {
            // Every membership and non-membership proof verifies; a changed value, expiry, version
            // or sibling byte makes it fail.
            let tree = SparseMerkleTree::from_leaves(
                rows.iter().map(|(k, (v, e, ver))| (key_hash(k), leaf_value_hash(k, v, *e, *ver))),
            );
            let header = header_with(tree.root(), 5);
            let mut probes: Vec<Vec<u8>> = rows.keys().cloned().collect();
            probes.push(probe);
            probes.push(b"never-present".to_vec());
            for key in probes {
                let proof = proof_for(&tree, &key, 5);
                match rows.get(&key) {
                    Some((v, e, ver)) => {
                        prop_assert_eq!(verify_state_proof(&proof, &key, Some((v, *e, *ver)), &header), Ok(()));
                        let mut other_value = v.clone();
                        other_value.push(flip);
                        prop_assert!(verify_state_proof(&proof, &key, Some((&other_value, *e, *ver)), &header).is_err());
                        prop_assert!(verify_state_proof(&proof, &key, Some((v, *e + 1, *ver)), &header).is_err());
                        prop_assert!(verify_state_proof(&proof, &key, Some((v, *e, *ver + 1)), &header).is_err());
                        prop_assert!(verify_state_proof(&proof, &key, None, &header).is_err());
                        for i in 0..proof.siblings.len() {
                            let mut bad = proof.clone();
                            bad.siblings[i][(flip % 32) as usize] ^= 1 << (flip % 8);
                            prop_assert!(verify_state_proof(&bad, &key, Some((v, *e, *ver)), &header).is_err());
                        }
                    }
                    None => {
                        prop_assert_eq!(verify_state_proof(&proof, &key, None, &header), Ok(()));
                        prop_assert!(verify_state_proof(&proof, &key, Some((b"", 0, 1)), &header).is_err());
                        for i in 0..proof.siblings.len() {
                            let mut bad = proof.clone();
                            bad.siblings[i][(flip % 32) as usize] ^= 1 << (flip % 8);
                            prop_assert!(verify_state_proof(&bad, &key, None, &header).is_err());
                        }
                        if let Some(leaf) = proof.leaf {
                            let mut bad = proof.clone();
                            bad.leaf = Some(StateLeaf { key_hash: leaf.key_hash, value_hash: h(&leaf.value_hash) });
                            prop_assert!(verify_state_proof(&bad, &key, None, &header).is_err());
                        }
                    }
                }
            }
        }

        #[test]
        fn p04_versions_stay_valid_under_later_updates_and_drops(
            blocks in proptest::collection::vec(
                proptest::collection::vec((arb_key(), proptest::option::weighted(0.6, 0u8..3)), 0..40),
                1..10,
            ),
            drop_seed in any::<u64>(),
        ) {
            // Random batches of sets and removes over a small key space (so that removes often hit
            // absent keys and sets often rewrite the value already stored), each built from the
            // previous version: every version keeps its root, count and leaves while later versions
            // are built and while the others are dropped in a random order.
            let mut versions = vec![SparseMerkleTree::new()];
            let mut expected: Vec<BTreeMap<Hash, Hash>> = vec![BTreeMap::new()];
            for block in blocks {
                let mut model = expected.last().unwrap().clone();
                let mut changes = Vec::new();
                for (key, value) in block {
                    let kh = key_hash(&key);
                    let vh = value.map(|v| leaf_value_hash(&key, &[v], 0, 1));
                    match vh {
                        Some(vh) => model.insert(kh, vh),
                        None => model.remove(&kh),
                    };
                    changes.push((kh, vh));
                }
                let next = versions.last().unwrap().with_updates(changes);
                prop_assert_eq!(next.root(), from_scratch_root(model.iter().map(|(k, v)| (*k, *v))));
                versions.push(next);
                expected.push(model);
            }
            let check = |tree: &SparseMerkleTree, model: &BTreeMap<Hash, Hash>| {
                let leaves: Vec<(Hash, Hash)> = model.iter().map(|(k, v)| (*k, *v)).collect();
                tree.root() == from_scratch_root(leaves.iter().copied())
                    && tree.len() == model.len() as u64
                    && tree.leaves() == leaves
                    && leaves.iter().all(|(k, v)| tree.get(k) == Some(*v))
            };
            let mut alive: Vec<(SparseMerkleTree, BTreeMap<Hash, Hash>)> = versions.into_iter().zip(expected).collect();
            let mut s = drop_seed | 1;
            while !alive.is_empty() {
                for (tree, model) in &alive {
                    prop_assert!(check(tree, model));
                }
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                let gone = alive.swap_remove((s % alive.len() as u64) as usize);
                drop(gone);
            }
        }
    }
}
