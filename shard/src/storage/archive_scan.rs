//! Read-only scans of a group's `blocks.redb` for work that runs OFF the executor (snapshot chain
//! commitments, integrity checks, body compaction): one redb read transaction (an MVCC snapshot,
//! never blocking the checkpointer's writes) on a blocking thread. Callers first make the blocks
//! they need durable with a checkpoint, so nothing they look at is still only in memory.
//!
//! Unlike `Archive`, every failure is reported precisely (missing index row, missing or
//! undecodable record, entry of another scope) so that an integrity check can name it.

use crate::codec::decode;
use crate::error::ShardError;
use crate::storage::archive::{GroupBlockRecord, BODIES, GROUP_BLOCKS, VAULT_INDEX};
use ledger_core::types::{BlockHeader, ScopeKey, Transaction};
use redb::{Database, ReadTransaction, ReadableDatabase};

/// Why a vault block's header could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderFault {
    /// No `vault_index` row for (scope, height).
    NotIndexed,
    /// The index points at a group block that is not stored.
    NoGroupBlock { group_height: u64 },
    /// The group block row does not decode (bytecheck failed).
    Undecodable { group_height: u64, detail: String },
    /// The indexed entry is missing or belongs to another scope or height.
    WrongEntry { group_height: u64, detail: String },
}

impl std::fmt::Display for HeaderFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderFault::NotIndexed => write!(f, "no vault_index row"),
            HeaderFault::NoGroupBlock { group_height } => {
                write!(f, "group block {group_height} is not archived")
            }
            HeaderFault::Undecodable { group_height, detail } => {
                write!(f, "group block {group_height} does not decode: {detail}")
            }
            HeaderFault::WrongEntry { group_height, detail } => {
                write!(f, "group block {group_height}: {detail}")
            }
        }
    }
}

/// A located vault block header.
#[derive(Debug, Clone)]
pub struct LocatedHeader {
    pub header: BlockHeader,
    pub group_height: u64,
    pub entry: u32,
    /// Transactions the header record says the body holds.
    pub tx_count: u32,
}

/// Why a body could not be read (absent bodies are `Ok(None)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyFault(pub String);

/// One read transaction over `blocks.redb`.
pub struct ArchiveScan {
    txn: ReadTransaction,
}

impl ArchiveScan {
    /// Begins the read transaction. Blocking-thread use only (it may touch the disk).
    pub fn begin(db: &Database) -> Result<ArchiveScan, ShardError> {
        let txn = db.begin_read().map_err(|e| ShardError::redb("blocks.redb begin_read", e))?;
        Ok(ArchiveScan { txn })
    }

    /// `scope`'s header at `height` (≥ 1), or the reason it cannot be read. I/O errors are `Err`.
    pub fn header(
        &self,
        scope: ScopeKey,
        height: u64,
    ) -> Result<Result<LocatedHeader, HeaderFault>, ShardError> {
        let t = |e: redb::TableError| ShardError::redb("blocks.redb open table", e);
        let s = |e: redb::StorageError| ShardError::redb("blocks.redb read", e);
        let index = self.txn.open_table(VAULT_INDEX).map_err(t)?;
        let Some((group_height, entry)) =
            index.get((scope.scope_id(), height)).map_err(s)?.map(|v| v.value())
        else {
            return Ok(Err(HeaderFault::NotIndexed));
        };
        let groups = self.txn.open_table(GROUP_BLOCKS).map_err(t)?;
        let Some(row) = groups.get(group_height).map_err(s)? else {
            return Ok(Err(HeaderFault::NoGroupBlock { group_height }));
        };
        let record = match decode::<GroupBlockRecord>("group block record", row.value()) {
            Ok(record) => record,
            Err(e) => {
                let detail = std::error::Error::source(&e).map(|c| c.to_string()).unwrap_or(e.to_string());
                return Ok(Err(HeaderFault::Undecodable { group_height, detail }));
            }
        };
        let Some(e) = record.entries.get(entry as usize) else {
            return Ok(Err(HeaderFault::WrongEntry {
                group_height,
                detail: format!("has no entry {entry}"),
            }));
        };
        let header = record.header_of(e);
        if header.namespace_id != scope.namespace_id.0
            || header.vault_id != scope.vault_id.0
            || header.height != height
        {
            return Ok(Err(HeaderFault::WrongEntry {
                group_height,
                detail: format!(
                    "entry {entry} is ({}, {}) height {}, not {scope} height {height}",
                    header.namespace_id, header.vault_id, header.height
                ),
            }));
        }
        Ok(Ok(LocatedHeader { header, group_height, entry, tx_count: e.tx_count }))
    }

    /// The body of `(group_height, entry)`: `Ok(None)` if absent (compacted or lost).
    pub fn body(
        &self,
        group_height: u64,
        entry: u32,
    ) -> Result<Option<Result<Vec<Transaction>, BodyFault>>, ShardError> {
        let bodies =
            self.txn.open_table(BODIES).map_err(|e| ShardError::redb("blocks.redb open table", e))?;
        let Some(row) =
            bodies.get((group_height, entry)).map_err(|e| ShardError::redb("blocks.redb read", e))?
        else {
            return Ok(None);
        };
        Ok(Some(decode::<Vec<Transaction>>("block body", row.value()).map_err(|e| {
            BodyFault(std::error::Error::source(&e).map(|c| c.to_string()).unwrap_or(e.to_string()))
        })))
    }

    /// `scope`'s `(vault_height, group_height, entry)` index rows with heights in `range`.
    pub fn index_range(
        &self,
        scope: ScopeKey,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<(u64, u64, u32)>, ShardError> {
        let index =
            self.txn.open_table(VAULT_INDEX).map_err(|e| ShardError::redb("blocks.redb open table", e))?;
        let id = scope.scope_id();
        let mut out = Vec::new();
        let rows = index
            .range((id, range.start)..(id, range.end))
            .map_err(|e| ShardError::redb("blocks.redb range", e))?;
        for row in rows {
            let (k, v) = row.map_err(|e| ShardError::redb("blocks.redb range", e))?;
            let (group_height, entry) = v.value();
            out.push((k.value().1, group_height, entry));
        }
        Ok(out)
    }
}
