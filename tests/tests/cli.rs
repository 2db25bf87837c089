//! The `ledger` CLI end to end against a real server process: every subcommand spelled as in
//! README.md, text and `--json` output, exit codes and one-line errors.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ledger_tests::{ledger_cli, temp_dir, ServerProcess};
use serde_json::Value;

/// One core is enough for CLI round trips and keeps parallel tests light.
const SERVER_FLAGS: &[&str] = &["--cores", "1"];

/// Runs the CLI and requires exit 0; returns stdout trimmed.
fn ok(addr: &str, args: &[&str]) -> String {
    let (code, stdout, stderr) = ledger_cli(addr, args);
    assert_eq!(code, 0, "ledger {args:?} failed: stdout {stdout:?} stderr {stderr:?}");
    stdout.trim_end().to_string()
}

/// Runs the CLI with `--json`, requires exit 0 and exactly one JSON object on stdout.
fn json(addr: &str, args: &[&str]) -> Value {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let out = ok(addr, &full);
    assert_eq!(out.lines().count(), 1, "--json printed more than one line: {out:?}");
    let value: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"));
    assert!(value.is_object(), "--json output is not an object: {out}");
    value
}

/// Runs the CLI expecting failure; returns (exit code, stderr). Requires a single-line error on
/// stderr with no panic or backtrace, and nothing on stdout.
fn fails(addr: &str, args: &[&str]) -> (i32, String) {
    let (code, stdout, stderr) = ledger_cli(addr, args);
    assert_ne!(code, 0, "ledger {args:?} unexpectedly succeeded: {stdout:?}");
    assert!(stdout.trim().is_empty(), "failure printed on stdout: {stdout:?}");
    let err = stderr.trim_end().to_string();
    assert_eq!(err.lines().count(), 1, "error is not one line: {err:?}");
    assert!(!err.contains("panicked"), "CLI panicked: {err}");
    assert!(!err.contains("backtrace"), "stack trace printed: {err}");
    (code, err)
}

/// `head` followed by `tail`, as one argument list.
fn cat<'a>(head: &[&'a str], tail: &[&'a str]) -> Vec<&'a str> {
    [head, tail].concat()
}

/// Starts a server and creates namespace `name` plus one vault with the CLI.
fn setup(name: &str) -> (tempfile::TempDir, ServerProcess, String, String) {
    let dir = temp_dir(name);
    let server = ServerProcess::start(&dir.path().join("data"), SERVER_FLAGS);
    let ns = ok(&server.addr, &["namespace", "create", name]);
    let vault = ok(&server.addr, &["vault", "create", "--namespace", &ns]);
    (dir, server, ns, vault)
}

#[test]
fn t01_namespace_and_vault_commands() {
    // Proves `namespace create|list` and `vault create|list` print ids and listings that agree
    // with each other, that a namespace can be addressed by name or id, and that `--json` output
    // of each is one object with the fields a script needs.
    let dir = temp_dir("cli-t01");
    let server = ServerProcess::start(&dir.path().join("data"), SERVER_FLAGS);
    let addr = server.addr.as_str();

    let ns: i64 = ok(addr, &["namespace", "create", "alpha"]).parse().expect("namespace id is an integer");
    let created = json(addr, &["namespace", "create", "beta"]);
    let beta = created["namespace_id"].as_i64().unwrap();
    assert_eq!(created["name"], "beta");
    assert_ne!(ns, beta);

    let listing = ok(addr, &["namespace", "list"]);
    assert!(listing.lines().any(|l| l.starts_with(&format!("{ns}\talpha"))), "{listing}");
    assert!(listing.lines().any(|l| l.starts_with(&format!("{beta}\tbeta"))), "{listing}");
    let listed = json(addr, &["namespace", "list"]);
    let names: Vec<&str> =
        listed["namespaces"].as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"alpha") && names.contains(&"beta"), "{names:?}");

    // By name and by id.
    let v1: i64 = ok(addr, &["vault", "create", "--namespace", "alpha"]).parse().expect("vault id");
    let v2 = json(addr, &["vault", "create", "--namespace", &ns.to_string()])["vault_id"].as_i64().unwrap();
    assert_ne!(v1, v2);
    let vb: i64 = ok(addr, &["vault", "create", "--namespace", "beta"]).parse().unwrap();

    let vaults = ok(addr, &["vault", "list", "--namespace", "alpha"]);
    let ids: Vec<i64> = vaults.lines().map(|l| l.split('\t').next().unwrap().parse().unwrap()).collect();
    assert_eq!(ids.len(), 2, "{vaults}");
    assert!(ids.contains(&v1) && ids.contains(&v2));
    assert!(!ids.contains(&vb), "a vault of beta listed under alpha");
    let listed = json(addr, &["vault", "list", "--namespace", "beta"]);
    let ids: Vec<i64> =
        listed["vaults"].as_array().unwrap().iter().map(|v| v["vault_id"].as_i64().unwrap()).collect();
    assert_eq!(ids, vec![vb]);

    // A duplicate name is refused with one line.
    let (_, err) = fails(addr, &["namespace", "create", "alpha"]);
    assert!(err.contains("AlreadyExists"), "{err}");
    server.stop();
}

