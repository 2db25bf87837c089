//! A group's block archive (SPEC §9.2–9.3): `blocks.redb` with tables `group_blocks` (group height
//! → the group block without bodies), `bodies` ((group height, entry index) → transactions) and
//! `vault_index` ((scope id, vault height) → (group height, entry index)).
//!
//! Apply appends every applied group block here, diverged and skipped scopes' entries included
//! (stored, not applied). Appends stay in memory until the checkpointer flushes them to
//! `blocks.redb`, durably and *before* the state checkpoint that covers them (SPEC §8.4 step 3), so
//! every block at or below the durable applied index is archived and anything later is re-applied
//! (and re-archived, rows are insert-only and identical) from the Raft log after a crash. Reads look
//! at the in-memory blocks first, then redb; the redb reads run on the calling core (MVCC read
//! transactions, no waiting on writers; usually page-cache hits).
//!
//! Bodies of Compacted vaults are deleted below their retention bound (retention.rs, SPEC §9.5);
//! a block whose body row is missing is returned with an empty transaction list. Off-core scans
//! (snapshots, integrity checks, compaction) read the tables through `archive_scan.rs`.

use crate::codec::{decode, encode_in};
use crate::constants::ARCHIVE_RANGE_BLOCKS_MAX;
use crate::error::ShardError;
use ledger_core::hash::group_hash;
use ledger_core::types::{
    Block, BlockHeader, GroupBlock, Hash, ScopeKey, Timestamp, Transaction, VaultEntry,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use rkyv::{Archive as RkyvArchive, Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

pub(crate) const GROUP_BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("group_blocks");
pub(crate) const BODIES: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("bodies");
pub(crate) const VAULT_INDEX: TableDefinition<(i64, u64), (u64, u32)> = TableDefinition::new("vault_index");

/// A vault entry's header fields (everything but the transactions).
#[derive(RkyvArchive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct EntryHeaderRecord {
    pub namespace_id: i64,
    pub vault_id: i64,
    pub vault_height: u64,
    pub previous_vault_hash: Hash,
    pub tx_merkle_root: Hash,
    pub state_root: Hash,
    pub tx_count: u32,
}

/// A group block without bodies (the `group_blocks` row).
#[derive(RkyvArchive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct GroupBlockRecord {
    pub group_id: u32,
    pub group_height: u64,
    pub previous_group_hash: Hash,
    pub entries: Vec<EntryHeaderRecord>,
    pub timestamp: Timestamp,
    pub leader_id: u64,
    pub term: u64,
    pub committed_index: u64,
}

impl GroupBlockRecord {
    fn of(gb: &GroupBlock) -> Self {
        GroupBlockRecord {
            group_id: gb.group_id,
            group_height: gb.group_height,
            previous_group_hash: gb.previous_group_hash,
            entries: gb
                .vault_entries
                .iter()
                .map(|e| EntryHeaderRecord {
                    namespace_id: e.namespace_id,
                    vault_id: e.vault_id,
                    vault_height: e.vault_height,
                    previous_vault_hash: e.previous_vault_hash,
                    tx_merkle_root: e.tx_merkle_root,
                    state_root: e.state_root,
                    tx_count: u32::try_from(e.transactions.len()).unwrap_or(u32::MAX),
                })
                .collect(),
            timestamp: gb.timestamp,
            leader_id: gb.leader_id,
            term: gb.term,
            committed_index: gb.committed_index,
        }
    }

    pub(crate) fn header_of(&self, e: &EntryHeaderRecord) -> BlockHeader {
        BlockHeader {
            height: e.vault_height,
            namespace_id: e.namespace_id,
            vault_id: e.vault_id,
            previous_hash: e.previous_vault_hash,
            tx_merkle_root: e.tx_merkle_root,
            state_root: e.state_root,
            timestamp: self.timestamp,
            leader_id: self.leader_id,
            term: self.term,
            committed_index: self.committed_index,
        }
    }
}

