//! Freeing the disk of a replica that moved away (SPEC §10.5–10.6, D92). Every node keeps a copy
//! of every data group (D90); when a replica is moved off this node, or the node is replaced in
//! a group, its copy keeps the group's state, archive, snapshots and log entries though nothing
//! reads them any more (requests for the group go to its members). Once `_system` has listed the
//! group's members without this node for `replica_release_secs`, the core releases the copy:
//!
//! 1. closes the group (as a storage-error reopen does), so nothing reaches its Raft instance;
//! 2. asks every member `_system` lists for the group's membership as each sees it (the
//!    effective one, an uncommitted change included): all must answer, one must lead, and none
//!    may name this node. A member that names it (the node is being added again) stops the
//!    release: the copy reopens as it was. This runs after the close, so no leader can have
//!    counted an append on this copy that the release then takes away (openraft does not allow
//!    a follower's log to go backwards);
//! 3. records the release durably: a `gNNNNN.releasing` marker beside the group's directory,
//!    then a reset of the group in the core's log (`CoreLog::reset`), then the directory is
//!    deleted and created again holding only a `released` marker, then the first marker goes.
//!    A crash midway finishes the release when the group next opens (`finish_pending`);
//! 4. opens the group again: an empty copy, like one this node never took part in.
//!
//! `released` tells `open.rs` never to initialize the group from the bootstrap plan: the plan
//! named this node the group's initializer once, and an empty copy must not start a second
//! group of the same id. Adding the node to the group again works as any join (learner, caught up
//! by snapshot and log).

use crate::raft::core_log::CoreLog;
use crate::raft::open::{core_log_dir, group_dir};
use crate::round::group::Group;
use crate::shard::Shard;
use crate::storage::dir_sync::{create_dir_durable, fsync_dir};
use ledger_core::types::GroupId;
use ledger_wire::messages::{Request, Response};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

/// How often a core looks for copies to release.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long each member may take to report the group's membership.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);
/// In a released group's directory: the group is never initialized from the bootstrap plan.
pub const RELEASED_MARKER: &str = "released";

/// `groups/gNNNNN.releasing`: a release of the group was decided and may not have finished.
pub fn pending_marker(group_dir: &Path) -> PathBuf {
    group_dir.with_extension("releasing")
}

/// Whether this node released the group's copy once (it must not initialize it from the plan).
pub fn was_released(group_dir: &Path) -> bool {
    group_dir.join(RELEASED_MARKER).exists()
}

/// The core's loop (cluster nodes with `replica_release_secs` > 0); ends when the shard closes.
pub async fn release_loop(shard: Weak<Shard>) {
    let mut outside_since: BTreeMap<GroupId, Instant> = BTreeMap::new();
    loop {
        glommio::timer::sleep(CHECK_INTERVAL).await;
        let Some(shard) = shard.upgrade() else { return };
        if shard.is_closing() {
            return;
        }
        let delay = Duration::from_secs(shard.config.replica_release_secs);
        for group in shard.group_list() {
            if !is_unused_copy(&shard, &group) {
                outside_since.remove(&group.id);
                continue;
            }
            let since = *outside_since.entry(group.id).or_insert_with(Instant::now);
            if since.elapsed() < delay {
                continue;
            }
            outside_since.remove(&group.id);
            let id = group.id;
            drop(group);
            match release(&shard, id).await {
                Ok(()) => crate::event!(info, "group_replica_released", group = id.0),
                Err(why) => crate::event!(warn, "group_replica_kept", group = id.0, reason = %why),
            }
            if shard.is_closing() {
                return;
            }
        }
    }
}

/// A data group whose copy here holds data though `_system` lists its members without this node.
fn is_unused_copy(shard: &Shard, group: &Group) -> bool {
    if group.id.0 == 0 || shard.config.cluster.is_none() || shard.config.sim_disk.is_some() {
        return false;
    }
    if shard.reopening.borrow().contains_key(&group.id) || shard.failed.borrow().contains_key(&group.id) {
        return false;
    }
    if !group.outside.borrow().lists_others_only(shard.config.node_id) {
        return false;
    }
    let metrics = group.raft.metrics();
    let m = metrics.borrow();
    m.last_log_index.is_some() || m.last_applied.is_some()
}

