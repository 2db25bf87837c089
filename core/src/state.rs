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

use crate::constants::{DEBUG_FROM_SCRATCH_ROWS_MAX, PAGE_SIZE_DEFAULT, WRITE_ERROR_VALUE_BYTES_MAX};
use crate::hash::{block_hash, tx_hash, tx_merkle_root, EMPTY_HASH};
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

/// Result of the idempotency check of SPEC §6.3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SequenceCheck {
    /// `seq == last + 1`: process it.
    Next,
    /// `seq <= last`: already committed; the persisted record of the last committed tx.
    Duplicate(ClientState),
    /// `seq > last + 1`.
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
}

/// Committed state of one scope: rows, relationship indexes, state tree, client sequences.
#[derive(Debug, Clone)]
pub struct ScopeState {
    pub meta: ScopeMeta,
    entities: BTreeMap<String, EntityRow>,
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
        let limit = page_limit(limit);
        let lower = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let mut out = Vec::new();
        for (key, row) in self.entities.range::<str, _>((lower, Bound::Unbounded)) {
            if !key.starts_with(prefix) {
                break;
            }
            if !include_expired && is_expired(row.expires_at, now_secs) {
                continue;
            }
            if out.len() == limit {
                let last = out.last().map(|e: &Entity| e.key.clone());
                return (out, last);
            }
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
        let delta = draft.into_delta(ctx);
        if delta.header.tx_merkle_root != entry.tx_merkle_root {
            return Err(Divergence {
                expected: entry.tx_merkle_root,
                computed: delta.header.tx_merkle_root,
                at_height,
            });
        }
        if failed || delta.header.state_root != entry.state_root {
            return Err(Divergence {
                expected: entry.state_root,
                computed: delta.header.state_root,
                at_height,
            });
        }
        Ok(delta)
    }

    /// Install a block's delta: rows, indexes, client states, tree and metadata.
    pub fn commit(&mut self, delta: ScopeDelta) {
        assert_eq!(delta.header.height, self.meta.height + 1, "scope {} commit out of order", self.meta.key);
        assert_eq!(delta.header.previous_hash, self.meta.last_block_hash, "delta built on another base");
        assert_eq!(delta.header.namespace_id, self.meta.key.namespace_id.0);
        assert_eq!(delta.header.vault_id, self.meta.key.vault_id.0);
        assert_eq!(delta.tree.root(), delta.header.state_root, "delta tree does not match its header");
        for (key, row) in delta.entities {
            match row {
                Some(row) => {
                    self.entities.insert(key, row);
                }
                None => {
                    self.entities.remove(&key);
                }
            }
        }
        for (relationship, version) in delta.relationships {
            match version {
                Some(version) => self.insert_relationship(relationship, version),
                None => self.remove_relationship(&relationship),
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

    fn insert_relationship(&mut self, relationship: Relationship, version: u64) {
        let Relationship { resource, relation, subject } = relationship.clone();
        self.obj_idx.entry((resource.clone(), relation.clone())).or_default().insert(subject.clone());
        self.subj_idx.entry(subject).or_default().insert((resource, relation));
        self.relationships.insert(relationship, version);
    }

    fn remove_relationship(&mut self, relationship: &Relationship) {
        if self.relationships.remove(relationship).is_none() {
            return;
        }
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
        BlockDraft {
            base,
            height: base.meta.height + 1,
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

    /// SPEC §6.3 against the base plus this draft's earlier transactions. `sequence == 0` must be
    /// rejected by the caller first (`InvalidArgument`); here it would read as a duplicate.
    pub fn check_sequence(&self, client_id: &str, sequence: u64) -> SequenceCheck {
        let state = self.clients.get(client_id).copied().unwrap_or_else(|| self.base.client_state(client_id));
        let last = state.last_committed_seq;
        if sequence <= last {
            SequenceCheck::Duplicate(state)
        } else if sequence == last + 1 {
            SequenceCheck::Next
        } else {
            SequenceCheck::Gap { last }
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
    pub fn finish(mut self, ctx: &BlockContext) -> (VaultEntry, ScopeDelta) {
        let transactions = std::mem::take(&mut self.transactions);
        let delta = self.into_delta(ctx);
        let entry = VaultEntry {
            namespace_id: delta.header.namespace_id,
            vault_id: delta.header.vault_id,
            vault_height: delta.header.height,
            previous_vault_hash: delta.header.previous_hash,
            transactions,
            tx_merkle_root: delta.header.tx_merkle_root,
            state_root: delta.header.state_root,
        };
        (entry, delta)
    }

    /// Roots, header and block hash of the draft (SPEC §7.3, §7.5, §7.6).
    fn into_delta(self, ctx: &BlockContext) -> ScopeDelta {
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
            }));
        let tree = self.base.tree.with_updates(changes);
        let meta = &self.base.meta;
        let header = BlockHeader {
            height: self.height,
            namespace_id: meta.key.namespace_id.0,
            vault_id: meta.key.vault_id.0,
            previous_hash: meta.last_block_hash,
            tx_merkle_root: tx_merkle_root(&self.tx_hashes),
            state_root: tree.root(),
            timestamp: ctx.timestamp,
            leader_id: ctx.leader_id,
            term: ctx.term,
            committed_index: ctx.committed_index,
        };
        let block_hash = block_hash(&header);
        ScopeDelta {
            entities: self.entities,
            relationships: self.relationships,
            clients: self.clients,
            tree,
            header,
            block_hash,
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
        match overlay.entities.get(key).or_else(|| self.entities.get(key)) {
            Some(row) => row.as_ref(),
            None => self.base.entities.get(key),
        }
    }

    fn relationship_present(&self, overlay: &TxOverlay, relationship: &Relationship) -> bool {
        match overlay.relationships.get(relationship).or_else(|| self.relationships.get(relationship)) {
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