fn scope_of(e: &VaultEntry) -> ScopeKey {
    use ledger_core::types::{NamespaceId, VaultId};
    ScopeKey { namespace_id: NamespaceId(e.namespace_id), vault_id: VaultId(e.vault_id) }
}

/// Blocks applied but not yet flushed, handed to the checkpointer's blocking thread.
pub struct ArchiveFlush {
    pub blocks: Vec<Arc<GroupBlock>>,
}

impl ArchiveFlush {
    /// Highest group height in the batch (None if empty).
    pub fn upto(&self) -> Option<u64> {
        self.blocks.last().map(|b| b.group_height)
    }

    /// The blocks continue one another: consecutive group heights, each naming its predecessor's
    /// group hash (SPEC §7.1). Apply and the back-fill both hand over such runs, so a flush that
    /// breaks the chain is a bug upstream; it is refused before anything is written, rather than
    /// archiving a chain that the integrity check and every chain proof would reject later.
    pub fn check_links(&self) -> Result<(), ShardError> {
        for pair in self.blocks.windows(2) {
            let (previous, next) = (&pair[0], &pair[1]);
            if previous.group_height.checked_add(1) != Some(next.group_height) {
                return Err(ShardError::Corrupt {
                    what: "archive flush",
                    detail: format!(
                        "group block {} follows group block {}",
                        next.group_height, previous.group_height
                    ),
                });
            }
            if next.previous_group_hash != group_hash(previous) {
                return Err(ShardError::Corrupt {
                    what: "archive flush",
                    detail: format!(
                        "group block {} does not link to group block {}",
                        next.group_height, previous.group_height
                    ),
                });
            }
        }
        Ok(())
    }

    /// Writes the batch in one `blocks.redb` transaction with `Durability::Immediate`: it must be
    /// durable before the state checkpoint that claims these blocks applied. Checks the batch's
    /// links first ([`Self::check_links`]). Blocking: run it off the executor.
    pub fn write(&self, db: &Database) -> Result<(), ShardError> {
        self.check_links()?;
        let mut txn = db.begin_write().map_err(|e| ShardError::redb("blocks.redb begin_write", e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| ShardError::redb("blocks.redb durability", e))?;
        {
            let mut groups =
                txn.open_table(GROUP_BLOCKS).map_err(|e| ShardError::redb("blocks.redb open", e))?;
            let mut bodies = txn.open_table(BODIES).map_err(|e| ShardError::redb("blocks.redb open", e))?;
            let mut index =
                txn.open_table(VAULT_INDEX).map_err(|e| ShardError::redb("blocks.redb open", e))?;
            // One buffer for every record and body of the flush.
            let mut buf = rkyv::util::AlignedVec::new();
            for gb in &self.blocks {
                let record = encode_in(&GroupBlockRecord::of(gb), &mut buf);
                groups
                    .insert(gb.group_height, record)
                    .map_err(|e| ShardError::redb("blocks.redb insert", e))?;
                for (i, entry) in gb.vault_entries.iter().enumerate() {
                    let i = u32::try_from(i).map_err(|_| ShardError::Corrupt {
                        what: "group block",
                        detail: format!("{} entries", gb.vault_entries.len()),
                    })?;
                    let body = encode_in(&entry.transactions, &mut buf);
                    bodies
                        .insert((gb.group_height, i), body)
                        .map_err(|e| ShardError::redb("blocks.redb insert", e))?;
                    index
                        .insert((scope_of(entry).scope_id(), entry.vault_height), (gb.group_height, i))
                        .map_err(|e| ShardError::redb("blocks.redb insert", e))?;
                }
            }
        }
        txn.commit().map_err(|e| ShardError::redb("blocks.redb commit", e))
    }
}

/// Recent blocks in memory plus the `blocks.redb` reader.
pub struct Archive {
    /// `None`: memory only (storage tests); blocks then stay in memory for good.
    db: Option<Arc<Database>>,
    /// Applied group blocks not yet flushed, by group height.
    pending: BTreeMap<u64, Arc<GroupBlock>>,
    /// `(scope_id, vault_height)` → `(group_height, entry index)` for `pending`.
    pending_index: BTreeMap<(i64, u64), (u64, u32)>,
}

impl Archive {
    /// An archive over an open `blocks.redb` (tables are created if missing).
    pub fn open(db: Arc<Database>) -> Result<Archive, ShardError> {
        let txn = db.begin_write().map_err(|e| ShardError::redb("blocks.redb begin_write", e))?;
        {
            txn.open_table(GROUP_BLOCKS).map_err(|e| ShardError::redb("blocks.redb create", e))?;
            txn.open_table(BODIES).map_err(|e| ShardError::redb("blocks.redb create", e))?;
            txn.open_table(VAULT_INDEX).map_err(|e| ShardError::redb("blocks.redb create", e))?;
        }
        txn.commit().map_err(|e| ShardError::redb("blocks.redb create tables", e))?;
        Ok(Archive { db: Some(db), pending: BTreeMap::new(), pending_index: BTreeMap::new() })
    }

