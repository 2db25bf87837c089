//! Test harness for integration tests: starts real `ledger-server` processes on temporary data
//! directories and OS-chosen ports, and stops them by PID (SIGTERM or SIGKILL). Binaries are
//! found next to the test executable (`target/<profile>/`). Before the first one is used, the
//! harness runs `cargo build` for the binary packages once per test process, in the test's own
//! profile and target directory, so `cargo test -p ledger-tests` never runs stale binaries
//! (after `cargo test --workspace` has built them, that build is a no-op).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a server may take to open its groups and start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Set to `1` to use the binaries already in `target/` without building them (e.g. when they
/// were built by a separate step and cargo is not available to the tests).
pub const SKIP_BUILD_ENV: &str = "LEDGER_TESTS_SKIP_BUILD";

/// The result of this process's one `cargo build` of the binaries.
static BINARIES_BUILT: OnceLock<Result<(), String>> = OnceLock::new();

/// `target/<profile>`, the directory holding the test executable's `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> → target/<profile>
    exe.parent().and_then(Path::parent).expect("target profile dir").to_path_buf()
}

/// Builds the workspace's binaries with the cargo that runs the tests (`$CARGO`), in the profile
/// and target directory of the test executable, so they match the code under test.
///
/// `--workspace --bins --examples` is chosen to resolve features exactly as `cargo test
/// --workspace` does: the whole workspace, with dev-dependencies active (asking for examples
/// activates them; the workspace has none to build). A narrower selection (`-p ledger-server`)
/// would unify fewer features, so each of the two commands would rebuild the binaries the other
/// just built.
fn build_binaries(profile_dir: &Path) -> Result<(), String> {
    if std::env::var(SKIP_BUILD_ENV).is_ok_and(|v| v == "1") {
        return Ok(());
    }
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_string(),
        Some(name) => name.to_string(),
        None => return Err(format!("no profile name in {}", profile_dir.display())),
    };
    let target_dir = profile_dir.parent().ok_or("no target directory")?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().ok_or("no workspace directory")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args(["build", "--quiet", "--workspace", "--bins", "--examples", "--profile", &profile])
        .arg("--target-dir")
        .arg(target_dir)
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"));
    // `cargo test` sets these for the test process; build scripts that watch them (ring's does,
    // `rerun-if-env-changed=CARGO_MANIFEST_DIR`) would otherwise see them change between this
    // build and the user's own, and each would rebuild ring, rustls and everything above them.
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let set_by_cargo = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_CRATE_", "CARGO_BIN_"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
            || matches!(name, "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR");
        if set_by_cargo {
            command.env_remove(name);
        }
    }
    let output = command.output().map_err(|e| format!("cannot run cargo: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`cargo build` of the test binaries failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Path of a workspace binary built by cargo in the same profile as the running test, rebuilt
/// first if its sources changed (once per test process).
pub fn binary(name: &str) -> PathBuf {
    let profile_dir = profile_dir();
    if let Err(e) = BINARIES_BUILT.get_or_init(|| build_binaries(&profile_dir)) {
        panic!("{e}");
    }
    let path = profile_dir.join(name);
    assert!(path.exists(), "{} not built (set {SKIP_BUILD_ENV}=1 only when it is)", path.display());
    path
}

/// A running server process and its data directory.
pub struct ServerProcess {
    pub child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
    pub stderr_log: PathBuf,
}

impl ServerProcess {
    /// Starts `ledger-server` on `data_dir` (created if needed) with port 0, no metrics
    /// endpoint and no rate limit, plus `extra` flags; waits for its "listening on" line.
    pub fn start(data_dir: &Path, extra: &[&str]) -> ServerProcess {
        ServerProcess::start_on(data_dir, "127.0.0.1:0", extra)
    }

    /// [`ServerProcess::start`] on `listen_addr` instead of port 0.
    pub fn start_on(data_dir: &Path, listen_addr: &str, extra: &[&str]) -> ServerProcess {
        std::fs::create_dir_all(data_dir).expect("create data dir");
        let stderr_log = data_dir.with_extension("stderr.log");
        let stderr =
            std::fs::OpenOptions::new().create(true).append(true).open(&stderr_log).expect("open stderr log");
        // No metrics endpoint unless the test asks for one (tests/tests/metrics.rs).
        let metrics_off: &[&str] =
            if extra.contains(&"--metrics-addr") { &[] } else { &["--metrics-addr", "off"] };
        // No rate limit unless the test asks for one (tests/tests/limits_rate.rs): tests write
        // thousands of transactions per second to one namespace (D44).
        let unlimited: &[&str] =
            if extra.contains(&"--rate-limit-rps") { &[] } else { &["--rate-limit-rps", "0"] };
        let mut child = Command::new(binary("ledger-server"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen-addr", listen_addr, "--cpu-pinning", "false"])
            .args(metrics_off)
            .args(unlimited)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn ledger-server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.split(" listening on ").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or_default().to_string();
                    let _ = tx.send(addr);
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(addr) = rx.recv_timeout(Duration::from_millis(50)) {
                return ServerProcess { child, addr, data_dir: data_dir.to_path_buf(), stderr_log };
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&stderr_log).unwrap_or_default();
                panic!("ledger-server exited during startup with {status}; stderr:\n{log}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("ledger-server did not start within {START_TIMEOUT:?}");
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// `kill -9`: no shutdown path runs.
    pub fn kill9(mut self) {
        // SAFETY: sending a signal to our own child process by PID.
        unsafe {
            libc::kill(self.pid(), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub fn stop(self) -> Option<i32> {
        // SAFETY: sending a signal to our own child process by PID.
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
        self.wait_exit()
    }

    /// Waits up to 30 s for the process to end (then kills it); returns its exit code.
    pub fn wait_exit(mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// SIGHUP: the server re-reads its `auth_tokens`.
    pub fn sighup(&self) {
        // SAFETY: sending a signal to our own child process by PID.
        unsafe {
            libc::kill(self.pid(), libc::SIGHUP);
        }
    }
}

/// Writes `text` to `dir/name` and returns the path: a `--config` file with `auth_tokens`, or a
/// `--token-file` holding one secret.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs the `ledger` CLI against `addr`; returns (exit code, stdout, stderr).
pub fn ledger_cli(addr: &str, args: &[&str]) -> (i32, String, String) {
    ledger_cli_env(addr, &[], args)
}

/// [`ledger_cli`] with extra environment variables (e.g. `LEDGER_TOKEN_FILE`).
pub fn ledger_cli_env(addr: &str, env: &[(&str, &Path)], args: &[&str]) -> (i32, String, String) {
    let mut command = Command::new(binary("ledger"));
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.arg("--addr").arg(addr).args(args).output().expect("run ledger");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs `ledger-admin --addr ADDR --timeout-secs SECS ARGS…`; returns (exit code, stdout,
/// stderr).
pub fn ledger_admin(addr: &str, timeout_secs: u64, args: &[&str]) -> (i32, String, String) {
    ledger_admin_with(addr, timeout_secs, None, args)
}

/// `ledger-admin --format json ARGS…` against `addr` (20 s timeout): the exit code and the one
/// JSON object it printed.
pub fn ledger_admin_json(addr: &str, args: &[&str]) -> (i32, serde_json::Value) {
    let mut all = vec!["--format", "json"];
    all.extend_from_slice(args);
    let (code, stdout, stderr) = ledger_admin(addr, 20, &all);
    let value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("ledger-admin {args:?}: not one JSON object ({e}): {stdout:?} {stderr:?}")
    });
    (code, value)
}

/// Waits (up to 30 s) until `ledger-admin cluster-status` against `addr` exits 0: every group
/// has a leader and every node is healthy. Returns that status.
pub fn wait_cluster_healthy(addr: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (code, status) = ledger_admin_json(addr, &["cluster-status"]);
        if code == 0 {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "cluster never became healthy: {status}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// [`ledger_admin`] with `--token-file TOKEN_FILE` when given (servers with `auth_tokens`).
pub fn ledger_admin_with(
    addr: &str,
    timeout_secs: u64,
    token_file: Option<&Path>,
    args: &[&str],
) -> (i32, String, String) {
    let mut command = Command::new(binary("ledger-admin"));
    command.args(["--addr", addr, "--timeout-secs", &timeout_secs.to_string()]);
    if let Some(path) = token_file {
        command.arg("--token-file").arg(path);
    }
    let output = command.args(args).output().expect("run ledger-admin");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A fresh temporary directory removed on drop.
pub fn temp_dir(tag: &str) -> tempfile::TempDir {
    // `LEDGER_TEST_KEEP_DIRS=1` keeps every test's directories (node logs) for a post-mortem.
    let keep = std::env::var_os("LEDGER_TEST_KEEP_DIRS").is_some();
    tempfile::Builder::new()
        .prefix(&format!("ledger-{tag}-"))
        .disable_cleanup(keep)
        .tempdir()
        .expect("tempdir")
}

impl ServerProcess {
    /// Starts a second server on the same data directory, after this one was stopped or killed.
    pub fn restart(data_dir: &Path, extra: &[&str]) -> ServerProcess {
        ServerProcess::start(data_dir, extra)
    }
}

/// Runs `ledger-server` on `data_dir` expecting it to exit on its own (e.g. a refused start);
/// returns (exit code, stdout, stderr). Panics if it is still running after `timeout`.
pub fn run_server_to_exit(
    data_dir: &Path,
    extra: &[&str],
    timeout: Duration,
) -> (Option<i32>, String, String) {
    run_server_to_exit_on(data_dir, "127.0.0.1:0", extra, timeout)
}

/// [`run_server_to_exit`] on `listen_addr` instead of port 0.
pub fn run_server_to_exit_on(
    data_dir: &Path,
    listen_addr: &str,
    extra: &[&str],
    timeout: Duration,
) -> (Option<i32>, String, String) {
    let out_path = data_dir.with_extension("second.out");
    let err_path = data_dir.with_extension("second.err");
    let stdout = std::fs::File::create(&out_path).expect("create stdout file");
    let stderr = std::fs::File::create(&err_path).expect("create stderr file");
    let mut child = Command::new(binary("ledger-server"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen-addr", listen_addr, "--metrics-addr", "off", "--cpu-pinning", "false"])
        .args(extra)
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .spawn()
        .expect("spawn ledger-server");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ledger-server on {} did not exit within {timeout:?}", data_dir.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.code(),
        std::fs::read_to_string(&out_path).unwrap_or_default(),
        std::fs::read_to_string(&err_path).unwrap_or_default(),
    )
}

pub mod cluster;
pub mod linearizability;
pub mod ports;
pub mod raw;
pub mod scope;
pub mod tls;

/// The body of `GET /metrics` from a node's metrics endpoint at `addr`.
pub fn scrape_metrics(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("set a read timeout");
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
        .expect("send the request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the response");
    response.split_once("\r\n\r\n").expect("an HTTP response").1.to_string()
}
