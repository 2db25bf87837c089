//! In-memory committed state of one scope and the deterministic block apply (SPEC §3, §6.3, §7.6,
//! §8.2, §8.4). CONTRACT FILE: signatures are fixed; bodies are being implemented.
//!
//! Flow on the leader: `BlockDraft::new(&scope)` → `check_sequence` + `try_apply` per transaction
//! → `finish(ctx)` gives the `VaultEntry` to propose and the `ScopeDelta` to commit once the entry
//! is applied. Flow on any replica: `scope.replay_entry(&entry, &ctx)` → `ScopeDelta` (or
//! `Divergence`) → `scope.commit(delta)`. The base state is never mutated before commit, so a
//! failed proposal just drops the delta.

use crate::smt::SparseMerkleTree;
use crate::types::*;
use std::collections::{BTreeMap, BTreeSet};

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
