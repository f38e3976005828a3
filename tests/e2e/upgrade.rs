//! Binary upgrade: a new process starts beside the old one on the same port (SO_REUSEPORT), the
//! old one drains, and no connection is refused meanwhile.
//!
//! Runs in a network namespace the test creates (`unshare --net`), so that it can enable
//! `net.ipv4.tcp_migrate_req` (which the upgrade procedure asks for: connections queued on the
//! old process's listener move to the new one's instead of being reset) without touching the
//! host. Needs root (`#[ignore]`d: run with `--ignored`).

use crate::support::BENCH;
use std::process::Command;

use crate::support::{require, runs};

const RELAY: &str = env!("CARGO_BIN_EXE_l4relay");

/// The whole scenario, run by bash inside the namespace. Waits are bounded polls; the only
/// fixed pauses pace the load (it runs before, during and after the old process's drain).
const SCENARIO: &str = r#"
set -eu
ip link set lo up
sysctl -qw net.ipv4.tcp_migrate_req=1
dir=$(mktemp -d)
cat > "$dir/relay.toml" <<EOF
[drain]
announce = "1s"
deadline = "3s"
close_spread = "500ms"
[admin]
listen = "off"
[[listener]]
name = "upgrade"
listen = "127.0.0.1:8443"
pool = "p"
[[pool]]
name = "p"
  [[pool.server]]
  address = "127.0.0.1:9000"
EOF
"$BENCH" serve --listen 127.0.0.1:9000 --mode echo > /dev/null 2>&1 &
echo_pid=$!
wait_ready() { for _ in $(seq 200); do grep -q "relaying on" "$1" && return 0; sleep 0.05; done; echo "not ready: $1" >&2; cat "$1" >&2; return 1; }
"$RELAY" run --config "$dir/relay.toml" > /dev/null 2> "$dir/old.err" &
old=$!
wait_ready "$dir/old.err"
"$BENCH" rate --target 127.0.0.1:8443 --concurrency 8 --duration 5s --warmup 0s --request 100 --reply 100 \
  --json "$dir/rate.json" --quiet > /dev/null 2>&1 &
load=$!
sleep 1
"$RELAY" run --takeover --config "$dir/relay.toml" > /dev/null 2> "$dir/new.err" &
new=$!
wait_ready "$dir/new.err"
kill -TERM "$old"
old_status=0
wait "$old" || old_status=$?
wait "$load"
echo "old_exit=$old_status"
cat "$dir/rate.json"
kill -INT "$new" "$echo_pid"
wait "$new" || true
rm -rf "$dir"
"#;

#[test]
#[ignore = "needs root and unshare (util-linux): run with --ignored"]
fn no_connection_refused_while_the_old_process_drains() {
    require(
        "a network namespace (unshare --net: root, util-linux)",
        runs("unshare", &["--net", "true"]),
    );
    let out = Command::new("unshare")
        .args(["--net", "bash", "-c", SCENARIO])
        .env("RELAY", RELAY)
        .env("BENCH", &*BENCH)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scenario failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (exit_line, json) = stdout.split_once('\n').unwrap();
    assert_eq!(
        exit_line, "old_exit=0",
        "the old process did not drain and exit cleanly"
    );
    let report: serde_json::Value = serde_json::from_str(json).expect("rate report");
    let connections = report["result"]["connections"].as_u64().unwrap();
    assert!(
        connections > 1000,
        "too little load to mean anything: {connections}"
    );
    assert_eq!(
        report["errors"]["total"], 0,
        "connections failed during the upgrade: {}",
        report["errors"]
    );
}
