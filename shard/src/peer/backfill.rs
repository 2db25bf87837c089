//! Archive back-fill (SPEC §9.4, §5.6 item 44; docs/decisions.md D31). A snapshot carries the
//! state, not the archive: after a follower installs one, `blocks.redb` lacks the group blocks
//! between what it had archived and the snapshot's cut. This task, on the group's core, finds those
//! gaps and fetches them from the group's other members with `GetGroupBlocks`, newest first, and
//! stores a batch only after it verified it:
//! * every block's `group_hash` is the hash the block above it links to (`previous_group_hash`),
//!   starting from a trusted anchor: the applied state's `last_group_hash` (the snapshot's cut)
//!   for the top of the state, otherwise the local block right above the gap; the lowest block
//!   must link to the local block below the gap (or to `ZERO_HASH` at height 1);
//! * every non-empty body reproduces its entry's `tx_merkle_root` (compacted bodies are empty).
//!
//! Since `group_hash` covers each entry's `block_hash`, this chains every fetched header to what
//! the snapshot committed to; once no gap is left the §7.8 chain commitments of the newest
//! snapshot file are recomputed from the archive as a final check (a mismatch is reported). Until
//! then, reads of missing heights answer `Unavailable` (shard.rs).

use crate::constants::BACKFILL_RETRY_MS;
use crate::error::ShardError;
use crate::peer::pool::PeerPool;
use crate::round::group_data::GroupData;
use crate::storage::archive::ArchiveFlush;
use crate::storage::archive_scan::ArchiveScan;
use ledger_core::hash::{chain_commitment, group_hash, tx_hash, tx_merkle_root};
use ledger_core::types::{GroupBlock, Hash, ZERO_HASH};
use ledger_wire::messages::{Request, Response};
use ledger_wire::peer::{PeerRequest, PeerResponse, GROUP_BLOCKS_MAX};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// Starts the group's back-fill unless one is running. Must run inside the owning executor.
pub fn spawn(data: Rc<RefCell<GroupData>>, peers: Rc<PeerPool>) {
    let running = data.borrow().snapshots.backfilling.clone();
    if running.replace(true) {
        return;
    }
    glommio::spawn_local(async move {
        let stopped = data.borrow().snapshots.stopped.clone();
        let group = data.borrow().group_id;
        loop {
            if stopped.get() {
                break;
            }
            match run_once(&data, &peers).await {
                Ok(0) => break,
                Ok(filled) => {
                    crate::event!(info, "archive_backfilled", group = %group, blocks = filled);
                    check_commitments(&data).await;
                    break;
                }
                Err(e) => {
                    crate::event!(warn, "archive_backfill_failed", group = %group, error = %e);
                    glommio::timer::sleep(Duration::from_millis(BACKFILL_RETRY_MS)).await;
                }
            }
        }
        running.set(false);
    })
    .detach();
}

fn invalid(detail: String) -> ShardError {
    ShardError::Corrupt { what: "back-filled group blocks", detail }
}

/// Fills every gap below the applied group height once; returns the blocks stored.
async fn run_once(data: &Rc<RefCell<GroupData>>, peers: &Rc<PeerPool>) -> Result<u64, ShardError> {
    let (gaps, members, group_id, db) = {
        let data = data.borrow();
        let gaps = data.archive.gaps(data.group_height)?;
        (gaps, members_but(&data, peers.self_id()), data.group_id.0, data.archive.db().cloned())
    };
    let Some(db) = db else { return Ok(0) };
    // Newest gap first: the one right below the snapshot's cut is the one reads hit first.
    fill_ranges(data, peers, &db, group_id, &members, gaps.into_iter().rev()).await
}

/// Fetches, verifies and stores (overwriting) the archived group blocks at `heights` from the
/// group's other members, as back-fill does for gaps: each run of consecutive heights is checked
/// against the block above it (or the applied state's last group hash at the top) and bodies
/// against their roots. Recovery calls it for blocks damaged here (D81). Returns the blocks
/// stored.
pub async fn refetch(
    data: &Rc<RefCell<GroupData>>,
    peers: &Rc<PeerPool>,
    heights: &[u64],
) -> Result<u64, ShardError> {
    let (members, group_id, db) = {
        let data = data.borrow();
        (members_but(&data, peers.self_id()), data.group_id.0, data.archive.db().cloned())
    };
    let Some(db) = db else { return Ok(0) };
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &h in heights {
        match runs.last_mut() {
            Some((_, hi)) if *hi + 1 == h => *hi = h,
            _ => runs.push((h, h)),
        }
    }
    // Top run first: each run's anchor is the block above it, intact or just re-fetched.
    fill_ranges(data, peers, &db, group_id, &members, runs.into_iter().rev()).await
}

