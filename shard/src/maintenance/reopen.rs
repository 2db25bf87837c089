//! A group stopped by a storage error reopens itself once the disk takes writes again (issue 12
//! item 9). A failed log append stops the group's openraft core for good, and redb refuses every
//! write to a file after one failed (`PreviousIo`: it must be closed and reopened), so neither a
//! full disk nor a one-off EIO would ever clear without a restart. Instead each core watches its
//! groups: one whose Raft core stopped on a storage error, or whose checkpoints keep failing, is
//! taken out of service (its requests are answered `Unavailable` naming the cause; reads of other
//! groups go on), closed, and reopened through the same recovery as a node start (SPEC §9.6) as
//! soon as a probe write with fsync succeeds in its directory. Nothing acknowledged is lost:
//! acknowledgements follow the log's fsync, and the reopen re-applies the log.
//!
//! A group stopped by a broken invariant during apply (`GroupData::fault`, D27) is not reopened:
//! apply is deterministic, so it would fail the same way.

use crate::raft::open::group_dir;
use crate::round::group::Group;
use crate::shard::Shard;
use ledger_core::types::GroupId;
use std::path::PathBuf;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// How often a core looks for stopped groups.
const WATCH_INTERVAL: Duration = Duration::from_millis(200);
/// Pause between probes of a stopped group's disk (and after a failed reopen, doubling to the cap).
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
const PROBE_INTERVAL_MAX: Duration = Duration::from_secs(30);
/// What the probe writes and syncs: enough that a disk with only crumbs left still fails it.
const PROBE_BYTES: usize = 1024 * 1024;
/// A group that fails again within this long of its reopen has relapsed: the cause is still
/// there (the disk passes the probe, but not what the group does next, e.g. a snapshot's rename).
const RELAPSE_WINDOW: Duration = Duration::from_secs(60);
/// Checkpoints failed in a row that mean the state file is stuck (redb's `PreviousIo` latch).
const CHECKPOINT_FAILURES_BEFORE_REOPEN: u64 = 2;

/// Storage failures and recoveries of a node's groups (the metrics endpoint renders them).
#[derive(Debug, Default)]
pub struct StorageCounters {
    /// Groups taken out of service by a storage error.
    pub failures_total: AtomicU64,
    /// Groups out of service on a storage error right now.
    pub groups_stopped: AtomicI64,
    /// Groups reopened after a storage error.
    pub reopens_total: AtomicU64,
}

/// Why `group` needs reopening, if it stopped on a storage error.
pub fn storage_fault(group: &Group) -> Option<String> {
    if group.data.borrow().fault.is_some() {
        return None;
    }
    if let Some(error) = group.storage_failure() {
        return Some(format!("a log write failed: {error}"));
    }
    let checkpointer = crate::raft::state_machine::checkpointer_of(group.id)?;
    let failed = checkpointer.stats().failures_in_a_row;
    (failed >= CHECKPOINT_FAILURES_BEFORE_REOPEN).then(|| format!("{failed} checkpoints in a row failed"))
}

/// The core's watch loop (spawned by `run_shard`); ends when the shard closes.
pub async fn storage_watch(shard: Weak<Shard>) {
    loop {
        glommio::timer::sleep(WATCH_INTERVAL).await;
        let Some(shard) = shard.upgrade() else { return };
        if shard.is_closing() {
            return;
        }
        for group in shard.group_list() {
            if shard.reopening.borrow().contains_key(&group.id) {
                continue;
            }
            if let Some(cause) = storage_fault(&group) {
                report(&shard, group.id, &cause);
                glommio::spawn_local(reopen_when_writable(shard.clone(), group.id)).detach();
            }
        }
    }
}

/// Logs the failure, counts it and lists the group as unhealthy until it reopens. The group
/// stays in service meanwhile: its applied state is still read, and its writes are answered
/// `Unavailable` naming the storage error (`Group::not_leader`).
fn report(shard: &Shard, id: GroupId, cause: &str) {
    crate::event!(error, "group_storage_failed", group = %id, core = %shard.core, cause = ?cause);
    let counters = &shard.config.storage_counters;
    counters.failures_total.fetch_add(1, Ordering::Relaxed);
    counters.groups_stopped.fetch_add(1, Ordering::Relaxed);
    shard.reopening.borrow_mut().insert(id, cause.to_string());
}

