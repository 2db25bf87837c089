//! The durable state checkpoint of a group (`state.redb`, SPEC §8.4–8.5, §9.2) and recovery from
//! it at open (SPEC §9.6).
//!
//! Apply changes only memory (`GroupData`) and records what it touched in `GroupData.dirty`. The
//! checkpointer runs every `CHECKPOINT_INTERVAL_MS` while something is dirty (and on close and
//! before a snapshot): on the core it copies the dirty rows, client states, scope metas and the
//! `applied` record {log id, group height, last group hash, membership}; then, in glommio's blocking
//! thread pool so the executor keeps polling, it writes the pending archive blocks to `blocks.redb`
//! and then the state rows to `state.redb`, each in ONE transaction with `Durability::Immediate`
//! (archive first: SPEC §8.4 step 3). A crash therefore loses at most un-checkpointed applied
//! state; the Raft log is durable before any acknowledgement and openraft re-applies it from the
//! checkpointed log id, which is what the state machine's `applied_state()` reports after open.
//!
//! Entity and relationship rows go to the row journal (`row_journal.rs`, D18): one appended record
//! per checkpoint, merged into the tables below in key order, a step per checkpoint, once the
//! journal holds as many rows as the group; recovery replays the records over the tables.
//!
//! `state.redb` tables (SPEC §9.2, keys SPEC §3.5): `entities` (scope_id BE ‖ key → 16-byte header
//! ‖ value), `relationships` (scope_id BE ‖ `rel:{resource}#{relation}@{subject}` → version u64 LE),
//! `row_journal` (seq → record of changed entity/relationship rows),
//! `client_state` (scope_id BE ‖ client id → 32-byte record), `scopes` (scope_id → rkyv
//! `ScopeMetaRecord`), `applied` ("applied" → rkyv `AppliedRecord`). The relationship indexes and
//! the state tree are not stored: `ScopeState::from_rows` rebuilds them in memory at open (reads
//! are served from memory), which keeps a checkpoint's write set to the rows that changed.

use crate::codec::{decode, encode};
use crate::constants::{
    DB_OPEN_RETRY_MS_MAX, JOURNAL_MERGE_STEPS, JOURNAL_MERGE_STEP_BUDGET_MS, JOURNAL_MERGE_STEP_ROWS_MIN,
    JOURNAL_RECORD_ROWS_MAX,
};
use crate::error::ShardError;
use crate::raft::log_store::records::{LogIdRecord, StoredMembershipRecord};
use crate::raft::type_config::LogId;
use crate::round::group_data::GroupData;
use crate::storage::row_journal::{self, JournalMerge, ROW_JOURNAL};
use ledger_core::state::{EntityRow, ScopeMeta, ScopeState};
use ledger_core::types::*;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use rkyv::{Archive as RkyvArchive, Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ENTITIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entities");
const RELATIONSHIPS: TableDefinition<&[u8], u64> = TableDefinition::new("relationships");
const CLIENT_STATE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("client_state");
const SCOPES: TableDefinition<i64, &[u8]> = TableDefinition::new("scopes");
const APPLIED: TableDefinition<&str, &[u8]> = TableDefinition::new("applied");
const APPLIED_KEY: &str = "applied";

/// Stored `ScopeMeta` (core's type has no rkyv derive).
#[derive(RkyvArchive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ScopeMetaRecord {
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

impl From<&ScopeMeta> for ScopeMetaRecord {
    fn from(m: &ScopeMeta) -> Self {
        ScopeMetaRecord {
            key: m.key,
            height: m.height,
            last_block_hash: m.last_block_hash,
            state_root: m.state_root,
            health: m.health.clone(),
            status: m.status,
            retention: m.retention,
            last_block_ts: m.last_block_ts,
            genesis: m.genesis.clone(),
        }
    }
}

impl From<ScopeMetaRecord> for ScopeMeta {
    fn from(r: ScopeMetaRecord) -> Self {
        ScopeMeta {
            key: r.key,
            height: r.height,
            last_block_hash: r.last_block_hash,
            state_root: r.state_root,
            health: r.health,
            status: r.status,
            retention: r.retention,
            last_block_ts: r.last_block_ts,
            genesis: r.genesis,
        }
    }
}

/// The `applied` row: how far the checkpointed state goes.
#[derive(RkyvArchive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AppliedRecord {
    pub log_id: Option<LogIdRecord>,
    pub group_height: u64,
    pub last_group_hash: Hash,
    pub membership: StoredMembershipRecord,
}

impl AppliedRecord {
    pub fn of(data: &GroupData) -> Self {
        AppliedRecord {
            log_id: data.applied_log_id.as_ref().map(LogIdRecord::from),
            group_height: data.group_height,
            last_group_hash: data.last_group_hash,
            membership: (&data.membership).into(),
        }
    }
}

/// Every row of one scope (load and snapshot form).
#[derive(RkyvArchive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ScopeRows {
    pub meta: ScopeMetaRecord,
    pub entities: Vec<(String, Vec<u8>, u64, u64)>,
    pub relationships: Vec<(Relationship, u64)>,
    pub clients: Vec<(String, ClientState)>,
}