#[test]
fn t02_set_get_del_round_trip() {
    // Proves `set` commits, `get` prints the value (text and JSON), `del` removes it and `get`
    // of an absent key exits 1 with a message on stderr, in a vault and in the namespace scope.
    let (_dir, server, ns, vault) = setup("clit02");
    let addr = server.addr.as_str();
    let scope = ["--namespace", ns.as_str(), "--vault", vault.as_str()];
    let with = |cmd: &'static str, tail: &[&'static str]| [&[cmd][..], &scope, tail].concat();

    let out = ok(addr, &with("set", &["user:1", "alice"]));
    assert!(out.starts_with("created at height 1"), "{out}");
    assert_eq!(ok(addr, &with("get", &["user:1"])), "alice");
    let read = json(addr, &with("get", &["user:1"]));
    assert_eq!(read["value"], "alice");
    assert_eq!(read["key"], "user:1");

    let written = json(addr, &with("set", &["user:1", "bob"]));
    assert_eq!(written["status"], "updated", "{written}");
    assert_eq!(written["block_height"], 2);
    assert_eq!(ok(addr, &with("get", &["user:1"])), "bob");

    ok(addr, &with("del", &["user:1"]));
    let (code, err) = fails(addr, &with("get", &["user:1"]));
    assert_eq!(code, 1);
    assert!(err.contains("not found"), "{err}");

    // Namespace scope (no --vault), addressed by name.
    ok(addr, &["set", "--namespace", "clit02", "cfg:a", "1"]);
    assert_eq!(ok(addr, &["get", "--namespace", "clit02", "cfg:a"]), "1");
    let (code, _) = fails(addr, &["get", "--namespace", "clit02", "--vault", &vault, "cfg:a"]);
    assert_eq!(code, 1, "namespace-scope key visible in the vault");
    server.stop();
}

#[test]
fn t03_conditional_writes_fail_with_one_line() {
    // Proves `--if-absent` and `--if-version N` map to MustNotExist / VersionEquals: the passing
    // case commits, the failing case exits non-zero with one line naming the condition and the
    // key, and the failed write changes nothing (the tip is unchanged).
    let (_dir, server, ns, vault) = setup("clit03");
    let addr = server.addr.as_str();
    let head = ["set", "--namespace", ns.as_str(), "--vault", vault.as_str()];
    let first = json(addr, &cat(&head, &["k", "v1", "--if-absent"]));
    let version = first["block_height"].as_u64().unwrap();
    let tip_before = json(addr, &["tip", "--namespace", &ns, "--vault", &vault]);

    let (_, err) = fails(addr, &cat(&head, &["k", "v2", "--if-absent"]));
    assert!(err.contains("KeyExists") && err.contains("\"k\""), "{err}");
    let wrong = (version + 7).to_string();
    let (_, err) = fails(addr, &cat(&head, &["k", "v2", "--if-version", &wrong]));
    assert!(err.contains("VersionMismatch"), "{err}");
    let (_, err) = fails(addr, &cat(&head, &["missing", "v", "--if-version", "1"]));
    assert!(err.contains("KeyNotFound"), "{err}");
    let tip_after = json(addr, &["tip", "--namespace", &ns, "--vault", &vault]);
    assert_eq!(tip_after, tip_before, "a failed condition moved the tip");

    let v = version.to_string();
    ok(addr, &cat(&head, &["k", "v3", "--if-version", &v]));
    assert_eq!(ok(addr, &["get", "--namespace", &ns, "--vault", &vault, "k"]), "v3");

    // The two conditions are mutually exclusive at the argument level (usage error, exit 2).
    let (code, _, stderr) = ledger_cli(addr, &cat(&head, &["k", "v", "--if-absent", "--if-version", "1"]));
    assert_eq!(code, 2, "{stderr}");
    server.stop();
}

