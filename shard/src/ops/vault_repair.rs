//! Vault health and repair on this replica (SPEC §8.4, §9.8–9.9; §5.3 items 29, 30, 35, 36).
//!
//! A scope whose recomputed roots differ from a block's is marked `Diverged` by apply and skipped
//! from then on (its entries are still archived). Recovery rebuilds it from the newest valid
//! local snapshot (or genesis) by replaying its archived blocks with every root checked
//! (`read::history::rebuild_checked`), then swaps the rebuilt state in and rewrites the group's
//! state file. While it runs the scope is `Recovering{attempt}` and skipped by apply, so no entry
//! is lost: the swap happens only once the rebuilt height is the archive's tip, with no await
//! in between. Before it replays, the blocks it needs that are missing or damaged here are
//! fetched again from the group's other members (`archive_repair`, D81). A replay mismatch over
//! intact blocks is a determinism bug: no further automatic attempts. Other failures retry: attempt 1 at once, 2 after 30 s, 3 after 5 min, then `exhausted`.
//!
//! Each core runs `doctor`, which starts the automatic attempts (`vault_auto_recovery`).

// Errors travel as the wire `Status` (SPEC §4.5), built once at this edge.
#![allow(clippy::result_large_err)]

use crate::peer::pool::PeerPool;
use crate::read::history::{rebuild_checked, RebuildError};
use crate::round::group::{now_ts, Group};
use crate::shard::Shard;
use ledger_core::hash::to_hex;
use ledger_core::state::ScopeState;
use ledger_core::types::{GroupId, ScopeKey, VaultHealth};
use ledger_core::types::{Hash, ZERO_HASH};
use ledger_wire::messages::{EventLevel, ReplicaRoot, Request, Response, Status, StatusCode};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// SPEC §9.9: the wait before automatic attempts 2 and 3.
const RETRY_AFTER: [Duration; 2] = [Duration::from_secs(30), Duration::from_secs(300)];
/// Automatic attempts before `exhausted`.
const AUTO_ATTEMPTS_MAX: u8 = 3;
/// How often each core looks for scopes to recover.
const DOCTOR_PERIOD: Duration = Duration::from_millis(500);
/// Rebuild passes before giving up on catching the archive's tip (blocks keep arriving).
const CATCH_UP_PASSES_MAX: usize = 50;

/// One scope's recovery bookkeeping on this replica (lost at restart: a scope that is still
/// `Recovering` then starts over at attempt 1).
#[derive(Debug, Default, Clone)]
pub struct RecoveryRecord {
    /// Attempts since the scope was last healthy (or last forced).
    pub attempt: u8,
    pub running: bool,
    pub exhausted: bool,
    pub next_at: Option<Instant>,
    pub last_error: Option<String>,
    /// Counters for metrics (SPEC §11.3): attempts and successes since start.
    pub attempts_total: u64,
    pub successes_total: u64,
}

/// Counters of this core for metrics (SPEC §11.3).
#[derive(Debug, Default, Clone)]
pub struct RepairCounters {
    pub divergences: HashMap<u32, u64>,
    pub determinism_bugs: HashMap<u32, u64>,
}

thread_local! {
    static RECORDS: RefCell<HashMap<(u32, ScopeKey), RecoveryRecord>> = RefCell::new(HashMap::new());
    static COUNTERS: RefCell<RepairCounters> = RefCell::new(RepairCounters::default());
}

/// This core's recovery records (for metrics).
pub fn records() -> Vec<((u32, ScopeKey), RecoveryRecord)> {
    RECORDS.with(|r| r.borrow().iter().map(|(k, v)| (*k, v.clone())).collect())
}

/// This core's divergence counters (for metrics).
pub fn counters() -> RepairCounters {
    COUNTERS.with(|c| c.borrow().clone())
}

fn record_of(group: GroupId, scope: ScopeKey) -> RecoveryRecord {
    RECORDS.with(|r| r.borrow().get(&(group.0, scope)).cloned().unwrap_or_default())
}

fn update(group: GroupId, scope: ScopeKey, f: impl FnOnce(&mut RecoveryRecord)) {
    RECORDS.with(|r| f(r.borrow_mut().entry((group.0, scope)).or_default()));
}

/// Records an operator-visible event (SPEC §11.6) at warning level.
pub fn note_event(kind: &str, group: Option<u32>, scope: Option<ScopeKey>, message: String) {
    note_event_at(EventLevel::Warn, kind, group, scope, message);
}

