//! `ledger-admin`'s cluster and repair commands (SPEC §11.2): `cluster-status`, `lag-report`,
//! `stepdown`, `vault-status`, `recover-vault`, `watch-recovery`, `compare-state-roots` and
//! `simulate-divergence`. Each prints an aligned table (text) or one JSON object, and returns the
//! exit code: 0 ok, 1 ran but unhealthy or failed (3, unreachable, comes from connecting).

use crate::cli::render::{self, hex};
use crate::cli::{connect, out, CliError};
use ledger_core::types::{Hash, VaultHealth};
use ledger_wire::client::{CallOptions, Client, ClientOptions};
use ledger_wire::messages::{ClusterMember, GroupLag, GroupStatusInfo, MemberRole, Request, Response};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// SPEC §11.2 `lag-report` states: ok ≤ 50 blocks, warning > 50, critical > 100.
const LAG_WARNING: u64 = 50;
const LAG_CRITICAL: u64 = 100;
/// A recovery may replay a long chain: it gets this long at least, whatever `--timeout-secs`.
const RECOVERY_TIMEOUT_MIN: Duration = Duration::from_secs(600);

fn unexpected(response: &Response) -> CliError {
    let name: String = format!("{response:?}").chars().take_while(|c| c.is_alphanumeric()).collect();
    CliError::new(1, format!("unexpected response: {name}"))
}

fn emit(json_out: bool, value: Value, text: impl FnOnce() -> String) {
    if json_out {
        out::line(value);
    } else {
        out::line(text());
    }
}

/// Columns padded to their widest cell, two spaces apart, headers first.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths.get(i).copied().unwrap_or(0)))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut lines = vec![line(headers.iter().map(|h| h.to_string()).collect())];
    lines.extend(rows.iter().map(|r| line(r.clone())));
    lines.join("\n")
}

fn health_name(h: &VaultHealth) -> String {
    match h {
        VaultHealth::Healthy => "healthy".into(),
        VaultHealth::Diverged { at_height, .. } => format!("diverged at height {at_height}"),
        VaultHealth::Recovering { attempt, exhausted: false, .. } => {
            format!("recovering (attempt {attempt})")
        }
        VaultHealth::Recovering { attempt, exhausted: true, .. } => {
            format!("recovering, exhausted after attempt {attempt}")
        }
    }
}

fn lag_state(lag: u64) -> &'static str {
    if lag > LAG_CRITICAL {
        "critical"
    } else if lag > LAG_WARNING {
        "warning"
    } else {
        "ok"
    }
}

/// While `work` runs, shows the elapsed time on stderr when stderr is a terminal.
pub async fn with_progress<T>(label: &str, work: impl std::future::Future<Output = T>) -> T {
    if !std::io::stderr().is_terminal() {
        return work.await;
    }
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    tokio::pin!(work);
    let spinner = ['|', '/', '-', '\\'];
    let mut i = 0;
    loop {
        tokio::select! {
            result = &mut work => {
                eprint!("\r\x1b[2K");
                return result;
            }
            _ = ticker.tick() => {
                eprint!("\r{} {label} … {:.0} s", spinner[i % spinner.len()], started.elapsed().as_secs_f64());
                i += 1;
            }
        }
    }
}

struct NodeView {
    node_id: u64,
    address: String,
    role: MemberRole,
    is_leader: bool,
    /// From `_system`'s leader: how long since it heard from the node, and whether it marked
    /// the node unavailable (SPEC §10.6).
    heard_ms_ago: Option<u64>,
    marked_unavailable: bool,
    health: String,
    groups: Vec<GroupStatusInfo>,
    error: Option<String>,
}

/// The members as `_system`'s leader sees them (it alone knows when it last heard from each):
/// asked of the leader when `--addr` is another node; empty when it cannot be reached.
async fn members_seen_by_leader(members: &[ClusterMember], options: &ClientOptions) -> Vec<ClusterMember> {
    if members.iter().any(|m| m.heard_ms_ago.is_some()) {
        return members.to_vec();
    }
    let Some(leader) = members.iter().find(|m| m.is_leader) else { return Vec::new() };
    let Ok(client) = connect(&leader.address, options.clone()).await else { return Vec::new() };
    match client.call(Request::GetClusterInfo).await {
        Ok(Response::GetClusterInfo { members, .. }) => members,
        _ => Vec::new(),
    }
}

/// The HEARD column: the age of `_system`'s leader's last answer from the node, `unavailable`
/// once that leader marked it so, `-` for the leader itself or when unknown.
fn heard(n: &NodeView) -> String {
    match (n.heard_ms_ago, n.marked_unavailable) {
        (Some(ms), true) => format!("{:.1}s (unavailable)", ms as f64 / 1000.0),
        (None, true) => "unavailable".into(),
        (Some(ms), false) if ms < 10_000 => format!("{ms}ms"),
        (Some(ms), false) => format!("{:.1}s", ms as f64 / 1000.0),
        (None, false) => "-".into(),
    }
}

