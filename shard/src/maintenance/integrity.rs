//! `CheckIntegrity` for one scope (SPEC §9.7, §5.3 item 28). Issues are reported, never fixed.
//!
//! Quick: walk the scope's header chain in `blocks.redb` from genesis to the tip (every
//! `previous_hash` equals the `block_hash` of the header below, SPEC §7.3), recompute every
//! stored body's `tx_merkle_root` (§7.5), compare the tip header with the scope's current
//! `ScopeMeta` and state tree, report a Diverged health, and check every local snapshot holding
//! the scope: checksums, its root and block hash against the archived header at its height
//! (§12 invariant 33), its genesis hash and back link, and its §7.8 chain commitment recomputed
//! from the headers (invariant 19).
//!
//! Full: additionally replay the bodies — from genesis under Full retention, from the newest
//! snapshot that passed every check above (and whose rows reproduce its root) under Compacted
//! retention — comparing the replayed `state_root` with the header's at every height and, at the
//! tip, with the current state.
//!
//! The scan never blocks the executor: on the core the scope's meta and the snapshot catalog are
//! copied and a checkpoint makes the archive durable up to the tip; everything else runs on a
//! blocking thread over one redb read transaction. Memory: one header per height (~200 B).

use crate::constants::INTEGRITY_ISSUES_MAX;
use crate::error::ShardError;
use crate::round::group_data::GroupData;
use crate::storage::archive_scan::{ArchiveScan, LocatedHeader};
use crate::storage::checkpoint::Checkpointer;
use crate::storage::snapshot::{self, CatalogEntry, CorruptSnapshot};
use ledger_core::hash::{block_hash, chain_commitment, to_hex, tx_hash, tx_merkle_root};
use ledger_core::state::{BlockContext, BlockDraft, ScopeMeta, ScopeState};
use ledger_core::types::*;
use ledger_wire::messages::{IntegrityIssue, IntegrityIssueType};
use redb::Database;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

/// What a check needs from the core, copied before it goes off-core.
pub struct CheckInput {
    pub meta: ScopeMeta,
    /// Root of the scope's state tree as held in memory.
    pub tree_root: Hash,
    pub snapshots: Vec<CatalogEntry>,
    pub corrupt_snapshots: Vec<CorruptSnapshot>,
    pub full: bool,
}

/// Collected issues, one per (height, type), at most `INTEGRITY_ISSUES_MAX`.
#[derive(Default)]
struct Issues {
    list: Vec<IntegrityIssue>,
    seen: BTreeSet<(u64, u8)>,
    dropped: u64,
}

impl Issues {
    fn add(&mut self, block_height: u64, issue_type: IntegrityIssueType, description: String) {
        if !self.seen.insert((block_height, issue_type as u8)) {
            return;
        }
        if self.list.len() >= INTEGRITY_ISSUES_MAX {
            self.dropped += 1;
            return;
        }
        self.list.push(IntegrityIssue { block_height, issue_type, description });
    }

    fn finish(mut self) -> Vec<IntegrityIssue> {
        if self.dropped > 0 {
            if let Some(last) = self.list.last_mut() {
                last.description.push_str(&format!(" ({} more issues not listed)", self.dropped));
            }
        }
        self.list.sort_by_key(|i| i.block_height);
        self.list
    }
}

fn short(hash: &Hash) -> String {
    to_hex(hash)[..16].to_string()
}

/// The check itself. Blocking (reads `blocks.redb` and snapshot files).
pub fn run_check(db: Option<&Database>, input: CheckInput) -> Result<Vec<IntegrityIssue>, ShardError> {
    let CheckInput { meta, tree_root, snapshots, corrupt_snapshots, full } = input;
    let compacted = meta.retention.mode == RetentionMode::Compacted;
    let mut issues = Issues::default();
    let scan = db.map(ArchiveScan::begin).transpose()?;
    let headers = check_chain(&meta, &scan, &snapshots, compacted, &mut issues)?;
    let header_at = |height: u64| headers.at(height);
    check_current_state(&meta, tree_root, &header_at, &mut issues);
    let trusted = check_snapshots(&meta, &snapshots, &corrupt_snapshots, &header_at, &mut issues);
    if full {
        replay(&meta, tree_root, &header_at, &scan, &trusted, compacted, &mut issues)?;
    }
    Ok(issues.finish())
}

