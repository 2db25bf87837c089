//! Configuration of a real `ledger-server` process (SPEC §11.1, issue 16 item 8, D37): a TOML
//! file, `INFERADB__LEDGER__*` variables and flags combine key by key with flag > environment >
//! file > default, and a configuration naming something that is not a setting stops the server
//! at once with exit code 2 and a message naming it. The unit tests of `server/src/config.rs`
//! cover each rule; these check that the binary applies them.
#![allow(clippy::unwrap_used)]

use ledger_tests::scope::connect;
use ledger_tests::{binary, temp_dir, ServerProcess, START_TIMEOUT};
use ledger_wire::messages::{Request, Response};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ENV_PREFIX: &str = "INFERADB__LEDGER__";
/// A refused configuration exits before any data-directory or network work.
const REFUSED_EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// `ledger-server` with exactly `args` and `vars` as its configuration: run in `cwd` (so that
/// no `./inferadb-ledger.toml` but the test's is found) and without any `INFERADB__LEDGER__*`
/// variable of the test's own environment.
fn server_command(cwd: &Path, args: &[&str], vars: &[(&str, String)]) -> Command {
    let mut command = Command::new(binary("ledger-server"));
    command.current_dir(cwd).args(args);
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|name| name.starts_with(ENV_PREFIX)) {
            command.env_remove(name);
        }
    }
    for (name, value) in vars {
        command.env(name, value);
    }
    command
}

use ledger_tests::ports::free_addr;

/// Runs `command` until it exits on its own; returns (exit code, stdout, stderr).
fn run_to_exit(mut command: Command) -> (Option<i32>, String, String) {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + REFUSED_EXIT_TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ledger-server did not exit within {REFUSED_EXIT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn t01_file_env_and_flag_combine_in_precedence_order() {
    // Proves each step of the precedence on one running server, each with a value that would
    // be visible had the wrong source won: the listen address is set by all three sources and
    // the server listens on the flag's; the advertised address is set by the file and the
    // environment and GetNodeInfo reports the environment's; the metrics address likewise
    // (the environment's `off` wins); the data directory, cores and groups per core are set by
    // the file only and win over the defaults (data in the file's directory, GetNodeInfo's
    // core count and 1 + cores × 2 groups). The file itself is named by INFERADB__LEDGER__CONFIG.
    let dir = temp_dir("config-t01");
    let data_dir = dir.path().join("data-from-file");
    let (flag_addr, env_addr, file_addr) = (free_addr(), free_addr(), free_addr());
    let env_advertise = format!("localhost:{}", flag_addr.rsplit(':').next().unwrap());
    let file = dir.path().join("ledger.toml");
    std::fs::write(
        &file,
        format!(
            "listen_addr = \"{file_addr}\"\nadvertise_addr = \"file.invalid:1\"\n\
             metrics_addr = \"{}\"\ndata_dir = \"{}\"\ncores = 1\ngroups_per_core = 2\n\
             cpu_pinning = false\n",
            free_addr(),
            data_dir.display()
        ),
    )
    .unwrap();
    let vars = [
        ("INFERADB__LEDGER__CONFIG", file.display().to_string()),
        ("INFERADB__LEDGER__LISTEN_ADDR", env_addr.clone()),
        ("INFERADB__LEDGER__ADVERTISE_ADDR", env_advertise.clone()),
        ("INFERADB__LEDGER__METRICS_ADDR", "off".to_string()),
    ];
    let stderr_log = dir.path().join("server.stderr.log");
    let mut command = server_command(dir.path(), &["--listen-addr", &flag_addr], &vars);
    command.stdout(Stdio::piped()).stderr(std::fs::File::create(&stderr_log).unwrap());
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(" listening on ") {
                let _ = tx.send(line);
            }
        }
    });
    let deadline = Instant::now() + START_TIMEOUT;
    let line = loop {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(50)) {
            break line;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let log = std::fs::read_to_string(&stderr_log).unwrap_or_default();
            panic!("ledger-server exited during startup with {status}; stderr:\n{log}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ledger-server did not start within {START_TIMEOUT:?}");
        }
    };
    let server = ServerProcess { child, addr: flag_addr.clone(), data_dir: data_dir.clone(), stderr_log };
    assert!(line.contains(&format!(" listening on {flag_addr} ")), "flag over env and file: {line}");
    assert!(line.contains("(metrics off)"), "env over file: {line}");
    assert!(line.contains(&format!("data in {}", data_dir.display())), "file over default: {line}");
    assert!(data_dir.join("node_id").exists(), "the file's data directory holds the node");

    let client = connect(&flag_addr).await;
    match client.call(Request::GetNodeInfo).await.unwrap() {
        Response::GetNodeInfo { address, cores, groups, .. } => {
            assert_eq!(address, env_advertise, "env over file");
            assert_eq!(cores, 1, "file over default");
            assert_eq!(groups.len(), 1 + 2, "the system group and groups_per_core = 2 from the file");
        }
        other => panic!("unexpected {other:?}"),
    }
    drop(client);
    // Neither the environment's nor the file's listen address was taken.
    for addr in [&env_addr, &file_addr] {
        assert!(std::net::TcpStream::connect(addr).is_err(), "something listens on {addr}");
    }
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn t02_unknown_file_key_exits_non_zero_naming_the_key() {
    // Proves a file with a key that is not a setting (a misspelt `listen_addr`) stops the
    // server with exit code 2 before it listens or creates its data directory, and that stderr
    // names the key and the file.
    let dir = temp_dir("config-t02");
    let data_dir = dir.path().join("data");
    let file = dir.path().join("ledger.toml");
    std::fs::write(&file, format!("data_dir = \"{}\"\nlisten_adr = \"127.0.0.1:0\"\n", data_dir.display()))
        .unwrap();
    let command = server_command(dir.path(), &["--config", file.to_str().unwrap()], &[]);
    let (code, stdout, stderr) = run_to_exit(command);
    assert_eq!(code, Some(2), "stdout {stdout:?} stderr {stderr:?}");
    assert!(stderr.contains("unknown key `listen_adr`"), "{stderr}");
    assert!(stderr.contains(file.to_str().unwrap()), "{stderr}");
    assert!(!stdout.contains("listening on"), "{stdout}");
    assert!(!data_dir.exists(), "the data directory was created");
}