    /// A memory-only archive (no file).
    pub fn in_memory() -> Archive {
        Archive { db: None, pending: BTreeMap::new(), pending_index: BTreeMap::new() }
    }

    pub fn db(&self) -> Option<&Arc<Database>> {
        self.db.as_ref()
    }

    /// Records an applied group block. Re-appending a height (re-apply) replaces it with the
    /// identical block.
    pub fn append(&mut self, gb: Arc<GroupBlock>) {
        for (i, entry) in gb.vault_entries.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            self.pending_index.insert((scope_of(entry).scope_id(), entry.vault_height), (gb.group_height, i));
        }
        self.pending.insert(gb.group_height, gb);
    }

    /// Everything not yet flushed (the blocks stay readable here until `flushed`).
    pub fn flush_batch(&self) -> ArchiveFlush {
        ArchiveFlush { blocks: self.pending.values().cloned().collect() }
    }

    /// Forgets in-memory blocks up to `upto` now that they are durable in `blocks.redb`.
    pub fn flushed(&mut self, upto: u64) {
        if self.db.is_none() {
            return;
        }
        self.pending = self.pending.split_off(&(upto + 1));
        self.pending_index.retain(|_, (group_height, _)| *group_height > upto);
    }

    /// Blocks applied but not yet flushed.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Drops every in-memory block (a snapshot install replaces the state; the archive itself is
    /// back-filled from peers, SPEC §9.4).
    pub fn clear_pending(&mut self) {
        self.pending.clear();
        self.pending_index.clear();
    }

    /// The highest vault height of the scope among the blocks still in memory, 0 if none.
    pub(crate) fn pending_index_tip(&self, scope_id: i64) -> u64 {
        self.pending_index.range((scope_id, 0)..=(scope_id, u64::MAX)).next_back().map_or(0, |((_, h), _)| *h)
    }

    /// The header of entry `entry` of the in-memory group block at `group_height`.
    pub(crate) fn pending_header(&self, group_height: u64, entry: u32) -> Option<BlockHeader> {
        let gb = self.pending.get(&group_height)?;
        gb.vault_entries.get(entry as usize).map(|e| gb.header_of(e))
    }

    pub(crate) fn locate(&self, scope: ScopeKey, height: u64) -> Result<Option<(u64, u32)>, ShardError> {
        let key = (scope.scope_id(), height);
        if let Some(loc) = self.pending_index.get(&key) {
            return Ok(Some(*loc));
        }
        let Some(db) = &self.db else { return Ok(None) };
        let txn = db.begin_read().map_err(|e| ShardError::redb("blocks.redb begin_read", e))?;
        let index = txn.open_table(VAULT_INDEX).map_err(|e| ShardError::redb("blocks.redb open", e))?;
        Ok(index.get(key).map_err(|e| ShardError::redb("blocks.redb get", e))?.map(|v| v.value()))
    }