/// The group's members other than `self_id`, with their addresses.
fn members_but(data: &GroupData, self_id: u64) -> Vec<(u64, String)> {
    data.membership
        .membership()
        .nodes()
        .filter(|(id, _)| **id != self_id)
        .map(|(id, node)| (*id, node.addr.clone()))
        .collect()
}

/// Fills each range from the first member that serves it whole.
async fn fill_ranges(
    data: &Rc<RefCell<GroupData>>,
    peers: &Rc<PeerPool>,
    db: &Arc<redb::Database>,
    group_id: u32,
    members: &[(u64, String)],
    ranges: impl Iterator<Item = (u64, u64)>,
) -> Result<u64, ShardError> {
    let mut filled = 0u64;
    for (lo, hi) in ranges {
        let mut last_error = invalid(format!("no peer to fetch {lo}..={hi} from"));
        let mut done = false;
        for (node, addr) in members {
            match fill_gap(data, peers, db, group_id, (*node, addr), lo, hi).await {
                Ok(n) => {
                    filled += n;
                    done = true;
                    break;
                }
                Err(e) => last_error = e,
            }
        }
        if !done {
            return Err(last_error);
        }
    }
    Ok(filled)
}

/// The hash group block `height` must have: the applied state's last group hash at the top, else
/// what the archived block above links to.
fn anchor(data: &GroupData, height: u64) -> Result<Hash, ShardError> {
    if height == data.group_height {
        return Ok(data.last_group_hash);
    }
    data.archive
        .previous_group_hash(height + 1)?
        .ok_or_else(|| invalid(format!("no archived block above the gap at {height}")))
}

async fn fetch(
    peers: &PeerPool,
    (node, addr): (u64, &str),
    group_id: u32,
    from: u64,
    count: u32,
) -> Result<Vec<GroupBlock>, ShardError> {
    let request = PeerRequest::GetGroupBlocks { group_id, from_group_height: from, max_blocks: count };
    let answer = peers
        .call(node, addr, Request::Peer(Box::new(request)), Duration::from_secs(10))
        .await
        .map_err(|e| invalid(format!("GetGroupBlocks to node {node}: {e}")))?;
    match answer {
        Ok(Response::Peer(response)) => match response {
            PeerResponse::GroupBlocks { blocks } => Ok(blocks),
            other => Err(invalid(format!("node {node} answered GetGroupBlocks with {other:?}"))),
        },
        Ok(_) => Err(invalid(format!("node {node} answered GetGroupBlocks with another response"))),
        Err(status) => Err(invalid(format!("node {node} refused GetGroupBlocks: {status}"))),
    }
}

/// Checks `blocks` (heights `from..`, consecutive) top down against `top_hash`; returns the hash
/// the block below them must have.
pub fn verify_batch(
    blocks: &[GroupBlock],
    group_id: u32,
    from: u64,
    top_hash: Hash,
) -> Result<Hash, ShardError> {
    for (i, gb) in blocks.iter().enumerate() {
        if gb.group_id != group_id || gb.group_height != from + i as u64 {
            return Err(invalid(format!(
                "block {} of group {} where {} was asked",
                gb.group_height,
                gb.group_id,
                from + i as u64
            )));
        }
        for entry in &gb.vault_entries {
            if !entry.transactions.is_empty() {
                let leaves: Vec<Hash> = entry.transactions.iter().map(tx_hash).collect();
                if tx_merkle_root(&leaves) != entry.tx_merkle_root {
                    return Err(invalid(format!(
                        "group block {}: a body does not match its root",
                        gb.group_height
                    )));
                }
            }
        }
    }
    let mut expect = top_hash;
    for gb in blocks.iter().rev() {
        if group_hash(gb) != expect {
            return Err(invalid(format!(
                "group block {} does not chain to the trusted hash",
                gb.group_height
            )));
        }
        expect = gb.previous_group_hash;
    }
    Ok(expect)
}