/// `cluster-status`: the members from `--addr`, then every member's health and groups.
pub async fn cluster_status(
    client: &Client,
    options: &ClientOptions,
    json_out: bool,
) -> Result<u8, CliError> {
    let status = gather_cluster_status(client, options).await?;
    let summary = status.summary();
    let groups = status.group_facts();
    emit(json_out, status.json(summary, &groups), || status.text(summary, &groups));
    Ok(if summary == "healthy" { 0 } else { 1 })
}

/// What `cluster-status` learned: the members, leader, term and groups' lag as `--addr` reports
/// them, and what each member answered for itself.
struct ClusterStatus {
    leader_id: Option<u64>,
    term: u64,
    nodes: Vec<NodeView>,
    lag: Vec<GroupLag>,
}

/// Asks `--addr` for the members and the groups' lag, `_system`'s leader for when it last heard
/// from each member, then every member for its own health and groups.
async fn gather_cluster_status(client: &Client, options: &ClientOptions) -> Result<ClusterStatus, CliError> {
    let Response::GetClusterInfo { members, leader_id, term } = client.call(Request::GetClusterInfo).await?
    else {
        return Err(CliError::new(1, "unexpected response to GetClusterInfo"));
    };
    let lag = match client.call(Request::LagReport { group_id: None }).await? {
        Response::LagReport { groups } => groups,
        other => return Err(unexpected(&other)),
    };
    let leader_view = members_seen_by_leader(&members, options).await;
    let mut nodes = Vec::new();
    for m in &members {
        let seen = leader_view.iter().find(|l| l.node_id == m.node_id).unwrap_or(m);
        nodes.push(ask_member(m, seen, options).await);
    }
    Ok(ClusterStatus { leader_id, term, nodes, lag })
}

/// One member's view: `m` as `--addr` lists it, `seen` as `_system`'s leader does, then its own
/// health and groups. A member that cannot be reached keeps health `unavailable`; a failed or
/// unexpected answer to either question leaves its error in `error` (the last one wins).
async fn ask_member(m: &ClusterMember, seen: &ClusterMember, options: &ClientOptions) -> NodeView {
    let mut view = NodeView {
        node_id: m.node_id,
        address: m.address.clone(),
        role: m.role,
        is_leader: m.is_leader,
        heard_ms_ago: seen.heard_ms_ago,
        marked_unavailable: seen.unavailable,
        health: "unavailable".into(),
        groups: Vec::new(),
        error: None,
    };
    match connect(&m.address, options.clone()).await {
        Ok(c) => {
            match c.call(Request::HealthCheck { namespace_id: None, vault_id: None }).await {
                Ok(Response::HealthCheck { status, .. }) => {
                    view.health = format!("{status:?}").to_lowercase()
                }
                Ok(other) => view.error = Some(unexpected(&other).message),
                Err(e) => view.error = Some(e.to_string()),
            }
            match c.call(Request::GetGroupStatus).await {
                Ok(Response::GetGroupStatus { groups, .. }) => view.groups = groups,
                Ok(other) => view.error = Some(unexpected(&other).message),
                Err(e) => view.error = Some(e.to_string()),
            }
        }
        Err(e) => view.error = Some(e.message),
    }
    view
}

/// What the status shows of one group: `--addr`'s lag report of it, the group as its leader's
/// replica sees it (any replica's view when the leader's is not known), and every node's
/// replica of it.
struct GroupFacts<'a> {
    group_id: u32,
    lag: Option<&'a GroupLag>,
    max_lag: u64,
    view: Option<&'a GroupStatusInfo>,
    /// `(node, role, applied index)`: role `unreachable` when the node did not answer, `-` when
    /// it holds no replica.
    replicas: Vec<(u64, String, u64)>,
}

impl ClusterStatus {
    /// The lag report by group (a group reported twice keeps its last entry).
    fn lag_by_group(&self) -> BTreeMap<u32, &GroupLag> {
        self.lag.iter().map(|g| (g.group_id, g)).collect()
    }

