//! In-memory committed state of one scope and the deterministic block apply (SPEC §3, §6.3, §7.6,
//! §8.2, §8.4). CONTRACT FILE: the public signatures listed at the bottom are what `shard` codes
//! against; keep them stable.
//!
//! Flow on the leader: `BlockDraft::new(&scope)` → `check_sequence` + `try_apply` per transaction
//! → `finish(ctx)` gives the `VaultEntry` to propose and the `ScopeDelta` to commit once the entry
//! is applied. Flow on any replica: `scope.replay_entry(&entry, &ctx)` → `ScopeDelta` (or
//! `Divergence`) → `scope.commit(delta)`. The base state is never mutated before commit, so a
//! failed proposal just drops the delta.

// `WriteError` is returned by value because the contract (`try_apply`) fixes it; it is the rare path.
#![allow(clippy::result_large_err)]

use crate::constants::{
    DEBUG_FROM_SCRATCH_ROWS_MAX, LIST_PAGE_BYTES_MAX, PAGE_SIZE_DEFAULT, WRITE_ERROR_VALUE_BYTES_MAX,
};
use crate::hash::{block_hash, tx_hash, tx_merkle_root, EMPTY_HASH};
use crate::rows::EntityRows;
use crate::smt::{key_hash, leaf_value_hash, SparseMerkleTree};
use crate::types::*;
pub use crate::validate::{validate_client_operations, ValidationError};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

/// A committed entity row (SPEC §3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityRow {
    pub value: Vec<u8>,
    pub expires_at: u64,
    pub version: u64,
}

/// Per-scope metadata (SPEC §9.2 `scopes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeMeta {
    pub key: ScopeKey,
    pub height: u64,
    pub last_block_hash: Hash,
    pub state_root: Hash,
    pub health: VaultHealth,
    pub status: VaultStatus,
    pub retention: RetentionPolicy,
    pub last_block_ts: Timestamp,
    pub genesis: BlockHeader,
}

/// Header fields that come from the group block rather than the scope (SPEC §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockContext {
    pub timestamp: Timestamp,
    pub leader_id: u64,
    pub term: u64,
    pub committed_index: u64,
}

impl BlockContext {
    /// The context every vault header of `gb` carries.
    pub fn of_group_block(gb: &GroupBlock) -> BlockContext {
        BlockContext {
            timestamp: gb.timestamp,
            leader_id: gb.leader_id,
            term: gb.term,
            committed_index: gb.committed_index,
        }
    }

    /// The context `header` was built with.
    pub fn of_header(header: &BlockHeader) -> BlockContext {
        BlockContext {
            timestamp: header.timestamp,
            leader_id: header.leader_id,
            term: header.term,
            committed_index: header.committed_index,
        }
    }
}

/// Result of the idempotency check of SPEC §6.3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SequenceCheck {
    /// `seq == last + 1`: process it.
    Next,
    /// `seq <= last committed`: already committed; the persisted record of the last committed tx.
    Duplicate(ClientState),
    /// `last committed < seq <= last taken`: the transaction with this sequence is in this draft
    /// or in a block proposed or sealed before it, none of which has committed yet. It may still
    /// fail, so it must not be answered `AlreadyCommitted` (SPEC §6.3 answers duplicates from
    /// persisted state only): the leader gives the retry that transaction's outcome.
    InFlight { last_committed: u64 },
    /// `seq > last taken + 1`.
    Gap { last: u64 },
}

/// The leader's computed state root did not match the replica's recomputation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    pub expected: Hash,
    pub computed: Hash,
    pub at_height: u64,
}

/// Everything a committed block changes in one scope; produced without mutating the scope.
#[derive(Debug, Clone)]
pub struct ScopeDelta {
    /// Final value per touched entity key (`None` = deleted).
    pub entities: BTreeMap<String, Option<EntityRow>>,
    /// Final state per touched relationship (`Some(version)` = present).
    pub relationships: BTreeMap<Relationship, Option<u64>>,
    pub clients: BTreeMap<String, ClientState>,
    pub tree: SparseMerkleTree,
    /// The new block header of this scope and its hash.
    pub header: BlockHeader,
    pub block_hash: Hash,
    /// Per transaction, per operation status, in block order.
    pub statuses: Vec<Vec<OpStatus>>,
    /// `tx_hash` of each transaction in block order (the tx Merkle tree's leaves), kept so
    /// inclusion proofs need not hash the transactions again.
    pub tx_hashes: Vec<Hash>,
}

/// The rows a commit replaced, as they were before the block (`None` = absent), in the delta's
/// key order ([`ScopeState::commit_displacing`]).
#[derive(Debug, Default)]
pub struct Displaced {
    pub entities: Vec<(String, Option<EntityRow>)>,
    pub relationships: Vec<(Relationship, Option<u64>)>,
}

/// Committed state of one scope: rows, relationship indexes, state tree, client sequences.
#[derive(Debug, Clone)]
pub struct ScopeState {
    pub meta: ScopeMeta,
    entities: EntityRows,
    /// Relationship → version (vault height at creation).
    relationships: BTreeMap<Relationship, u64>,
    /// `(resource, relation)` → subjects.
    obj_idx: BTreeMap<(String, String), BTreeSet<String>>,
    /// subject → `(resource, relation)`.
    subj_idx: BTreeMap<String, BTreeSet<(String, String)>>,
    tree: SparseMerkleTree,
    clients: BTreeMap<String, ClientState>,
}

// REQUIRED API (to be implemented in this file / sibling modules; shard codes against it):
//
// impl ScopeState {
//   pub fn genesis(key: ScopeKey, retention: RetentionPolicy, ctx: &BlockContext) -> ScopeState;
//       // height 0 header: previous ZERO_HASH, tx root EMPTY_HASH, state root ZERO_HASH, ctx fields
//   pub fn from_rows(meta: ScopeMeta, entities: Vec<(String, EntityRow)>, relationships: Vec<(Relationship, u64)>,
//                    clients: Vec<(String, ClientState)>) -> ScopeState;   // rebuilds tree + indexes
//   pub fn computed_root(&self) -> Hash;            // root of the tree as held
//   pub fn get_entity(&self, key: &str) -> Option<&EntityRow>;
//   pub fn client_state(&self, client_id: &str) -> ClientState;      // default if unknown
//   pub fn key_count(&self) -> u64;                                   // entity + relationship rows
//   pub fn entities(&self) -> impl Iterator<Item = (&String, &EntityRow)>;
//   pub fn relationships(&self) -> impl Iterator<Item = (&Relationship, &u64)>;
//   pub fn clients(&self) -> impl Iterator<Item = (&String, &ClientState)>;
//   pub fn list_entities(&self, prefix: &str, start_after: Option<&str>, limit: usize,
//                        include_expired: bool, now_secs: u64) -> (Vec<Entity>, Option<String> /*last key if more*/);
//   pub fn list_relationships(&self, resource: Option<&str>, relation: Option<&str>, subject: Option<&str>,
//                             start_after: Option<&Relationship>, limit: usize) -> (Vec<Relationship>, bool /*more*/);
//   pub fn list_resources(&self, resource_type: &str, start_after: Option<&str>, limit: usize) -> (Vec<String>, bool);
//   pub fn prove(&self, key: &[u8]) -> StateProof;   // block_height/state_root = meta's
//   pub fn replay_entry(&self, entry: &VaultEntry, ctx: &BlockContext) -> Result<ScopeDelta, Divergence>;
//   pub fn commit(&mut self, delta: ScopeDelta);     // asserts delta.header.height == meta.height + 1
//   pub fn set_status(&mut self, status: VaultStatus);
// }
// impl<'a> BlockDraft<'a> {
//   pub fn new(base: &'a ScopeState) -> Self;
//   pub fn check_sequence(&self, client_id: &str, sequence: u64) -> SequenceCheck; // sees earlier txs of this draft
//   pub fn try_apply(&mut self, tx: Transaction) -> Result<Vec<OpStatus>, WriteError>; // all or nothing
//   pub fn is_empty(&self) -> bool;
//   pub fn finish(self, ctx: &BlockContext) -> (VaultEntry, ScopeDelta);
// }
// pub fn validate_client_operations(ops: &[Operation], namespace_scope: bool, system_namespace: bool)
//     -> Result<(), ValidationError>;   // limits of §3.6, relationship syntax §3.4, reserved keys §3.7
// pub enum ValidationError { InvalidArgument(String), PermissionDenied(String) }

/// `(key_hash, value_hash)` of an entity row (SPEC §7.6: key = local key, value = user value).
pub fn entity_leaf(key: &str, row: &EntityRow) -> (Hash, Hash) {
    (key_hash(key.as_bytes()), leaf_value_hash(key.as_bytes(), &row.value, row.expires_at, row.version))
}

/// `(key_hash, value_hash)` of a relationship row (SPEC §7.6: key = `rel:…`, empty value, no
/// expiry, version = vault height at creation).
pub fn relationship_leaf(relationship: &Relationship, version: u64) -> (Hash, Hash) {
    let key = relationship.key();
    (key_hash(key.as_bytes()), leaf_value_hash(key.as_bytes(), b"", 0, version))
}

/// SPEC §3.8: a row is expired for current-state reads when `expires_at != 0 && now >= expires_at`.
pub fn is_expired(expires_at: u64, now_secs: u64) -> bool {
    expires_at != 0 && now_secs >= expires_at
}

fn page_limit(limit: usize) -> usize {
    if limit == 0 {
        PAGE_SIZE_DEFAULT
    } else {
        limit
    }
}

impl ScopeState {
    /// A new scope at height 0 (SPEC §5.3 item 19): previous `ZERO_HASH`, tx root `EMPTY_HASH`,
    /// state root `ZERO_HASH`, and the timestamp, leader, term and index of its `CreateScope` entry.
    pub fn genesis(key: ScopeKey, retention: RetentionPolicy, ctx: &BlockContext) -> ScopeState {
        let genesis = BlockHeader {
            height: 0,
            namespace_id: key.namespace_id.0,
            vault_id: key.vault_id.0,
            previous_hash: ZERO_HASH,
            tx_merkle_root: EMPTY_HASH,
            state_root: ZERO_HASH,
            timestamp: ctx.timestamp,
            leader_id: ctx.leader_id,
            term: ctx.term,
            committed_index: ctx.committed_index,
        };
        let meta = ScopeMeta {
            key,
            height: 0,
            last_block_hash: block_hash(&genesis),
            state_root: ZERO_HASH,
            health: VaultHealth::Healthy,
            status: VaultStatus::Active,
            retention,
            last_block_ts: ctx.timestamp,
            genesis,
        };
        ScopeState::from_rows(meta, Vec::new(), Vec::new(), Vec::new())
    }