/// A scope's headers as the archive holds them: genesis, then one per height (`None` where the
/// header is unreadable).
struct Headers<'a> {
    genesis: &'a BlockHeader,
    located: Vec<Option<LocatedHeader>>,
}

impl Headers<'_> {
    fn at(&self, height: u64) -> Option<BlockHeader> {
        if height == 0 {
            Some(self.genesis.clone())
        } else {
            self.located.get(height as usize).and_then(|h| h.as_ref()).map(|l| l.header.clone())
        }
    }
}

/// Genesis and the header chain up to the scope's tip: each header links to its predecessor's
/// hash, and each body is there (unless a Compacted vault pruned it below its newest snapshot) and
/// hashes to its header's transaction root.
fn check_chain<'a>(
    meta: &'a ScopeMeta,
    scan: &Option<ArchiveScan>,
    snapshots: &[CatalogEntry],
    compacted: bool,
    issues: &mut Issues,
) -> Result<Headers<'a>, ShardError> {
    use IntegrityIssueType::*;
    let (key, tip, genesis) = (meta.key, meta.height, &meta.genesis);
    if genesis.height != 0 || genesis.previous_hash != ZERO_HASH || genesis.state_root != ZERO_HASH {
        issues.add(0, ChainBreak, "genesis header is not a height-0 header over ZERO_HASH".into());
    }
    // Heights whose body a Compacted vault may have deleted (below its newest snapshot).
    let prunable_below = if compacted {
        snapshots.iter().filter_map(|e| e.header.scope(key)).map(|s| s.vault_height).max()
    } else {
        None
    }
    .unwrap_or(0);
    let mut headers: Vec<Option<LocatedHeader>> = Vec::with_capacity(tip as usize + 1);
    headers.push(None);
    let mut previous = Some(block_hash(genesis));
    for height in 1..=tip {
        let located = match scan {
            Some(scan) => scan.header(key, height)?,
            None => Err(crate::storage::archive_scan::HeaderFault::NotIndexed),
        };
        let located = match located {
            Ok(located) => located,
            Err(fault) => {
                issues.add(height, MissingBlock, format!("header unreadable: {fault}"));
                previous = None;
                headers.push(None);
                continue;
            }
        };
        let header = &located.header;
        if let Some(expected) = previous {
            if header.previous_hash != expected {
                issues.add(
                    height,
                    ChainBreak,
                    format!(
                        "previous_hash {} is not block_hash({}) = {}",
                        short(&header.previous_hash),
                        height - 1,
                        short(&expected)
                    ),
                );
            }
        }
        previous = Some(block_hash(header));
        check_body(scan, &located, height, height < prunable_below, issues)?;
        headers.push(Some(located));
    }
    Ok(Headers { genesis, located: headers })
}

/// The block body at `height` against its header's tx root; a missing body is an issue unless
/// `prunable` (a Compacted vault's body below its newest snapshot).
fn check_body(
    scan: &Option<ArchiveScan>,
    located: &LocatedHeader,
    height: u64,
    prunable: bool,
    issues: &mut Issues,
) -> Result<(), ShardError> {
    use IntegrityIssueType::*;
    let header = &located.header;
    let body = match scan {
        Some(scan) => scan.body(located.group_height, located.entry)?,
        None => None,
    };
    match body {
        None if prunable => {}
        None => issues.add(height, MissingBlock, "block body is missing".into()),
        Some(Err(fault)) => issues.add(height, TxRootMismatch, format!("body does not decode: {}", fault.0)),
        Some(Ok(transactions)) => {
            let root = tx_merkle_root(&transactions.iter().map(tx_hash).collect::<Vec<_>>());
            if root != header.tx_merkle_root {
                issues.add(
                    height,
                    TxRootMismatch,
                    format!(
                        "body's tx root {} differs from the header's {}",
                        short(&root),
                        short(&header.tx_merkle_root)
                    ),
                );
            }
        }
    }
    Ok(())
}