    pub(crate) fn read_record(&self, group_height: u64) -> Result<Option<GroupBlockRecord>, ShardError> {
        let Some(db) = &self.db else { return Ok(None) };
        let txn = db.begin_read().map_err(|e| ShardError::redb("blocks.redb begin_read", e))?;
        let groups = txn.open_table(GROUP_BLOCKS).map_err(|e| ShardError::redb("blocks.redb open", e))?;
        let Some(row) = groups.get(group_height).map_err(|e| ShardError::redb("blocks.redb get", e))? else {
            return Ok(None);
        };
        Ok(Some(decode::<GroupBlockRecord>("group block record", row.value())?))
    }

    pub(crate) fn read_body(
        &self,
        group_height: u64,
        entry: u32,
    ) -> Result<Option<Vec<Transaction>>, ShardError> {
        let Some(db) = &self.db else { return Ok(None) };
        let txn = db.begin_read().map_err(|e| ShardError::redb("blocks.redb begin_read", e))?;
        let bodies = txn.open_table(BODIES).map_err(|e| ShardError::redb("blocks.redb open", e))?;
        let Some(row) =
            bodies.get((group_height, entry)).map_err(|e| ShardError::redb("blocks.redb get", e))?
        else {
            return Ok(None);
        };
        Ok(Some(decode::<Vec<Transaction>>("block body", row.value())?))
    }

    /// The header of `scope`'s block at `height` (> 0; genesis headers live in `ScopeMeta`).
    pub fn get_header(&self, scope: ScopeKey, height: u64) -> Result<Option<BlockHeader>, ShardError> {
        let Some((group_height, i)) = self.locate(scope, height)? else { return Ok(None) };
        if let Some(gb) = self.pending.get(&group_height) {
            return Ok(gb.vault_entries.get(i as usize).map(|e| gb.header_of(e)));
        }
        let Some(record) = self.read_record(group_height)? else { return Ok(None) };
        Ok(record.entries.get(i as usize).map(|e| record.header_of(e)))
    }

    /// `scope`'s block at `height`; height 0 is the genesis block built from `genesis` (the
    /// scope's `ScopeMeta.genesis`), which has no transactions.
    pub fn get_block(
        &self,
        scope: ScopeKey,
        height: u64,
        genesis: &BlockHeader,
    ) -> Result<Option<Block>, ShardError> {
        if height == 0 {
            return Ok(Some(Block { header: genesis.clone(), transactions: Vec::new() }));
        }
        let Some((group_height, i)) = self.locate(scope, height)? else { return Ok(None) };
        if let Some(gb) = self.pending.get(&group_height) {
            return Ok(gb
                .vault_entries
                .get(i as usize)
                .map(|e| Block { header: gb.header_of(e), transactions: e.transactions.clone() }));
        }
        let Some(record) = self.read_record(group_height)? else { return Ok(None) };
        let Some(entry) = record.entries.get(i as usize) else { return Ok(None) };
        let transactions = self.read_body(group_height, i)?.unwrap_or_default();
        Ok(Some(Block { header: record.header_of(entry), transactions }))
    }

    /// `scope`'s blocks `from..=to` in order, at most `ARCHIVE_RANGE_BLOCKS_MAX`; stops at the
    /// first height that is not archived.
    pub fn get_range(
        &self,
        scope: ScopeKey,
        from: u64,
        to: u64,
        genesis: &BlockHeader,
    ) -> Result<Vec<Block>, ShardError> {
        let mut out = Vec::new();
        let last = to.min(from.saturating_add(ARCHIVE_RANGE_BLOCKS_MAX - 1));
        for height in from..=last {
            match self.get_block(scope, height, genesis)? {
                Some(block) => out.push(block),
                None => break,
            }
        }
        Ok(out)
    }