#[test]
fn t03_default_file_unknown_variable_and_bad_value_exit_non_zero_naming_them() {
    // Proves the other refusals in the binary, each with exit code 2 and its culprit named on
    // stderr: `./inferadb-ledger.toml` in the working directory is read without `--config` and
    // a value of the wrong type (`replication_factor = "three"`) is refused; an INFERADB__LEDGER__
    // variable that is no setting is refused; a variable whose value its flag would refuse is
    // refused with the value and the reason.
    let dir = temp_dir("config-t03");
    std::fs::write(dir.path().join("inferadb-ledger.toml"), "replication_factor = \"three\"\n").unwrap();
    let (code, _, stderr) = run_to_exit(server_command(dir.path(), &[], &[]));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("./inferadb-ledger.toml"), "{stderr}");
    assert!(stderr.contains("replication_factor"), "{stderr}");

    let other = temp_dir("config-t03-env");
    // Zero is refused as out of range.
    let zero = server_command(other.path(), &["--replication-factor", "0"], &[]);
    let (code, _, stderr) = run_to_exit(zero);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("invalid value for replication_factor: must be at least 1"), "{stderr}");
    let cases = [
        (
            "INFERADB__LEDGER__LISTEN_ADR",
            "127.0.0.1:0",
            "unknown environment variable INFERADB__LEDGER__LISTEN_ADR",
        ),
        ("INFERADB__LEDGER__CORES", "two", "INFERADB__LEDGER__CORES: invalid value \"two\": invalid digit"),
    ];
    for (var, value, message) in cases {
        let command = server_command(other.path(), &[], &[(var, value.to_string())]);
        let (code, _, stderr) = run_to_exit(command);
        assert_eq!(code, Some(2), "{var}: {stderr}");
        assert!(stderr.contains(message), "{var}: {stderr}");
    }
}

#[tokio::test]
async fn t04_initial_groups_sets_the_data_groups_of_a_new_node() {
    // SPEC §10.5 (D79): `initial_groups` data groups, spread over the cores, instead of cores ×
    // groups_per_core; a restart with another value changes nothing.
    let dir = temp_dir("config-t04");
    let data_dir = dir.path().join("node");
    let groups_of = |addr: String| async move {
        match connect(&addr).await.call(Request::GetNodeInfo).await.unwrap() {
            Response::GetNodeInfo { groups, data_groups, .. } => (groups, data_groups),
            other => panic!("{other:?}"),
        }
    };
    let server = ServerProcess::start(&data_dir, &["--cores", "2", "--initial-groups", "5"]);
    assert_eq!(groups_of(server.addr.clone()).await, (vec![0, 1, 2, 3, 4, 5], 5));
    assert_eq!(server.stop(), Some(0));
    let server = ServerProcess::restart(&data_dir, &["--cores", "2", "--initial-groups", "2"]);
    assert_eq!(groups_of(server.addr.clone()).await, (vec![0, 1, 2, 3, 4, 5], 5));
    assert_eq!(server.stop(), Some(0));
}