    /// Rebuild a scope from its persisted rows: indexes and state tree are recomputed. The caller
    /// compares `computed_root()` with `meta.state_root` to detect corruption.
    pub fn from_rows(
        meta: ScopeMeta,
        entities: Vec<(String, EntityRow)>,
        relationships: Vec<(Relationship, u64)>,
        clients: Vec<(String, ClientState)>,
    ) -> ScopeState {
        let leaves: Vec<(Hash, Hash)> = entities
            .iter()
            .map(|(key, row)| entity_leaf(key, row))
            .chain(relationships.iter().map(|(rel, version)| relationship_leaf(rel, *version)))
            .collect();
        let mut scope = ScopeState {
            meta,
            entities: entities.into_iter().collect(),
            relationships: BTreeMap::new(),
            obj_idx: BTreeMap::new(),
            subj_idx: BTreeMap::new(),
            tree: SparseMerkleTree::from_leaves(leaves),
            clients: clients.into_iter().collect(),
        };
        for (relationship, version) in relationships {
            scope.insert_relationship(relationship, version);
        }
        scope
    }

    /// Root of the state tree as held (equals `meta.state_root` unless the rows were corrupted).
    pub fn computed_root(&self) -> Hash {
        self.tree.root()
    }

    /// The state tree as of `meta.height` (cheap to clone and keep for historical reads).
    pub fn tree(&self) -> &SparseMerkleTree {
        &self.tree
    }

    /// The committed row, expired or not.
    pub fn get_entity(&self, key: &str) -> Option<&EntityRow> {
        self.entities.get(key)
    }

    /// The creation height of a present relationship.
    pub fn get_relationship(&self, relationship: &Relationship) -> Option<u64> {
        self.relationships.get(relationship).copied()
    }

    /// The persisted idempotency record of a client; all zero for a client never seen.
    pub fn client_state(&self, client_id: &str) -> ClientState {
        self.clients.get(client_id).copied().unwrap_or_default()
    }

    /// Entity plus relationship rows (the leaves of the state tree).
    pub fn key_count(&self) -> u64 {
        (self.entities.len() + self.relationships.len()) as u64
    }

    pub fn entities(&self) -> impl Iterator<Item = (&String, &EntityRow)> {
        self.entities.iter()
    }

    /// Entity rows from `lower` on, in key order (the GC's resumable scan, SPEC §3.8).
    pub fn entities_from<'a>(
        &'a self,
        lower: Bound<&'a str>,
    ) -> impl Iterator<Item = (&'a String, &'a EntityRow)> {
        self.entities.range_from(lower)
    }

    /// Relationships in key order (`rel:{resource}#{relation}@{subject}`).
    pub fn relationships(&self) -> impl Iterator<Item = (&Relationship, &u64)> {
        self.relationships.iter()
    }

    pub fn clients(&self) -> impl Iterator<Item = (&String, &ClientState)> {
        self.clients.iter()
    }

    /// Entities whose key starts with `prefix`, ascending, strictly after `start_after`, skipping
    /// expired rows unless `include_expired` (SPEC §5.1 item 12, §3.8). The second value is the
    /// last returned key when at least one more row qualifies (the continuation point).
    pub fn list_entities(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        include_expired: bool,
        now_secs: u64,
    ) -> (Vec<Entity>, Option<String>) {
        self.list_entities_within(prefix, start_after, limit, include_expired, now_secs, LIST_PAGE_BYTES_MAX)
    }

    /// `list_entities` with a bound on the page's key and value bytes: the page ends before the
    /// entity that would cross `bytes_max` (it always holds at least one), with the continuation
    /// key, as when it is full.
    pub fn list_entities_within(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        include_expired: bool,
        now_secs: u64,
        bytes_max: usize,
    ) -> (Vec<Entity>, Option<String>) {
        let limit = page_limit(limit);
        let mut bytes = 0usize;
        let lower = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let mut out = Vec::new();
        for (key, row) in self.entities.range_from(lower) {
            if !key.starts_with(prefix) {
                break;
            }
            if !include_expired && is_expired(row.expires_at, now_secs) {
                continue;
            }
            let entity_bytes = key.len() + row.value.len();
            if out.len() == limit || (!out.is_empty() && bytes + entity_bytes > bytes_max) {
                let last = out.last().map(|e: &Entity| e.key.clone());
                return (out, last);
            }
            bytes += entity_bytes;
            out.push(Entity {
                key: key.clone(),
                value: row.value.clone(),
                expires_at: row.expires_at,
                version: row.version,
            });
        }
        (out, None)
    }

    /// Relationships matching the exact-match filters, ascending by relationship key, strictly
    /// after `start_after`; `true` when more match (SPEC §5.1 item 10 with its index choice).
    pub fn list_relationships(
        &self,
        resource: Option<&str>,
        relation: Option<&str>,
        subject: Option<&str>,
        start_after: Option<&Relationship>,
        limit: usize,
    ) -> (Vec<Relationship>, bool) {
        let limit = page_limit(limit);
        let after = |r: &Relationship| start_after.is_none_or(|s| r > s);
        let relation_ok = |r: &str| relation.is_none_or(|x| x == r);
        let subject_ok = |s: &str| subject.is_none_or(|x| x == s);
        let mut candidates: Vec<Relationship> = Vec::new();
        match (resource, subject) {
            (Some(resource), _) => match relation {
                // One obj_idx row: its subjects are already in key order.
                Some(relation) => {
                    let idx_key = (resource.to_owned(), relation.to_owned());
                    let subjects = self.obj_idx.get(&idx_key).into_iter().flatten();
                    let matching = subjects
                        .filter(|s| subject_ok(s))
                        .map(|s| Relationship::new(resource, relation, s.as_str()))
                        .filter(|r| after(r));
                    return take_page(matching, limit);
                }
                None => {
                    let start = (resource.to_owned(), String::new());
                    for ((res, rel), subjects) in self.obj_idx.range(start..) {
                        if res != resource {
                            break;
                        }
                        for s in subjects.iter().filter(|s| subject_ok(s)) {
                            candidates.push(Relationship::new(res.as_str(), rel.as_str(), s.as_str()));
                        }
                    }
                }
            },
            (None, Some(subject)) => {
                for (res, rel) in self.subj_idx.get(subject).into_iter().flatten() {
                    if relation_ok(rel) {
                        candidates.push(Relationship::new(res.as_str(), rel.as_str(), subject));
                    }
                }
            }
            (None, None) => {
                // Full scan (allowed, discouraged): the map is already in key order.
                let lower = start_after.map_or(Bound::Unbounded, Bound::Excluded);
                let matching = self
                    .relationships
                    .range((lower, Bound::Unbounded))
                    .map(|(r, _)| r)
                    .filter(|r| relation_ok(&r.relation))
                    .cloned();
                return take_page(matching, limit);
            }
        }
        candidates.sort();
        take_page(candidates.into_iter().filter(|r| after(r)), limit)
    }

    /// Distinct resources starting with `{resource_type}:`, ascending, strictly after
    /// `start_after`; `true` when more exist (SPEC §5.1 item 11).
    pub fn list_resources(
        &self,
        resource_type: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> (Vec<String>, bool) {
        let limit = page_limit(limit);
        let prefix = format!("{resource_type}:");
        let start = match start_after {
            Some(after) if after > prefix.as_str() => after.to_owned(),
            _ => prefix.clone(),
        };
        let mut out: Vec<String> = Vec::new();
        for ((resource, _), _) in self.obj_idx.range((start, String::new())..) {
            if !resource.starts_with(&prefix) {
                break;
            }
            if start_after.is_some_and(|after| resource.as_str() <= after) {
                continue;
            }
            if out.last() == Some(resource) {
                continue;
            }
            if out.len() == limit {
                return (out, true);
            }
            out.push(resource.clone());
        }
        (out, false)
    }

    /// State proof of `key` at the committed height (SPEC §7.7).
    pub fn prove(&self, key: &[u8]) -> StateProof {
        let (leaf, siblings) = self.tree.prove(key);
        StateProof {
            key: key.to_vec(),
            leaf,
            siblings,
            block_height: self.meta.height,
            state_root: self.meta.state_root,
        }
    }

    /// Re-run a committed entry's transactions on this state (SPEC §8.4) and check its roots. Any
    /// condition or sequence failure, a wrong height or chain link, or a root mismatch is a
    /// divergence; nothing here mutates `self`.
    pub fn replay_entry(&self, entry: &VaultEntry, ctx: &BlockContext) -> Result<ScopeDelta, Divergence> {
        let mut replay = self.replay_sealed(entry)?;
        let (parent, changes) = replay.take_tree_work();
        replay.finish(parent.with_updates(changes), ctx)
    }

    /// [`Self::replay_entry`] up to its state tree: the checks before the transactions, the
    /// transactions, and the tree's leaf changes, which the caller applies where it likes (the
    /// shard's tree thread) before [`SealedReplay::finish`] checks the roots.
    pub fn replay_sealed(&self, entry: &VaultEntry) -> Result<SealedReplay, Divergence> {
        let at_height = entry.vault_height;
        let same_scope =
            entry.namespace_id == self.meta.key.namespace_id.0 && entry.vault_id == self.meta.key.vault_id.0;
        if !same_scope || entry.vault_height != self.meta.height + 1 {
            return Err(Divergence { expected: entry.state_root, computed: self.meta.state_root, at_height });
        }
        if entry.previous_vault_hash != self.meta.last_block_hash {
            return Err(Divergence {
                expected: entry.previous_vault_hash,
                computed: self.meta.last_block_hash,
                at_height,
            });
        }
        let mut draft = BlockDraft::new(self);
        let mut failed = false;
        for tx in &entry.transactions {
            failed |= draft.apply_tx(tx).is_err();
        }
        Ok(SealedReplay {
            sealed: draft.seal(),
            failed,
            at_height,
            tx_merkle_root: entry.tx_merkle_root,
            state_root: entry.state_root,
        })
    }

    /// Install a block's delta: rows, indexes, client states, tree and metadata.
    pub fn commit(&mut self, delta: ScopeDelta) {
        self.install(delta, false);
    }

    /// [`Self::commit`] that also hands back every row the block replaced, as it was before the
    /// block (moved out of the state, not looked up or copied): the historical-read ring's undo.
    pub fn commit_displacing(&mut self, delta: ScopeDelta) -> Displaced {
        self.install(delta, true)
    }

    fn install(&mut self, delta: ScopeDelta, keep_displaced: bool) -> Displaced {
        assert_eq!(delta.header.height, self.meta.height + 1, "scope {} commit out of order", self.meta.key);
        assert_eq!(delta.header.previous_hash, self.meta.last_block_hash, "delta built on another base");
        assert_eq!(delta.header.namespace_id, self.meta.key.namespace_id.0);
        assert_eq!(delta.header.vault_id, self.meta.key.vault_id.0);
        assert_eq!(delta.tree.root(), delta.header.state_root, "delta tree does not match its header");
        let mut displaced = Displaced::default();
        if keep_displaced {
            displaced.entities.reserve(delta.entities.len());
            displaced.relationships.reserve(delta.relationships.len());
        }
        self.entities.warm(delta.entities.keys().map(String::as_str));
        for (key, row) in delta.entities {
            let kept_key = keep_displaced.then(|| key.clone());
            let before = match row {
                Some(row) => self.entities.insert(key, row),
                None => self.entities.remove(&key),
            };
            if let Some(key) = kept_key {
                displaced.entities.push((key, before));
            }
        }
        for (relationship, version) in delta.relationships {
            let kept = keep_displaced.then(|| relationship.clone());
            let before = match version {
                Some(version) => self.insert_relationship(relationship, version),
                None => self.remove_relationship(&relationship),
            };
            if let Some(relationship) = kept {
                displaced.relationships.push((relationship, before));
            }
        }
        self.clients.extend(delta.clients);
        self.tree = delta.tree;
        self.meta.height = delta.header.height;
        self.meta.last_block_hash = delta.block_hash;
        self.meta.state_root = delta.header.state_root;
        self.meta.last_block_ts = delta.header.timestamp;
        // Every row is one leaf; validation keeps entity keys out of the `rel:` space.
        assert_eq!(self.tree.len(), self.key_count(), "state tree and rows disagree on the row count");
        debug_assert!(
            self.key_count() > DEBUG_FROM_SCRATCH_ROWS_MAX
                || crate::smt::from_scratch_root(self.leaves()) == self.meta.state_root,
            "incremental state root differs from a from-scratch computation"
        );
        displaced
    }

    pub fn set_status(&mut self, status: VaultStatus) {
        self.meta.status = status;
    }

    /// Every row as a state-tree leaf (O(n); integrity checks and tests).
    pub fn leaves(&self) -> Vec<(Hash, Hash)> {
        self.entities
            .iter()
            .map(|(key, row)| entity_leaf(key, row))
            .chain(self.relationships.iter().map(|(rel, version)| relationship_leaf(rel, *version)))
            .collect()
    }

    /// Returns the version it replaced, if the relationship was present.
    fn insert_relationship(&mut self, relationship: Relationship, version: u64) -> Option<u64> {
        let Relationship { resource, relation, subject } = relationship.clone();
        self.obj_idx.entry((resource.clone(), relation.clone())).or_default().insert(subject.clone());
        self.subj_idx.entry(subject).or_default().insert((resource, relation));
        self.relationships.insert(relationship, version)
    }

    /// Returns the version it removed, if the relationship was present.
    fn remove_relationship(&mut self, relationship: &Relationship) -> Option<u64> {
        let removed = self.relationships.remove(relationship)?;
        let obj_key = (relationship.resource.clone(), relationship.relation.clone());
        if let Some(subjects) = self.obj_idx.get_mut(&obj_key) {
            subjects.remove(&relationship.subject);
            if subjects.is_empty() {
                self.obj_idx.remove(&obj_key);
            }
        }
        if let Some(pairs) = self.subj_idx.get_mut(&relationship.subject) {
            pairs.remove(&obj_key);
            if pairs.is_empty() {
                self.subj_idx.remove(&relationship.subject);
            }
        }
        Some(removed)
    }
}