#[test]
fn t04_relationships_add_list_filter_delete() {
    // Proves `rel add|del|list` with and without `--resource`/`--subject` filters: listing is
    // ordered by the relationship key, filters are exact matches, `--json` is one object, and a
    // deleted tuple disappears.
    let (_dir, server, ns, vault) = setup("clit04");
    let addr = server.addr.as_str();
    let rel = |verb: &'static str, tail: &[&'static str]| {
        [&["rel", verb, "--namespace", ns.as_str(), "--vault", vault.as_str()][..], tail].concat()
    };
    let run_ok = |args: Vec<&str>| ok(addr, &args);
    run_ok(rel("add", &["doc:2", "viewer", "user:a"]));
    run_ok(rel("add", &["doc:1", "viewer", "user:b"]));
    run_ok(rel("add", &["doc:1", "editor", "user:a"]));
    run_ok(rel("add", &["doc:1", "viewer", "group:x#member"]));

    let all = run_ok(rel("list", &[]));
    assert_eq!(
        all.lines().collect::<Vec<_>>(),
        vec![
            "doc:1#editor@user:a",
            "doc:1#viewer@group:x#member",
            "doc:1#viewer@user:b",
            "doc:2#viewer@user:a"
        ]
    );
    let by_resource = run_ok(rel("list", &["--resource", "doc:1"]));
    assert_eq!(by_resource.lines().count(), 3, "{by_resource}");
    assert!(by_resource.lines().all(|l| l.starts_with("doc:1#")));
    let by_subject = run_ok(rel("list", &["--subject", "user:a"]));
    assert_eq!(by_subject.lines().collect::<Vec<_>>(), vec!["doc:1#editor@user:a", "doc:2#viewer@user:a"]);
    let both = run_ok(rel("list", &["--resource", "doc:2", "--subject", "user:a"]));
    assert_eq!(both, "doc:2#viewer@user:a");

    let listed = json(addr, &rel("list", &["--subject", "group:x#member"]));
    let rows = listed["relationships"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["resource"], "doc:1");
    assert_eq!(rows[0]["relation"], "viewer");
    assert_eq!(rows[0]["subject"], "group:x#member");

    run_ok(rel("del", &["doc:1", "viewer", "user:b"]));
    let after = run_ok(rel("list", &["--resource", "doc:1"]));
    assert!(!after.contains("user:b"), "{after}");
    assert_eq!(after.lines().count(), 2);

    // Invalid syntax (no `:` in the resource) is a one-line InvalidArgument.
    let (_, err) = fails(addr, &rel("add", &["doc1", "viewer", "user:a"]));
    assert!(err.contains("InvalidArgument"), "{err}");
    server.stop();
}

#[test]
fn t05_tip_and_block() {
    // Proves `tip` reports the height/hash/root of the last block and `block HEIGHT` returns
    // blocks whose hashes link: block 0 has a zero previous hash, each later block points at its
    // predecessor's hash, the tip's hash is the last block's, and a height past the tip fails.
    let (_dir, server, ns, vault) = setup("clit05");
    let addr = server.addr.as_str();
    for (k, v) in [("a", "1"), ("b", "2"), ("c", "3")] {
        ok(addr, &["set", "--namespace", &ns, "--vault", &vault, k, v]);
    }
    let text = ok(addr, &["tip", "--namespace", &ns, "--vault", &vault]);
    assert!(text.starts_with("height 3\n"), "{text}");
    let tip = json(addr, &["tip", "--namespace", &ns, "--vault", &vault]);
    assert_eq!(tip["height"], 3);

    let mut previous_hash = "0".repeat(64);
    for height in 0..=3u64 {
        let h = height.to_string();
        let block = json(addr, &["block", "--namespace", &ns, "--vault", &vault, &h]);
        assert_eq!(block["header"]["height"], height);
        assert_eq!(block["header"]["previous_hash"], previous_hash.as_str(), "chain break at {height}");
        assert_eq!(block["transactions"].as_array().unwrap().len(), usize::from(height > 0));
        previous_hash = block["block_hash"].as_str().unwrap().to_string();
    }
    assert_eq!(tip["block_hash"], previous_hash.as_str());
    let text_block = ok(addr, &["block", "--namespace", &ns, "--vault", &vault, "2"]);
    let parsed: Value = serde_json::from_str(&text_block).expect("text block output is JSON too");
    assert_eq!(parsed["transactions"][0]["operations"][0]["key"], "b");

    let (code, err) = fails(addr, &["block", "--namespace", &ns, "--vault", &vault, "99"]);
    assert_eq!(code, 1, "{err}");
    server.stop();
}