/// The scope's current state against its tip header, and its rows' root against the one it
/// records.
fn check_current_state(
    meta: &ScopeMeta,
    tree_root: Hash,
    header_at: &dyn Fn(u64) -> Option<BlockHeader>,
    issues: &mut Issues,
) {
    use IntegrityIssueType::*;
    let tip = meta.height;
    if let Some(tip_header) = header_at(tip) {
        if block_hash(&tip_header) != meta.last_block_hash {
            issues.add(tip, ChainBreak, "tip header's hash differs from the scope's last block hash".into());
        }
        if tip_header.state_root != meta.state_root {
            issues.add(
                tip,
                StateDivergence,
                format!(
                    "scope state root {} differs from the tip header's {}",
                    short(&meta.state_root),
                    short(&tip_header.state_root)
                ),
            );
        }
    }
    if tree_root != meta.state_root {
        issues.add(
            tip,
            StateDivergence,
            format!("rows hash to {}, the scope records {}", short(&tree_root), short(&meta.state_root)),
        );
    }
    if let VaultHealth::Diverged { expected, computed, at_height } = &meta.health {
        issues.add(
            *at_height,
            StateDivergence,
            format!("scope is Diverged: expected root {}, computed {}", short(expected), short(computed)),
        );
    }
}

/// The snapshots holding this scope: each must match the archived header at its height, the
/// genesis, its link to the previous snapshot and its chain commitment. Returns the ones that
/// passed (a full check replays from them).
fn check_snapshots<'s>(
    meta: &ScopeMeta,
    snapshots: &'s [CatalogEntry],
    corrupt_snapshots: &[CorruptSnapshot],
    header_at: &dyn Fn(u64) -> Option<BlockHeader>,
    issues: &mut Issues,
) -> Vec<&'s CatalogEntry> {
    use IntegrityIssueType::*;
    let (key, tip, genesis) = (meta.key, meta.height, &meta.genesis);
    for bad in corrupt_snapshots {
        let height = match &bad.header {
            Some(header) => match header.scope(key) {
                Some(s) => s.vault_height,
                None => continue,
            },
            None => 0,
        };
        issues.add(height, SnapshotCorruption, format!("{}: {}", bad.path.display(), bad.reason));
    }
    let mut trusted: Vec<&CatalogEntry> = Vec::new();
    for entry in snapshots {
        let Some(s) = entry.header.scope(key) else { continue };
        let name = entry.path.display();
        let height = s.vault_height;
        let mut faults: Vec<String> = Vec::new();
        match header_at(height) {
            _ if height > tip => faults.push(format!("height is above the tip {tip}")),
            Some(h) if block_hash(&h) != s.block_hash || h.state_root != s.state_root => {
                faults.push("root or block hash differs from the archived header".into())
            }
            _ => {}
        }
        if s.genesis_hash != block_hash(genesis) {
            faults.push("genesis hash differs".into());
        }
        if let (Some(ph), Some(phash)) = (s.previous_snapshot_height, s.previous_snapshot_hash) {
            if header_at(ph).is_some_and(|h| block_hash(&h) != phash) {
                faults.push(format!("link to the snapshot at height {ph} is broken"));
            }
        }
        let from = s.previous_snapshot_height.map(|p| p + 1).unwrap_or(0);
        let range: Option<Vec<BlockHeader>> =
            if height <= tip { (from..=height).map(header_at).collect() } else { None };
        if range.is_some_and(|range| chain_commitment(&range) != s.chain_commitment) {
            faults.push(format!("chain commitment over {from}..={height} does not match the headers"));
        }
        if faults.is_empty() {
            trusted.push(entry);
        } else {
            issues.add(height, SnapshotCorruption, format!("{name}: {}", faults.join("; ")));
        }
    }
    trusted
}

/// Full check: replay bodies and compare roots at every height.
fn replay(
    meta: &ScopeMeta,
    tree_root: Hash,
    header_at: &dyn Fn(u64) -> Option<BlockHeader>,
    scan: &Option<ArchiveScan>,
    trusted: &[&CatalogEntry],
    compacted: bool,
    issues: &mut Issues,
) -> Result<(), ShardError> {
    use IntegrityIssueType::*;
    let key = meta.key;
    let mut state = replay_start(meta, trusted, compacted, issues);
    for height in state.meta.height + 1..=meta.height {
        let Some(Block { header, transactions }) = block_to_replay(key, height, header_at, scan, issues)?
        else {
            return Ok(());
        };
        replay_block(&mut state, height, &header, transactions, issues);
    }
    if state.meta.state_root != meta.state_root || state.meta.state_root != tree_root {
        issues.add(
            meta.height,
            StateDivergence,
            format!(
                "replayed state root {} differs from the current state's {}",
                short(&state.meta.state_root),
                short(&tree_root)
            ),
        );
    }
    Ok(())
}