    /// The whole group block at `group_height` (bodies included where present), for peers'
    /// `GetGroupBlocks` and recovery.
    pub fn get_group_block(&self, group_height: u64) -> Result<Option<GroupBlock>, ShardError> {
        if let Some(gb) = self.pending.get(&group_height) {
            return Ok(Some(GroupBlock::clone(gb)));
        }
        let Some(record) = self.read_record(group_height)? else { return Ok(None) };
        let mut vault_entries = Vec::with_capacity(record.entries.len());
        for (i, e) in record.entries.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            vault_entries.push(VaultEntry {
                namespace_id: e.namespace_id,
                vault_id: e.vault_id,
                vault_height: e.vault_height,
                previous_vault_hash: e.previous_vault_hash,
                transactions: self.read_body(group_height, i)?.unwrap_or_default(),
                tx_merkle_root: e.tx_merkle_root,
                state_root: e.state_root,
            });
        }
        Ok(Some(GroupBlock {
            group_id: record.group_id,
            group_height: record.group_height,
            previous_group_hash: record.previous_group_hash,
            vault_entries,
            timestamp: record.timestamp,
            leader_id: record.leader_id,
            term: record.term,
            committed_index: record.committed_index,
        }))
    }

    /// Highest archived group height (memory or file), 0 if none.
    pub fn last_group_height(&self) -> Result<u64, ShardError> {
        if let Some((h, _)) = self.pending.last_key_value() {
            return Ok(*h);
        }
        let Some(db) = &self.db else { return Ok(0) };
        let txn = db.begin_read().map_err(|e| ShardError::redb("blocks.redb begin_read", e))?;
        let groups = txn.open_table(GROUP_BLOCKS).map_err(|e| ShardError::redb("blocks.redb open", e))?;
        let last =
            groups.last().map_err(|e| ShardError::redb("blocks.redb last", e))?.map(|(k, _)| k.value());
        Ok(last.unwrap_or(0))
    }

    /// Ranges of group heights in `1..=upto` that are neither in memory nor in `blocks.redb`,
    /// ascending (a snapshot install leaves the heights below its cut missing until back-fill,
    /// SPEC §9.4). Reads only the keys.
    pub fn gaps(&self, upto: u64) -> Result<Vec<(u64, u64)>, ShardError> {
        let mut present: Vec<u64> = self.pending.keys().copied().filter(|h| *h <= upto).collect();
        if let Some(db) = &self.db {
            let txn = db.begin_read().map_err(|e| ShardError::redb("blocks.redb begin_read", e))?;
            let groups = txn.open_table(GROUP_BLOCKS).map_err(|e| ShardError::redb("blocks.redb open", e))?;
            for row in groups.range(1..=upto).map_err(|e| ShardError::redb("blocks.redb range", e))? {
                let (k, _) = row.map_err(|e| ShardError::redb("blocks.redb range", e))?;
                present.push(k.value());
            }
        }
        present.sort_unstable();
        present.dedup();
        let mut gaps = Vec::new();
        let mut next = 1u64;
        for h in present {
            if h > next {
                gaps.push((next, h - 1));
            }
            next = h + 1;
        }
        if next <= upto {
            gaps.push((next, upto));
        }
        Ok(gaps)
    }

    /// `previous_group_hash` of the archived group block at `group_height`.
    pub fn previous_group_hash(&self, group_height: u64) -> Result<Option<Hash>, ShardError> {
        if let Some(gb) = self.pending.get(&group_height) {
            return Ok(Some(gb.previous_group_hash));
        }
        Ok(self.read_record(group_height)?.map(|r| r.previous_group_hash))
    }

    /// Up to `max` consecutive archived group blocks from `from` (SPEC §5.6 item 44), stopping at
    /// the first missing height and once the blocks' encoded size passes `budget_bytes` (at least
    /// one block is returned if `from` is archived).
    pub fn group_blocks(
        &self,
        from: u64,
        max: u32,
        budget_bytes: usize,
    ) -> Result<Vec<GroupBlock>, ShardError> {
        let mut out = Vec::new();
        let mut used = 0usize;
        for height in from..from.saturating_add(u64::from(max)) {
            let Some(gb) = self.get_group_block(height)? else { break };
            let size = ledger_wire::codec::archived_len(&gb).unwrap_or(usize::MAX);
            if !out.is_empty() && used.saturating_add(size) > budget_bytes {
                break;
            }
            used = used.saturating_add(size);
            out.push(gb);
        }
        Ok(out)
    }
}