/// Records an operator-visible event (SPEC §11.6; `events.rs`).
pub fn note_event_at(
    level: EventLevel,
    kind: &str,
    group: Option<u32>,
    scope: Option<ScopeKey>,
    message: String,
) {
    let namespace = scope.map(|s| s.namespace_id.0);
    let vault = scope.map(|s| s.vault_id.0);
    match level {
        EventLevel::Error => crate::event!(error, kind, group, namespace, vault, "{message}"),
        EventLevel::Warn => crate::event!(warn, kind, group, namespace, vault, "{message}"),
        EventLevel::Info => crate::event!(info, kind, group, namespace, vault, "{message}"),
        EventLevel::Debug => crate::event!(debug, kind, group, namespace, vault, "{message}"),
    }
}

/// Counts a divergence apply found (SPEC §8.4 step 2) and records its event.
pub fn on_divergence(group: GroupId, scope: ScopeKey, expected: &Hash, computed: &Hash, at_height: u64) {
    COUNTERS.with(|c| *c.borrow_mut().divergences.entry(group.0).or_default() += 1);
    note_event_at(
        EventLevel::Error,
        "state_root_divergence",
        Some(group.0),
        Some(scope),
        format!(
            "scope {scope} diverged at height {at_height}: expected root {}, computed {}",
            to_hex(expected),
            to_hex(computed)
        ),
    );
}

fn scope_missing(scope: ScopeKey) -> Status {
    Status::not_found(format!("scope {scope} not found on this node"))
}

/// `GetVaultHealth` (SPEC §5.3 item 36): the local replica's health and recovery progress.
pub fn vault_health(group: &Group, scope: ScopeKey) -> Result<Response, Status> {
    let health = group
        .data
        .borrow()
        .scopes
        .get(&scope)
        .map(|s| s.meta.health.clone())
        .ok_or_else(|| scope_missing(scope))?;
    let record = record_of(group.id, scope);
    let integrity = crate::maintenance::background_integrity::last(group.id.0, scope);
    Ok(Response::GetVaultHealth {
        health,
        recovery_attempts: u32::from(record.attempt),
        last_error: record.last_error,
        last_integrity_check: integrity.as_ref().map(|r| r.checked_at),
        integrity_issues: integrity.map(|r| r.issues).unwrap_or_default(),
    })
}

/// `SimulateDivergence` (SPEC §5.3 item 30): marks the local replica Diverged, data untouched.
/// Only on a node started with `--test-faults`.
pub fn simulate(
    shard: &Shard,
    group: &Group,
    scope: ScopeKey,
    expected: Hash,
    computed: Hash,
    at_height: u64,
) -> Result<Response, Status> {
    if !shard.config.faults.peer_faults_enabled() {
        return Err(Status::new(
            StatusCode::PermissionDenied,
            "SimulateDivergence needs a server started with --test-faults",
        ));
    }
    let health = {
        let mut data = group.data.borrow_mut();
        let s = data.scopes.get_mut(&scope).ok_or_else(|| scope_missing(scope))?;
        let at_height = if at_height == 0 { s.meta.height } else { at_height };
        s.meta.health = VaultHealth::Diverged { expected, computed, at_height };
        let health = s.meta.health.clone();
        data.dirty.scopes.insert(scope);
        health
    };
    update(group.id, scope, |r| {
        *r = RecoveryRecord {
            attempts_total: r.attempts_total,
            successes_total: r.successes_total,
            ..Default::default()
        }
    });
    on_divergence(group.id, scope, &expected, &computed, at_height);
    Ok(Response::SimulateDivergence {
        success: true,
        message: format!("scope {scope} marked Diverged on node {}", shard.config.node_id),
        health,
    })
}