/// Fetches, verifies and stores group blocks `lo..=hi` from one peer, newest batch first.
async fn fill_gap(
    data: &Rc<RefCell<GroupData>>,
    peers: &PeerPool,
    db: &Arc<redb::Database>,
    group_id: u32,
    peer: (u64, &str),
    lo: u64,
    hi: u64,
) -> Result<u64, ShardError> {
    let mut expect = anchor(&data.borrow(), hi)?;
    let mut top = hi;
    let mut window = u64::from(GROUP_BLOCKS_MAX);
    let mut stored = 0u64;
    while top >= lo {
        let from = lo.max(top + 1 - window.min(top));
        let count = top - from + 1;
        let blocks =
            fetch(peers, peer, group_id, from, u32::try_from(count).unwrap_or(GROUP_BLOCKS_MAX)).await?;
        if (blocks.len() as u64) < count {
            // The answer was cut short (frame budget, or the peer lacks the top): ask for less.
            if blocks.is_empty() {
                return Err(invalid(format!("node {} has no group block at {from}", peer.0)));
            }
            window = blocks.len() as u64;
            continue;
        }
        expect = verify_batch(&blocks, group_id, from, expect)?;
        let flush = ArchiveFlush { blocks: blocks.into_iter().map(Arc::new).collect() };
        let db = db.clone();
        glommio::executor().spawn_blocking(move || flush.write(&db)).await?;
        stored += count;
        top = from - 1;
    }
    let below = match lo.checked_sub(1) {
        Some(0) | None => ZERO_HASH,
        Some(h) => match data.borrow().archive.get_group_block(h)? {
            Some(gb) => group_hash(&gb),
            None => return Ok(stored),
        },
    };
    if below != expect {
        crate::event!(error, "archive_backfill_link_mismatch", group = %group_id, height = lo);
    }
    Ok(stored)
}

/// Recomputes the §7.8 chain commitments of the newest snapshot file from the (now complete)
/// archive and reports any that differ.
async fn check_commitments(data: &Rc<RefCell<GroupData>>) {
    let (newest, db, genesis, group_id) = {
        let data = data.borrow();
        let Some(newest) = data.snapshots.newest().cloned() else { return };
        let Some(db) = data.archive.db().cloned() else { return };
        let genesis: Vec<_> = data.scopes.values().map(|s| (s.meta.key, s.meta.genesis.clone())).collect();
        (newest, db, genesis, data.group_id)
    };
    let checked = glommio::executor()
        .spawn_blocking(move || -> Result<Vec<i64>, ShardError> {
            let scan = ArchiveScan::begin(&db)?;
            let mut bad = Vec::new();
            for summary in &newest.header.scopes {
                let Some(c) = &summary.chain_commitment else { continue };
                let key = summary.key();
                let mut headers = Vec::new();
                if c.from_height == 0 {
                    match genesis.iter().find(|(k, _)| *k == key) {
                        Some((_, g)) => headers.push(g.clone()),
                        None => continue,
                    }
                }
                for height in c.from_height.max(1)..=c.to_height {
                    match scan.header(key, height)? {
                        Ok(located) => headers.push(located.header),
                        Err(_) => break,
                    }
                }
                if chain_commitment(&headers).as_ref() != Some(c) {
                    bad.push(summary.scope_id);
                }
            }
            Ok(bad)
        })
        .await;
    match checked {
        Ok(bad) if bad.is_empty() => {}
        Ok(bad) => crate::event!(error, "backfill_commitment_mismatch", group = %group_id, scopes = ?bad),
        Err(e) => crate::event!(warn, "backfill_commitment_check_failed", group = %group_id, error = %e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ledger_core::types::Timestamp;

    fn chain(n: u64) -> Vec<GroupBlock> {
        let mut out: Vec<GroupBlock> = Vec::new();
        for h in 1..=n {
            let previous_group_hash = out.last().map(group_hash).unwrap_or(ZERO_HASH);
            out.push(GroupBlock {
                group_id: 3,
                group_height: h,
                previous_group_hash,
                vault_entries: Vec::new(),
                timestamp: Timestamp { secs: h as i64, nanos: 0 },
                leader_id: 1,
                term: 1,
                committed_index: h + 2,
            });
        }
        out
    }

    /// Proves a fetched batch is accepted only when it chains to the trusted hash above it: the
    /// intact chain links down to ZERO_HASH; a changed block, a wrong anchor, a gap in heights or
    /// another group's block is refused.
    #[test]
    fn t01_batches_must_chain_to_the_anchor() {
        let blocks = chain(5);
        let top = group_hash(&blocks[4]);
        assert_eq!(verify_batch(&blocks, 3, 1, top).unwrap(), ZERO_HASH);
        assert_eq!(verify_batch(&blocks[2..], 3, 3, top).unwrap(), group_hash(&blocks[1]));
        let mut changed = blocks.clone();
        changed[1].timestamp.secs += 1;
        assert!(verify_batch(&changed, 3, 1, top).is_err());
        assert!(verify_batch(&blocks, 3, 1, ZERO_HASH).is_err());
        assert!(verify_batch(&blocks[1..], 3, 1, top).is_err());
        assert!(verify_batch(&blocks, 4, 1, top).is_err());
    }
}
