//! The server binary rejects bad configuration with exit code 2 and one clear line, before it
//! touches the data directory. (Also makes `cargo test --workspace` build the binaries that the
//! `tests` crate starts as real processes.)

use std::process::Command;

#[test]
fn t01_bad_config_exits_2_with_one_line() {
    let dir = std::env::temp_dir().join(format!("ledger-badcfg-{}", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_ledger-server"))
        .args(["--cores", "0", "--data-dir"])
        .arg(&dir)
        .output()
        .expect("run ledger-server");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid value for cores"), "stderr: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "stderr: {stderr}");
    assert!(!dir.exists(), "a rejected config must not create the data directory");
}

#[test]
fn t02_unknown_flag_is_a_usage_error() {
    let output =
        Command::new(env!("CARGO_BIN_EXE_ledger-server")).arg("--no-such-flag").output().expect("run");
    assert_eq!(output.status.code(), Some(2));
}