/// `RecoverVault` (SPEC §5.3 item 29): rebuilds the scope on this node. Without `force` only a
/// non-Healthy scope; `force` resets the attempt counter and rebuilds even a healthy one.
pub async fn recover_vault(
    group: &Rc<Group>,
    peers: &Rc<PeerPool>,
    scope: ScopeKey,
    force: bool,
) -> Result<Response, Status> {
    let health = group
        .data
        .borrow()
        .scopes
        .get(&scope)
        .map(|s| s.meta.health.clone())
        .ok_or_else(|| scope_missing(scope))?;
    if health == VaultHealth::Healthy && !force {
        return Err(Status::new(
            StatusCode::FailedPrecondition,
            format!(
                "scope {scope} is Healthy on this node: nothing to recover (use force to rebuild it anyway)"
            ),
        ));
    }
    let record = record_of(group.id, scope);
    if record.running {
        return Err(Status::new(
            StatusCode::FailedPrecondition,
            format!("scope {scope} is being recovered already"),
        ));
    }
    if force {
        update(group.id, scope, |r| {
            r.attempt = 0;
            r.exhausted = false;
            r.next_at = None;
        });
    }
    Ok(run_attempt(group, peers, scope).await)
}

/// One recovery attempt; the answer says how it went (never an error: a failed attempt is an
/// outcome, recorded in the scope's health).
async fn run_attempt(group: &Rc<Group>, peers: &Rc<PeerPool>, scope: ScopeKey) -> Response {
    let mut attempt = 0;
    update(group.id, scope, |r| {
        r.attempt = r.attempt.saturating_add(1);
        r.running = true;
        r.attempts_total += 1;
        attempt = r.attempt;
    });
    if let Some(s) = group.data.borrow_mut().scopes.get_mut(&scope) {
        s.meta.health = VaultHealth::Recovering { started_at: now_ts(), attempt, exhausted: false };
    }
    group.data.borrow_mut().dirty.scopes.insert(scope);
    note_event_at(
        EventLevel::Info,
        "vault_recovery_started",
        Some(group.id.0),
        Some(scope),
        format!("recovery attempt {attempt} of scope {scope} started"),
    );
    let outcome = match crate::ops::archive_repair::repair(group, peers, scope).await {
        Ok(_) => rebuild_to_tip(group, scope).await,
        Err(status) => Err(RebuildError::Other(status)),
    };
    update(group.id, scope, |r| r.running = false);
    let (success, message) = match outcome {
        Ok((height, root)) => {
            update(group.id, scope, |r| {
                r.attempt = 0;
                r.exhausted = false;
                r.next_at = None;
                r.last_error = None;
                r.successes_total += 1;
            });
            let message = format!("scope {scope} rebuilt to height {height}, state root {}", to_hex(&root));
            note_event_at(
                EventLevel::Info,
                "vault_recovered",
                Some(group.id.0),
                Some(scope),
                message.clone(),
            );
            (true, message)
        }
        Err(RebuildError::Diverged(status)) => {
            COUNTERS.with(|c| *c.borrow_mut().determinism_bugs.entry(group.id.0).or_default() += 1);
            set_failed(group, scope, attempt, true, &status.message);
            let message = format!("determinism bug: {}", status.message);
            note_event_at(
                EventLevel::Error,
                "determinism_bug",
                Some(group.id.0),
                Some(scope),
                message.clone(),
            );
            (false, message)
        }
        Err(RebuildError::Other(status)) => {
            let exhausted = attempt >= AUTO_ATTEMPTS_MAX;
            set_failed(group, scope, attempt, exhausted, &status.message);
            if exhausted {
                note_event(
                    "vault_recovery_exhausted",
                    Some(group.id.0),
                    Some(scope),
                    format!("scope {scope}: recovery failed {attempt} times, last: {}", status.message),
                );
            }
            (false, format!("attempt {attempt} failed: {}", status.message))
        }
    };
    let data = group.data.borrow();
    let (health, final_height, final_state_root) = match data.scopes.get(&scope) {
        Some(s) => (s.meta.health.clone(), s.meta.height, s.meta.state_root),
        None => (VaultHealth::Healthy, 0, ZERO_HASH),
    };
    Response::RecoverVault { success, message, health, final_height, final_state_root }
}

fn set_failed(group: &Group, scope: ScopeKey, attempt: u8, exhausted: bool, error: &str) {
    update(group.id, scope, |r| {
        r.exhausted = exhausted;
        r.last_error = Some(error.to_string());
        let wait = RETRY_AFTER.get(usize::from(attempt.saturating_sub(1))).copied();
        r.next_at = if exhausted { None } else { wait.map(|w| Instant::now() + w) };
    });
    let mut data = group.data.borrow_mut();
    if let Some(s) = data.scopes.get_mut(&scope) {
        s.meta.health = VaultHealth::Recovering { started_at: now_ts(), attempt, exhausted };
    }
    data.dirty.scopes.insert(scope);
}