    /// `healthy` when every node is and every reported group has a leader (exit 0), `degraded`
    /// while some node is healthy, `unavailable` when none is.
    fn summary(&self) -> &'static str {
        let nodes = &self.nodes;
        let lag_by_group = self.lag_by_group();
        if nodes.iter().all(|n| n.health == "healthy") && lag_by_group.values().all(|g| g.leader.is_some()) {
            "healthy"
        } else if nodes.iter().any(|n| n.health == "healthy") {
            "degraded"
        } else {
            "unavailable"
        }
    }

    /// Every group a replica or the lag report knows of, in id order.
    fn group_facts(&self) -> Vec<GroupFacts<'_>> {
        let nodes = &self.nodes;
        let lag_by_group = self.lag_by_group();
        let mut group_ids: Vec<u32> =
            nodes.iter().flat_map(|n| n.groups.iter().map(|g| g.group_id)).collect();
        group_ids.extend(self.lag.iter().map(|g| g.group_id));
        group_ids.sort_unstable();
        group_ids.dedup();
        group_ids.iter().map(|g| self.facts_of_group(*g, lag_by_group.get(g).copied())).collect()
    }

    /// Group `g`'s facts, `lag` being its entry of the lag report.
    fn facts_of_group<'a>(&'a self, g: u32, lag: Option<&'a GroupLag>) -> GroupFacts<'a> {
        let nodes = &self.nodes;
        let max_lag = lag.map(|l| l.followers.iter().map(|f| f.lag_blocks).max().unwrap_or(0)).unwrap_or(0);
        let leader_view = lag
            .and_then(|l| l.leader)
            .and_then(|leader| nodes.iter().find(|n| n.node_id == leader))
            .and_then(|n| n.groups.iter().find(|s| s.group_id == g));
        let any_view = nodes.iter().find_map(|n| n.groups.iter().find(|s| s.group_id == g));
        let view = leader_view.or(any_view);
        let replicas: Vec<(u64, String, u64)> = nodes
            .iter()
            .map(|n| match n.groups.iter().find(|s| s.group_id == g) {
                Some(s) => (n.node_id, s.role.clone(), s.applied_index),
                None => (n.node_id, if n.error.is_some() { "unreachable" } else { "-" }.to_string(), 0),
            })
            .collect();
        GroupFacts { group_id: g, lag, max_lag, view, replicas }
    }

    /// The `--format json` object: cluster leader and term, the summary, nodes and groups.
    fn json(&self, summary: &str, groups: &[GroupFacts]) -> Value {
        let node_json: Vec<Value> = self.nodes.iter().map(NodeView::json).collect();
        json!({
            "leader_id": self.leader_id, "term": self.term, "status": summary,
            "nodes": node_json,
            "groups": groups.iter().map(GroupFacts::json).collect::<Vec<_>>(),
        })
    }

    /// The text: a line on the cluster, the nodes' table, the groups' table, the summary.
    fn text(&self, summary: &str, groups: &[GroupFacts]) -> String {
        let (nodes, term) = (&self.nodes, self.term);
        let leader = self.leader_id.map(|l| l.to_string()).unwrap_or_else(|| "none".into());
        let node_rows: Vec<Vec<String>> = nodes.iter().map(NodeView::row).collect();
        let rows: Vec<Vec<String>> = groups.iter().map(GroupFacts::row).collect();
        format!(
            "cluster leader {leader}, term {term}, {} node(s)\n\n{}\n\n{}\n\n{summary}",
            nodes.len(),
            table(&["NODE", "ADDRESS", "ROLE", "LEADER", "LEADS", "HEARD", "HEALTH", "ERROR"], &node_rows),
            table(
                &[
                    "GROUP",
                    "LEADER",
                    "TERM",
                    "MEMBERS",
                    "LAST",
                    "COMMIT",
                    "APPLIED",
                    "MAX LAG",
                    "REPLICAS (node:role@applied)"
                ],
                &rows
            ),
        )
    }
}

impl NodeView {
    /// The node's entry of the JSON `nodes` array.
    fn json(&self) -> Value {
        json!({
            "node_id": self.node_id, "address": self.address,
            "role": if self.role == MemberRole::Voter { "voter" } else { "learner" },
            "is_leader": self.is_leader, "health": self.health, "error": self.error,
            "heard_ms_ago": self.heard_ms_ago, "marked_unavailable": self.marked_unavailable,
            "groups_led": self.groups.iter().filter(|g| g.role == "leader").count(),
        })
    }

    /// The node's row of the text's nodes table.
    fn row(&self) -> Vec<String> {
        vec![
            self.node_id.to_string(),
            self.address.clone(),
            if self.role == MemberRole::Voter { "voter" } else { "learner" }.into(),
            if self.is_leader { "yes" } else { "" }.into(),
            self.groups.iter().filter(|g| g.role == "leader").count().to_string(),
            heard(self),
            self.health.clone(),
            self.error.clone().unwrap_or_default(),
        ]
    }
}

impl GroupFacts<'_> {
    /// The group's entry of the JSON `groups` array.
    fn json(&self) -> Value {
        let &GroupFacts { group_id: g, lag, max_lag, view, ref replicas } = self;
        json!({
            "group_id": g,
            "leader": lag.and_then(|l| l.leader),
            "term": view.map(|v| v.term),
            "members": view.map(|v| v.voters.clone()).unwrap_or_default(),
            "leader_last_index": lag.map(|l| l.leader_last_index),
            "commit_index": view.map(|v| v.committed_index),
            "applied_index": view.map(|v| v.applied_index),
            "max_lag": max_lag,
            "replicas": replicas.iter().map(|(n, role, applied)| json!({"node_id": n, "role": role, "applied_index": applied})).collect::<Vec<_>>(),
        })
    }

    /// The group's row of the text's groups table.
    fn row(&self) -> Vec<String> {
        let &GroupFacts { group_id: g, lag, max_lag, view, ref replicas } = self;
        vec![
            g.to_string(),
            lag.and_then(|l| l.leader).map(|l| l.to_string()).unwrap_or_else(|| "none".into()),
            view.map(|v| v.term.to_string()).unwrap_or_default(),
            view.map(|v| v.voters.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(","))
                .unwrap_or_default(),
            lag.map(|l| l.leader_last_index.to_string()).unwrap_or_default(),
            view.map(|v| v.committed_index.to_string()).unwrap_or_default(),
            view.map(|v| v.applied_index.to_string()).unwrap_or_default(),
            format!("{max_lag} ({})", lag_state(max_lag)),
            replicas
                .iter()
                .map(|(n, role, applied)| format!("{n}:{}@{applied}", role_letter(role)))
                .collect::<Vec<_>>()
                .join(" "),
        ]
    }
}

