//! The event log and the logs (SPEC §11.6, §11.1 `log_level`; issue 16 item 3) against real
//! server processes: `ledger-admin logs` in text and JSON, its filters, events surviving a
//! restart, JSON log lines on stderr, and events recorded whatever the log level.
#![allow(clippy::unwrap_used)]

use ledger_tests::{ledger_cli, temp_dir, ServerProcess};
use serde_json::Value;

const SERVER_FLAGS: &[&str] = &["--cores", "1"];

/// Runs `ledger-admin --addr ADDR ARGS…`; returns (exit code, stdout, stderr).
fn admin(addr: &str, args: &[&str]) -> (i32, String, String) {
    ledger_tests::ledger_admin(addr, 5, args)
}

/// `ledger-admin ARGS…` that must succeed; its stdout.
fn admin_ok(addr: &str, args: &[&str]) -> String {
    let (code, stdout, stderr) = admin(addr, args);
    assert_eq!(code, 0, "ledger-admin {args:?}: stdout {stdout} stderr {stderr}");
    stdout
}

/// `ledger ARGS…` that must succeed; its stdout trimmed.
fn ledger_ok(addr: &str, args: &[&str]) -> String {
    let (code, stdout, stderr) = ledger_cli(addr, args);
    assert_eq!(code, 0, "ledger {args:?}: stdout {stdout} stderr {stderr}");
    stdout.trim().to_string()
}

/// The kind of a `logs` text line (third column).
fn kind(line: &str) -> &str {
    line.split_whitespace().nth(2).unwrap_or("")
}