/// The height of `scope`'s newest archived block (apply archives a non-Healthy scope's blocks
/// without applying them, so this can be past its applied height).
fn archived_tip(group: &Group, scope: ScopeKey) -> Result<u64, Status> {
    let data = group.data.borrow();
    let s = data.scopes.get(&scope).ok_or_else(|| scope_missing(scope))?;
    let mut height = s.meta.height;
    while data
        .archive
        .get_header(scope, height + 1)
        .map_err(|e| Status::internal(format!("archive: {e}")))?
        .is_some()
    {
        height += 1;
    }
    Ok(height)
}

/// Rebuilds the scope to the archive's tip and swaps it in; returns its height and root.
async fn rebuild_to_tip(group: &Group, scope: ScopeKey) -> Result<(u64, Hash), RebuildError> {
    for _ in 0..CATCH_UP_PASSES_MAX {
        let tip = archived_tip(group, scope)?;
        let rebuilt = rebuild_checked(group, scope, tip).await?;
        // No await from here to the swap: nothing can be applied in between.
        if archived_tip(group, scope)? != rebuilt.meta.height {
            continue;
        }
        let mut data = group.data.borrow_mut();
        let Some(current) = data.scopes.get(&scope) else {
            return Err(RebuildError::Other(scope_missing(scope)));
        };
        let mut state = ScopeState::clone(&rebuilt);
        // Status changes are admin entries, not blocks: the replay does not carry them.
        state.meta.status = current.meta.status;
        state.meta.retention = current.meta.retention;
        state.meta.health = VaultHealth::Healthy;
        let result = (state.meta.height, state.meta.state_root);
        data.scopes.insert(scope, state);
        // The scope's rows changed wholesale: the next checkpoint rewrites the state file.
        data.dirty.full_rewrite = true;
        data.dirty.scopes.insert(scope);
        return Ok(result);
    }
    Err(RebuildError::Other(Status::unavailable(format!(
        "scope {scope}: blocks kept arriving faster than the rebuild caught up"
    ))))
}

/// Each core's loop that starts automatic recovery attempts (SPEC §9.9).
pub async fn doctor(shard: std::rc::Weak<Shard>) {
    loop {
        glommio::timer::sleep(DOCTOR_PERIOD).await;
        let Some(shard) = shard.upgrade() else { return };
        if shard.is_closing() || !shard.config.vault_auto_recovery {
            return;
        }
        for group in shard.group_list().into_iter().filter(|g| !g.is_outside()) {
            let due: Vec<ScopeKey> = group
                .data
                .borrow()
                .scopes
                .values()
                .filter(|s| needs_attempt(&group, s))
                .map(|s| s.meta.key)
                .collect();
            for scope in due {
                let (group, peers) = (group.clone(), shard.peers.clone());
                glommio::spawn_local(async move {
                    let _ = run_attempt(&group, &peers, scope).await;
                })
                .detach();
            }
        }
    }
}

fn needs_attempt(group: &Group, s: &ScopeState) -> bool {
    let record = record_of(group.id, s.meta.key);
    if record.running || record.exhausted {
        return false;
    }
    match &s.meta.health {
        VaultHealth::Healthy => false,
        VaultHealth::Diverged { .. } => true,
        VaultHealth::Recovering { exhausted, .. } => {
            !exhausted && record.next_at.is_none_or(|at| Instant::now() >= at)
        }
    }
}

/// This replica's root of `scope` at `height` (None: its current height), for
/// `CompareStateRoots`.
pub fn local_root(
    shard: &Shard,
    group: &Group,
    scope: ScopeKey,
    height: Option<u64>,
) -> Result<ReplicaRoot, Status> {
    let data = group.data.borrow();
    let s = data.scopes.get(&scope).ok_or_else(|| scope_missing(scope))?;
    let mut root = ReplicaRoot {
        node_id: shard.config.node_id,
        state_root: None,
        height: height.unwrap_or(s.meta.height),
        health: Some(s.meta.health.clone()),
        matches_leader: false,
        error: None,
    };
    let archived = |h: u64| -> Result<Option<Hash>, Status> {
        if h == s.meta.height {
            return Ok(Some(s.meta.state_root));
        }
        Ok(data
            .archive
            .get_header(scope, h)
            .map_err(|e| Status::internal(format!("archive: {e}")))?
            .map(|header| header.state_root))
    };
    match &s.meta.health {
        VaultHealth::Diverged { computed, at_height, .. } if root.height >= *at_height => {
            // Its own root where it stopped agreeing with the leader.
            root.height = *at_height;
            root.state_root = Some(*computed);
        }
        VaultHealth::Recovering { .. } => root.error = Some("recovering".into()),
        _ if root.height > s.meta.height => {
            root.error = Some(format!("behind: at height {}", s.meta.height));
        }
        // Heights it applied were checked against their headers: the header's root is its own.
        _ => root.state_root = archived(root.height)?,
    }
    Ok(root)
}