impl ScopeRows {
    pub fn of(scope: &ScopeState) -> Self {
        ScopeRows {
            meta: (&scope.meta).into(),
            entities: scope
                .entities()
                .map(|(k, r)| (k.clone(), r.value.clone(), r.expires_at, r.version))
                .collect(),
            relationships: scope.relationships().map(|(r, v)| (r.clone(), *v)).collect(),
            clients: scope.clients().map(|(c, s)| (c.clone(), *s)).collect(),
        }
    }

    /// Rebuilds the scope (tree and indexes) and HARD CHECKS the recomputed root against the
    /// stored `state_root`: a mismatch marks the scope Diverged (SPEC §9.6 step 5), not the node.
    pub fn into_scope(self) -> ScopeState {
        let meta: ScopeMeta = self.meta.into();
        let entities = self
            .entities
            .into_iter()
            .map(|(k, value, expires_at, version)| (k, EntityRow { value, expires_at, version }))
            .collect();
        let mut scope = ScopeState::from_rows(meta, entities, self.relationships, self.clients);
        let computed = scope.computed_root();
        if scope.meta.health == VaultHealth::Healthy && computed != scope.meta.state_root {
            crate::event!(
                error,
                "state_root_divergence",
                source = "recovery",
                scope = %scope.meta.key,
                height = scope.meta.height,
                "the state root recomputed from state.redb differs from the recorded one"
            );
            scope.meta.health = VaultHealth::Diverged {
                expected: scope.meta.state_root,
                computed,
                at_height: scope.meta.height,
            };
        }
        scope
    }
}

/// The §3.5 storage key of a scope's row.
pub fn row_key(scope: ScopeKey, local: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + local.len());
    key.extend_from_slice(&scope.scope_id().to_be_bytes());
    key.extend_from_slice(local);
    key
}

fn split_row_key(key: &[u8]) -> Result<(i64, &[u8]), ShardError> {
    if key.len() < 8 {
        return Err(ShardError::Corrupt { what: "state row key", detail: format!("{} bytes", key.len()) });
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&key[..8]);
    Ok((i64::from_be_bytes(id), &key[8..]))
}

/// SPEC §3.2: version u64 LE ‖ expires_at u64 LE ‖ value.
pub fn encode_entity(row: &EntityRow) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + row.value.len());
    out.extend_from_slice(&row.version.to_le_bytes());
    out.extend_from_slice(&row.expires_at.to_le_bytes());
    out.extend_from_slice(&row.value);
    out
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(b)
}

pub fn decode_entity(bytes: &[u8]) -> Result<EntityRow, ShardError> {
    if bytes.len() < 16 {
        return Err(ShardError::Corrupt { what: "entity row", detail: format!("{} bytes", bytes.len()) });
    }
    Ok(EntityRow {
        version: le_u64(&bytes[0..8]),
        expires_at: le_u64(&bytes[8..16]),
        value: bytes[16..].to_vec(),
    })
}

/// last_committed_seq u64 LE ‖ last_committed_tx_id 16 B ‖ last_committed_block_height u64 LE.
fn encode_client(s: &ClientState) -> [u8; 32] {
    let mut out = [0u8; 32];
    out[0..8].copy_from_slice(&s.last_committed_seq.to_le_bytes());
    out[8..24].copy_from_slice(&s.last_committed_tx_id);
    out[24..32].copy_from_slice(&s.last_committed_block_height.to_le_bytes());
    out
}

fn decode_client(bytes: &[u8]) -> Result<ClientState, ShardError> {
    if bytes.len() != 32 {
        return Err(ShardError::Corrupt {
            what: "client state row",
            detail: format!("{} bytes", bytes.len()),
        });
    }
    let mut tx_id = [0u8; 16];
    tx_id.copy_from_slice(&bytes[8..24]);
    Ok(ClientState {
        last_committed_seq: le_u64(&bytes[0..8]),
        last_committed_tx_id: tx_id,
        last_committed_block_height: le_u64(&bytes[24..32]),
    })
}

/// Parses `rel:{resource}#{relation}@{subject}` (unique by SPEC §3.4's syntax rules: the resource
/// has no `#`/`@` and the relation no `@`).
fn parse_relationship(local: &[u8]) -> Result<Relationship, ShardError> {
    let corrupt = || ShardError::Corrupt {
        what: "relationship key",
        detail: String::from_utf8_lossy(local).into_owned(),
    };
    let text = std::str::from_utf8(local).map_err(|_| corrupt())?;
    let rest = text.strip_prefix("rel:").ok_or_else(corrupt)?;
    let (resource, rest) = rest.split_once('#').ok_or_else(corrupt)?;
    let (relation, subject) = rest.split_once('@').ok_or_else(corrupt)?;
    Ok(Relationship {
        resource: resource.to_string(),
        relation: relation.to_string(),
        subject: subject.to_string(),
    })
}

