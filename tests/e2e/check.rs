//! `l4relay check`: every broken config reports file:line:column: key, all errors at once.

use std::process::Command;

use crate::support::{scratch_dir, BIN};

const VALID: &str = r#"[global]
max_connections = 1000

[[listener]]
name = "edge"
listen = "127.0.0.1:8443"
pool = "upstream"

[[pool]]
name = "upstream"
balance = "least-connections"

  [[pool.server]]
  name = "one"
  address = "127.0.0.1:9000"
"#;

/// Runs `check` on `text`; returns (exit code, stdout, stderr, the file's path).
fn check(text: &str) -> (i32, String, String, String) {
    let dir = scratch_dir("check");
    let path = dir.join("l4relay.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path.display().to_string(),
    )
}

#[test]
fn a_valid_config_passes_silently() {
    let (code, stdout, stderr, _) = check(VALID);
    assert_eq!((code, stdout.as_str(), stderr.as_str()), (0, "", ""));
}

#[test]
fn the_bundled_default_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/l4relay.toml");
    let out = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Each case: a change to the valid config, and the line, key and message it must report.
const BROKEN: &[(&str, &str, &str, usize, &str, &str)] = &[
    // (what, replace, with, line, key, message)
    (
        "unknown key",
        "balance = ",
        "balanse = ",
        11,
        "pool[0].balanse",
        "unknown key",
    ),
    (
        "unknown table",
        "[global]",
        "[globl]",
        1,
        "globl",
        "unknown key",
    ),
    (
        "pool that does not exist",
        "pool = \"upstream\"",
        "pool = \"nowhere\"",
        7,
        "listener[0].pool",
        "no [[pool]] named \"nowhere\"",
    ),
    (
        "bad duration",
        "balance = \"least-connections\"",
        "connect_timeout = \"3 seconds\"",
        11,
        "pool[0].connect_timeout",
        "not a duration",
    ),
    (
        "bad listen address",
        "127.0.0.1:8443",
        "localhost:8443",
        6,
        "listener[0].listen",
        "not an address",
    ),
    (
        "bad server address",
        "127.0.0.1:9000",
        "10.0.0.1",
        15,
        "pool[0].server[0].address",
        "not an address",
    ),
    (
        "zero weight",
        "  name = \"one\"",
        "  weight = 0",
        14,
        "pool[0].server[0].weight",
        "from 1 to 256",
    ),
    (
        "wrong type",
        "max_connections = 1000",
        "max_connections = \"lots\"",
        2,
        "global.max_connections",
        "expected an integer",
    ),
    (
        "number out of range",
        "max_connections = 1000",
        "max_connections = 0",
        2,
        "global.max_connections",
        "from 1 to",
    ),
    (
        "bad choice",
        "least-connections",
        "fastest",
        11,
        "pool[0].balance",
        "is not one of",
    ),
    (
        "missing required key",
        "listen = \"127.0.0.1:8443\"\n",
        "",
        4,
        "listener[0].listen",
        "missing required key",
    ),
    ("TOML syntax", "[[pool]]", "[[pool]", 9, "", "TOML syntax"),
    (
        "bad CIDR",
        "pool = \"upstream\"",
        "pool = \"upstream\"\nallow = [\"10.0.0.0/33\"]",
        8,
        "listener[0].allow[0]",
        "not an address or CIDR",
    ),
    (
        "bad VPC endpoint ID",
        "pool = \"upstream\"",
        "pool = \"upstream\"\nproxy_protocol = \"v2\"\nallow_vpce = [\"vpc-123\"]",
        9,
        "listener[0].allow_vpce[0]",
        "not a VPC endpoint ID",
    ),
    (
        "bad size",
        "max_connections = 1000",
        "pipe_size = \"lots\"",
        2,
        "global.pipe_size",
        "not a size",
    ),
];

#[test]
fn each_broken_config_names_file_line_and_key() {
    for &(what, from, to, line, key, message) in BROKEN {
        assert!(VALID.contains(from), "{what}: test case does not apply");
        let (code, stdout, stderr, path) = check(&VALID.replacen(from, to, 1));
        assert_eq!(code, 1, "{what}: exit code; stderr:\n{stderr}");
        assert_eq!(stdout, "", "{what}");
        let prefix = format!("{path}:{line}:");
        let found = stderr.lines().any(|l| {
            l.starts_with(&prefix)
                && l.contains(message)
                && (key.is_empty() || l.contains(&format!(": {key}: ")))
        });
        assert!(
            found,
            "{what}: expected {prefix}..{key}..{message}; got:\n{stderr}"
        );
    }
}

#[test]
fn every_error_is_reported_at_once() {
    let text = VALID
        .replacen("balance = ", "balanse = ", 1)
        .replacen("127.0.0.1:8443", "nowhere", 1)
        .replacen("  name = \"one\"", "  weight = 0", 1)
        .replacen("max_connections = 1000", "max_connections = -5", 1);
    let (code, _, stderr, path) = check(&text);
    assert_eq!(code, 1);
    for (line, key) in [
        (2, "global.max_connections"),
        (6, "listener[0].listen"),
        (11, "pool[0].balanse"),
        (14, "pool[0].server[0].weight"),
    ] {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&format!("{path}:{line}:")) && l.contains(key)),
            "missing {line}:{key} in:\n{stderr}"
        );
    }
    assert!(stderr.contains("4 error(s)"), "{stderr}");
}

#[test]
fn duplicates_are_errors() {
    let doubled = format!("{VALID}\n{}", &VALID[VALID.find("[[listener]]").unwrap()..]);
    let (code, _, stderr, path) = check(&doubled);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!("{path}:18:"))
            && stderr.contains("pool[1].name: duplicate pool name \"upstream\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("listener[1].name: duplicate listener name \"edge\""),
        "{stderr}"
    );

    let two_servers = VALID.replacen("  name = \"one\"\n  address = \"127.0.0.1:9000\"\n", "  name = \"one\"\n  address = \"127.0.0.1:9000\"\n  [[pool.server]]\n  name = \"one\"\n  address = \"127.0.0.1:9001\"\n", 1);
    let (code, _, stderr, _) = check(&two_servers);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("pool[0].server[1].name: duplicate server name \"one\""),
        "{stderr}"
    );
}

#[test]
fn a_missing_file_is_reported() {
    let out = Command::new(BIN)
        .args(["check", "--config", "/nonexistent/l4relay.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/l4relay.toml"));
}

#[test]
fn version_is_printed() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("l4relay {}", env!("CARGO_PKG_VERSION"))
    );
}