fn role_letter(role: &str) -> &str {
    match role {
        "leader" => "L",
        "follower" => "F",
        "candidate" => "C",
        "learner" => "l",
        other => other,
    }
}

/// `lag-report [--group G]`: per group and follower, matched index and lag; exit 1 if any is
/// critical.
pub async fn lag_report(client: &Client, group: Option<u32>, json_out: bool) -> Result<u8, CliError> {
    let groups = match client.call(Request::LagReport { group_id: group }).await? {
        Response::LagReport { groups } => groups,
        other => return Err(unexpected(&other)),
    };
    let mut rows = Vec::new();
    let mut critical = false;
    let mut listed = Vec::new();
    for g in &groups {
        let leader = g.leader.map(|l| l.to_string()).unwrap_or_else(|| "none".into());
        if g.leader.is_none() {
            critical = true;
            rows.push(vec![
                g.group_id.to_string(),
                leader.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                "no leader".into(),
            ]);
        }
        for f in &g.followers {
            let state = lag_state(f.lag_blocks);
            critical |= state == "critical";
            rows.push(vec![
                g.group_id.to_string(),
                leader.clone(),
                f.node_id.to_string(),
                f.matched_index.to_string(),
                f.lag_blocks.to_string(),
                state.into(),
            ]);
        }
        listed.push(json!({
            "group_id": g.group_id, "leader": g.leader, "leader_last_index": g.leader_last_index,
            "followers": g.followers.iter().map(|f| json!({
                "node_id": f.node_id, "matched_index": f.matched_index, "lag_blocks": f.lag_blocks,
                "state": lag_state(f.lag_blocks),
            })).collect::<Vec<_>>(),
        }));
    }
    emit(json_out, json!({"groups": listed, "critical": critical}), || {
        table(&["GROUP", "LEADER", "FOLLOWER", "MATCHED", "LAG (BLOCKS)", "STATE"], &rows)
    });
    Ok(if critical { 1 } else { 0 })
}

/// `stepdown --node ID [--group G] [--to N]`: moves that node's leaderships to the other voters
/// (to N when given).
pub async fn stepdown(
    client: &Client,
    node: u64,
    group: Option<u32>,
    successor: Option<u64>,
    json_out: bool,
    timeout: Duration,
) -> Result<u8, CliError> {
    let request = Request::TransferLeadership { node_id: node, group_id: group, successor };
    let response = with_progress(
        "moving leaderships",
        client.call_with(request, CallOptions { timeout: Some(timeout) }),
    )
    .await?;
    let Response::TransferLeadership { moved, not_moved } = response else {
        return Err(unexpected(&response));
    };
    emit(
        json_out,
        json!({"node_id": node, "moved": moved.iter().map(|(g, l)| json!({"group_id": g, "new_leader": l})).collect::<Vec<_>>(), "not_moved": not_moved}),
        || {
            let rows: Vec<Vec<String>> =
                moved.iter().map(|(g, l)| vec![g.to_string(), l.to_string()]).collect();
            let mut text = if moved.is_empty() {
                format!("node {node}: no leadership moved")
            } else {
                table(&["GROUP", "NEW LEADER"], &rows)
            };
            if !not_moved.is_empty() {
                let list: Vec<String> = not_moved.iter().map(|g| g.to_string()).collect();
                text.push_str(&format!("\nnot moved: {}", list.join(", ")));
            }
            text
        },
    );
    Ok(if not_moved.is_empty() { 0 } else { 1 })
}