/// Runs `open` until it stops failing with "database already open" (a closing previous
/// incarnation of the group releases its files shortly), for at most `DB_OPEN_RETRY_MS_MAX`.
pub(crate) async fn retry_open<T>(mut open: impl FnMut() -> Result<T, ShardError>) -> Result<T, ShardError> {
    let deadline = Instant::now() + Duration::from_millis(DB_OPEN_RETRY_MS_MAX);
    loop {
        match open() {
            Err(e) if e.is_already_open() && Instant::now() < deadline => {
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}

/// Everything `state.redb` holds, read off the executor.
pub(crate) struct LoadedState {
    pub(crate) applied: Option<AppliedRecord>,
    pub(crate) scopes: Vec<ScopeRows>,
    /// Rows in the row journal's records.
    pub(crate) journal_rows: u64,
}

pub(crate) fn load_state(db: &Database) -> Result<LoadedState, ShardError> {
    let txn = db.begin_write().map_err(|e| ShardError::redb("state.redb begin_write", e))?;
    {
        for table in [ENTITIES, CLIENT_STATE] {
            txn.open_table(table).map_err(|e| ShardError::redb("state.redb create", e))?;
        }
        txn.open_table(RELATIONSHIPS).map_err(|e| ShardError::redb("state.redb create", e))?;
        txn.open_table(ROW_JOURNAL).map_err(|e| ShardError::redb("state.redb create", e))?;
        txn.open_table(SCOPES).map_err(|e| ShardError::redb("state.redb create", e))?;
        txn.open_table(APPLIED).map_err(|e| ShardError::redb("state.redb create", e))?;
    }
    txn.commit().map_err(|e| ShardError::redb("state.redb create tables", e))?;

    let r = |e: redb::TransactionError| ShardError::redb("state.redb begin_read", e);
    let txn = db.begin_read().map_err(r)?;
    let t = |e: redb::TableError| ShardError::redb("state.redb open table", e);
    let s = |e: redb::StorageError| ShardError::redb("state.redb read", e);

    let applied = txn.open_table(APPLIED).map_err(t)?;
    let applied = match applied.get(APPLIED_KEY).map_err(s)? {
        Some(v) => Some(decode::<AppliedRecord>("applied record", v.value())?),
        None => None,
    };
    let mut scopes: BTreeMap<i64, ScopeRows> = BTreeMap::new();
    for row in txn.open_table(SCOPES).map_err(t)?.iter().map_err(s)? {
        let (k, v) = row.map_err(s)?;
        let meta = decode::<ScopeMetaRecord>("scope meta", v.value())?;
        scopes.insert(
            k.value(),
            ScopeRows { meta, entities: Vec::new(), relationships: Vec::new(), clients: Vec::new() },
        );
    }
    let orphan = |id: i64, what: &'static str| ShardError::Corrupt {
        what,
        detail: format!("row of unknown scope {id}"),
    };
    // The journal's records are newer than the tables, and a later record newer than an earlier
    // one: its final word on a key replaces the table's row (row_journal.rs).
    let journal = JournalMerge::start(&txn.open_table(ROW_JOURNAL).map_err(t)?, u64::MAX, 1, 0)?;
    let journal_rows = journal.record_rows();
    let (entity_changes, relationship_changes) = journal.into_changes();
    let entity_rows = txn.open_table(ENTITIES).map_err(t)?;
    let entity_rows = entity_rows.iter().map_err(s)?.map(|row| {
        let (k, v) = row.map_err(s)?;
        Ok((k.value().to_vec(), v.value().to_vec()))
    });
    row_journal::overlay(entity_rows, entity_changes, |k, v| {
        let (id, local) = split_row_key(k)?;
        let key = String::from_utf8(local.to_vec())
            .map_err(|_| ShardError::Corrupt { what: "entity key", detail: format!("scope {id}") })?;
        let e = decode_entity(&v)?;
        let rows = &mut scopes.get_mut(&id).ok_or_else(|| orphan(id, "entity row"))?.entities;
        rows.push((key, e.value, e.expires_at, e.version));
        Ok(())
    })?;
    let relationship_rows = txn.open_table(RELATIONSHIPS).map_err(t)?;
    let relationship_rows = relationship_rows.iter().map_err(s)?.map(|row| {
        let (k, v) = row.map_err(s)?;
        Ok((k.value().to_vec(), v.value()))
    });
    row_journal::overlay(relationship_rows, relationship_changes, |k, version| {
        let (id, local) = split_row_key(k)?;
        let rel = parse_relationship(local)?;
        scopes.get_mut(&id).ok_or_else(|| orphan(id, "relationship row"))?.relationships.push((rel, version));
        Ok(())
    })?;
    for row in txn.open_table(CLIENT_STATE).map_err(t)?.iter().map_err(s)? {
        let (k, v) = row.map_err(s)?;
        let (id, local) = split_row_key(k.value())?;
        let client = String::from_utf8(local.to_vec())
            .map_err(|_| ShardError::Corrupt { what: "client id", detail: format!("scope {id}") })?;
        let state = decode_client(v.value())?;
        scopes.get_mut(&id).ok_or_else(|| orphan(id, "client row"))?.clients.push((client, state));
    }
    Ok(LoadedState { applied, scopes: scopes.into_values().collect(), journal_rows })
}

/// One checkpoint's write set, copied from `GroupData` on the core.
pub struct CheckpointBatch {
    full_rewrite: bool,
    /// What to do with the row journal besides appending this batch's record (row_journal.rs).
    journal: JournalPlan,
    entities: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    relationships: Vec<(Vec<u8>, Option<u64>)>,
    clients: Vec<(Vec<u8>, [u8; 32])>,
    scopes: Vec<(i64, Vec<u8>)>,
    applied: Vec<u8>,
    log_id: Option<LogId>,
    archive: crate::storage::archive::ArchiveFlush,
}

impl CheckpointBatch {
    /// Takes the dirty set (None if there is nothing to write, unless `always`).
    pub fn take(data: &mut GroupData, always: bool) -> Option<CheckpointBatch> {
        let archive = data.archive.flush_batch();
        if !always && data.dirty.is_empty() && archive.blocks.is_empty() {
            return None;
        }
        let room = data.dirty.entities.len();
        let dirty =
            std::mem::replace(&mut data.dirty, crate::round::group_data::DirtyRows::with_room_for(room));
        let mut batch = CheckpointBatch {
            full_rewrite: dirty.full_rewrite,
            journal: JournalPlan::Append,
            entities: Vec::new(),
            relationships: Vec::new(),
            clients: Vec::new(),
            scopes: Vec::new(),
            applied: encode(&AppliedRecord::of(data)),
            log_id: data.applied_log_id,
            archive,
        };
        if dirty.full_rewrite {
            for (key, scope) in &data.scopes {
                for (k, row) in scope.entities() {
                    batch.entities.push((row_key(*key, k.as_bytes()), Some(encode_entity(row))));
                }
                for (rel, version) in scope.relationships() {
                    batch.relationships.push((row_key(*key, rel.key().as_bytes()), Some(*version)));
                }
                for (client, state) in scope.clients() {
                    batch.clients.push((row_key(*key, client.as_bytes()), encode_client(state)));
                }
                batch.scopes.push((key.scope_id(), encode(&ScopeMetaRecord::from(&scope.meta))));
            }
            return Some(batch);
        }
        // Encoded by apply, in apply order; `write` keeps the last row per key.
        batch.entities = dirty.entities;
        for ((scope_key, rel), version) in &dirty.relationships {
            batch.relationships.push((row_key(*scope_key, rel.key().as_bytes()), *version));
        }
        for (scope_key, client) in &dirty.clients {
            if let Some(scope) = data.scopes.get(scope_key) {
                batch.clients.push((
                    row_key(*scope_key, client.as_bytes()),
                    encode_client(&scope.client_state(client)),
                ));
            }
        }
        for scope_key in &dirty.scopes {
            if let Some(scope) = data.scopes.get(scope_key) {
                batch.scopes.push((scope_key.scope_id(), encode(&ScopeMetaRecord::from(&scope.meta))));
            }
        }
        Some(batch)
    }

    /// Rows in the batch (for stats).
    pub fn rows(&self) -> usize {
        self.entities.len() + self.relationships.len() + self.clients.len() + self.scopes.len()
    }

    /// Rows a journal record of this batch would hold.
    pub fn journal_rows(&self) -> u64 {
        (self.entities.len() + self.relationships.len()) as u64
    }

    /// Archive first, then the state rows, each durable. Blocking: run it off the executor.
    pub fn write(
        mut self,
        state_db: &Database,
        blocks_db: Option<&Database>,
    ) -> Result<JournalOutcome, ShardError> {
        row_journal::keep_last_per_key(&mut self.entities);
        let mut outcome = JournalOutcome {
            appended_rows: self.journal_rows(),
            written_rows: self.rows() as u64,
            ..JournalOutcome::default()
        };
        if let (Some(db), false) = (blocks_db, self.archive.blocks.is_empty()) {
            self.archive.write(db)?;
        }
        let mut txn = state_db.begin_write().map_err(|e| ShardError::redb("state.redb begin_write", e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| ShardError::redb("state.redb durability", e))?;
        self.write_state_rows(&txn, &mut outcome)?;
        txn.commit().map_err(|e| ShardError::redb("state.redb commit", e))?;
        Ok(outcome)
    }

    /// Writes the batch's rows into `txn` (not committed): the whole state over emptied tables for
    /// a full rewrite, else the journal records and this checkpoint's merge step; then the client,
    /// scope and `applied` rows. The tables close on return, before the caller commits.
    fn write_state_rows(
        self,
        txn: &redb::WriteTransaction,
        outcome: &mut JournalOutcome,
    ) -> Result<(), ShardError> {
        let w = |e: redb::StorageError| ShardError::redb("state.redb write", e);
        let t = |e: redb::TableError| ShardError::redb("state.redb open table", e);
        let mut entities = txn.open_table(ENTITIES).map_err(t)?;
        let mut relationships = txn.open_table(RELATIONSHIPS).map_err(t)?;
        let mut journal = txn.open_table(ROW_JOURNAL).map_err(t)?;
        let mut clients = txn.open_table(CLIENT_STATE).map_err(t)?;
        let mut scopes = txn.open_table(SCOPES).map_err(t)?;
        let mut applied = txn.open_table(APPLIED).map_err(t)?;
        if self.full_rewrite {
            entities.retain(|_, _| false).map_err(w)?;
            relationships.retain(|_, _| false).map_err(w)?;
            journal.retain(|_, _| false).map_err(w)?;
            clients.retain(|_, _| false).map_err(w)?;
            scopes.retain(|_, _| false).map_err(w)?;
            let mut rows = JournalMerge::of_changes(self.entities, self.relationships);
            outcome.merged_rows = rows.step(&mut entities, &mut relationships).map_err(w)?;
            outcome.journal_cleared = true;
        } else {
            let newest = append_journal_records(&mut journal, &self.entities, &self.relationships)?;
            step_journal_merge(
                self.journal,
                newest,
                &mut journal,
                &mut entities,
                &mut relationships,
                outcome,
            )?;
        }
        for (k, v) in &self.clients {
            clients.insert(k.as_slice(), v.as_slice()).map_err(w)?;
        }
        for (k, v) in &self.scopes {
            scopes.insert(*k, v.as_slice()).map_err(w)?;
        }
        applied.insert(APPLIED_KEY, self.applied.as_slice()).map_err(w)?;
        Ok(())
    }
}

/// Appends a checkpoint's entity and relationship rows to the row journal, numbered on from its
/// newest record; returns the newest record's seq afterwards (None: the journal is empty).
fn append_journal_records(
    journal: &mut redb::Table<'_, u64, &'static [u8]>,
    entities: &[(Vec<u8>, Option<Vec<u8>>)],
    relationships: &[(Vec<u8>, Option<u64>)],
) -> Result<Option<u64>, ShardError> {
    let w = |e: redb::StorageError| ShardError::redb("state.redb write", e);
    let mut newest = journal.last().map_err(w)?.map(|(seq, _)| seq.value());
    // Records of at most `JOURNAL_RECORD_ROWS_MAX` rows: redb holds a value in one
    // buffer of the next power-of-two size, and a buffer of many megabytes was freshly
    // mapped (and zeroed by the kernel) at every checkpoint. A key is in one record
    // only (`keep_last_per_key`), so the split changes no replay.
    let entity_records = entities.chunks(JOURNAL_RECORD_ROWS_MAX).map(|rows| (rows, &[][..]));
    let relationship_records = relationships.chunks(JOURNAL_RECORD_ROWS_MAX).map(|rows| (&[][..], rows));
    for (entities, relationships) in entity_records.chain(relationship_records) {
        let seq = newest.map_or(0, |seq| seq + 1);
        let record = row_journal::encode(entities, relationships);
        journal.insert(seq, record.as_slice()).map_err(w)?;
        newest = Some(seq);
    }
    Ok(newest)
}

/// Carries out `plan` on a journal whose newest record is `newest`: takes this checkpoint's merge
/// step into the tables, deletes the records of a merge that finished, and records in `outcome`
/// what it merged and released and the merge left for the next checkpoint.
fn step_journal_merge(
    plan: JournalPlan,
    newest: Option<u64>,
    journal: &mut redb::Table<'_, u64, &'static [u8]>,
    entities: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
    relationships: &mut redb::Table<'_, &'static [u8], u64>,
    outcome: &mut JournalOutcome,
) -> Result<(), ShardError> {
    let w = |e: redb::StorageError| ShardError::redb("state.redb write", e);
    let merge_all = matches!(plan, JournalPlan::MergeAll);
    let mut merge = match (plan, newest) {
        (_, None) => {
            outcome.journal_cleared = true;
            None
        }
        // Everything in one step: this supersedes a merge in progress.
        (JournalPlan::MergeAll, Some(newest)) => Some(JournalMerge::start(journal, newest, 1, 0)?),
        (JournalPlan::Continue(merge), Some(_)) => Some(merge),
        (JournalPlan::Append, Some(_)) => None,
    };
    if let Some(m) = merge.as_mut() {
        // A stepped merge stops early once its inserts took their share of the
        // checkpoint period (SPEC §8.4); a clean close's merge runs to the end.
        let deadline =
            (!merge_all).then(|| Instant::now() + Duration::from_millis(JOURNAL_MERGE_STEP_BUDGET_MS));
        outcome.merged_rows = m.step_until(entities, relationships, deadline).map_err(w)?;
    }
    if let Some(done) = merge.take_if(|m| m.is_done()) {
        outcome.released_rows = done.finish(journal).map_err(w)?;
        outcome.journal_cleared = merge_all;
    }
    outcome.merge = merge;
    Ok(())
}

/// What a checkpoint does with the row journal (row_journal.rs) besides appending its record.
pub enum JournalPlan {
    Append,
    /// Take the next step of this merge.
    Continue(JournalMerge),
    /// Merge every record now and leave the journal empty (a clean close).
    MergeAll,
}

/// What a checkpoint's write did to the row journal.
#[derive(Default)]
pub struct JournalOutcome {
    /// A merge still in progress, for the next checkpoint.
    pub merge: Option<JournalMerge>,
    /// Changes written into the tables by this checkpoint's merge step.
    pub merged_rows: usize,
    /// Rows of the records a finished merge deleted.
    pub released_rows: u64,
    /// The journal is empty.
    pub journal_cleared: bool,
    /// Rows appended to the journal (one per key).
    pub appended_rows: u64,
    /// Rows the checkpoint wrote, one per key (journal rows, clients, scopes).
    pub written_rows: u64,
}

/// Counters of a group's checkpointer.
#[derive(Debug, Default, Clone, Copy)]
pub struct CheckpointStats {
    pub checkpoints: u64,
    pub rows: u64,
    pub failures: u64,
    /// Failures since the last checkpoint that succeeded: a file that keeps failing (redb
    /// refuses every write after an I/O error) makes the group reopen itself (maintenance/reopen.rs).
    pub failures_in_a_row: u64,
    /// Duration of the last checkpoint's blocking part, µs.
    pub last_us: u64,
    /// Checkpoints that took a step of a row-journal merge, and the rows those steps wrote.
    pub journal_merge_steps: u64,
    pub journal_merged_rows: u64,
}

/// Writes a group's durable checkpoints; one at a time.
pub struct Checkpointer {
    data: Rc<RefCell<GroupData>>,
    state_db: Arc<Database>,
    /// Mirror of `GroupData.durable_log_id` for the log store's purge limit.
    durable: Rc<Cell<Option<LogId>>>,
    lock: futures::lock::Mutex<()>,
    stats: Cell<CheckpointStats>,
    /// Rows in `state.redb`'s row journal (row_journal.rs).
    journal_rows: Cell<u64>,
    /// The journal merge in progress, if any (its next step runs with the next checkpoint).
    merge: Rc<RefCell<MergeState>>,
    /// `ShardConfig::journal_merge_rows_min`.
    merge_rows_min: u64,
    /// Bumped whenever the journal is emptied by other means, so a merge prepared before that is
    /// dropped instead of writing stale rows.
    merge_epoch: Rc<Cell<u64>>,
    /// Fault points (a test may fail checkpoint writes).
    faults: Arc<crate::faults::Faults>,
}

/// A checkpoint's batch and the `blocks.redb` its archive blocks go to (None: no archive).
type BatchAndArchive = (CheckpointBatch, Option<Arc<Database>>);

/// Where a row-journal merge stands.
pub enum MergeState {
    Idle,
    /// Reading and sorting the records off the core, outside any checkpoint.
    Preparing,
    /// Sorted; the next checkpoints write it a step at a time.
    Ready(JournalMerge),
}

impl Checkpointer {
    /// `journal_rows`: rows already in the file's row journal.
    /// `merge_rows_min`: the journal is merged once it holds this many rows or as many as the group.
    pub fn new(
        data: Rc<RefCell<GroupData>>,
        state_db: Arc<Database>,
        journal_rows: u64,
        merge_rows_min: u64,
    ) -> Self {
        let durable = Rc::new(Cell::new(data.borrow().durable_log_id));
        Checkpointer {
            data,
            state_db,
            durable,
            lock: futures::lock::Mutex::new(()),
            stats: Cell::new(CheckpointStats::default()),
            journal_rows: Cell::new(journal_rows),
            merge: Rc::new(RefCell::new(MergeState::Idle)),
            merge_rows_min,
            merge_epoch: Rc::new(Cell::new(0)),
            faults: Arc::default(),
        }
    }

    pub fn with_faults(mut self, faults: Arc<crate::faults::Faults>) -> Self {
        self.faults = faults;
        self
    }

    /// Reads and sorts every journal record so far in a read transaction beside the checkpoints
    /// (which go on appending newer records), and hands the merge to the next checkpoint. It runs on
    /// a thread of its own rather than the group's one blocking thread, where it would hold up the
    /// next checkpoint; spawned from the executor, the thread inherits its CPU pinning. Must run
    /// inside the owning glommio executor.
    fn prepare_merge(&self) {
        *self.merge.borrow_mut() = MergeState::Preparing;
        let (db, state, epoch) = (self.state_db.clone(), self.merge.clone(), self.merge_epoch.clone());
        let started_in = epoch.get();
        glommio::spawn_local(async move {
            let (done, prepared) = futures::channel::oneshot::channel();
            let prepare = move || -> Result<Option<JournalMerge>, ShardError> {
                let started = Instant::now();
                let txn = db.begin_read().map_err(|e| ShardError::redb("state.redb begin_read", e))?;
                let journal = txn
                    .open_table(ROW_JOURNAL)
                    .map_err(|e| ShardError::redb("state.redb open row journal", e))?;
                let newest = journal
                    .last()
                    .map_err(|e| ShardError::redb("state.redb read row journal", e))?
                    .map(|(seq, _)| seq.value());
                let merge = newest
                    .map(|newest| {
                        JournalMerge::start(
                            &journal,
                            newest,
                            JOURNAL_MERGE_STEPS,
                            JOURNAL_MERGE_STEP_ROWS_MIN,
                        )
                    })
                    .transpose()?;
                if let Some(m) = &merge {
                    tracing::debug!(
                        rows = m.remaining(),
                        took_us = started.elapsed().as_micros() as u64,
                        "row journal merge prepared"
                    );
                }
                Ok(merge)
            };
            let spawned = crate::helper_threads::spawn_helper("journal-merge", move || {
                // The receiver is gone only if the group was dropped meanwhile.
                let _ = done.send(prepare());
            });
            let prepared = match spawned {
                // The sender is dropped unanswered only if the thread panicked.
                Ok(_) => prepared.await.unwrap_or_else(|_| {
                    Err(ShardError::StorageClosed { what: "row journal merge preparation".into() })
                }),
                Err(e) => Err(ShardError::Io { path: PathBuf::from("state.redb"), source: e }),
            };
            let mut state = state.borrow_mut();
            if epoch.get() != started_in || !matches!(*state, MergeState::Preparing) {
                return;
            }
            *state = match prepared {
                Ok(Some(merge)) => MergeState::Ready(merge),
                Ok(None) => MergeState::Idle,
                Err(e) => {
                    crate::event!(warn, "row_journal_merge_failed", error = %e);
                    MergeState::Idle
                }
            };
        })
        .detach();
    }

    /// Rows in the row journal (merged into the tables once they reach the larger of
    /// `journal_merge_rows_min` and the rows the group holds).
    pub fn journal_rows(&self) -> u64 {
        self.journal_rows.get()
    }

    /// The log id of the last durable checkpoint, shared with the log store's purge limit.
    pub fn durable(&self) -> Rc<Cell<Option<LogId>>> {
        self.durable.clone()
    }

    pub fn stats(&self) -> CheckpointStats {
        self.stats.get()
    }

    /// Writes one durable checkpoint of everything applied so far. Returns whether anything was
    /// written. On failure the next checkpoint rewrites the whole state. Must run inside the
    /// owning glommio executor.
    pub async fn checkpoint(&self) -> Result<bool, ShardError> {
        self.checkpoint_merging(false).await
    }

    /// [`Self::checkpoint`]; with `merge`, also folds the row journal into the tables, so that the
    /// file holds exactly SPEC §9.2's tables (a clean close does this).
    pub async fn checkpoint_merging(&self, merge: bool) -> Result<bool, ShardError> {
        let _one_at_a_time = self.lock.lock().await;
        let Some((batch, blocks_db)) = self.take_batch(merge)? else { return Ok(false) };
        let full_rewrite = batch.full_rewrite;
        let upto = batch.archive.upto();
        let log_id = batch.log_id;
        let (result, took) = self.write_off_core(batch, blocks_db).await;
        let mut stats = self.stats.get();
        stats.last_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let mut data = self.data.borrow_mut();
        match result {
            Ok(journal) => {
                if let Some(upto) = upto {
                    data.archive.flushed(upto);
                }
                data.durable_log_id = log_id;
                self.durable.set(log_id);
                self.count_journal(&data, &journal, full_rewrite, &mut stats);
                if let Some(m) = journal.merge {
                    *self.merge.borrow_mut() = MergeState::Ready(m);
                }
                stats.checkpoints += 1;
                stats.failures_in_a_row = 0;
                stats.rows += journal.written_rows;
                self.stats.set(stats);
                Ok(true)
            }
            Err(e) => {
                data.dirty.full_rewrite = true;
                data.dirty.applied = true;
                stats.failures += 1;
                stats.failures_in_a_row += 1;
                self.stats.set(stats);
                Err(e)
            }
        }
    }

    /// On the core: takes the dirty set as a batch with its journal plan, and the archive's
    /// `blocks.redb` it goes to. None when there is nothing to write or the group's apply failed.
    fn take_batch(&self, merge: bool) -> Result<Option<BatchAndArchive>, ShardError> {
        let mut data = self.data.borrow_mut();
        if data.fault.is_some() {
            // A failed apply may have left memory half-changed: the durable state stays as
            // it was before the fault, and the log still holds everything after it.
            return Ok(None);
        }
        // The log is purged up to the last durable checkpoint: one that went back would claim
        // state whose log may be gone. Apply only moves forward, so this is a bug; refused
        // before the dirty rows are taken.
        if data.applied_log_id < self.durable.get() {
            return Err(ShardError::Corrupt {
                what: "checkpoint",
                detail: format!(
                    "applied {:?} is behind the last durable checkpoint {:?}",
                    data.applied_log_id,
                    self.durable.get()
                ),
            });
        }
        let fold_journal = merge && self.journal_rows.get() > 0;
        let Some(mut batch) = CheckpointBatch::take(&mut data, fold_journal) else { return Ok(None) };
        batch.journal = self.journal_plan(merge, &data, &batch);
        Ok(Some((batch, data.archive.db().cloned())))
    }

    /// What `batch` does with the row journal: merge it all (`merge`), append only (a full
    /// rewrite empties it anyway), or take the next step of a prepared merge; starts preparing
    /// a merge once the journal would reach its threshold.
    fn journal_plan(&self, merge: bool, data: &GroupData, batch: &CheckpointBatch) -> JournalPlan {
        let held: u64 = data.scopes.values().map(|scope| scope.key_count()).sum();
        let threshold = self.merge_rows_min.max(held);
        let state = std::mem::replace(&mut *self.merge.borrow_mut(), MergeState::Idle);
        if merge || batch.full_rewrite {
            // Whatever a merge in progress prepared is about to be stale.
            self.merge_epoch.set(self.merge_epoch.get() + 1);
            if merge {
                JournalPlan::MergeAll
            } else {
                JournalPlan::Append
            }
        } else {
            match state {
                MergeState::Ready(m) => JournalPlan::Continue(m),
                MergeState::Preparing => {
                    *self.merge.borrow_mut() = MergeState::Preparing;
                    JournalPlan::Append
                }
                MergeState::Idle => {
                    // The batch may hold a key several times (one row per block that
                    // changed it) but never more distinct rows than the group holds.
                    let appending = batch.journal_rows().min(held);
                    if self.journal_rows.get() + appending >= threshold {
                        self.prepare_merge();
                    }
                    JournalPlan::Append
                }
            }
        }
    }

    /// Writes `batch` in glommio's blocking thread pool (or fails it, when a test injected a
    /// checkpoint failure), so the executor keeps polling. Returns the result and how long the
    /// blocking part took.
    async fn write_off_core(
        &self,
        batch: CheckpointBatch,
        blocks_db: Option<Arc<Database>>,
    ) -> (Result<JournalOutcome, ShardError>, Duration) {
        let state_db = self.state_db.clone();
        let fail = self.faults.take_checkpoint_failure(self.data.borrow().group_id.0);
        glommio::executor()
            .spawn_blocking(move || {
                let started = Instant::now();
                if fail {
                    let source = std::io::Error::other("injected fault: checkpoint write failed");
                    return (
                        Err(ShardError::Io { path: PathBuf::from("state.redb"), source }),
                        started.elapsed(),
                    );
                }
                let r = batch.write(&state_db, blocks_db.as_deref());
                (r, started.elapsed())
            })
            .await
    }

    /// After a written checkpoint: the rows now in the row journal, and the merge counters when
    /// this checkpoint took a merge step.
    fn count_journal(
        &self,
        data: &GroupData,
        journal: &JournalOutcome,
        full_rewrite: bool,
        stats: &mut CheckpointStats,
    ) {
        if full_rewrite || journal.journal_cleared {
            self.journal_rows.set(0);
        } else {
            let held = self.journal_rows.get() + journal.appended_rows;
            debug_assert!(journal.released_rows <= held, "merged records the count never held");
            self.journal_rows.set(held.saturating_sub(journal.released_rows));
        }
        if journal.merged_rows > 0 || journal.released_rows > 0 {
            stats.journal_merge_steps += 1;
            stats.journal_merged_rows += journal.merged_rows as u64;
            tracing::debug!(
                group = %data.group_id,
                merged_rows = journal.merged_rows,
                done = journal.merge.is_none(),
                took_us = stats.last_us,
                "row journal merge step"
            );
        }
    }

    /// Checkpoints every `interval` while something is dirty, until `stop` fires or is dropped.
    /// Checkpoints start `interval` apart (right after each other when one takes longer), so the
    /// durable commit keeps the period SPEC §8.4 asks for whenever the disk allows.
    pub(crate) async fn run(
        self: Rc<Self>,
        interval: Duration,
        mut stop: futures::channel::oneshot::Receiver<()>,
    ) {
        let mut next = Instant::now() + interval;
        loop {
            let tick = glommio::timer::sleep(next.saturating_duration_since(Instant::now()));
            futures::pin_mut!(tick);
            if let futures::future::Either::Right(_) = futures::future::select(tick, &mut stop).await {
                return;
            }
            next = (next + interval).max(Instant::now());
            let group = self.data.borrow().group_id;
            if let Err(e) = self.checkpoint().await {
                crate::event!(
                    error,
                    "checkpoint_failed",
                    group = %group,
                    error = %e,
                    cause = ?std::error::Error::source(&e)
                );
            }
        }
    }
}

/// Offline (server stopped, data directory locked by the caller): deletes `scope`'s entity,
/// relationship and client rows from the state file at `path` and marks the scope Diverged, so
/// that the next start rebuilds it from its snapshot and archive (SPEC §9.9,
/// `ledger-admin clear-vault-state`). The Raft log and the archive are untouched. Returns the
/// rows removed, or `None` when this file does not hold the scope.
pub fn clear_scope_offline(path: &std::path::Path, scope: ScopeKey) -> Result<Option<u64>, ShardError> {
    let db = Database::open(path).map_err(|e| ShardError::redb(format!("open {}", path.display()), e))?;
    let t = |e: redb::TableError| ShardError::redb("state.redb open table", e);
    let s = |e: redb::StorageError| ShardError::redb("state.redb write", e);
    let txn = db.begin_write().map_err(|e| ShardError::redb("state.redb begin", e))?;
    let id = scope.scope_id();
    let removed = {
        let mut scopes = txn.open_table(SCOPES).map_err(t)?;
        let Some(bytes) = scopes.get(id).map_err(s)?.map(|v| v.value().to_vec()) else {
            return Ok(None);
        };
        let mut record: ScopeMetaRecord = decode("scope meta", &bytes)?;
        record.health = VaultHealth::Diverged {
            expected: record.state_root,
            computed: ZERO_HASH,
            at_height: record.height,
        };
        scopes.insert(id, encode(&record).as_slice()).map_err(s)?;
        let lower = id.to_be_bytes().to_vec();
        let upper = id.checked_add(1).map(|next| next.to_be_bytes().to_vec());
        let in_scope = |k: &[u8]| k.starts_with(&lower) && upper.as_ref().is_none_or(|u| k < u.as_slice());
        let mut removed = 0u64;
        let mut entities = txn.open_table(ENTITIES).map_err(t)?;
        removed += entities.extract_if(|k, _| in_scope(k)).map_err(s)?.count() as u64;
        let mut relationships = txn.open_table(RELATIONSHIPS).map_err(t)?;
        removed += relationships.extract_if(|k, _| in_scope(k)).map_err(s)?.count() as u64;
        let mut clients = txn.open_table(CLIENT_STATE).map_err(t)?;
        removed += clients.extract_if(|k, _| in_scope(k)).map_err(s)?.count() as u64;
        removed
    };
    txn.commit().map_err(|e| ShardError::redb("state.redb commit", e))?;
    Ok(Some(removed))
}