#[test]
fn t01_admin_logs_shows_events_and_they_survive_a_restart() {
    // Proves `ledger-admin logs`: after a snapshot and an integrity check the node's events are
    // listed oldest first, one line each starting with an RFC 3339 UTC time and the level, with
    // the group and scope; `--format json` is one object; `--filter` and `--level` narrow the
    // list; the events are still there after a restart (persisted in node.redb), followed by the
    // new start's; a stopped node is exit code 3.
    let dir = temp_dir("events-t01");
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, SERVER_FLAGS);
    let addr = server.addr.clone();
    let ns = ledger_ok(&addr, &["namespace", "create", "evt01"]);
    let vault = ledger_ok(&addr, &["vault", "create", "--namespace", &ns]);
    admin_ok(&addr, &["snapshot", "--namespace", &ns, "--vault", &vault]);
    admin_ok(&addr, &["check-integrity", "--namespace", &ns, "--vault", &vault]);

    let text = admin_ok(&addr, &["logs", "--since", "1h"]);
    let lines: Vec<&str> = text.lines().collect();
    let kinds: Vec<&str> = lines.iter().map(|l| kind(l)).collect();
    for expected in ["bootstrap", "leader_changed", "node_started", "snapshot_created", "integrity_checked"] {
        assert!(kinds.contains(&expected), "no {expected} in:\n{text}");
    }
    for line in &lines {
        let time = line.split_whitespace().next().unwrap();
        assert_eq!(time.len(), "2026-01-01T00:00:00.000Z".len(), "{line}");
        assert!(time.ends_with('Z') && &time[10..11] == "T", "{line}");
        let level = line.split_whitespace().nth(1).unwrap();
        assert!(["error", "warn", "info", "debug"].contains(&level), "{line}");
    }
    let times: Vec<&str> = lines.iter().map(|l| l.split_whitespace().next().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "not oldest first:\n{text}");
    let snapshot = lines.iter().find(|l| kind(l) == "snapshot_created").unwrap().to_string();
    assert!(snapshot.contains(" g1 ") && snapshot.contains("path="), "{snapshot}");
    let checked = lines.iter().find(|l| kind(l) == "integrity_checked").unwrap();
    assert!(checked.contains(&format!("ns{ns}/v{vault}")) && checked.contains("issues=0"), "{checked}");
    let position = |k: &str| kinds.iter().position(|x| *x == k).unwrap();
    assert!(position("node_started") < position("snapshot_created"), "{text}");

    let json = admin_ok(&addr, &["--format", "json", "logs", "--since", "1h"]);
    assert_eq!(json.trim().lines().count(), 1, "{json}");
    let value: Value = serde_json::from_str(json.trim()).unwrap();
    let events = value["events"].as_array().unwrap();
    assert_eq!(events.len(), lines.len(), "{json}");
    let created = events.iter().find(|e| e["kind"] == "snapshot_created").unwrap();
    assert_eq!(created["level"], "info");
    assert_eq!(created["group_id"], 1);
    assert!(created["fields"]["path"].as_str().unwrap().ends_with(".snap"), "{created}");
    assert!(created["ts"].as_str().unwrap().ends_with('Z'), "{created}");

    let filtered = admin_ok(&addr, &["logs", "--filter", "snapshot"]);
    assert!(!filtered.trim().is_empty());
    assert!(filtered.lines().all(|l| l.contains("snapshot")), "{filtered}");
    assert!(filtered.lines().any(|l| kind(l) == "snapshot_created"), "{filtered}");
    let warnings = admin_ok(&addr, &["logs", "--level", "warn"]);
    assert!(warnings.lines().all(|l| l.contains(" error ") || l.contains(" warn ")), "{warnings}");
    assert!(!warnings.contains("snapshot_created"), "{warnings}");
    let newest = admin_ok(&addr, &["logs", "--limit", "1"]);
    assert_eq!(newest.lines().count(), 1, "{newest}");
    assert_eq!(kind(newest.trim()), "integrity_checked", "{newest}");

    assert_eq!(server.stop(), Some(0));
    let (code, stdout, stderr) = admin(&addr, &["logs"]);
    assert_eq!(code, 3, "{stdout} {stderr}");

    let server = ServerProcess::restart(&data, SERVER_FLAGS);
    let after = admin_ok(&server.addr, &["logs"]);
    assert!(after.lines().any(|l| l == snapshot), "the snapshot event is gone after the restart:\n{after}");
    assert!(after.contains(" node_stopping "), "{after}");
    let starts = after.lines().filter(|l| kind(l) == "node_started").count();
    assert_eq!(starts, 2, "{after}");
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn t02_log_format_json_writes_json_lines() {
    // Proves `log_format = json`: every line the server writes on stderr is one JSON object with
    // a timestamp and a level, and events carry their kind in `event`; the `listening on` line
    // stays as it was on stdout (scripts read it).
    let dir = temp_dir("events-t02");
    let server = ServerProcess::start(&dir.path().join("data"), &["--cores", "1", "--log-format", "json"]);
    ledger_ok(&server.addr, &["namespace", "create", "evt02"]);
    let stderr_log = server.stderr_log.clone();
    assert_eq!(server.stop(), Some(0));
    let log = std::fs::read_to_string(&stderr_log).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty());
    for line in &lines {
        assert!(line["timestamp"].is_string() && line["level"].is_string(), "{line}");
    }
    let started = lines.iter().find(|l| l["event"] == "node_started").expect("a node_started line");
    assert_eq!(started["level"], "INFO");
    assert_eq!(started["target"], "ledger::event");
    assert!(lines.iter().any(|l| l["event"] == "node_stopping"), "{log}");
}

#[test]
fn t03_events_are_recorded_whatever_the_log_level() {
    // Proves the level filter applies to stderr only: with `--log-level warn` the info event
    // `node_started` is not written to stderr, yet `ledger-admin logs` lists it.
    let dir = temp_dir("events-t03");
    let server = ServerProcess::start(&dir.path().join("data"), &["--cores", "1", "--log-level", "warn"]);
    let listed = admin_ok(&server.addr, &["logs"]);
    assert!(listed.lines().any(|l| kind(l) == "node_started"), "{listed}");
    let stderr_log = server.stderr_log.clone();
    assert_eq!(server.stop(), Some(0));
    let log = std::fs::read_to_string(&stderr_log).unwrap();
    assert!(!log.contains("node_started"), "{log}");
    assert!(!log.contains(" INFO "), "{log}");
}