/// `CompareStateRoots` (SPEC §5.3 item 35). Asked by a peer: this replica's root only. Asked by
/// a client: the leader's root at `height` (default: the leader's current height), then every
/// member's root at that height.
pub async fn compare(
    shard: &Shard,
    group: &Group,
    scope: ScopeKey,
    height: Option<u64>,
    from_peer: bool,
) -> Result<Response, Status> {
    if from_peer {
        let root = local_root(shard, group, scope, height)?;
        return Ok(Response::CompareStateRoots { height: root.height, replicas: vec![root] });
    }
    let (leader, members) = {
        let metrics = group.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let members: Vec<(u64, String)> = membership.nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
        (m.current_leader, members)
    };
    let members = if members.is_empty() { vec![(shard.config.node_id, String::new())] } else { members };
    let leader = leader.unwrap_or(shard.config.node_id);
    let ask = |node: u64, addr: String, height: Option<u64>| async move {
        if node == shard.config.node_id {
            return local_root(shard, group, scope, height);
        }
        let request = Request::CompareStateRoots {
            namespace_id: scope.namespace_id.0,
            vault_id: Some(scope.vault_id.0),
            height,
        };
        match shard.peers.call(node, &addr, request, shard.config.forward_timeout).await {
            Ok(Ok(Response::CompareStateRoots { mut replicas, .. })) if replicas.len() == 1 => {
                Ok(replicas.remove(0))
            }
            Ok(Ok(_)) => Err(Status::internal(format!("node {node} answered CompareStateRoots oddly"))),
            Ok(Err(status)) => Err(status),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    };
    let leader_addr =
        members.iter().find(|(id, _)| *id == leader).map(|(_, a)| a.clone()).unwrap_or_default();
    let reference = ask(leader, leader_addr, height).await?;
    let at = reference.height;
    let mut replicas = Vec::new();
    for (node, addr) in members {
        let mut root = if node == leader {
            reference.clone()
        } else {
            ask(node, addr, Some(at)).await.unwrap_or_else(|status| ReplicaRoot {
                node_id: node,
                state_root: None,
                height: at,
                health: None,
                matches_leader: false,
                error: Some(status.message),
            })
        };
        root.matches_leader =
            root.state_root.is_some() && root.state_root == reference.state_root && root.height == at;
        replicas.push(root);
    }
    Ok(Response::CompareStateRoots { height: at, replicas })
}

/// The scope requests of this module, on the core owning the scope's group. `from_peer`: another
/// node asked (`CompareStateRoots` then reports this replica only).
pub async fn answer(
    shard: &Shard,
    group: &Rc<Group>,
    request: Request,
    from_peer: bool,
) -> Result<Response, Status> {
    let scope_of = |ns: i64, vault: Option<i64>| {
        ScopeKey::new(ledger_core::types::NamespaceId(ns), vault.map(ledger_core::types::VaultId))
    };
    match request {
        Request::RecoverVault { namespace_id, vault_id, force } => {
            recover_vault(group, &shard.peers, scope_of(namespace_id, vault_id), force).await
        }
        Request::SimulateDivergence {
            namespace_id,
            vault_id,
            expected_state_root,
            computed_state_root,
            at_height,
        } => simulate(
            shard,
            group,
            scope_of(namespace_id, vault_id),
            expected_state_root,
            computed_state_root,
            at_height,
        ),
        Request::GetVaultHealth { namespace_id, vault_id } => {
            vault_health(group, scope_of(namespace_id, vault_id))
        }
        Request::CompareStateRoots { namespace_id, vault_id, height } => {
            compare(shard, group, scope_of(namespace_id, vault_id), height, from_peer).await
        }
        other => Err(Status::invalid(format!("{} is not a vault repair request", other.op_name()))),
    }
}