/// The state a full check replays from: under Compacted retention the newest trusted snapshot
/// that loads (one that fails is reported), else the scope's empty state at genesis.
fn replay_start(
    meta: &ScopeMeta,
    trusted: &[&CatalogEntry],
    compacted: bool,
    issues: &mut Issues,
) -> ScopeState {
    use IntegrityIssueType::*;
    let key = meta.key;
    let mut state = None;
    if compacted {
        for entry in trusted.iter().rev() {
            let height = entry.header.scope(key).map(|s| s.vault_height).unwrap_or(0);
            match snapshot::load_scope(&entry.path, key) {
                Ok(Some(scope)) => {
                    state = Some(scope);
                    break;
                }
                Ok(None) => {}
                Err(e) => issues.add(height, SnapshotCorruption, format!("{}: {e}", entry.path.display())),
            }
        }
    }
    match state {
        Some(state) => state,
        None => {
            let genesis_meta = ScopeMeta {
                height: 0,
                last_block_hash: block_hash(&meta.genesis),
                state_root: ZERO_HASH,
                health: VaultHealth::Healthy,
                last_block_ts: meta.genesis.timestamp,
                ..meta.clone()
            };
            ScopeState::from_rows(genesis_meta, Vec::new(), Vec::new(), Vec::new())
        }
    }
}

/// The archived header and body at `height`, or None (reported) when either cannot be read: the
/// replay stops there.
fn block_to_replay(
    key: ScopeKey,
    height: u64,
    header_at: &dyn Fn(u64) -> Option<BlockHeader>,
    scan: &Option<ArchiveScan>,
    issues: &mut Issues,
) -> Result<Option<Block>, ShardError> {
    use IntegrityIssueType::*;
    let Some(header) = header_at(height) else {
        issues.add(height, MissingBlock, "replay stopped: header unreadable".into());
        return Ok(None);
    };
    let located = match scan {
        Some(scan) => scan.header(key, height)?.ok(),
        None => None,
    };
    let body = match (scan, located) {
        (Some(scan), Some(l)) => scan.body(l.group_height, l.entry)?,
        _ => None,
    };
    let Some(Ok(transactions)) = body else {
        issues.add(height, MissingBlock, "replay stopped: body needed for replay is missing".into());
        return Ok(None);
    };
    Ok(Some(Block { header, transactions }))
}

/// Replays one block's transactions onto `state`, reporting those that do not apply and a
/// state root that differs from the `header`'s.
fn replay_block(
    state: &mut ScopeState,
    height: u64,
    header: &BlockHeader,
    transactions: Vec<Transaction>,
    issues: &mut Issues,
) {
    use IntegrityIssueType::*;
    let ctx = BlockContext::of_header(header);
    let mut draft = BlockDraft::new(state);
    let mut failed = 0;
    for tx in transactions {
        failed += usize::from(draft.try_apply(tx).is_err());
    }
    let (_, delta) = draft.finish(&ctx);
    if failed > 0 {
        issues.add(height, StateDivergence, format!("{failed} transaction(s) do not apply on replay"));
    }
    if delta.header.state_root != header.state_root {
        issues.add(
            height,
            StateDivergence,
            format!(
                "replayed state root {} differs from the header's {}",
                short(&delta.header.state_root),
                short(&header.state_root)
            ),
        );
    }
    state.commit(delta);
}

/// Checks `scope` of the group now. Must run inside the owning executor.
pub async fn check(
    data: &Rc<RefCell<GroupData>>,
    checkpointer: &Rc<Checkpointer>,
    scope: ScopeKey,
    full: bool,
) -> Result<Vec<IntegrityIssue>, ShardError> {
    // No snapshot is taken and no body compacted while the check runs, so the bodies it may
    // find missing are exactly those below the snapshots it copied.
    let lock = data.borrow().snapshots.lock.clone();
    let _no_snapshot_or_compaction = lock.lock().await;
    let (input, db) = {
        let data = data.borrow();
        let state = data.scopes.get(&scope).ok_or_else(|| ShardError::Corrupt {
            what: "integrity check",
            detail: format!("scope {scope} is not in this group"),
        })?;
        let input = CheckInput {
            meta: state.meta.clone(),
            tree_root: state.computed_root(),
            snapshots: data.snapshots.entries.clone(),
            corrupt_snapshots: data.snapshots.corrupt.clone(),
            full,
        };
        (input, data.archive.db().cloned())
    };
    // Every block up to the copied tip becomes readable from blocks.redb.
    checkpointer.checkpoint().await?;
    glommio::executor().spawn_blocking(move || run_check(db.as_deref(), input)).await
}