/// `vault-status`: GetVault plus the local replica's recovery state; exit 1 unless Healthy.
pub async fn vault_status(client: &Client, ns: i64, vault: i64, json_out: bool) -> Result<u8, CliError> {
    let info = client.get_vault(ns, vault).await?;
    let vault_id = (vault != 0).then_some(vault);
    let (attempts, last_error, checked_at, issues) =
        match client.call(Request::GetVaultHealth { namespace_id: ns, vault_id }).await? {
            Response::GetVaultHealth {
                recovery_attempts,
                last_error,
                last_integrity_check,
                integrity_issues,
                ..
            } => (recovery_attempts, last_error, last_integrity_check, integrity_issues),
            other => return Err(unexpected(&other)),
        };
    let mut value = render::vault(&info);
    value["recovery_attempts"] = json!(attempts);
    value["last_error"] = json!(last_error);
    value["integrity"] = json!({
        "checked_at": checked_at.map(|t| rfc3339(t.secs)),
        "issues": issues.iter().map(|i| json!({"block_height": i.block_height, "issue_type": i.issue_type.as_str(), "description": i.description})).collect::<Vec<_>>(),
    });
    emit(json_out, value, || {
        let mut rows = vec![
            ("namespace", info.namespace_id.to_string()),
            ("vault", info.vault_id.to_string()),
            ("group", info.group_id.to_string()),
            ("status", format!("{:?}", info.status).to_lowercase()),
            ("height", info.height.to_string()),
            ("state root", hex(&info.state_root)),
            ("last block", rfc3339(info.last_block_timestamp.secs)),
            ("leader", info.leader.map(|l| l.to_string()).unwrap_or_else(|| "none".into())),
            ("nodes", info.nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",")),
            (
                "retention",
                format!(
                    "{:?} ({} blocks)",
                    info.retention_policy.mode, info.retention_policy.retention_blocks
                )
                .to_lowercase(),
            ),
            ("health", health_name(&info.health)),
        ];
        match &info.health {
            VaultHealth::Diverged { expected, computed, at_height } => {
                rows.push(("expected root", hex(expected)));
                rows.push(("computed root", hex(computed)));
                rows.push(("at height", at_height.to_string()));
            }
            VaultHealth::Recovering { attempt, exhausted, .. } => {
                rows.push(("attempt", attempt.to_string()));
                rows.push(("exhausted", exhausted.to_string()));
            }
            VaultHealth::Healthy => {}
        }
        if attempts > 0 {
            rows.push(("recovery attempts", attempts.to_string()));
        }
        if let Some(e) = &last_error {
            rows.push(("last error", e.clone()));
        }
        let checked = match checked_at {
            Some(t) if issues.is_empty() => format!("{}: no issues", rfc3339(t.secs)),
            Some(t) => format!("{}: {} issue(s)", rfc3339(t.secs), issues.len()),
            None => "not run yet".into(),
        };
        rows.push(("integrity check", checked));
        for i in &issues {
            rows.push((
                "  issue",
                format!("height {} {}: {}", i.block_height, i.issue_type.as_str(), i.description),
            ));
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        rows.iter().map(|(k, v)| format!("{k:<width$}  {v}")).collect::<Vec<_>>().join("\n")
    });
    Ok(if info.health == VaultHealth::Healthy && issues.is_empty() { 0 } else { 1 })
}

/// Seconds since the epoch as RFC 3339 UTC (the `logs` command's format).
fn rfc3339(secs: i64) -> String {
    crate::cli::logs::rfc3339(&ledger_core::types::Timestamp { secs, nanos: 0 })
}

/// `recover-vault [--force]`: rebuilds the vault on the node at `--addr`.
pub async fn recover_vault(
    client: &Client,
    ns: i64,
    vault: i64,
    force: bool,
    json_out: bool,
    timeout: Duration,
) -> Result<u8, CliError> {
    let request = Request::RecoverVault { namespace_id: ns, vault_id: (vault != 0).then_some(vault), force };
    let timeout = timeout.max(RECOVERY_TIMEOUT_MIN);
    let response =
        with_progress("recovering", client.call_with(request, CallOptions { timeout: Some(timeout) }))
            .await?;
    let Response::RecoverVault { success, message, health, final_height, final_state_root } = response else {
        return Err(unexpected(&response));
    };
    emit(
        json_out,
        json!({"success": success, "message": message, "final_height": final_height,
               "final_state_root": hex(&final_state_root), "health": render::health(&health)}),
        || {
            let verdict = if success { "recovered" } else { "FAILED" };
            format!(
                "{verdict}: {message}\nheight      {final_height}\nstate root  {}\nhealth      {}",
                hex(&final_state_root),
                health_name(&health)
            )
        },
    );
    Ok(if success { 0 } else { 1 })
}

/// `watch-recovery`: polls the local replica's health and prints each change until Healthy (0)
/// or exhausted (1).
pub async fn watch_recovery(
    client: &Client,
    ns: i64,
    vault: i64,
    interval: Duration,
    json_out: bool,
) -> Result<u8, CliError> {
    let vault_id = (vault != 0).then_some(vault);
    let mut last: Option<(VaultHealth, u32)> = None;
    loop {
        let (health, attempts, last_error) =
            match client.call(Request::GetVaultHealth { namespace_id: ns, vault_id }).await? {
                Response::GetVaultHealth { health, recovery_attempts, last_error, .. } => {
                    (health, recovery_attempts, last_error)
                }
                other => return Err(unexpected(&other)),
            };
        let changed = last.as_ref().is_none_or(|(h, a)| !same_state(h, &health) || *a != attempts);
        if changed {
            let now = crate::cli::now_secs() as i64;
            emit(
                json_out,
                json!({"time": rfc3339(now), "health": render::health(&health), "recovery_attempts": attempts, "last_error": last_error}),
                || {
                    let mut line = format!("{}  {}", rfc3339(now), health_name(&health));
                    if let Some(e) = &last_error {
                        line.push_str(&format!("  (last error: {e})"));
                    }
                    line
                },
            );
            last = Some((health.clone(), attempts));
        }
        match health {
            VaultHealth::Healthy => return Ok(0),
            VaultHealth::Recovering { exhausted: true, .. } => return Ok(1),
            _ => tokio::time::sleep(interval).await,
        }
    }
}

/// Health states compared without their timestamps.
fn same_state(a: &VaultHealth, b: &VaultHealth) -> bool {
    match (a, b) {
        (
            VaultHealth::Recovering { attempt: x, exhausted: e, .. },
            VaultHealth::Recovering { attempt: y, exhausted: f, .. },
        ) => x == y && e == f,
        _ => a == b,
    }
}

