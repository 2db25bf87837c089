//! Before a recovery replays a scope's archived blocks (SPEC §9.9), the blocks it will replay are
//! checked, and any that are missing or damaged on this node are fetched again from the group's
//! other members (SPEC §9.6's failure table: "missing archive rows → fetch from a peer"; §9.7:
//! "chain break / partial block → re-fetch from healthy replicas"; D81). A fetched block is
//! stored only once it chains to the block above it and its bodies reproduce their roots
//! (peer/backfill.rs), so a peer cannot hand this node a different history.

// Errors travel as the wire `Status` (SPEC §4.5), built once at this edge.
#![allow(clippy::result_large_err)]

use crate::error::ShardError;
use crate::peer::pool::PeerPool;
use crate::round::group::Group;
use ledger_core::hash::block_hash;
use ledger_core::types::ScopeKey;
use ledger_wire::messages::{Status, StatusCode};
use std::rc::Rc;

fn archive_error(e: ShardError) -> Status {
    Status::internal(format!("archive: {e}"))
}

/// Up to eight heights, then how many more.
fn summary(heights: &[u64]) -> String {
    let shown: Vec<String> = heights.iter().take(8).map(u64::to_string).collect();
    match heights.len() {
        n if n > 8 => format!("{} and {} more", shown.join(", "), n - 8),
        _ => shown.join(", "),
    }
}

/// Heights a scan reads between two yields to the core's other work.
const SCAN_CHUNK_BLOCKS: u64 = 1024;

/// The ranges a scan of `from..=to` reads between yields: each starts at the previous one's last
/// height, so that the link between them is checked too.
fn scan_ranges(from: u64, to: u64, chunk: u64) -> Vec<(u64, u64)> {
    let mut ranges = Vec::new();
    let mut start = from;
    while start <= to {
        let end = to.min(start.saturating_add(chunk.max(2) - 1));
        ranges.push((start, end));
        if end == to {
            break;
        }
        start = end;
    }
    ranges
}

/// The group heights of `scope`'s blocks a rebuild would replay (above its newest local snapshot
/// at or below the archive's tip, as `rebuild_checked` picks it) that cannot be replayed here.
async fn damaged(group: &Group, scope: ScopeKey) -> Result<Vec<u64>, Status> {
    let (base, tip, genesis_hash) = {
        let data = group.data.borrow();
        let s = data
            .scopes
            .get(&scope)
            .ok_or_else(|| Status::new(StatusCode::NotFound, format!("scope {scope}")))?;
        let tip = data.archive.indexed_tip(scope).map_err(archive_error)?;
        let base = data
            .snapshots
            .entries
            .iter()
            .rev()
            .find_map(|e| e.header.scope(scope).map(|x| x.vault_height).filter(|h| *h <= tip))
            .unwrap_or(0);
        (base, tip, block_hash(&s.meta.genesis))
    };
    let mut found = std::collections::BTreeSet::new();
    if base >= tip {
        return Ok(Vec::new());
    }
    for (from, to) in scan_ranges(base + 1, tip, SCAN_CHUNK_BLOCKS) {
        let below = (from == 1).then_some(genesis_hash);
        let chunk =
            group.data.borrow().archive.damaged_blocks(scope, from, to, below).map_err(archive_error)?;
        found.extend(chunk);
        glommio::yield_if_needed().await;
    }
    Ok(found.into_iter().collect())
}

/// Fetches again what `damaged` names; returns the blocks stored. An error names the heights
/// still damaged (no member could serve them, or what they served did not verify).
pub async fn repair(group: &Group, peers: &Rc<PeerPool>, scope: ScopeKey) -> Result<u64, Status> {
    let heights = damaged(group, scope).await?;
    if heights.is_empty() {
        return Ok(0);
    }
    crate::event!(
        warn,
        "archive_damage_found",
        group = %group.id,
        scope = %scope,
        blocks = heights.len(),
        group_heights = %summary(&heights)
    );
    let fetched = crate::peer::backfill::refetch(&group.data, peers, &heights).await;
    let left = damaged(group, scope).await?;
    if left.is_empty() {
        let stored = fetched.unwrap_or(0);
        crate::event!(info, "archive_damage_repaired", group = %group.id, scope = %scope, blocks = stored);
        return Ok(stored);
    }
    let why = match fetched {
        Err(e) => e.to_string(),
        Ok(_) => "the other members' copies did not mend them".to_string(),
    };
    Err(Status::unavailable(format!(
        "scope {scope}: archived blocks at group heights {} are missing or damaged on this node and \
         were not fetched again: {why}",
        summary(&left)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Proves the scan's ranges cover every height once plus each boundary twice (so every link
    /// is checked), and a range of one height or an empty one are handled.
    #[test]
    fn t01_scan_ranges_overlap_by_one_height() {
        assert_eq!(scan_ranges(1, 10, 4), vec![(1, 4), (4, 7), (7, 10)]);
        assert_eq!(scan_ranges(5, 5, 4), vec![(5, 5)]);
        assert_eq!(scan_ranges(3, 2, 4), Vec::<(u64, u64)>::new());
        assert_eq!(scan_ranges(1, 3, 1), vec![(1, 2), (2, 3)]);
    }
}