/// Releases `id`'s copy (steps 1–4 of the module docs). `Err`: kept, and why.
async fn release(shard: &Rc<Shard>, id: GroupId) -> Result<(), String> {
    let members = shard.group(id).map(|g| g.outside.borrow().members().to_vec()).unwrap_or_default();
    // A cheap look first, while the copy still serves: most refusals need no close.
    confirm_not_member(shard, id, &members).await?;
    crate::maintenance::reopen::take_out_and_close(shard, id, "releasing this node's copy of the group")
        .await;
    let confirmed = confirm_not_member(shard, id, &members).await;
    let released = match confirmed {
        Ok(()) => finish(shard, id).await.map_err(|e| format!("release failed: {e}")),
        Err(why) => Err(why),
    };
    // Served again either way: emptied, or as it was.
    match shard.open_group(id).await {
        Ok(_) => released,
        Err(e) => {
            shard.failed.borrow_mut().insert(id, format!("reopening after a replica release failed: {e}"));
            Err(format!("reopen failed: {e}"))
        }
    }
}

/// Every listed member answers, one leads, and none names this node in its membership of `id`.
async fn confirm_not_member(shard: &Shard, id: GroupId, members: &[(u64, String)]) -> Result<(), String> {
    let me = shard.config.node_id;
    let mut led = false;
    for (node, addr) in members.iter().filter(|(node, _)| *node != me) {
        let answer = shard.peers.call(*node, addr, Request::GetGroupStatus, CONFIRM_TIMEOUT).await;
        let groups = match answer {
            Ok(Ok(Response::GetGroupStatus { groups, .. })) => groups,
            Ok(Ok(_)) => return Err(format!("node {node} answered GetGroupStatus with something else")),
            Ok(Err(status)) => return Err(format!("node {node}: {}", status.message)),
            Err(e) => return Err(e.to_string()),
        };
        let Some(status) = groups.iter().find(|g| g.group_id == id.0) else {
            return Err(format!("node {node} does not report group {id} as a member"));
        };
        if status.voters.contains(&me) || status.learners.contains(&me) {
            return Err(format!("node {node} counts this node in group {id}"));
        }
        led |= status.role == "leader";
    }
    if led {
        Ok(())
    } else {
        Err(format!("no member of group {id} reports leading it"))
    }
}

/// Step 3 for a closed group: marker, log reset, files.
async fn finish(shard: &Shard, id: GroupId) -> Result<(), String> {
    let dir = group_dir(&shard.config, id);
    let marker = pending_marker(&dir);
    blocking(move || {
        std::fs::File::create(&marker)?.sync_all()?;
        fsync_dir(marker.parent().unwrap_or(Path::new(".")))
    })
    .await
    .map_err(|e| format!("marker: {e}"))?;
    finish_pending(&shard.config, id, shard.core.0).await
}

/// Completes a release whose marker is on disk (also called when the group opens, for a release
/// a crash cut short). Does nothing without the marker.
pub async fn finish_pending(
    config: &crate::config::ShardConfig,
    id: GroupId,
    core: u16,
) -> Result<(), String> {
    let dir = group_dir(config, id);
    let marker = pending_marker(&dir);
    if !marker.exists() {
        return Ok(());
    }
    let log = CoreLog::shared(core_log_dir(config, core)).map_err(|e| format!("log: {e}"))?;
    log.reset(id).await.map_err(|e| format!("log reset: {e}"))?;
    blocking(move || {
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        create_dir_durable(&dir)?;
        std::fs::File::create(dir.join(RELEASED_MARKER))?.sync_all()?;
        fsync_dir(&dir)?;
        std::fs::remove_file(&marker)?;
        fsync_dir(marker.parent().unwrap_or(Path::new(".")))
    })
    .await
    .map_err(|e| format!("files: {e}"))
}

async fn blocking(work: impl FnOnce() -> std::io::Result<()> + Send + 'static) -> std::io::Result<()> {
    glommio::executor().spawn_blocking(work).await
}