/// Probes the group's directory until a write with fsync succeeds, then closes the group and
/// opens it again (SPEC §9.6 recovery). Reads of it are refused only while it reopens.
async fn reopen_when_writable(shard: Rc<Shard>, id: GroupId) {
    let dir = group_dir(&shard.config, id);
    let mut pause = PROBE_INTERVAL;
    let mut attempts = 0u64;
    // A relapse waits before it reopens, doubling per relapse in a row (D57): a cause that
    // survives each reopen costs a reopen every few seconds at most, not a hot loop.
    let relapses = match shard.reopened.borrow().get(&id) {
        Some((at, before)) if at.elapsed() < RELAPSE_WINDOW => before + 1,
        _ => 0,
    };
    if relapses > 0 {
        let hold = relapse_pause(relapses);
        crate::event!(warn, "group_storage_relapsed", group = %id, relapses, pause_ms = hold.as_millis() as u64);
        glommio::timer::sleep(hold).await;
    }
    loop {
        if shard.is_closing() {
            return;
        }
        attempts += 1;
        match probe(&shard, dir.clone()).await {
            Ok(()) => match reopen(&shard, id).await {
                Ok(()) => {
                    let counters = &shard.config.storage_counters;
                    counters.reopens_total.fetch_add(1, Ordering::Relaxed);
                    counters.groups_stopped.fetch_sub(1, Ordering::Relaxed);
                    shard.reopening.borrow_mut().remove(&id);
                    shard.reopened.borrow_mut().insert(id, (std::time::Instant::now(), relapses));
                    crate::event!(info, "group_reopened", group = %id, attempts);
                    return;
                }
                Err(e) => {
                    crate::event!(error, "group_reopen_failed", group = %id, attempts, error = ?e);
                    shard
                        .failed
                        .borrow_mut()
                        .insert(id, format!("reopening after a storage error failed: {e}"));
                    pause = (pause * 2).min(PROBE_INTERVAL_MAX);
                }
            },
            Err(e) if attempts.is_power_of_two() => {
                crate::event!(warn, "storage_probe_failed", group = %id, attempts, error = ?e);
            }
            Err(_) => {}
        }
        glommio::timer::sleep(pause).await;
    }
}

/// The wait before reopening after `relapses` relapses in a row (≥ 1): the probe interval,
/// doubled per further relapse, at most the probe's own cap.
fn relapse_pause(relapses: u32) -> Duration {
    PROBE_INTERVAL.saturating_mul(1u32 << relapses.saturating_sub(1).min(5)).min(PROBE_INTERVAL_MAX)
}

/// Takes the group (if still open) out of the core's map and out of service, answering
/// `Unavailable` with `why` meanwhile, and closes it: its files and log are free afterwards.
/// Also the first step of a replica's release (release.rs, D92).
pub async fn take_out_and_close(shard: &Rc<Shard>, id: GroupId, why: &str) {
    shard.failed.borrow_mut().insert(id, why.to_string());
    let old = shard.groups.borrow_mut().remove(&id);
    shard.watches.detach(id);
    if let Some(group) = old {
        group.stop();
        group.data.borrow().snapshots.stop();
        crate::raft::state_machine::close_group(&group.raft, &group.data).await;
    }
}

/// Takes the group (if still open) out of the core's map, closes it and opens it again.
async fn reopen(shard: &Rc<Shard>, id: GroupId) -> Result<(), String> {
    take_out_and_close(shard, id, "reopening after a storage error").await;
    match shard.open_group(id).await {
        Ok(_) => Ok(()),
        Err(e) => {
            let source = std::error::Error::source(&e).map(|c| format!(": {c}")).unwrap_or_default();
            Err(format!("{e}{source}"))
        }
    }
}

/// Writes, fsyncs and removes a probe file in the group's directory.
async fn probe(shard: &Shard, dir: PathBuf) -> Result<(), String> {
    if shard.config.faults.storage_full() {
        return Err("No space left on device (injected)".into());
    }
    let written = glommio::executor()
        .spawn_blocking(move || {
            use std::io::Write;
            let path = dir.join(".storage-probe");
            let result = std::fs::File::create(&path).and_then(|mut file| {
                file.write_all(&vec![0u8; PROBE_BYTES])?;
                file.sync_all()
            });
            let _ = std::fs::remove_file(&path);
            result
        })
        .await;
    written.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relapse waits the probe interval, doubled per relapse in a row, never over the cap.
    #[test]
    fn t01_relapse_pause_doubles_up_to_the_cap() {
        let secs: Vec<u64> =
            [1, 2, 3, 4, 5, 6, 40, u32::MAX].into_iter().map(|n| relapse_pause(n).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 30, 30, 30]);
    }
}