/// A committed entry replayed up to its state tree ([`ScopeState::replay_sealed`]).
pub struct SealedReplay {
    sealed: SealedDraft,
    /// A transaction failed its conditions or sequence: the entry cannot be this state's next.
    failed: bool,
    at_height: u64,
    /// The entry's roots, which the replay must reproduce.
    tx_merkle_root: Hash,
    state_root: Hash,
}

impl SealedReplay {
    /// The tree to update and the updates, taken out (call once).
    pub fn take_tree_work(&mut self) -> (SparseMerkleTree, Vec<crate::smt::Change>) {
        let parent = self.sealed.parent_tree.take().unwrap_or_default();
        (parent, std::mem::take(&mut self.sealed.changes))
    }

    /// Completes the replay with its updated tree and checks both roots against the entry's.
    pub fn finish(self, tree: SparseMerkleTree, ctx: &BlockContext) -> Result<ScopeDelta, Divergence> {
        let at_height = self.at_height;
        let previous_hash = self.sealed.previous_hash.unwrap_or_default();
        let (_, delta) = self.sealed.complete(tree, previous_hash, ctx);
        if delta.header.tx_merkle_root != self.tx_merkle_root {
            return Err(Divergence {
                expected: self.tx_merkle_root,
                computed: delta.header.tx_merkle_root,
                at_height,
            });
        }
        if self.failed || delta.header.state_root != self.state_root {
            return Err(Divergence {
                expected: self.state_root,
                computed: delta.header.state_root,
                at_height,
            });
        }
        Ok(delta)
    }
}

/// A block whose transactions are final but whose state tree is not computed yet
/// ([`BlockDraft::seal`]): `parent_tree.with_updates(changes)` is the tree that
/// [`SealedDraft::complete`] needs.
#[derive(Debug)]
pub struct SealedDraft {
    /// The tree of the block this one follows (a shared clone); `None` when that block is itself
    /// sealed and its tree not built yet.
    pub parent_tree: Option<SparseMerkleTree>,
    /// Leaf changes of this block in key order (entities, then relationships).
    pub changes: Vec<crate::smt::Change>,
    namespace_id: i64,
    vault_id: i64,
    height: u64,
    previous_hash: Option<Hash>,
    tx_merkle_root: Hash,
    entities: BTreeMap<String, Option<EntityRow>>,
    relationships: BTreeMap<Relationship, Option<u64>>,
    clients: BTreeMap<String, ClientState>,
    transactions: Vec<Transaction>,
    tx_hashes: Vec<Hash>,
    statuses: Vec<Vec<OpStatus>>,
}

impl SealedDraft {
    /// Height of the sealed block.
    pub fn height(&self) -> u64 {
        self.height
    }

    /// Hash of the block this one follows, if it was known when the draft was sealed.
    pub fn previous_hash(&self) -> Option<Hash> {
        self.previous_hash
    }

    /// Finish the block with `tree`, which must be the parent tree with `changes` applied, after
    /// the block whose hash is `previous_hash` (which must equal the one known at sealing): the
    /// entry to propose and the delta to commit once it is applied (SPEC §7.3, §7.5, §7.6).
    pub fn complete(
        self,
        tree: SparseMerkleTree,
        previous_hash: Hash,
        ctx: &BlockContext,
    ) -> (VaultEntry, ScopeDelta) {
        if let Some(known) = self.previous_hash {
            assert_eq!(
                known, previous_hash,
                "a sealed draft completed after another block than it was sealed on"
            );
        }
        let header = BlockHeader {
            height: self.height,
            namespace_id: self.namespace_id,
            vault_id: self.vault_id,
            previous_hash,
            tx_merkle_root: self.tx_merkle_root,
            state_root: tree.root(),
            timestamp: ctx.timestamp,
            leader_id: ctx.leader_id,
            term: ctx.term,
            committed_index: ctx.committed_index,
        };
        let block_hash = block_hash(&header);
        let entry = VaultEntry {
            namespace_id: header.namespace_id,
            vault_id: header.vault_id,
            vault_height: header.height,
            previous_vault_hash: header.previous_hash,
            transactions: self.transactions,
            tx_merkle_root: header.tx_merkle_root,
            state_root: header.state_root,
        };
        let delta = ScopeDelta {
            entities: self.entities,
            relationships: self.relationships,
            clients: self.clients,
            tree,
            header,
            block_hash,
            statuses: self.statuses,
            tx_hashes: self.tx_hashes,
        };
        (entry, delta)
    }
}

/// Up to `limit` items and whether another one follows.
fn take_page(mut items: impl Iterator<Item = Relationship>, limit: usize) -> (Vec<Relationship>, bool) {
    let page: Vec<Relationship> = items.by_ref().take(limit).collect();
    let more = items.next().is_some();
    (page, more)
}

/// Changes made by one transaction while it runs; merged into the draft only if it succeeds, which
/// makes a transaction all or nothing without cloning the draft.
#[derive(Default)]
struct TxOverlay {
    entities: BTreeMap<String, Option<EntityRow>>,
    relationships: BTreeMap<Relationship, Option<u64>>,
}

/// A block being built on top of a committed scope (leader dry run, or replica replay). Reads see
/// the base state overlaid with the draft's earlier transactions; the base is never mutated.
#[derive(Debug)]
pub struct BlockDraft<'a> {
    base: &'a ScopeState,
    /// Deltas of this scope's blocks that are proposed but not yet applied, oldest first: the
    /// draft builds on top of them (pipelined blocks, docs/decisions.md D7).
    pending: Vec<&'a ScopeDelta>,
    /// This scope's blocks sealed after `pending` whose trees are still being computed, oldest
    /// first (D21): their rows count, their trees and hashes are not known yet.
    sealed: Vec<&'a SealedDraft>,
    /// Height of the block being built: every version written is this.
    height: u64,
    entities: BTreeMap<String, Option<EntityRow>>,
    relationships: BTreeMap<Relationship, Option<u64>>,
    clients: BTreeMap<String, ClientState>,
    transactions: Vec<Transaction>,
    tx_hashes: Vec<Hash>,
    statuses: Vec<Vec<OpStatus>>,
}

impl<'a> BlockDraft<'a> {
    pub fn new(base: &'a ScopeState) -> Self {
        Self::over(base, Vec::new())
    }

    /// A draft of the block after `pending` (this scope's proposed but not yet applied blocks,
    /// oldest first, each built on the previous one and the first on `base`).
    pub fn over(base: &'a ScopeState, pending: Vec<&'a ScopeDelta>) -> Self {
        Self::over_sealed(base, pending, Vec::new())
    }