#[test]
fn t06_unknown_namespace_or_vault_is_a_clear_error() {
    // Proves an unknown namespace (by name or id) or vault makes every command exit non-zero
    // with one line that says what was not found.
    let (_dir, server, ns, vault) = setup("clit06");
    let addr = server.addr.as_str();
    for args in [
        vec!["get", "--namespace", "nosuch", "--vault", vault.as_str(), "k"],
        vec!["set", "--namespace", "nosuch", "k", "v"],
        vec!["vault", "create", "--namespace", "nosuch"],
        vec!["vault", "list", "--namespace", "nosuch"],
        vec!["tip", "--namespace", "4242"],
    ] {
        let (_, err) = fails(addr, &args);
        assert!(err.contains("namespace") && err.contains("not found"), "{args:?}: {err}");
    }
    for args in [
        vec!["get", "--namespace", ns.as_str(), "--vault", "9999", "k"],
        vec!["set", "--namespace", ns.as_str(), "--vault", "9999", "k", "v"],
        vec!["rel", "list", "--namespace", ns.as_str(), "--vault", "9999"],
        vec!["tip", "--namespace", ns.as_str(), "--vault", "9999"],
        vec!["block", "--namespace", ns.as_str(), "--vault", "9999", "0"],
    ] {
        let (_, err) = fails(addr, &args);
        assert!(err.contains("vault") && err.contains("not found"), "{args:?}: {err}");
    }
    server.stop();
}

#[test]
fn t07_ttl_expires_entity() {
    // Proves `set --ttl 1` stores an expiry: after ~2.1 s (more than one whole second past the
    // expiry second) `get` treats the entity as absent (exit 1), while a key without TTL written
    // at the same time is still there.
    let (_dir, server, ns, vault) = setup("clit07");
    let addr = server.addr.as_str();
    ok(addr, &["set", "--namespace", &ns, "--vault", &vault, "session:1", "tok", "--ttl", "1"]);
    ok(addr, &["set", "--namespace", &ns, "--vault", &vault, "user:1", "alice"]);
    let block = json(addr, &["block", "--namespace", &ns, "--vault", &vault, "1"]);
    let expires_at = block["transactions"][0]["operations"][0]["expires_at"].as_u64().unwrap();
    assert!(expires_at > 0, "--ttl did not set expires_at: {block}");
    std::thread::sleep(Duration::from_millis(2100));
    let (code, err) = fails(addr, &["get", "--namespace", &ns, "--vault", &vault, "session:1"]);
    assert_eq!(code, 1);
    assert!(err.contains("not found"), "{err}");
    assert_eq!(ok(addr, &["get", "--namespace", &ns, "--vault", &vault, "user:1"]), "alice");
    server.stop();
}

