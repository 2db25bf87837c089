//! A core's answer to a metrics scrape (`ShardMsg::Metrics`, SPEC §11.3): the thread-local
//! counters of `metrics.rs` plus what the core's groups know — openraft's metrics per group and
//! the applied scopes' heights and health — copied into one plain `CoreSnapshot` that the
//! metrics thread merges with the other cores'. Runs on the core, between two inbox messages;
//! it reads each group's state once and holds no borrow across an await (it has none).

use crate::maintenance::background_integrity::IntegrityCounters;
use crate::maintenance::gc::GcCounters;
use crate::metrics::{self, CoreSnapshot, GroupSnapshot, HealthState, ScopeSnapshot};
use crate::ops::vault_repair::{RecoveryRecord, RepairCounters};
use crate::round::group::Group;
use crate::shard::Shard;
use ledger_core::types::{ScopeKey, VaultHealth};
use std::collections::HashMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Copies this core's metrics. Must run on the core's executor thread.
pub fn collect(shard: &Shard) -> CoreSnapshot {
    let now = Instant::now();
    let busy = glommio::executor().executor_stats().total_runtime();
    let hosted = shard.group_list();
    let counters = metrics::with(|m| {
        // Every hosted group gets its per-group families (empty histograms included) from the
        // first scrape on, not only once it has proposed, restored or snapshotted here.
        for group in &hosted {
            m.group(group.id.0);
        }
        m.snapshot(now)
    });
    let wall_secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let mut groups = Vec::new();
    let mut scopes = Vec::new();
    let mut health_counts = [0u64; 3];
    let recoveries: HashMap<_, _> = crate::ops::vault_repair::records().into_iter().collect();
    let mut maintenance = MaintenanceRows::read();
    for group in hosted {
        maintenance.add_group(group.id.0);
        groups.push(group_snapshot(shard, &group, now));
        add_scopes(&group, wall_secs, &recoveries, &mut scopes, &mut health_counts);
    }
    for (id, reason) in shard.failed.borrow().iter() {
        if !groups.iter().any(|g| g.group == id.0) {
            groups.push(failed_group(id.0, reason.clone()));
        }
    }
    CoreSnapshot {
        core: shard.core.0,
        counters,
        busy,
        groups,
        scopes,
        health_counts,
        idem_size: shard.idem_cache_len() as u64,
        closing: shard.is_closing(),
        divergences: maintenance.divergences,
        determinism_bugs: maintenance.determinism_bugs,
        integrity_checks: maintenance.integrity_checks,
        gc: maintenance.gc,
    }
}

/// The per-group rows of the maintenance counters, one per hosted group in `collect`'s order:
/// vault repair's divergences and determinism bugs, the background integrity checks and the
/// issues they found, GC cycles and the entities they expired. Read from one copy of each
/// counter set, taken before the first row.
struct MaintenanceRows {
    repair: RepairCounters,
    integrity: IntegrityCounters,
    gc_counters: GcCounters,
    divergences: Vec<(u32, u64)>,
    determinism_bugs: Vec<(u32, u64)>,
    integrity_checks: Vec<(u32, u64, u64)>,
    gc: Vec<(u32, u64, u64)>,
}

impl MaintenanceRows {
    /// Copies the repair, integrity and GC counters of this core; no rows yet.
    fn read() -> MaintenanceRows {
        let repair = crate::ops::vault_repair::counters();
        let integrity = crate::maintenance::background_integrity::counters();
        let gc_counters = crate::maintenance::gc::counters();
        MaintenanceRows {
            repair,
            integrity,
            gc_counters,
            divergences: Vec::new(),
            determinism_bugs: Vec::new(),
            integrity_checks: Vec::new(),
            gc: Vec::new(),
        }
    }

    /// Adds `group`'s row to each family (0 where a counter never counted for it).
    fn add_group(&mut self, group: u32) {
        let (repair, integrity, gc_counters) = (&self.repair, &self.integrity, &self.gc_counters);
        self.divergences.push((group, per_group(&repair.divergences, group)));
        self.determinism_bugs.push((group, per_group(&repair.determinism_bugs, group)));
        self.integrity_checks.push((
            group,
            per_group(&integrity.checks, group),
            per_group(&integrity.issues, group),
        ));
        self.gc.push((group, per_group(&gc_counters.cycles, group), per_group(&gc_counters.expired, group)));
    }
}