    /// [`Self::over`], then after `sealed`: this scope's sealed blocks whose trees are not built
    /// yet, oldest first, following `pending`. The draft then seals without a parent tree or
    /// previous hash, which the caller supplies from the last sealed block once it completes.
    pub fn over_sealed(
        base: &'a ScopeState,
        pending: Vec<&'a ScopeDelta>,
        sealed: Vec<&'a SealedDraft>,
    ) -> Self {
        let mut expected = base.meta.height + 1;
        let mut previous = Some(base.meta.last_block_hash);
        for delta in &pending {
            assert_eq!(delta.header.height, expected, "pending deltas must be consecutive");
            assert_eq!(Some(delta.header.previous_hash), previous, "pending deltas must chain");
            expected += 1;
            previous = Some(delta.block_hash);
        }
        for draft in &sealed {
            assert_eq!(draft.height, expected, "sealed drafts must be consecutive");
            if let Some(hash) = draft.previous_hash {
                assert_eq!(Some(hash), previous, "sealed drafts must chain");
            }
            expected += 1;
            previous = None;
        }
        BlockDraft {
            base,
            pending,
            sealed,
            height: expected,
            entities: BTreeMap::new(),
            relationships: BTreeMap::new(),
            clients: BTreeMap::new(),
            transactions: Vec::new(),
            tx_hashes: Vec::new(),
            statuses: Vec::new(),
        }
    }

    /// Height of the block this draft builds.
    pub fn height(&self) -> u64 {
        self.height
    }

    /// SPEC §6.3 against the base plus this draft's earlier transactions. Only the base is
    /// committed: a sequence taken by a block in flight or by this draft is `InFlight`, never
    /// `Duplicate`. `sequence == 0` must be rejected by the caller first (`InvalidArgument`);
    /// here it would read as a duplicate.
    pub fn check_sequence(&self, client_id: &str, sequence: u64) -> SequenceCheck {
        let committed = self.base.client_state(client_id);
        let taken = self
            .clients
            .get(client_id)
            .or_else(|| self.sealed.iter().rev().find_map(|d| d.clients.get(client_id)))
            .or_else(|| self.pending.iter().rev().find_map(|d| d.clients.get(client_id)))
            .map_or(committed.last_committed_seq, |state| state.last_committed_seq);
        assert!(
            taken >= committed.last_committed_seq,
            "a draft's sequences never go below the committed ones"
        );
        if sequence <= committed.last_committed_seq {
            SequenceCheck::Duplicate(committed)
        } else if sequence <= taken {
            SequenceCheck::InFlight { last_committed: committed.last_committed_seq }
        } else if sequence == taken + 1 {
            SequenceCheck::Next
        } else {
            SequenceCheck::Gap { last: taken }
        }
    }

    /// Apply one transaction, all or nothing. A sequence that is not `Next` or a failed condition
    /// leaves the draft unchanged and returns the `WriteError` to answer with.
    pub fn try_apply(&mut self, tx: Transaction) -> Result<Vec<OpStatus>, WriteError> {
        let statuses = self.apply_tx(&tx)?;
        self.transactions.push(tx);
        Ok(statuses)
    }

    pub fn is_empty(&self) -> bool {
        self.tx_hashes.is_empty()
    }

    /// Number of transactions taken so far.
    pub fn len(&self) -> usize {
        self.tx_hashes.len()
    }

    /// Close the block: the entry to propose and the delta to commit once it is applied.
    /// The draft must not follow sealed blocks ([`Self::over_sealed`]).
    pub fn finish(self, ctx: &BlockContext) -> (VaultEntry, ScopeDelta) {
        assert!(self.sealed.is_empty(), "finish needs the parent tree; complete sealed drafts instead");
        let mut sealed = self.seal();
        let parent = sealed.parent_tree.take().unwrap_or_default();
        let previous_hash = sealed.previous_hash.unwrap_or_default();
        let tree = parent.with_updates(std::mem::take(&mut sealed.changes));
        sealed.complete(tree, previous_hash, ctx)
    }

    /// Close the block except for its state tree: the tree's leaf changes and the tree they apply
    /// to, so that the caller can compute the new tree elsewhere (the shard's tree thread) and
    /// finish with [`SealedDraft::complete`]. Borrows nothing, so it may outlive the base state.
    pub fn seal(self) -> SealedDraft {
        let changes = self
            .entities
            .iter()
            .map(|(key, row)| match row {
                Some(row) => {
                    let (k, v) = entity_leaf(key, row);
                    (k, Some(v))
                }
                None => (key_hash(key.as_bytes()), None),
            })
            .chain(self.relationships.iter().map(|(rel, version)| match version {
                Some(version) => {
                    let (k, v) = relationship_leaf(rel, *version);
                    (k, Some(v))
                }
                None => (key_hash(rel.key().as_bytes()), None),
            }))
            .collect();
        let (parent_tree, previous_hash) = match (self.sealed.last(), self.pending.last()) {
            (Some(_), _) => (None, None),
            (None, Some(delta)) => (Some(delta.tree.clone()), Some(delta.block_hash)),
            (None, None) => (Some(self.base.tree.clone()), Some(self.base.meta.last_block_hash)),
        };
        let meta = &self.base.meta;
        SealedDraft {
            parent_tree,
            changes,
            namespace_id: meta.key.namespace_id.0,
            vault_id: meta.key.vault_id.0,
            height: self.height,
            previous_hash,
            tx_merkle_root: tx_merkle_root(&self.tx_hashes),
            entities: self.entities,
            relationships: self.relationships,
            clients: self.clients,
            transactions: self.transactions,
            tx_hashes: self.tx_hashes,
            statuses: self.statuses,
        }
    }

    /// Sequence check, operations into a private overlay, then merge and record on success.
    fn apply_tx(&mut self, tx: &Transaction) -> Result<Vec<OpStatus>, WriteError> {
        match self.check_sequence(&tx.client_id, tx.sequence) {
            SequenceCheck::Next => {}
            SequenceCheck::Duplicate(state) => {
                return Err(WriteError {
                    code: WriteErrorCode::AlreadyCommitted,
                    key: String::new(),
                    current_version: None,
                    current_value: None,
                    message: format!("sequence {} already committed", tx.sequence),
                    committed_tx_id: Some(state.last_committed_tx_id),
                    committed_block_height: Some(state.last_committed_block_height),
                    last_committed_sequence: Some(state.last_committed_seq),
                });
            }
            SequenceCheck::InFlight { .. } => {
                // Same sequence twice in one draft (a replayed block never holds that: the
                // leader gives such a retry the first copy's outcome instead of drafting it).
                // Nothing here depends on how much of the chain has committed, so pipelined and
                // sequential drafts answer alike.
                return Err(WriteError {
                    code: WriteErrorCode::AlreadyCommitted,
                    key: String::new(),
                    current_version: None,
                    current_value: None,
                    message: format!("sequence {} is already in a block that has not committed", tx.sequence),
                    committed_tx_id: None,
                    committed_block_height: None,
                    last_committed_sequence: None,
                });
            }
            SequenceCheck::Gap { last } => {
                return Err(WriteError {
                    code: WriteErrorCode::SequenceGap,
                    key: String::new(),
                    current_version: None,
                    current_value: None,
                    message: format!("sequence {} after last committed {last}", tx.sequence),
                    committed_tx_id: None,
                    committed_block_height: None,
                    last_committed_sequence: Some(last),
                });
            }
        }
        self.base.entities.warm(tx.operations.iter().filter_map(Operation::entity_key));
        let mut overlay = TxOverlay::default();
        let mut statuses = Vec::with_capacity(tx.operations.len());
        for op in &tx.operations {
            statuses.push(self.apply_op(&mut overlay, op)?);
        }
        self.entities.extend(overlay.entities);
        self.relationships.extend(overlay.relationships);
        let state = ClientState {
            last_committed_seq: tx.sequence,
            last_committed_tx_id: tx.id,
            last_committed_block_height: self.height,
        };
        self.clients.insert(tx.client_id.clone(), state);
        self.tx_hashes.push(tx_hash(tx));
        self.statuses.push(statuses.clone());
        Ok(statuses)
    }

    /// The entity as this transaction sees it: its own writes, then the draft's, then the base.
    fn entity<'b>(&'b self, overlay: &'b TxOverlay, key: &str) -> Option<&'b EntityRow> {
        match overlay
            .entities
            .get(key)
            .or_else(|| self.entities.get(key))
            .or_else(|| self.sealed.iter().rev().find_map(|d| d.entities.get(key)))
            .or_else(|| self.pending.iter().rev().find_map(|d| d.entities.get(key)))
        {
            Some(row) => row.as_ref(),
            None => self.base.entities.get(key),
        }
    }

    fn relationship_present(&self, overlay: &TxOverlay, relationship: &Relationship) -> bool {
        match overlay
            .relationships
            .get(relationship)
            .or_else(|| self.relationships.get(relationship))
            .or_else(|| self.sealed.iter().rev().find_map(|d| d.relationships.get(relationship)))
            .or_else(|| self.pending.iter().rev().find_map(|d| d.relationships.get(relationship)))
        {
            Some(version) => version.is_some(),
            None => self.base.relationships.contains_key(relationship),
        }
    }

    /// One operation of SPEC §3.9, with the §3.3 condition check for `SetEntity`.
    fn apply_op(&self, overlay: &mut TxOverlay, op: &Operation) -> Result<OpStatus, WriteError> {
        match op {
            Operation::SetEntity { key, value, expires_at, condition } => {
                let current = self.entity(overlay, key);
                if let Some(condition) = condition {
                    check_condition(key, condition, current)?;
                }
                let status = if current.is_some() { OpStatus::Updated } else { OpStatus::Created };
                let row = EntityRow {
                    value: value.clone(),
                    expires_at: expires_at.unwrap_or(0),
                    version: self.height,
                };
                overlay.entities.insert(key.clone(), Some(row));
                Ok(status)
            }
            Operation::DeleteEntity { key } => {
                if self.entity(overlay, key).is_none() {
                    return Ok(OpStatus::NotFound);
                }
                overlay.entities.insert(key.clone(), None);
                Ok(OpStatus::Deleted)
            }
            Operation::ExpireEntity { key, expired_at } => {
                match self.entity(overlay, key) {
                    Some(row) if row.expires_at == *expired_at => {}
                    _ => return Ok(OpStatus::NotFound),
                }
                overlay.entities.insert(key.clone(), None);
                Ok(OpStatus::Expired)
            }
            Operation::CreateRelationship { resource, relation, subject } => {
                let relationship = Relationship::new(resource.as_str(), relation.as_str(), subject.as_str());
                if self.relationship_present(overlay, &relationship) {
                    return Ok(OpStatus::AlreadyExists);
                }
                overlay.relationships.insert(relationship, Some(self.height));
                Ok(OpStatus::Created)
            }
            Operation::DeleteRelationship { resource, relation, subject } => {
                let relationship = Relationship::new(resource.as_str(), relation.as_str(), subject.as_str());
                if !self.relationship_present(overlay, &relationship) {
                    return Ok(OpStatus::NotFound);
                }
                overlay.relationships.insert(relationship, None);
                Ok(OpStatus::Deleted)
            }
        }
    }
}

