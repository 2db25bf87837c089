//! A group whose state must be restored from a snapshot (its `state.redb` lost or unusable) but
//! whose newest valid local snapshot is older than its purged log cannot be rebuilt from this
//! node's files: the log entries in between are gone. In a cluster it fetches a snapshot file
//! that covers its purged log from another member (`GetSnapshotFile`, D83), stores it like one of
//! its own (written, fsync'd, renamed into `snapshots/`), and the group is opened again, which
//! verifies the file as it loads it (checksums, every scope's root, chain commitments).

use crate::config::ShardConfig;
use crate::error::ShardError;
use crate::peer::pool::PeerPool;
use crate::storage::snapshot::write_file;
use ledger_core::types::GroupId;
use ledger_wire::messages::{Request, Response};
use ledger_wire::peer::{PeerRequest, PeerResponse};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long one chunk may take.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);

fn refused(detail: String) -> ShardError {
    ShardError::Corrupt { what: "snapshot fetched from a peer", detail }
}

/// Fetches, from the first of `members` that has one, a snapshot file of `group` whose last log
/// index is at least `min_log_index`, and stores it in `dir`; returns its path.
pub async fn fetch(
    config: &ShardConfig,
    pool: &PeerPool,
    members: &[(u64, String)],
    group: GroupId,
    min_log_index: u64,
    dir: &Path,
) -> Result<PathBuf, ShardError> {
    let mut last = refused(format!("no other member to fetch group {group}'s snapshot from"));
    for (node, addr) in members {
        match fetch_from(pool, (*node, addr), group, min_log_index).await {
            Ok((group_height, bytes)) => {
                let (dir, tmp_dir) = (dir.to_path_buf(), config.data_dir.join("tmp"));
                let (keep, sim) = (config.snapshots_keep, config.sim_disk.clone());
                let path = glommio::executor()
                    .spawn_blocking(move || {
                        write_file(&dir, &tmp_dir, group.0, group_height, &bytes, keep, sim.as_deref())
                    })
                    .await?;
                crate::event!(
                    warn,
                    "snapshot_fetched",
                    group = %group,
                    from = node,
                    group_height,
                    path = %path.display()
                );
                return Ok(path);
            }
            Err(e) => {
                crate::event!(warn, "snapshot_fetch_failed", group = %group, from = node, error = %e);
                last = e;
            }
        }
    }
    Err(last)
}

/// The whole file from one member: its group height and bytes.
async fn fetch_from(
    pool: &PeerPool,
    (node, addr): (u64, &str),
    group: GroupId,
    min_log_index: u64,
) -> Result<(u64, Vec<u8>), ShardError> {
    let (mut height, mut bytes) = (0u64, Vec::new());
    loop {
        let request = PeerRequest::GetSnapshotFile {
            group_id: group.0,
            min_log_index,
            group_height: height,
            offset: bytes.len() as u64,
        };
        let answer = pool
            .call(node, addr, Request::Peer(Box::new(request)), CHUNK_TIMEOUT)
            .await
            .map_err(|e| refused(format!("GetSnapshotFile to node {node}: {e}")))?;
        let (group_height, total_bytes, chunk) = match answer {
            Ok(Response::Peer(response)) => match response {
                PeerResponse::SnapshotFile { group_height, total_bytes, bytes } => {
                    (group_height, total_bytes, bytes)
                }
                other => return Err(refused(format!("node {node} answered with {other:?}"))),
            },
            Ok(_) => return Err(refused(format!("node {node} answered with another response"))),
            Err(status) => return Err(refused(format!("node {node} refused: {status}"))),
        };
        if height != 0 && group_height != height {
            return Err(refused(format!("node {node} switched files ({height} then {group_height})")));
        }
        height = group_height;
        if chunk.is_empty() && (bytes.len() as u64) < total_bytes {
            return Err(refused(format!(
                "node {node}'s file ended at {} of {total_bytes} bytes",
                bytes.len()
            )));
        }
        bytes.extend_from_slice(&chunk);
        if bytes.len() as u64 >= total_bytes {
            return Ok((height, bytes));
        }
    }
}