/// `group`'s count in `counts`, 0 if it has none.
fn per_group(counts: &HashMap<u32, u64>, group: u32) -> u64 {
    counts.get(&group).copied().unwrap_or(0)
}

/// Counts every scope of `group` in `health_counts` by health, and adds a row to `scopes` for
/// each one that gets its own labels (`metrics::scope_is_labelled`), with its recovery counters.
fn add_scopes(
    group: &Group,
    wall_secs: f64,
    recoveries: &HashMap<(u32, ScopeKey), RecoveryRecord>,
    scopes: &mut Vec<ScopeSnapshot>,
    health_counts: &mut [u64; 3],
) {
    let data = group.data.borrow();
    for scope in data.scopes.values() {
        let meta = &scope.meta;
        let (health, exhausted) = match &meta.health {
            VaultHealth::Healthy => (HealthState::Healthy, false),
            VaultHealth::Diverged { .. } => (HealthState::Diverged, false),
            VaultHealth::Recovering { exhausted, .. } => (HealthState::Recovering, *exhausted),
        };
        health_counts[health as usize] += 1;
        let block_secs = meta.last_block_ts.secs as f64 + f64::from(meta.last_block_ts.nanos) / 1e9;
        let tip_age_secs = (wall_secs - block_secs).max(0.0);
        if !metrics::scope_is_labelled(tip_age_secs, health) {
            continue;
        }
        let recovery = recoveries.get(&(group.id.0, meta.key));
        scopes.push(ScopeSnapshot {
            namespace: meta.key.namespace_id.0,
            vault: meta.key.vault_id.0,
            group: group.id.0,
            height: meta.height,
            tip_age_secs,
            keys: scope.tree().len(),
            health,
            recovery_attempts_total: recovery.map_or(0, |r| r.attempts_total),
            recovery_successes_total: recovery.map_or(0, |r| r.successes_total),
            recovery_exhausted: exhausted || recovery.is_some_and(|r| r.exhausted),
        });
    }
}

fn group_snapshot(shard: &Shard, group: &Group, now: Instant) -> GroupSnapshot {
    let node_id = shard.config.node_id;
    let (term, last_log_index, applied_index, current_leader, leader, replication, commit_index) = {
        let watch = group.raft.metrics();
        let m = watch.borrow();
        let last_log_index = m.last_log_index.unwrap_or(0);
        let applied_index = m.last_applied.map(|l| l.index).unwrap_or(0);
        let leader = m.current_leader == Some(node_id) && m.state == openraft::ServerState::Leader;
        let mut replication = Vec::new();
        let commit_index = crate::ops::cluster::commit_index(&m).max(applied_index);
        if let (true, Some(matched)) = (leader, m.replication.as_ref()) {
            for (follower, log_id) in matched {
                if *follower != node_id {
                    let index = log_id.map(|l| l.index).unwrap_or(0);
                    replication.push((*follower, last_log_index.saturating_sub(index)));
                }
            }
        }
        (m.current_term, last_log_index, applied_index, m.current_leader, leader, replication, commit_index)
    };
    let group_height = group.data.borrow().group_height;
    let (leader_changes, blocks_per_second) = metrics::with(|m| {
        (m.leader_seen(group.id.0, current_leader), m.blocks_rate(group.id.0, now, group_height))
    });
    let failure = shard
        .failure_of(group.id)
        .or_else(|| shard.reopening.borrow().get(&group.id).cloned())
        .or_else(|| group.stopped())
        .or_else(|| group.data.borrow().fault.as_ref().map(|f| f.to_string()));
    GroupSnapshot {
        group: group.id.0,
        term,
        last_log_index,
        applied_index,
        commit_index,
        leader,
        current_leader,
        replication,
        local_lag: last_log_index.saturating_sub(applied_index),
        leader_changes,
        pending: group.pending() as u64,
        group_height,
        blocks_per_second,
        failure,
    }
}

fn failed_group(group: u32, reason: String) -> GroupSnapshot {
    GroupSnapshot {
        group,
        term: 0,
        last_log_index: 0,
        applied_index: 0,
        commit_index: 0,
        leader: false,
        current_leader: None,
        replication: Vec::new(),
        local_lag: 0,
        leader_changes: 0,
        pending: 0,
        group_height: 0,
        blocks_per_second: 0.0,
        failure: Some(reason),
    }
}