#[test]
fn t08_retry_with_same_client_id_is_idempotent() {
    // Proves README's promise "--client-id ID --sequence N: repeat the identical command to retry
    // idempotently": running the same `set --if-absent` twice with the same client id and
    // sequence, as a user would after a timeout, leaves one transaction and succeeds both times;
    // the next sequence commits normally, and skipping ahead is a clear SequenceGap error.
    let (_dir, server, ns, vault) = setup("clit08");
    let addr = server.addr.as_str();
    let args = [
        "--client-id",
        "retry-me",
        "--sequence",
        "1",
        "set",
        "--namespace",
        &ns,
        "--vault",
        &vault,
        "k",
        "v",
        "--if-absent",
    ];
    ok(addr, &args);
    let tip = json(addr, &["tip", "--namespace", &ns, "--vault", &vault]);
    let (code, stdout, stderr) = ledger_cli(addr, &args);
    assert_eq!(code, 0, "retry with the same client id failed: {stdout:?} {stderr:?}");
    assert_eq!(json(addr, &["tip", "--namespace", &ns, "--vault", &vault]), tip, "the retry committed again");
    let next = [
        "--client-id",
        "retry-me",
        "--sequence",
        "2",
        "set",
        "--namespace",
        &ns,
        "--vault",
        &vault,
        "k2",
        "v",
    ];
    ok(addr, &next);
    let gap = [
        "--client-id",
        "retry-me",
        "--sequence",
        "9",
        "set",
        "--namespace",
        &ns,
        "--vault",
        &vault,
        "k3",
        "v",
    ];
    let (code, _stdout, stderr) = ledger_cli(addr, &gap);
    assert_eq!(code, 1);
    assert!(stderr.contains("SequenceGap"), "stderr: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "stderr: {stderr}");
    server.stop();
}

/// Runs the `ledger` CLI with its stdout a pipe whose reading end is already closed (as after
/// `| head -1` has exited); returns (exit code, stderr).
fn run_into_closed_pipe(addr: &str, args: &[&str]) -> (Option<i32>, String) {
    use std::io::Read;
    let mut child = std::process::Command::new(ledger_tests::binary("ledger"))
        .arg("--addr")
        .arg(addr)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Closing our end before the CLI has connected and printed: its first write meets EPIPE.
    drop(child.stdout.take());
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code(), stderr);
        }
        assert!(std::time::Instant::now() < deadline, "ledger {args:?} still running after its pipe closed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn t90_issue_13_closed_pipe_exits_quietly() {
    // Proves `ledger tip ... | head -1` and `ledger watch ... | head -1` end quietly when the
    // reader has gone: exit status 0, nothing on stderr (before, `tip` panicked with "failed
    // printing to stdout: Broken pipe", and `watch` would do so on its next block).
    let (_dir, server, ns, vault) = setup("clit90");
    let addr = server.addr.as_str();
    // Block 1 exists, so `watch --from 1` has a line to print at once.
    ok(addr, &["set", "--namespace", &ns, "--vault", &vault, "k", "v"]);
    for args in [
        vec!["tip", "--namespace", &ns, "--vault", &vault],
        vec!["--json", "tip", "--namespace", &ns, "--vault", &vault],
        vec!["watch", "--namespace", &ns, "--vault", &vault, "--from", "1"],
    ] {
        let (code, stderr) = run_into_closed_pipe(addr, &args);
        assert_eq!(code, Some(0), "ledger {args:?}: stderr {stderr:?}");
        assert!(stderr.trim().is_empty(), "ledger {args:?} wrote to stderr: {stderr}");
    }
    server.stop();
}

/// Runs `ledger-admin --addr ADDR ARGS…`; returns (exit code, stdout, stderr).
fn admin(addr: &str, args: &[&str]) -> (i32, String, String) {
    ledger_tests::ledger_admin(addr, 5, args)
}

#[test]
fn t91_admin_ping_writes_and_reads_back_through_consensus() {
    // Proves `ledger-admin ping` (SPEC §11.2, issue 16 item 1): a write of `_ping:{node}` and a
    // linearizable read of it, timed; repeated pings take the next sequence of the admin's own
    // client id; JSON is one object; an unreachable node is exit 3 with one line.
    let (_dir, server, ns, vault) = setup("clit91");
    let addr_owned = server.addr.clone();
    let addr = addr_owned.as_str();
    let (code, stdout, stderr) = admin(addr, &["ping", "--namespace", &ns, "--vault", &vault]);
    assert_eq!(code, 0, "{stdout} {stderr}");
    assert!(stdout.starts_with("ok\n"), "{stdout}");
    assert!(stdout.contains("write ") && stdout.contains(" ms"), "{stdout}");
    let (code, stdout, stderr) =
        admin(addr, &["--format", "json", "ping", "--namespace", &ns, "--vault", &vault]);
    assert_eq!(code, 0, "{stdout} {stderr}");
    assert_eq!(stdout.trim().lines().count(), 1, "{stdout}");
    let value: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(value["ok"], true);
    assert!(value["write_us"].as_u64().unwrap() > 0 && value["read_us"].as_u64().is_some(), "{value}");
    let key = value["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("_ping:"), "{key}");
    // The value is really there, written through the normal path.
    assert!(!ok(addr, &["get", "--namespace", &ns, "--vault", &vault, &key]).is_empty());
    // The namespace scope too (vault 0).
    let (code, _, stderr) = admin(addr, &["ping", "--namespace", &ns, "--vault", "0"]);
    assert_eq!(code, 0, "{stderr}");
    server.stop();
    let (code, stdout, stderr) = admin(addr, &["ping", "--namespace", &ns, "--vault", &vault]);
    assert_eq!(code, 3, "{stdout} {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}