/// `compare-state-roots [--height H]`: every replica's root against the leader's; exit 1 on a
/// mismatch.
pub async fn compare_state_roots(
    client: &Client,
    ns: i64,
    vault: i64,
    height: Option<u64>,
    json_out: bool,
) -> Result<u8, CliError> {
    let request =
        Request::CompareStateRoots { namespace_id: ns, vault_id: (vault != 0).then_some(vault), height };
    let response = client.call(request).await?;
    let Response::CompareStateRoots { height, replicas } = response else {
        return Err(unexpected(&response));
    };
    let all_match = replicas.iter().all(|r| r.matches_leader);
    let root_text = |r: &Option<Hash>| r.map(|h| hex(&h)).unwrap_or_else(|| "-".into());
    emit(
        json_out,
        json!({"height": height, "match": all_match, "replicas": replicas.iter().map(|r| json!({
            "node_id": r.node_id, "height": r.height, "state_root": r.state_root.map(|h| hex(&h)),
            "health": r.health.as_ref().map(render::health), "matches_leader": r.matches_leader, "error": r.error,
        })).collect::<Vec<_>>()}),
        || {
            let rows: Vec<Vec<String>> = replicas
                .iter()
                .map(|r| {
                    vec![
                        r.node_id.to_string(),
                        r.height.to_string(),
                        root_text(&r.state_root),
                        r.health.as_ref().map(health_name).unwrap_or_else(|| "unknown".into()),
                        if r.matches_leader { "✓" } else { "✗" }.into(),
                        r.error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            format!(
                "height {height}\n{}",
                table(&["NODE", "HEIGHT", "STATE ROOT", "HEALTH", "MATCH", "NOTE"], &rows)
            )
        },
    );
    Ok(if all_match { 0 } else { 1 })
}

/// `simulate-divergence` (test servers only, `--test-faults`): marks the replica at `--addr`
/// Diverged (expected = its current root, computed = zeros).
pub async fn simulate_divergence(
    client: &Client,
    ns: i64,
    vault: i64,
    height: Option<u64>,
    json_out: bool,
) -> Result<u8, CliError> {
    let vault_id = (vault != 0).then_some(vault);
    let info = client.get_vault(ns, vault).await?;
    let request = Request::SimulateDivergence {
        namespace_id: ns,
        vault_id,
        expected_state_root: info.state_root,
        computed_state_root: ledger_core::types::ZERO_HASH,
        at_height: height.unwrap_or(info.height),
    };
    let response = client.call(request).await?;
    let Response::SimulateDivergence { success, message, health } = response else {
        return Err(unexpected(&response));
    };
    emit(
        json_out,
        json!({"success": success, "message": message, "health": render::health(&health)}),
        || format!("{message}\nhealth {}", health_name(&health)),
    );
    Ok(if success { 0 } else { 1 })
}

/// `clear-vault-state` (SPEC §9.9), offline: takes the data directory's lock (refused while a
/// server holds it), then clears the scope in whichever group's state file holds it.
pub fn clear_vault_state(
    data_dir: &std::path::Path,
    ns: i64,
    vault: i64,
    json_out: bool,
) -> Result<u8, CliError> {
    use std::os::fd::AsRawFd;
    let lock_path = data_dir.join(".lock");
    let lock = std::fs::OpenOptions::new().write(true).open(&lock_path).map_err(|e| {
        CliError::new(1, format!("{}: not a Ledger data directory ({e})", data_dir.display()))
    })?;
    // SAFETY: flock on a file descriptor this function owns; no memory is shared.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(CliError::new(
            1,
            format!("{} is locked: stop the server using this data directory first", lock_path.display()),
        ));
    }
    let scope = ledger_core::types::ScopeKey::new(
        ledger_core::types::NamespaceId(ns),
        (vault != 0).then_some(ledger_core::types::VaultId(vault)),
    );
    let groups = data_dir.join("groups");
    let mut dirs: Vec<std::path::PathBuf> = std::fs::read_dir(&groups)
        .map_err(|e| CliError::new(1, format!("{}: {e}", groups.display())))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .collect();
    dirs.sort();
    for dir in dirs {
        let path = dir.join("state.redb");
        if !path.exists() {
            continue;
        }
        let cleared = ledger_shard::storage::checkpoint::clear_scope_offline(&path, scope)
            .map_err(|e| CliError::new(1, format!("{}: {e}", path.display())))?;
        if let Some(rows) = cleared {
            emit(
                json_out,
                json!({"namespace_id": ns, "vault_id": vault, "state_file": path.display().to_string(), "rows_removed": rows, "health": "diverged"}),
                || {
                    format!("cleared vault {vault} of namespace {ns} in {}: {rows} row(s) removed; marked Diverged, rebuilt at the next start", path.display())
                },
            );
            return Ok(0);
        }
    }
    Err(CliError::new(1, format!("vault {vault} of namespace {ns} is in no group of {}", data_dir.display())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ledger_wire::messages::FollowerLag;

    /// A replica's view of one group.
    fn group_status(group_id: u32, role: &str, term: u64, applied_index: u64) -> GroupStatusInfo {
        GroupStatusInfo {
            group_id,
            role: role.into(),
            leader: Some(1),
            term,
            last_log_index: applied_index + 2,
            committed_index: applied_index + 1,
            applied_index,
            voters: vec![1, 2, 3],
            learners: Vec::new(),
            scopes: 4,
            unhealthy_scopes: 0,
        }
    }

    /// A member as `cluster_status` builds it after asking it.
    fn node(
        node_id: u64,
        is_leader: bool,
        heard_ms_ago: Option<u64>,
        groups: Vec<GroupStatusInfo>,
    ) -> NodeView {
        NodeView {
            node_id,
            address: format!("127.0.0.1:700{node_id}"),
            role: MemberRole::Voter,
            is_leader,
            heard_ms_ago,
            marked_unavailable: false,
            health: "healthy".into(),
            groups,
            error: None,
        }
    }

    /// Three voters (the third unreachable, marked unavailable) and a learner; group 0 led by
    /// node 1 with one follower at warning lag, group 1 without a leader, group 2 known only
    /// from a replica.
    fn sample_cluster() -> (Vec<NodeView>, Vec<GroupLag>) {
        let mut unreachable = node(3, false, Some(12_500), Vec::new());
        unreachable.marked_unavailable = true;
        unreachable.health = "unavailable".into();
        unreachable.error = Some("connection refused".into());
        let mut learner = node(4, false, Some(340), vec![group_status(0, "learner", 3, 90)]);
        learner.role = MemberRole::Learner;
        let nodes = vec![
            node(1, true, None, vec![group_status(0, "leader", 3, 150), group_status(1, "candidate", 9, 40)]),
            node(
                2,
                false,
                Some(80),
                vec![group_status(0, "follower", 3, 88), group_status(2, "follower", 2, 7)],
            ),
            unreachable,
            learner,
        ];
        let follower = |node_id, lag_blocks| FollowerLag {
            node_id,
            matched_index: 150 - lag_blocks,
            lag_blocks,
            last_ack_ms: Some(5),
        };
        let lag = vec![
            GroupLag {
                group_id: 0,
                leader: Some(1),
                leader_last_index: 152,
                followers: vec![follower(2, 62), follower(4, 20)],
            },
            GroupLag { group_id: 1, leader: None, leader_last_index: 0, followers: Vec::new() },
        ];
        (nodes, lag)
    }

    /// Two voters, both healthy, group 0 led with its follower caught up.
    fn healthy_cluster() -> (Vec<NodeView>, Vec<GroupLag>) {
        let nodes = vec![
            node(1, true, None, vec![group_status(0, "leader", 2, 30)]),
            node(2, false, Some(15), vec![group_status(0, "follower", 2, 30)]),
        ];
        let lag = vec![GroupLag {
            group_id: 0,
            leader: Some(1),
            leader_last_index: 31,
            followers: vec![FollowerLag { node_id: 2, matched_index: 31, lag_blocks: 0, last_ack_ms: None }],
        }];
        (nodes, lag)
    }

    /// `status`'s summary, JSON and text are those `cluster-status` printed before it was split
    /// into steps (`want_json` pretty-printed; the command prints the same value compact).
    fn check_rendering(status: &ClusterStatus, want_summary: &str, want_json: &str, want_text: &str) {
        let summary = status.summary();
        assert_eq!(summary, want_summary);
        let groups = status.group_facts();
        assert_eq!(serde_json::to_string_pretty(&status.json(summary, &groups)).unwrap(), want_json);
        assert_eq!(status.text(summary, &groups), want_text);
    }

    /// A degraded cluster (exit 1): an unreachable node, a group without a leader, a follower
    /// at warning lag, a group only a replica knows.
    #[test]
    fn t01_cluster_status_of_a_degraded_cluster() {
        let (nodes, lag) = sample_cluster();
        let status = ClusterStatus { leader_id: Some(1), term: 7, nodes, lag };
        check_rendering(&status, "degraded", DEGRADED_JSON, DEGRADED_TEXT);
    }

    /// A healthy cluster (exit 0) whose `--addr` does not know the cluster leader.
    #[test]
    fn t02_cluster_status_of_a_healthy_cluster() {
        let (nodes, lag) = healthy_cluster();
        let status = ClusterStatus { leader_id: None, term: 2, nodes, lag };
        check_rendering(&status, "healthy", HEALTHY_JSON, HEALTHY_TEXT);
    }

    const DEGRADED_TEXT: &str = r#"cluster leader 1, term 7, 4 node(s)

NODE  ADDRESS         ROLE     LEADER  LEADS  HEARD                HEALTH       ERROR
1     127.0.0.1:7001  voter    yes     1      -                    healthy
2     127.0.0.1:7002  voter            0      80ms                 healthy
3     127.0.0.1:7003  voter            0      12.5s (unavailable)  unavailable  connection refused
4     127.0.0.1:7004  learner          0      340ms                healthy

GROUP  LEADER  TERM  MEMBERS  LAST  COMMIT  APPLIED  MAX LAG       REPLICAS (node:role@applied)
0      1       3     1,2,3    152   151     150      62 (warning)  1:L@150 2:F@88 3:unreachable@0 4:l@90
1      none    9     1,2,3    0     41      40       0 (ok)        1:C@40 2:-@0 3:unreachable@0 4:-@0
2      none    2     1,2,3          8       7        0 (ok)        1:-@0 2:F@7 3:unreachable@0 4:-@0

degraded"#;

    const DEGRADED_JSON: &str = r#"{
  "groups": [
    {
      "applied_index": 150,
      "commit_index": 151,
      "group_id": 0,
      "leader": 1,
      "leader_last_index": 152,
      "max_lag": 62,
      "members": [
        1,
        2,
        3
      ],
      "replicas": [
        {
          "applied_index": 150,
          "node_id": 1,
          "role": "leader"
        },
        {
          "applied_index": 88,
          "node_id": 2,
          "role": "follower"
        },
        {
          "applied_index": 0,
          "node_id": 3,
          "role": "unreachable"
        },
        {
          "applied_index": 90,
          "node_id": 4,
          "role": "learner"
        }
      ],
      "term": 3
    },
    {
      "applied_index": 40,
      "commit_index": 41,
      "group_id": 1,
      "leader": null,
      "leader_last_index": 0,
      "max_lag": 0,
      "members": [
        1,
        2,
        3
      ],
      "replicas": [
        {
          "applied_index": 40,
          "node_id": 1,
          "role": "candidate"
        },
        {
          "applied_index": 0,
          "node_id": 2,
          "role": "-"
        },
        {
          "applied_index": 0,
          "node_id": 3,
          "role": "unreachable"
        },
        {
          "applied_index": 0,
          "node_id": 4,
          "role": "-"
        }
      ],
      "term": 9
    },
    {
      "applied_index": 7,
      "commit_index": 8,
      "group_id": 2,
      "leader": null,
      "leader_last_index": null,
      "max_lag": 0,
      "members": [
        1,
        2,
        3
      ],
      "replicas": [
        {
          "applied_index": 0,
          "node_id": 1,
          "role": "-"
        },
        {
          "applied_index": 7,
          "node_id": 2,
          "role": "follower"
        },
        {
          "applied_index": 0,
          "node_id": 3,
          "role": "unreachable"
        },
        {
          "applied_index": 0,
          "node_id": 4,
          "role": "-"
        }
      ],
      "term": 2
    }
  ],
  "leader_id": 1,
  "nodes": [
    {
      "address": "127.0.0.1:7001",
      "error": null,
      "groups_led": 1,
      "health": "healthy",
      "heard_ms_ago": null,
      "is_leader": true,
      "marked_unavailable": false,
      "node_id": 1,
      "role": "voter"
    },
    {
      "address": "127.0.0.1:7002",
      "error": null,
      "groups_led": 0,
      "health": "healthy",
      "heard_ms_ago": 80,
      "is_leader": false,
      "marked_unavailable": false,
      "node_id": 2,
      "role": "voter"
    },
    {
      "address": "127.0.0.1:7003",
      "error": "connection refused",
      "groups_led": 0,
      "health": "unavailable",
      "heard_ms_ago": 12500,
      "is_leader": false,
      "marked_unavailable": true,
      "node_id": 3,
      "role": "voter"
    },
    {
      "address": "127.0.0.1:7004",
      "error": null,
      "groups_led": 0,
      "health": "healthy",
      "heard_ms_ago": 340,
      "is_leader": false,
      "marked_unavailable": false,
      "node_id": 4,
      "role": "learner"
    }
  ],
  "status": "degraded",
  "term": 7
}"#;

    const HEALTHY_TEXT: &str = r#"cluster leader none, term 2, 2 node(s)

NODE  ADDRESS         ROLE   LEADER  LEADS  HEARD  HEALTH   ERROR
1     127.0.0.1:7001  voter  yes     1      -      healthy
2     127.0.0.1:7002  voter          0      15ms   healthy

GROUP  LEADER  TERM  MEMBERS  LAST  COMMIT  APPLIED  MAX LAG  REPLICAS (node:role@applied)
0      1       2     1,2,3    31    31      30       0 (ok)   1:L@30 2:F@30

healthy"#;

    const HEALTHY_JSON: &str = r#"{
  "groups": [
    {
      "applied_index": 30,
      "commit_index": 31,
      "group_id": 0,
      "leader": 1,
      "leader_last_index": 31,
      "max_lag": 0,
      "members": [
        1,
        2,
        3
      ],
      "replicas": [
        {
          "applied_index": 30,
          "node_id": 1,
          "role": "leader"
        },
        {
          "applied_index": 30,
          "node_id": 2,
          "role": "follower"
        }
      ],
      "term": 2
    }
  ],
  "leader_id": null,
  "nodes": [
    {
      "address": "127.0.0.1:7001",
      "error": null,
      "groups_led": 1,
      "health": "healthy",
      "heard_ms_ago": null,
      "is_leader": true,
      "marked_unavailable": false,
      "node_id": 1,
      "role": "voter"
    },
    {
      "address": "127.0.0.1:7002",
      "error": null,
      "groups_led": 0,
      "health": "healthy",
      "heard_ms_ago": 15,
      "is_leader": false,
      "marked_unavailable": false,
      "node_id": 2,
      "role": "voter"
    }
  ],
  "status": "healthy",
  "term": 2
}"#;
}
