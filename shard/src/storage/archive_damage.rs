//! The archived blocks of a scope that cannot be replayed as stored (SPEC §9.6's failure table:
//! "missing archive rows → fetch from a peer"; §9.7: "chain break / partial block → re-fetch from
//! healthy replicas"). Recovery (ops/vault_repair.rs) re-fetches the group blocks named here from
//! the group's other members before it replays them (peer/backfill.rs, D81).

use crate::error::ShardError;
use crate::storage::archive::Archive;
use ledger_core::hash::{block_hash, tx_hash, tx_merkle_root};
use ledger_core::types::{BlockHeader, Hash, ScopeKey, Transaction};
use redb::ReadableDatabase;
use std::collections::BTreeSet;

/// A row that does not decode is damage to repair, not a failure of the scan.
fn unless_undecodable<T>(read: Result<Option<T>, ShardError>) -> Result<Option<T>, ShardError> {
    match read {
        Err(ShardError::Codec { .. }) => Ok(None),
        other => other,
    }
}

/// Whether `transactions` are the body `header` was built with.
fn body_matches(header: &BlockHeader, tx_count: u32, transactions: &[Transaction]) -> bool {
    let leaves: Vec<Hash> = transactions.iter().map(tx_hash).collect();
    transactions.len() == tx_count as usize && tx_merkle_root(&leaves) == header.tx_merkle_root
}

impl Archive {
    /// The highest vault height of `scope` in the vault index (memory or file), 0 if none.
    pub fn indexed_tip(&self, scope: ScopeKey) -> Result<u64, ShardError> {
        let id = scope.scope_id();
        let in_memory = self.pending_index_tip(id);
        let Some(db) = self.db() else { return Ok(in_memory) };
        let txn = db.begin_read().map_err(|e| ShardError::redb("blocks.redb begin_read", e))?;
        let index = txn
            .open_table(crate::storage::archive::VAULT_INDEX)
            .map_err(|e| ShardError::redb("blocks.redb open", e))?;
        let last = index
            .range((id, 0)..=(id, u64::MAX))
            .map_err(|e| ShardError::redb("blocks.redb range", e))?
            .next_back()
            .transpose()
            .map_err(|e| ShardError::redb("blocks.redb range", e))?
            .map(|(k, _)| k.value().1);
        Ok(last.unwrap_or(0).max(in_memory))
    }

    /// The group heights holding `scope`'s blocks `from..=to` (`from` ≥ 1) that cannot be replayed
    /// as stored, ascending: a record or body that is missing or does not decode, a body that does
    /// not reproduce its header's `tx_merkle_root`, or a header that does not link to the block
    /// below (both blocks are named then). `below` is the hash of the scope's block `from - 1`
    /// when the caller knows it. A height missing from the vault index names the group heights
    /// between its indexed neighbours. Blocks still in memory are intact by construction.
    ///
    /// Bodies compacted by retention are reported too: callers scan only heights a replay needs,
    /// which retention never compacts (it keeps every body above the newest snapshot, SPEC §9.5).
    pub fn damaged_blocks(
        &self,
        scope: ScopeKey,
        from: u64,
        to: u64,
        below: Option<Hash>,
    ) -> Result<Vec<u64>, ShardError> {
        let mut damaged = BTreeSet::new();
        // The scope's previous block: its group height and hash, when it was read intact.
        let mut previous: Option<(Option<u64>, Hash)> = below.map(|hash| (None, hash));
        let mut last_located: Option<u64> = None;
        let mut unindexed = false;
        for height in from..=to {
            let Some((group_height, entry)) = self.locate(scope, height)? else {
                unindexed = true;
                previous = None;
                continue;
            };
            if unindexed {
                if let Some(low) = last_located {
                    damaged.extend(low + 1..group_height);
                }
                unindexed = false;
            }
            last_located = Some(group_height);
            let header = match self.pending_header(group_height, entry) {
                Some(header) => Some((header, true)),
                None => self.stored_header(scope, height, group_height, entry)?,
            };
            let Some((header, intact)) = header else {
                damaged.insert(group_height);
                previous = None;
                continue;
            };
            if let Some((below_height, hash)) = previous {
                if hash != header.previous_hash {
                    damaged.insert(group_height);
                    damaged.extend(below_height);
                }
            }
            if !intact {
                damaged.insert(group_height);
            }
            previous = Some((Some(group_height), block_hash(&header)));
        }
        Ok(damaged.into_iter().collect())
    }