/// The quick check of several scopes of one group for the background check
/// (background_integrity.rs): their inputs are copied together, one checkpoint makes their blocks
/// readable, and the scans run one after the other on a thread of their own at the lowest CPU
/// priority (nice 19), so that they take only what the node leaves idle.
pub async fn check_low_priority(
    data: &Rc<RefCell<GroupData>>,
    checkpointer: &Rc<Checkpointer>,
    scopes: &[ScopeKey],
) -> Result<Vec<(ScopeKey, Result<Vec<IntegrityIssue>, ShardError>)>, ShardError> {
    let lock = data.borrow().snapshots.lock.clone();
    let _no_snapshot_or_compaction = lock.lock().await;
    let (inputs, db) = {
        let data = data.borrow();
        let inputs: Vec<CheckInput> = scopes
            .iter()
            .filter_map(|scope| data.scopes.get(scope))
            .map(|state| CheckInput {
                meta: state.meta.clone(),
                tree_root: state.computed_root(),
                snapshots: data.snapshots.entries.clone(),
                corrupt_snapshots: data.snapshots.corrupt.clone(),
                full: false,
            })
            .collect();
        (inputs, data.archive.db().cloned())
    };
    checkpointer.checkpoint().await?;
    let (tx, rx) = futures::channel::oneshot::channel();
    std::thread::Builder::new()
        .name("integrity-check".into())
        .spawn(move || {
            // SAFETY: setpriority on the calling thread (who = 0 names it on Linux); no memory
            // is shared with the kernel.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, 0, 19);
            }
            let results: Vec<_> =
                inputs.into_iter().map(|input| (input.meta.key, run_check(db.as_deref(), input))).collect();
            let _ = tx.send(results);
        })
        .map_err(|e| ShardError::Io { path: "integrity-check thread".into(), source: e })?;
    rx.await
        .map_err(|_| ShardError::Corrupt { what: "integrity check", detail: "the check thread died".into() })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::codec::{decode, encode};
    use crate::raft::state_machine::apply_entry;
    use crate::raft::type_config::{Entry, LogId};
    use crate::storage::archive::{Archive, GroupBlockRecord, BODIES, GROUP_BLOCKS, VAULT_INDEX};
    use openraft::{CommittedLeaderId, EntryPayload};
    use redb::{ReadableDatabase, ReadableTable};
    use std::sync::Arc;

    const BLOCKS: u64 = 8;

    fn key() -> ScopeKey {
        ScopeKey { namespace_id: NamespaceId(4), vault_id: VaultId(6) }
    }

    fn entry(index: u64, payload: LogPayload) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(payload),
        }
    }

    /// A group whose scope has `BLOCKS` blocks, all flushed to `blocks.redb` in `dir`.
    fn archived_group(dir: &std::path::Path) -> (GroupData, Arc<Database>) {
        let db = Arc::new(Database::create(dir.join("blocks.redb")).unwrap());
        let mut data = GroupData::new(GroupId(2), Archive::open(db.clone()).unwrap());
        let create = AdminCommand::CreateScope {
            namespace_id: 4,
            vault_id: 6,
            retention_policy: RetentionPolicy::default(),
            timestamp: Timestamp { secs: 1, nanos: 0 },
            leader_id: 1,
        };
        apply_entry(&mut data, entry(1, LogPayload::Admin(create)));
        for b in 1..=BLOCKS {
            let index = b + 1;
            let ctx = BlockContext {
                timestamp: Timestamp { secs: 2, nanos: 0 },
                leader_id: 1,
                term: 1,
                committed_index: index,
            };
            let mut draft = BlockDraft::new(&data.scopes[&key()]);
            let tx = Transaction {
                id: [b as u8; 16],
                client_id: "c".into(),
                sequence: b,
                operations: vec![Operation::SetEntity {
                    key: format!("k{}", b % 3),
                    value: format!("v{b}").into_bytes(),
                    expires_at: None,
                    condition: None,
                }],
                timestamp: ctx.timestamp,
                actor: "t".into(),
            };
            draft.try_apply(tx).unwrap();
            let (ventry, _) = draft.finish(&ctx);
            let gb = GroupBlock {
                group_id: 2,
                group_height: b,
                previous_group_hash: data.last_group_hash,
                vault_entries: vec![ventry],
                timestamp: ctx.timestamp,
                leader_id: 1,
                term: 1,
                committed_index: index,
            };
            apply_entry(&mut data, entry(index, LogPayload::Block(std::sync::Arc::new(gb))));
        }
        data.archive.flush_batch().write(&db).unwrap();
        data.archive.flushed(BLOCKS);
        (data, db)
    }

    fn check(data: &GroupData, db: &Database, full: bool) -> Vec<(u64, &'static str)> {
        let scope = &data.scopes[&key()];
        let input = CheckInput {
            meta: scope.meta.clone(),
            tree_root: scope.computed_root(),
            snapshots: Vec::new(),
            corrupt_snapshots: Vec::new(),
            full,
        };
        run_check(Some(db), input).unwrap().iter().map(|i| (i.block_height, i.issue_type.as_str())).collect()
    }

    /// Rewrites the group block record at `height` through `change`.
    fn rewrite_record(db: &Database, height: u64, change: impl FnOnce(&mut GroupBlockRecord)) {
        let mut record: GroupBlockRecord = {
            let txn = db.begin_read().unwrap();
            let table = txn.open_table(GROUP_BLOCKS).unwrap();
            decode("record", table.get(height).unwrap().unwrap().value()).unwrap()
        };
        change(&mut record);
        let txn = db.begin_write().unwrap();
        txn.open_table(GROUP_BLOCKS).unwrap().insert(height, encode(&record).as_slice()).unwrap();
        txn.commit().unwrap();
    }

    /// Proves an intact chain is healthy under the quick and the full check.
    #[test]
    fn t01_intact_chain_is_healthy() {
        let dir = tempfile::tempdir().unwrap();
        let (data, db) = archived_group(dir.path());
        assert_eq!(check(&data, &db, false), vec![]);
        assert_eq!(check(&data, &db, true), vec![]);
    }

    /// Proves each archive corruption is reported at its height with its type: a changed body
    /// (tx_root_mismatch; full: state_divergence from there), a changed header state root (full:
    /// state_divergence at it; quick: chain_break at the next height), a changed previous_hash
    /// (chain_break at that height), a deleted body (missing_block) and a deleted index row.
    #[test]
    fn t02_corruptions_reported_at_their_height() {
        let dir = tempfile::tempdir().unwrap();
        let (data, db) = archived_group(dir.path());
        // Body of height 2: another value.
        {
            let txn = db.begin_write().unwrap();
            {
                let mut bodies = txn.open_table(BODIES).unwrap();
                let mut txs: Vec<Transaction> =
                    decode("body", bodies.get((2, 0)).unwrap().unwrap().value()).unwrap();
                if let Operation::SetEntity { value, .. } = &mut txs[0].operations[0] {
                    value[0] ^= 1;
                }
                bodies.insert((2, 0), encode(&txs).as_slice()).unwrap();
                bodies.remove((7, 0)).unwrap();
            }
            txn.commit().unwrap();
        }
        rewrite_record(&db, 4, |r| r.entries[0].state_root[0] ^= 1);
        rewrite_record(&db, 6, |r| r.entries[0].previous_vault_hash[3] ^= 1);
        let quick = check(&data, &db, false);
        assert!(quick.contains(&(2, "tx_root_mismatch")), "{quick:?}");
        assert!(quick.contains(&(5, "chain_break")), "{quick:?}");
        assert!(quick.contains(&(6, "chain_break")), "{quick:?}");
        assert!(quick.contains(&(7, "missing_block")), "{quick:?}");
        assert!(!quick.iter().any(|(_, t)| *t == "state_divergence"), "{quick:?}");
        let full = check(&data, &db, true);
        assert!(full.contains(&(2, "state_divergence")), "{full:?}");
        assert!(full.contains(&(4, "state_divergence")), "{full:?}");
        assert!(!full.contains(&(1, "state_divergence")), "{full:?}");

        // A lost index row is a missing block.
        let txn = db.begin_write().unwrap();
        txn.open_table(VAULT_INDEX).unwrap().remove((key().scope_id(), 3)).unwrap();
        txn.commit().unwrap();
        assert!(check(&data, &db, false).contains(&(3, "missing_block")));
    }
}