/// SPEC §3.3: evaluate a condition against the row as it is now (expired-but-present is present).
fn check_condition(
    key: &str,
    condition: &SetCondition,
    current: Option<&EntityRow>,
) -> Result<(), WriteError> {
    let failure = match (condition, current) {
        (SetCondition::MustNotExist, None) => None,
        (SetCondition::MustNotExist, Some(_)) => Some((WriteErrorCode::KeyExists, "key exists")),
        (SetCondition::MustExist, Some(_)) => None,
        (SetCondition::MustExist | SetCondition::VersionEquals(_) | SetCondition::ValueEquals(_), None) => {
            Some((WriteErrorCode::KeyNotFound, "key not found"))
        }
        (SetCondition::VersionEquals(v), Some(row)) if row.version == *v => None,
        (SetCondition::VersionEquals(_), Some(_)) => {
            Some((WriteErrorCode::VersionMismatch, "version mismatch"))
        }
        (SetCondition::ValueEquals(bytes), Some(row)) if row.value == *bytes => None,
        (SetCondition::ValueEquals(_), Some(_)) => Some((WriteErrorCode::ValueMismatch, "value mismatch")),
    };
    match failure {
        None => Ok(()),
        Some((code, message)) => Err(WriteError {
            code,
            key: key.to_owned(),
            current_version: current.map(|row| row.version),
            current_value: current
                .filter(|row| row.value.len() <= WRITE_ERROR_VALUE_BYTES_MAX)
                .map(|row| row.value.clone()),
            message: format!("condition failed on {key:?}: {message}"),
            committed_tx_id: None,
            committed_block_height: None,
            last_committed_sequence: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::hash::hex32;
    use crate::smt::{from_scratch_root, verify_state_proof};
    use proptest::prelude::*;

    fn ctx(i: u64) -> BlockContext {
        BlockContext {
            timestamp: Timestamp { secs: 1_700_000_000 + i as i64, nanos: 0 },
            leader_id: 1,
            term: 2,
            committed_index: 10 + i,
        }
    }

    fn vault() -> ScopeState {
        ScopeState::genesis(
            ScopeKey::new(NamespaceId(1), Some(VaultId(1))),
            RetentionPolicy::default(),
            &ctx(0),
        )
    }

    fn tx(client: &str, sequence: u64, operations: Vec<Operation>) -> Transaction {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&sequence.to_be_bytes());
        id[8] = client.len() as u8;
        Transaction {
            id,
            client_id: client.into(),
            sequence,
            operations,
            timestamp: Timestamp { secs: 5, nanos: 6 },
            actor: "user:test".into(),
        }
    }

    fn set(key: &str, value: &[u8]) -> Operation {
        Operation::SetEntity { key: key.into(), value: value.to_vec(), expires_at: None, condition: None }
    }

    fn set_if(key: &str, value: &[u8], condition: SetCondition) -> Operation {
        Operation::SetEntity {
            key: key.into(),
            value: value.to_vec(),
            expires_at: None,
            condition: Some(condition),
        }
    }

    fn set_ttl(key: &str, value: &[u8], expires_at: u64) -> Operation {
        Operation::SetEntity {
            key: key.into(),
            value: value.to_vec(),
            expires_at: Some(expires_at),
            condition: None,
        }
    }

    fn del(key: &str) -> Operation {
        Operation::DeleteEntity { key: key.into() }
    }

    fn create(resource: &str, relation: &str, subject: &str) -> Operation {
        Operation::CreateRelationship {
            resource: resource.into(),
            relation: relation.into(),
            subject: subject.into(),
        }
    }

    fn remove(resource: &str, relation: &str, subject: &str) -> Operation {
        Operation::DeleteRelationship {
            resource: resource.into(),
            relation: relation.into(),
            subject: subject.into(),
        }
    }

    type TxResult = Result<Vec<OpStatus>, WriteError>;

    /// Build a block from `txs`, check that a replica's replay reproduces it exactly, and commit.
    /// `blocks` one after another on a fresh vault, each committed before the next is built.
    fn run_sequentially(blocks: Vec<Vec<Transaction>>) -> (ScopeState, Vec<(Vec<TxResult>, VaultEntry)>) {
        let mut scope = vault();
        let results = blocks.into_iter().map(|txs| run_block(&mut scope, txs)).collect();
        (scope, results)
    }

    fn run_block(scope: &mut ScopeState, txs: Vec<Transaction>) -> (Vec<TxResult>, VaultEntry) {
        let c = ctx(scope.meta.height + 1);
        let mut draft = BlockDraft::new(scope);
        let results: Vec<TxResult> = txs.into_iter().map(|t| draft.try_apply(t)).collect();
        let (entry, delta) = draft.finish(&c);
        let hashes: Vec<Hash> = entry.transactions.iter().map(tx_hash).collect();
        assert_eq!(delta.tx_hashes, hashes, "the delta carries the leaves of the tx Merkle tree");
        let replayed = scope.replay_entry(&entry, &c).unwrap();
        assert_eq!(replayed.header, delta.header);
        assert_eq!(replayed.block_hash, delta.block_hash);
        assert_eq!(replayed.statuses, delta.statuses);
        scope.commit(delta);
        (results, entry)
    }

    #[test]
    fn t30_spec_vector_through_apply() {
        // The §7.9 three-row scope built by a real block at height 1 has the spec's root and
        // user:2 proof; the header chains to genesis and the proof verifies against it.
        let mut scope = vault();
        let genesis = scope.meta.genesis.clone();
        assert_eq!(genesis.tx_merkle_root, EMPTY_HASH);
        assert_eq!(genesis.state_root, ZERO_HASH);
        assert_eq!(scope.meta.last_block_hash, block_hash(&genesis));
        let ops =
            vec![set("user:1", b"alice"), set("user:2", b"bob"), create("doc:readme", "viewer", "user:1")];
        let t = tx("c", 1, ops);
        let leaf = tx_hash(&t);
        let (results, entry) = run_block(&mut scope, vec![t]);
        assert_eq!(results[0].as_ref().unwrap(), &vec![OpStatus::Created; 3]);
        let root = hex32("3b9a40480e12865233374a6c14484e529126527bb336cbe511d5a99b7f755eb3");
        assert_eq!(entry.state_root, root);
        assert_eq!(entry.tx_merkle_root, leaf);
        assert_eq!(entry.previous_vault_hash, block_hash(&genesis));
        assert_eq!(scope.meta.state_root, root);
        assert_eq!(scope.meta.height, 1);
        assert_eq!(scope.get_relationship(&Relationship::new("doc:readme", "viewer", "user:1")), Some(1));
        let proof = scope.prove(b"user:2");
        assert_eq!(proof.siblings.len(), 6);
        assert_eq!(
            proof.siblings[0],
            hex32("024e5e18583147ce6d071f3ac315778c1ca08325c596dc952505afd3ae665272")
        );
        assert_eq!(
            proof.siblings[5],
            hex32("4056f2965a09aaa0216737c1073af2a291c25187340ca974aaf728670c921355")
        );
        let header = BlockHeader {
            height: 1,
            namespace_id: 1,
            vault_id: 1,
            previous_hash: entry.previous_vault_hash,
            tx_merkle_root: entry.tx_merkle_root,
            state_root: entry.state_root,
            timestamp: ctx(1).timestamp,
            leader_id: 1,
            term: 2,
            committed_index: 11,
        };
        assert_eq!(scope.meta.last_block_hash, block_hash(&header));
        assert_eq!(verify_state_proof(&proof, b"user:2", Some((b"bob", 0, 1)), &header), Ok(()));
        let absent = scope.prove(b"user:3");
        assert_eq!((absent.leaf, absent.siblings.len()), (None, 2));
        assert_eq!(verify_state_proof(&absent, b"user:3", None, &header), Ok(()));
        assert_eq!(scope.key_count(), 3);
    }

    #[test]
    fn t31_statuses() {
        // Every row of the §3.9 table, across two blocks; versions are the vault height of the
        // block that last set the row.
        let mut scope = vault();
        let (r, _) = run_block(
            &mut scope,
            vec![tx(
                "c",
                1,
                vec![
                    set("a", b"1"),
                    set("a", b"2"),
                    del("b"),
                    create("d:1", "v", "u:1"),
                    create("d:1", "v", "u:1"),
                ],
            )],
        );
        use OpStatus::*;
        assert_eq!(r[0].as_ref().unwrap(), &vec![Created, Updated, NotFound, Created, AlreadyExists]);
        assert_eq!(scope.get_entity("a").unwrap().version, 1);
        let (r, _) = run_block(
            &mut scope,
            vec![tx(
                "c",
                2,
                vec![
                    set("a", b"3"),
                    del("a"),
                    del("a"),
                    remove("d:1", "v", "u:1"),
                    remove("d:1", "v", "u:1"),
                ],
            )],
        );
        assert_eq!(r[0].as_ref().unwrap(), &vec![Updated, Deleted, NotFound, Deleted, NotFound]);
        assert_eq!(scope.key_count(), 0);
        assert_eq!(scope.computed_root(), ZERO_HASH);
        let (_, _) = run_block(&mut scope, vec![tx("c", 3, vec![set("x", b"1"), create("d:1", "v", "u:1")])]);
        assert_eq!(scope.get_entity("x").unwrap().version, 3);
        assert_eq!(scope.get_relationship(&Relationship::new("d:1", "v", "u:1")), Some(3));
        // A relationship deleted and re-created in one block gets the new height as its version.
        run_block(&mut scope, vec![tx("c", 4, vec![remove("d:1", "v", "u:1"), create("d:1", "v", "u:1")])]);
        assert_eq!(scope.get_relationship(&Relationship::new("d:1", "v", "u:1")), Some(4));
        assert_eq!(scope.computed_root(), from_scratch_root(scope.leaves()));
    }

    #[test]
    fn t32_conditions_and_atomicity() {
        // Each §3.3 condition passes and fails as tabled; errors name the key with its current
        // version and (≤ 4 KiB) value; a failing tx changes nothing and consumes no sequence;
        // conditions see earlier ops of the same tx and earlier txs of the block.
        let mut scope = vault();
        let big = vec![7u8; WRITE_ERROR_VALUE_BYTES_MAX + 1];
        run_block(
            &mut scope,
            vec![tx("c", 1, vec![set("a", b"va"), set("big", &big), set_ttl("old", b"o", 1)])],
        );
        let c = ctx(2);
        let mut draft = BlockDraft::new(&scope);
        let err = |d: &mut BlockDraft, seq, op| d.try_apply(tx("c", seq, vec![op])).unwrap_err();
        let e = err(&mut draft, 2, set_if("a", b"x", SetCondition::MustNotExist));
        assert_eq!((e.code, e.key.as_str(), e.current_version), (WriteErrorCode::KeyExists, "a", Some(1)));
        assert_eq!(e.current_value.as_deref(), Some(&b"va"[..]));
        // Expired but not yet collected counts as present.
        let e = err(&mut draft, 2, set_if("old", b"x", SetCondition::MustNotExist));
        assert_eq!(e.code, WriteErrorCode::KeyExists);
        let e = err(&mut draft, 2, set_if("big", b"x", SetCondition::VersionEquals(9)));
        assert_eq!(
            (e.code, e.current_version, e.current_value),
            (WriteErrorCode::VersionMismatch, Some(1), None)
        );
        let e = err(&mut draft, 2, set_if("a", b"x", SetCondition::ValueEquals(b"no".to_vec())));
        assert_eq!(e.code, WriteErrorCode::ValueMismatch);
        for cond in
            [SetCondition::MustExist, SetCondition::VersionEquals(1), SetCondition::ValueEquals(vec![])]
        {
            let e = err(&mut draft, 2, set_if("zz", b"x", cond));
            assert_eq!(
                (e.code, e.current_version, e.current_value),
                (WriteErrorCode::KeyNotFound, None, None)
            );
        }
        // A failing op after successful ones rolls back the whole transaction.
        let e = draft
            .try_apply(tx(
                "c",
                2,
                vec![set("n", b"1"), del("a"), set_if("n", b"2", SetCondition::MustNotExist)],
            ))
            .unwrap_err();
        assert_eq!((e.code, e.current_version), (WriteErrorCode::KeyExists, Some(2)));
        assert!(draft.is_empty());
        assert_eq!(draft.check_sequence("c", 2), SequenceCheck::Next);
        // Passing conditions, seeing the same tx's and the earlier tx's writes.
        let ok = draft
            .try_apply(tx(
                "c",
                2,
                vec![
                    set_if("a", b"vb", SetCondition::ValueEquals(b"va".to_vec())),
                    set_if("a", b"vc", SetCondition::VersionEquals(2)),
                    set_if("new", b"1", SetCondition::MustNotExist),
                ],
            ))
            .unwrap();
        assert_eq!(ok, vec![OpStatus::Updated, OpStatus::Updated, OpStatus::Created]);
        let ok = draft.try_apply(tx("c", 3, vec![set_if("new", b"2", SetCondition::MustExist)])).unwrap();
        assert_eq!(ok, vec![OpStatus::Updated]);
        let e = err(&mut draft, 4, set_if("new", b"3", SetCondition::MustNotExist));
        assert_eq!(e.current_value.as_deref(), Some(&b"2"[..]));
        assert_eq!(draft.len(), 2);
        let (entry, delta) = draft.finish(&c);
        assert_eq!(entry.transactions.len(), 2);
        assert_eq!(delta.statuses.len(), 2);
        scope.commit(delta);
        assert_eq!(scope.get_entity("a").unwrap().value, b"vc");
        assert_eq!(scope.get_entity("n"), None);
        assert_eq!(scope.client_state("c").last_committed_seq, 3);
    }

    #[test]
    fn t33_sequences() {
        // §6.3: Next / Duplicate (the persisted record) / Gap, within a draft and after commit.
        let mut scope = vault();
        let draft = BlockDraft::new(&scope);
        assert_eq!(draft.check_sequence("c", 1), SequenceCheck::Next);
        assert_eq!(draft.check_sequence("c", 3), SequenceCheck::Gap { last: 0 });
        let t1 = tx("c", 1, vec![set("a", b"1")]);
        let t2 = tx("c", 2, vec![set("a", b"2")]);
        let id2 = t2.id;
        let mut draft = BlockDraft::new(&scope);
        draft.try_apply(t1.clone()).unwrap();
        assert_eq!(draft.check_sequence("c", 2), SequenceCheck::Next);
        // Taken by this draft, which has not committed: in flight, not a duplicate.
        assert_eq!(draft.check_sequence("c", 1), SequenceCheck::InFlight { last_committed: 0 });
        draft.try_apply(t2).unwrap();
        let e = draft.try_apply(t1).unwrap_err();
        assert_eq!((e.committed_tx_id, e.last_committed_sequence), (None, None));
        let e = draft.try_apply(tx("c", 9, vec![set("a", b"9")])).unwrap_err();
        assert_eq!((e.code, e.last_committed_sequence), (WriteErrorCode::SequenceGap, Some(2)));
        assert_eq!(draft.check_sequence("other", 1), SequenceCheck::Next);
        let (_, delta) = draft.finish(&ctx(1));
        scope.commit(delta);
        let expected =
            ClientState { last_committed_seq: 2, last_committed_tx_id: id2, last_committed_block_height: 1 };
        assert_eq!(scope.client_state("c"), expected);
        assert_eq!(BlockDraft::new(&scope).check_sequence("c", 1), SequenceCheck::Duplicate(expected));
        assert_eq!(BlockDraft::new(&scope).check_sequence("c", 2), SequenceCheck::Duplicate(expected));
        assert_eq!(BlockDraft::new(&scope).check_sequence("c", 4), SequenceCheck::Gap { last: 2 });
        assert_eq!(scope.client_state("nobody"), ClientState::default());
        assert_eq!(scope.clients().count(), 1);
    }

    #[test]
    fn t34_expire_entity() {
        // ExpireEntity removes only a row whose expires_at equals expired_at (Expired), else NotFound.
        let mut scope = vault();
        run_block(&mut scope, vec![tx("c", 1, vec![set_ttl("a", b"1", 100), set_ttl("b", b"1", 100)])]);
        let expire = |key: &str, at| Operation::ExpireEntity { key: key.into(), expired_at: at };
        let (r, _) = run_block(
            &mut scope,
            vec![tx(
                "system:gc",
                1,
                vec![expire("a", 100), expire("b", 99), expire("zz", 100), expire("a", 100)],
            )],
        );
        use OpStatus::*;
        assert_eq!(r[0].as_ref().unwrap(), &vec![Expired, NotFound, NotFound, NotFound]);
        assert!(scope.get_entity("a").is_none());
        assert!(scope.get_entity("b").is_some());
    }

    #[test]
    fn t35_replay_detects_divergence() {
        // A replica's replay rejects an entry whose roots, chain link, height or transactions do
        // not reproduce; the base scope is left untouched.
        let mut scope = vault();
        run_block(
            &mut scope,
            vec![tx("c", 1, vec![set("a", b"1"), set_if("b", b"1", SetCondition::MustNotExist)])],
        );
        let c = ctx(2);
        let mut draft = BlockDraft::new(&scope);
        draft.try_apply(tx("c", 2, vec![set_if("b", b"2", SetCondition::VersionEquals(1))])).unwrap();
        let (entry, _) = draft.finish(&c);
        let before = scope.computed_root();
        assert!(scope.replay_entry(&entry, &c).is_ok());

        let mut bad_root = entry.clone();
        bad_root.state_root[0] ^= 1;
        let d = scope.replay_entry(&bad_root, &c).unwrap_err();
        assert_eq!((d.expected, d.computed, d.at_height), (bad_root.state_root, entry.state_root, 2));

        let mut bad_tx = entry.clone();
        bad_tx.transactions[0].operations = vec![set_if("b", b"2", SetCondition::VersionEquals(7))];
        assert!(scope.replay_entry(&bad_tx, &c).is_err());
        let mut bad_link = entry.clone();
        bad_link.previous_vault_hash[0] ^= 1;
        assert!(scope.replay_entry(&bad_link, &c).is_err());
        let mut bad_height = entry.clone();
        bad_height.vault_height = 3;
        assert!(scope.replay_entry(&bad_height, &c).is_err());
        let mut bad_tx_root = entry.clone();
        bad_tx_root.tx_merkle_root[0] ^= 1;
        let d = scope.replay_entry(&bad_tx_root, &c).unwrap_err();
        assert_eq!(d.expected, bad_tx_root.tx_merkle_root);
        // The same transaction replayed twice hits the sequence check.
        let mut dup = entry.clone();
        dup.transactions.push(entry.transactions[0].clone());
        assert!(scope.replay_entry(&dup, &c).is_err());
        assert_eq!(scope.computed_root(), before);
        assert_eq!(scope.meta.height, 1);
    }

    #[test]
    fn t46_commit_displacing_hands_back_the_rows_before_the_block() {
        // The displaced rows are exactly the pre-images: updated, deleted, created (None) entities
        // and created/removed relationships; the resulting state equals a plain commit's.
        let mut scope = vault();
        run_block(
            &mut scope,
            vec![tx("c", 1, vec![set("a", b"1"), set("b", b"2"), create("doc:1", "viewer", "user:1")])],
        );
        let before_a = scope.get_entity("a").cloned();
        let before_b = scope.get_entity("b").cloned();
        let mut draft = BlockDraft::new(&scope);
        draft
            .try_apply(tx(
                "c",
                2,
                vec![
                    set("a", b"9"),
                    del("b"),
                    set("n", b"new"),
                    remove("doc:1", "viewer", "user:1"),
                    create("doc:2", "viewer", "user:1"),
                ],
            ))
            .unwrap();
        let (_, delta) = draft.finish(&ctx(2));
        let mut plain = scope.clone();
        plain.commit(delta.clone());
        let displaced = scope.commit_displacing(delta);
        assert_eq!(
            displaced.entities,
            vec![("a".to_string(), before_a), ("b".to_string(), before_b), ("n".to_string(), None)]
        );
        assert_eq!(
            displaced.relationships,
            vec![
                (Relationship::new("doc:1", "viewer", "user:1"), Some(1)),
                (Relationship::new("doc:2", "viewer", "user:1"), None)
            ]
        );
        assert_eq!(scope.leaves(), plain.leaves());
        assert_eq!(scope.meta, plain.meta);
    }

    #[test]
    #[should_panic(expected = "commit out of order")]
    fn t36_commit_rejects_a_stale_delta() {
        // Committing the same height twice is a bug and panics.
        let mut scope = vault();
        let mut draft = BlockDraft::new(&scope);
        draft.try_apply(tx("c", 1, vec![set("a", b"1")])).unwrap();
        let (_, delta) = draft.finish(&ctx(1));
        scope.commit(delta.clone());
        scope.commit(delta);
    }

    #[test]
    fn t37_list_entities() {
        // Prefix listing is ascending, exclusive of start_after, TTL-filtered unless asked, and
        // returns the continuation key only when more rows qualify.
        let mut scope = vault();
        run_block(
            &mut scope,
            vec![tx(
                "c",
                1,
                vec![
                    set("u:1", b"a"),
                    set("u:2", b"b"),
                    set_ttl("u:3", b"c", 50),
                    set("u:4", b"d"),
                    set("v:1", b"e"),
                    set("u", b"f"),
                ],
            )],
        );
        let keys = |v: &Vec<Entity>| v.iter().map(|e| e.key.clone()).collect::<Vec<_>>();
        let (page, next) = scope.list_entities("u:", None, 2, false, 100);
        assert_eq!((keys(&page), next.as_deref()), (vec!["u:1".to_string(), "u:2".into()], Some("u:2")));
        let (page, next) = scope.list_entities("u:", Some("u:2"), 2, false, 100);
        assert_eq!((keys(&page), next), (vec!["u:4".to_string()], None));
        let (page, _) = scope.list_entities("u:", Some("u:2"), 2, true, 100);
        assert_eq!(keys(&page), vec!["u:3".to_string(), "u:4".into()]);
        let (page, _) = scope.list_entities("u:", None, 10, false, 49);
        assert_eq!(page.len(), 4);
        assert_eq!(page[2], Entity { key: "u:3".into(), value: b"c".to_vec(), expires_at: 50, version: 1 });
        let (page, next) = scope.list_entities("u:", None, 3, false, 100);
        assert_eq!((page.len(), next), (3, None));
        let (page, _) = scope.list_entities("", Some("u:4"), 10, false, 100);
        assert_eq!(keys(&page), vec!["v:1".to_string()]);
        let (page, _) = scope.list_entities("u:", Some("a"), 10, true, 100);
        assert_eq!(page.len(), 4);
        let (page, _) = scope.list_entities("u:", Some("zz"), 10, true, 100);
        assert!(page.is_empty());
        assert!(is_expired(50, 50) && !is_expired(50, 49) && !is_expired(0, u64::MAX));
    }

    #[test]
    fn t48_list_pages_end_at_their_byte_bound() {
        // Proves a list page stops before the entity that would cross its byte bound (with the
        // continuation key, so the next page resumes there), always holds at least one entity
        // even when that one alone is over the bound, and that paging this way visits every key.
        let mut scope = vault();
        let big = vec![9u8; 100];
        run_block(
            &mut scope,
            vec![tx("c", 1, vec![set("u:1", &big), set("u:2", &big), set("u:3", &big), set("u:4", b"x")])],
        );
        let keys = |v: &Vec<Entity>| v.iter().map(|e| e.key.clone()).collect::<Vec<_>>();
        let (page, next) = scope.list_entities_within("u:", None, 10, false, 100, 250);
        assert_eq!((keys(&page), next.as_deref()), (vec!["u:1".to_string(), "u:2".into()], Some("u:2")));
        let (page, next) = scope.list_entities_within("u:", Some("u:2"), 10, false, 100, 250);
        assert_eq!((keys(&page), next), (vec!["u:3".to_string(), "u:4".into()], None));
        let (page, next) = scope.list_entities_within("u:", None, 10, false, 100, 10);
        assert_eq!((keys(&page), next.as_deref()), (vec!["u:1".to_string()], Some("u:1")));
        let (page, next) = scope.list_entities("u:", None, 10, false, 100);
        assert_eq!((page.len(), next), (4, None));
    }

    #[test]
    fn t38_list_relationships_and_resources() {
        // Each index path returns key-ordered pages (including relations whose characters sort
        // below '@'), the filters are exact, and resources are distinct by type prefix.
        let mut scope = vault();
        let tuples = [
            ("doc:1", "view", "user:b"),
            ("doc:1", "view1", "user:a"),
            ("doc:1", "view", "user:a"),
            ("doc:1", "edit", "group:x#member"),
            ("doc:10", "view", "user:a"),
            ("doc:2", "view", "user:c"),
            ("folder:1", "parent", "doc:1"),
            ("doc:1!", "view", "user:a"),
        ];
        let ops = tuples.iter().map(|(r, l, s)| create(r, l, s)).collect();
        run_block(&mut scope, vec![tx("c", 1, ops)]);
        let all: Vec<Relationship> = tuples.iter().map(|(r, l, s)| Relationship::new(*r, *l, *s)).collect();
        let model = |f: &dyn Fn(&Relationship) -> bool| {
            let mut v: Vec<Relationship> = all.iter().filter(|r| f(r)).cloned().collect();
            v.sort_by_key(|r| r.key());
            v
        };
        let cases: Vec<(Option<&str>, Option<&str>, Option<&str>)> = vec![
            (None, None, None),
            (Some("doc:1"), None, None),
            (Some("doc:1"), Some("view"), None),
            (Some("doc:1"), None, Some("user:a")),
            (Some("doc:1"), Some("view"), Some("user:a")),
            (None, None, Some("user:a")),
            (None, Some("view"), Some("user:a")),
            (None, Some("view"), None),
            (Some("nope:1"), None, None),
        ];
        for (res, rel, sub) in cases {
            let expected = model(&|r| {
                res.is_none_or(|x| r.resource == x)
                    && rel.is_none_or(|x| r.relation == x)
                    && sub.is_none_or(|x| r.subject == x)
            });
            let (full, more) = scope.list_relationships(res, rel, sub, None, 1000);
            assert_eq!(full, expected, "{res:?} {rel:?} {sub:?}");
            assert!(!more);
            // Page through two at a time.
            let mut paged = Vec::new();
            let mut after: Option<Relationship> = None;
            loop {
                let (page, more) = scope.list_relationships(res, rel, sub, after.as_ref(), 2);
                paged.extend(page.iter().cloned());
                after = page.last().cloned();
                if !more {
                    break;
                }
            }
            assert_eq!(paged, expected, "paged {res:?} {rel:?} {sub:?}");
        }
        let (res, more) = scope.list_resources("doc", None, 2);
        assert_eq!((res, more), (vec!["doc:1".to_string(), "doc:1!".into()], true));
        let (res, more) = scope.list_resources("doc", Some("doc:1!"), 2);
        assert_eq!((res, more), (vec!["doc:10".to_string(), "doc:2".into()], false));
        let (res, _) = scope.list_resources("folder", None, 10);
        assert_eq!(res, vec!["folder:1".to_string()]);
        assert!(scope.list_resources("do", None, 10).0.is_empty());
        // Deleting the last subject of an index row removes it from listings.
        run_block(&mut scope, vec![tx("c", 2, vec![remove("folder:1", "parent", "doc:1")])]);
        assert!(scope.list_resources("folder", None, 10).0.is_empty());
        assert!(scope.list_relationships(None, None, Some("doc:1"), None, 10).0.is_empty());
    }

    #[test]
    fn t39_from_rows_rebuilds() {
        // Reloading a scope from its rows gives the same root, lists and client states.
        let mut scope = vault();
        run_block(
            &mut scope,
            vec![tx("c", 1, vec![set("a", b"1"), create("d:1", "v", "u:1"), create("d:2", "v", "u:1")])],
        );
        run_block(&mut scope, vec![tx("c", 2, vec![set_ttl("b", b"2", 9), remove("d:2", "v", "u:1")])]);
        let rebuilt = ScopeState::from_rows(
            scope.meta.clone(),
            scope.entities().map(|(k, v)| (k.clone(), v.clone())).collect(),
            scope.relationships().map(|(r, v)| (r.clone(), *v)).collect(),
            scope.clients().map(|(c, s)| (c.clone(), *s)).collect(),
        );
        assert_eq!(rebuilt.computed_root(), scope.meta.state_root);
        assert_eq!(rebuilt.key_count(), 3);
        assert_eq!(
            rebuilt.list_relationships(None, None, Some("u:1"), None, 10),
            scope.list_relationships(None, None, Some("u:1"), None, 10)
        );
        assert_eq!(rebuilt.client_state("c"), scope.client_state("c"));
        assert_eq!(rebuilt.prove(b"b"), scope.prove(b"b"));
        let mut s = rebuilt;
        s.set_status(VaultStatus::ReadOnly);
        assert_eq!(s.meta.status, VaultStatus::ReadOnly);
    }

    /// Model of one scope for the property test: plain maps, the spec's rules written naively.
    #[derive(Clone, Default)]
    struct Model {
        entities: BTreeMap<String, EntityRow>,
        relationships: BTreeMap<String, (Relationship, u64)>,
    }

    impl Model {
        /// Apply a transaction at `height`: `Ok(statuses)` or the failing condition's code.
        fn apply(&mut self, ops: &[Operation], height: u64) -> Result<Vec<OpStatus>, WriteErrorCode> {
            let mut next = self.clone();
            let mut out = Vec::new();
            for op in ops {
                out.push(match op {
                    Operation::SetEntity { key, value, expires_at, condition } => {
                        let cur = next.entities.get(key);
                        let code = match (condition, cur) {
                            (None, _) => None,
                            (Some(SetCondition::MustNotExist), Some(_)) => Some(WriteErrorCode::KeyExists),
                            (Some(SetCondition::MustNotExist), None) => None,
                            (Some(_), None) => Some(WriteErrorCode::KeyNotFound),
                            (Some(SetCondition::MustExist), Some(_)) => None,
                            (Some(SetCondition::VersionEquals(v)), Some(r)) => {
                                (r.version != *v).then_some(WriteErrorCode::VersionMismatch)
                            }
                            (Some(SetCondition::ValueEquals(b)), Some(r)) => {
                                (r.value != *b).then_some(WriteErrorCode::ValueMismatch)
                            }
                        };
                        if let Some(code) = code {
                            return Err(code);
                        }
                        let existed = cur.is_some();
                        let row = EntityRow {
                            value: value.clone(),
                            expires_at: expires_at.unwrap_or(0),
                            version: height,
                        };
                        next.entities.insert(key.clone(), row);
                        if existed {
                            OpStatus::Updated
                        } else {
                            OpStatus::Created
                        }
                    }
                    Operation::DeleteEntity { key } => match next.entities.remove(key) {
                        Some(_) => OpStatus::Deleted,
                        None => OpStatus::NotFound,
                    },
                    Operation::ExpireEntity { key, expired_at } => match next.entities.get(key) {
                        Some(r) if r.expires_at == *expired_at => {
                            next.entities.remove(key);
                            OpStatus::Expired
                        }
                        _ => OpStatus::NotFound,
                    },
                    Operation::CreateRelationship { resource, relation, subject } => {
                        let r = Relationship::new(resource.as_str(), relation.as_str(), subject.as_str());
                        let k = r.key();
                        match next.relationships.entry(k) {
                            std::collections::btree_map::Entry::Occupied(_) => OpStatus::AlreadyExists,
                            std::collections::btree_map::Entry::Vacant(slot) => {
                                slot.insert((r, height));
                                OpStatus::Created
                            }
                        }
                    }
                    Operation::DeleteRelationship { resource, relation, subject } => {
                        let k =
                            Relationship::new(resource.as_str(), relation.as_str(), subject.as_str()).key();
                        match next.relationships.remove(&k) {
                            Some(_) => OpStatus::Deleted,
                            None => OpStatus::NotFound,
                        }
                    }
                });
            }
            *self = next;
            Ok(out)
        }

        fn leaves(&self) -> Vec<(Hash, Hash)> {
            let mut v: Vec<(Hash, Hash)> = self.entities.iter().map(|(k, r)| entity_leaf(k, r)).collect();
            v.extend(self.relationships.values().map(|(r, ver)| relationship_leaf(r, *ver)));
            v
        }
    }

    fn arb_op() -> impl Strategy<Value = Operation> {
        let key = (0u8..5).prop_map(|i| format!("k{i}"));
        let value = proptest::collection::vec(0u8..3, 0..2);
        let condition = proptest::option::of(prop_oneof![
            Just(SetCondition::MustNotExist),
            Just(SetCondition::MustExist),
            (0u64..4).prop_map(SetCondition::VersionEquals),
            proptest::collection::vec(0u8..3, 0..2).prop_map(SetCondition::ValueEquals),
        ]);
        let tuple = ((0u8..3), prop_oneof![Just("r"), Just("r1")], (0u8..3))
            .prop_map(|(r, l, s)| (format!("doc:{r}"), l.to_string(), format!("user:{s}")));
        prop_oneof![
            4 => (key.clone(), value, proptest::option::of(0u64..3), condition)
                .prop_map(|(key, value, expires_at, condition)| Operation::SetEntity { key, value, expires_at, condition }),
            1 => key.clone().prop_map(|key| Operation::DeleteEntity { key }),
            1 => (key, 0u64..3).prop_map(|(key, expired_at)| Operation::ExpireEntity { key, expired_at }),
            2 => tuple.clone().prop_map(|(resource, relation, subject)| Operation::CreateRelationship { resource, relation, subject }),
            1 => tuple.prop_map(|(resource, relation, subject)| Operation::DeleteRelationship { resource, relation, subject }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn p10_apply_matches_model(
            blocks in proptest::collection::vec(
                proptest::collection::vec(proptest::collection::vec(arb_op(), 1..4), 1..5), 1..6)
        ) {
            // Blocks of random transactions give the model's statuses and condition failures
            // (failed txs roll back and consume no sequence), rows, relationship listings, and a
            // root equal to a from-scratch computation over the model's rows; replicas agree.
            let mut scope = vault();
            let mut model = Model::default();
            let mut seq = 0u64;
            for block in blocks {
                let height = scope.meta.height + 1;
                let c = ctx(height);
                let mut draft = BlockDraft::new(&scope);
                for ops in block {
                    let expected = model.apply(&ops, height);
                    let got = draft.try_apply(tx("c", seq + 1, ops));
                    match (expected, got) {
                        (Ok(e), Ok(g)) => { prop_assert_eq!(e, g); seq += 1; }
                        (Err(e), Err(g)) => prop_assert_eq!(e, g.code),
                        (e, g) => prop_assert!(false, "model {:?} vs draft {:?}", e, g),
                    }
                }
                if draft.is_empty() {
                    continue;
                }
                let (entry, delta) = draft.finish(&c);
                let replayed = scope.replay_entry(&entry, &c).unwrap();
                prop_assert_eq!(&replayed.header, &delta.header);
                scope.commit(delta);
                prop_assert_eq!(scope.meta.state_root, from_scratch_root(model.leaves()));
                prop_assert_eq!(scope.client_state("c").last_committed_seq, seq);
                let rows: BTreeMap<String, EntityRow> = scope.entities().map(|(k, v)| (k.clone(), v.clone())).collect();
                prop_assert_eq!(&rows, &model.entities);
                let rels: Vec<(Relationship, u64)> = scope.relationships().map(|(r, v)| (r.clone(), *v)).collect();
                let model_rels: Vec<(Relationship, u64)> = model.relationships.values().cloned().collect();
                prop_assert_eq!(&rels, &model_rels);
                let (by_subject, _) = scope.list_relationships(None, None, Some("user:1"), None, 1000);
                let expected: Vec<Relationship> =
                    model_rels.iter().map(|(r, _)| r.clone()).filter(|r| r.subject == "user:1").collect();
                prop_assert_eq!(by_subject, expected);
                let (by_resource, _) = scope.list_relationships(Some("doc:1"), None, None, None, 1000);
                let expected: Vec<Relationship> =
                    model_rels.iter().map(|(r, _)| r.clone()).filter(|r| r.resource == "doc:1").collect();
                prop_assert_eq!(by_resource, expected);
            }
        }
    }

    #[test]
    fn t45_pipelined_drafts_equal_sequential_blocks() {
        // Three blocks drafted back to back, each over the previous ones' uncommitted deltas,
        // must equal the same three blocks built with a commit in between: same entries (roots,
        // links), same statuses, and conditions/sequences see the pending writes.
        let blocks = vec![
            vec![tx("a", 1, vec![set("k1", b"v1"), create("doc:1", "viewer", "user:1")])],
            vec![
                tx("a", 2, vec![set_if("k1", b"v2", SetCondition::VersionEquals(1))]),
                tx("b", 1, vec![set_if("k2", b"x", SetCondition::MustNotExist)]),
            ],
            vec![
                tx("a", 3, vec![del("k1"), remove("doc:1", "viewer", "user:1")]),
                tx("b", 2, vec![set_if("k2", b"y", SetCondition::MustNotExist)]),
                tx("a", 3, vec![set("dup", b"z")]),
            ],
        ];
        let (sequential, expected) = run_sequentially(blocks.clone());
        let mut pipelined = vault();
        let mut deltas: Vec<ScopeDelta> = Vec::new();
        let mut got = Vec::new();
        for txs in blocks {
            let c = ctx(pipelined.meta.height + deltas.len() as u64 + 1);
            let mut draft = BlockDraft::over(&pipelined, deltas.iter().collect());
            let results: Vec<TxResult> = txs.into_iter().map(|t| draft.try_apply(t)).collect();
            let (entry, delta) = draft.finish(&c);
            got.push((results, entry));
            deltas.push(delta);
        }
        for delta in deltas {
            pipelined.commit(delta);
        }
        assert_eq!(got, expected);
        assert_eq!(pipelined.meta, sequential.meta);
        assert_eq!(pipelined.computed_root(), sequential.computed_root());
        assert_eq!(pipelined.client_state("a"), sequential.client_state("a"));
    }

    /// Drafts sealed before their predecessors' trees exist (D21: one committed block, one
    /// proposed delta, then two sealed drafts completed in order afterwards) give the same
    /// blocks, statuses and final state as sequential blocks.
    #[test]
    fn t47_drafts_over_sealed_blocks_equal_sequential_blocks() {
        let blocks = vec![
            vec![tx("a", 1, vec![set("k1", b"v1"), create("doc:1", "viewer", "user:1")])],
            vec![tx("a", 2, vec![set_if("k1", b"v2", SetCondition::VersionEquals(1))])],
            vec![
                tx("a", 3, vec![set_if("k1", b"v3", SetCondition::VersionEquals(2))]),
                tx("b", 1, vec![set_if("k2", b"x", SetCondition::MustNotExist)]),
            ],
            vec![
                tx("a", 4, vec![del("k1"), remove("doc:1", "viewer", "user:1")]),
                tx("b", 2, vec![set_if("k2", b"y", SetCondition::MustNotExist)]),
                tx("a", 4, vec![set("dup", b"z")]),
            ],
        ];
        let (sequential, expected) = run_sequentially(blocks.clone());
        let mut blocks = blocks.into_iter();
        let mut state = vault();
        let first = blocks.next().unwrap();
        let got_first = run_block(&mut state, first);
        // Block 2 is proposed (a full delta); blocks 3 and 4 are sealed on top of it.
        let mut draft = BlockDraft::over(&state, Vec::new());
        let results2: Vec<TxResult> =
            blocks.next().unwrap().into_iter().map(|t| draft.try_apply(t)).collect();
        let (entry2, delta2) = draft.finish(&ctx(2));
        let mut sealed: Vec<SealedDraft> = Vec::new();
        let mut results = Vec::new();
        for txs in blocks {
            let mut draft = BlockDraft::over_sealed(&state, vec![&delta2], sealed.iter().collect());
            results.push(txs.into_iter().map(|t| draft.try_apply(t)).collect::<Vec<TxResult>>());
            sealed.push(draft.seal());
        }
        assert!(sealed[0].parent_tree.is_some() && sealed[0].previous_hash() == Some(delta2.block_hash));
        assert!(sealed[1].parent_tree.is_none() && sealed[1].previous_hash().is_none());
        let mut got = vec![got_first, (results2, entry2)];
        let (mut tree, mut previous) = (delta2.tree.clone(), delta2.block_hash);
        let mut deltas = vec![delta2];
        for (mut draft, results) in sealed.into_iter().zip(results) {
            let next = tree.with_updates(std::mem::take(&mut draft.changes));
            let (entry, delta) = draft.complete(next, previous, &ctx(deltas.len() as u64 + 2));
            (tree, previous) = (delta.tree.clone(), delta.block_hash);
            got.push((results, entry));
            deltas.push(delta);
        }
        for delta in deltas {
            state.commit(delta);
        }
        assert_eq!(got, expected);
        assert_eq!(state.meta, sequential.meta);
        assert_eq!(state.computed_root(), sequential.computed_root());
        assert_eq!(state.client_state("b"), sequential.client_state("b"));
    }
}