    /// The stored header of `scope`'s block `height` at `(group_height, entry)` and whether its
    /// body is intact; `None` when the record is missing, undecodable or holds another block.
    fn stored_header(
        &self,
        scope: ScopeKey,
        height: u64,
        group_height: u64,
        entry: u32,
    ) -> Result<Option<(BlockHeader, bool)>, ShardError> {
        let Some(record) = unless_undecodable(self.read_record(group_height))? else { return Ok(None) };
        let Some(e) = record.entries.get(entry as usize) else { return Ok(None) };
        if e.vault_height != height
            || (e.namespace_id, e.vault_id) != (scope.namespace_id.0, scope.vault_id.0)
        {
            return Ok(None);
        }
        let header = record.header_of(e);
        let intact = match unless_undecodable(self.read_body(group_height, entry))? {
            Some(transactions) => body_matches(&header, e.tx_count, &transactions),
            None => false,
        };
        Ok(Some((header, intact)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::storage::archive::{ArchiveFlush, BODIES, GROUP_BLOCKS};
    use ledger_core::hash::group_hash;
    use ledger_core::types::{GroupBlock, NamespaceId, Operation, Timestamp, VaultEntry, VaultId, ZERO_HASH};
    use redb::Database;
    use std::sync::Arc;

    const A: ScopeKey = ScopeKey { namespace_id: NamespaceId(7), vault_id: VaultId(1) };
    const B: ScopeKey = ScopeKey { namespace_id: NamespaceId(7), vault_id: VaultId(2) };

    fn tx(scope: ScopeKey, height: u64) -> Transaction {
        Transaction {
            id: [height as u8; 16],
            client_id: format!("c{}", scope.vault_id.0),
            sequence: height,
            actor: "test".into(),
            operations: vec![Operation::SetEntity {
                key: format!("k{height}"),
                value: vec![1, 2, 3],
                expires_at: None,
                condition: None,
            }],
            timestamp: Timestamp { secs: height as i64, nanos: 0 },
        }
    }

    /// Group blocks 1..=`n`: odd group heights hold A's next block, every one holds B's.
    fn chain(n: u64) -> Vec<GroupBlock> {
        let (mut blocks, mut last) = (Vec::new(), [ZERO_HASH; 2]);
        let mut heights = [0u64; 2];
        for group_height in 1..=n {
            let scopes: Vec<(usize, ScopeKey)> =
                if group_height % 2 == 1 { vec![(0, A), (1, B)] } else { vec![(1, B)] };
            let mut vault_entries = Vec::new();
            for (slot, scope) in scopes {
                heights[slot] += 1;
                let transactions = vec![tx(scope, heights[slot])];
                let leaves: Vec<Hash> = transactions.iter().map(tx_hash).collect();
                let entry = VaultEntry {
                    namespace_id: scope.namespace_id.0,
                    vault_id: scope.vault_id.0,
                    vault_height: heights[slot],
                    previous_vault_hash: last[slot],
                    tx_merkle_root: tx_merkle_root(&leaves),
                    state_root: [heights[slot] as u8; 32],
                    transactions,
                };
                vault_entries.push(entry);
            }
            let gb = GroupBlock {
                group_id: 1,
                group_height,
                previous_group_hash: blocks.last().map(group_hash).unwrap_or(ZERO_HASH),
                vault_entries,
                timestamp: Timestamp { secs: group_height as i64, nanos: 0 },
                leader_id: 1,
                term: 1,
                committed_index: group_height,
            };
            for (i, e) in gb.vault_entries.iter().enumerate() {
                let slot = usize::from(e.vault_id == 2);
                last[slot] = block_hash(&gb.header_of(&gb.vault_entries[i]));
            }
            blocks.push(gb);
        }
        blocks
    }

    /// Proves the scan names exactly the group blocks that cannot be replayed: an intact archive
    /// has none; a deleted body, a body of other transactions, an undecodable body, a deleted
    /// record and a deleted index row are each found at their group height (the index row by
    /// its neighbours' group heights), while another scope's intact blocks are not named.
    #[test]
    fn t01_missing_and_damaged_blocks_are_named_by_group_height() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::create(dir.path().join("blocks.redb")).unwrap());
        let blocks = chain(20);
        ArchiveFlush { blocks: blocks.iter().cloned().map(Arc::new).collect() }.write(&db).unwrap();
        let archive = Archive::open(db.clone()).unwrap();
        assert_eq!(archive.indexed_tip(A).unwrap(), 10);
        assert_eq!(archive.indexed_tip(B).unwrap(), 20);
        assert!(archive.damaged_blocks(A, 1, 10, Some(ZERO_HASH)).unwrap().is_empty());
        assert!(archive.damaged_blocks(B, 1, 20, Some(ZERO_HASH)).unwrap().is_empty());

        // A's block 2 is at group height 3 (entry 0), block 4 at 7, 6 at 11, 8 at 15.
        let txn = db.begin_write().unwrap();
        {
            let mut bodies = txn.open_table(BODIES).unwrap();
            bodies.remove((3, 0)).unwrap();
            let other = crate::codec::encode(&vec![tx(A, 99)]);
            bodies.insert((7, 0), other.as_slice()).unwrap();
            bodies.insert((11, 0), &b"not a body"[..]).unwrap();
            let mut groups = txn.open_table(GROUP_BLOCKS).unwrap();
            groups.remove(15).unwrap();
            let mut index = txn.open_table(crate::storage::archive::VAULT_INDEX).unwrap();
            index.remove((A.scope_id(), 9)).unwrap();
        }
        txn.commit().unwrap();
        assert_eq!(
            archive.damaged_blocks(A, 1, 10, Some(ZERO_HASH)).unwrap(),
            vec![3, 7, 11, 15, 16, 17, 18]
        );
        // B shares group heights 3, 7, 11, 15 with A: only the deleted record touches B.
        assert_eq!(archive.damaged_blocks(B, 1, 20, Some(ZERO_HASH)).unwrap(), vec![15]);
        // Scanned in ranges that overlap by one height (as recovery does), the same heights.
        let mut chunked: Vec<u64> = [(1, 4), (4, 7), (7, 10)]
            .iter()
            .flat_map(|&(from, to)| {
                archive.damaged_blocks(A, from, to, (from == 1).then_some(ZERO_HASH)).unwrap()
            })
            .collect();
        chunked.sort_unstable();
        chunked.dedup();
        assert_eq!(chunked, vec![3, 7, 11, 15, 16, 17, 18]);
        // A wrong anchor below the range names the first block.
        assert_eq!(archive.damaged_blocks(A, 1, 1, Some([9; 32])).unwrap(), vec![1]);
    }

    /// Proves a flush whose blocks skip a group height, or do not link to their predecessor, is
    /// refused as `Corrupt` with nothing written, while an intact run is written whole.
    #[test]
    fn t02_a_flush_that_breaks_the_group_chain_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::create(dir.path().join("blocks.redb")).unwrap());
        let blocks = chain(6);
        let flush =
            |blocks: Vec<GroupBlock>| ArchiveFlush { blocks: blocks.into_iter().map(Arc::new).collect() };
        let mut gap = blocks.clone();
        gap.remove(3);
        let mut unlinked = blocks.clone();
        unlinked[4].previous_group_hash = [7; 32];
        for broken in [gap, unlinked] {
            let err = flush(broken).write(&db).unwrap_err();
            assert!(matches!(err, ShardError::Corrupt { what: "archive flush", .. }), "{err}");
        }
        let archive = Archive::open(db.clone()).unwrap();
        assert_eq!(archive.last_group_height().unwrap(), 0, "a refused flush wrote nothing");
        flush(blocks).write(&db).unwrap();
        assert_eq!(archive.last_group_height().unwrap(), 6);
    }
}
