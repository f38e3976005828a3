#!/usr/bin/env bash
# A/B of two l4relay binaries on the connection path: short connections (connect, 100 B each way,
# close: conn/s and relay CPU µs per connection), keep-alive requests at saturation (req/s and
# CPU µs per request) and idle connections (RSS KiB per connection after a 32 KiB burst). The
# relay runs on CPU 0 with one worker, the admin listener on (so a live-connection table, where
# the binary has one, is kept) and the access log off; the load and the echo upstream run on
# CPU 1. Binaries alternate within each round, so drift on a shared host hits both alike; the
# table shows medians and min–max of the rounds. Traffic stays on 127.0.0.1; every run is
# bounded by its duration.
#
#   scripts/ab-connections.sh OLD_BINARY NEW_BINARY
#   ROUNDS=5 SECONDS_EACH=5 IDLE=5000 scripts/ab-connections.sh old/l4relay target/release/l4relay
#   BENCH=path/to/l4relay-bench (default: target/release/l4relay-bench)
#   NEW_EXTRA='...' adds lines to the new binary's [[listener]] (e.g. stream timeouts)
set -euo pipefail

old=${1:?usage: $0 OLD_BINARY NEW_BINARY}
new=${2:?usage: $0 OLD_BINARY NEW_BINARY}
rounds=${ROUNDS:-3}
secs=${SECONDS_EACH:-3}
idle=${IDLE:-5000}
bench=${BENCH:-target/release/l4relay-bench}
new_extra=${NEW_EXTRA:-}
dir=$(mktemp -d "${TMPDIR:-/tmp}/ab-connections.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() {
  for _ in $(seq 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listening on $1" >&2
  return 1
}

upstream=$(free_port)
taskset -c 1 "$bench" serve --listen "127.0.0.1:$upstream" --mode echo >/dev/null 2>&1 &
pids+=($!)
wait_port "$upstream"

# Starts BINARY on CPU 0 with one worker; sets $port and $pid.
start_relay() {
  local label=$1 binary=$2 extra=$3 admin
  port=$(free_port)
  admin=$(free_port)
  cat >"$dir/$label.toml" <<EOF
[global]
workers = 1
log_format = "off"
max_connections = 20000

[admin]
listen = "127.0.0.1:$admin"

[[listener]]
name = "bench"
listen = "127.0.0.1:$port"
pool = "p"
backlog = 4096
$extra

[[pool]]
name = "p"
  [[pool.server]]
  address = "127.0.0.1:$upstream"
EOF
  taskset -c 0 "$binary" run --config "$dir/$label.toml" >/dev/null 2>"$dir/$label.log" &
  pid=$!
  wait_port "$port"
}

stop_relay() {
  kill -INT "$pid"
  wait "$pid" 2>/dev/null || true
}

# Runs each scenario against a fresh BINARY; prints "key value" lines.
measure() {
  local label=$1 binary=$2 extra=$3
  local common=(--quiet --json -)
  start_relay "$label" "$binary" "$extra"
  taskset -c 1 "$bench" rate "${common[@]}" --target "127.0.0.1:$port" --pid "$pid" \
    --concurrency 32 --request 100 --reply 100 --duration "${secs}s" --warmup 0.5s >"$dir/rate.json"
  stop_relay
  start_relay "$label" "$binary" "$extra"
  taskset -c 1 "$bench" latency "${common[@]}" --target "127.0.0.1:$port" --pid "$pid" \
    --connections 32 --size 100 --rate 0 --duration "${secs}s" --warmup 0.5s >"$dir/latency.json"
  stop_relay
  start_relay "$label" "$binary" "$extra"
  taskset -c 1 "$bench" idle "${common[@]}" --target "127.0.0.1:$port" --pid "$pid" \
    --count "$idle" --burst 32KiB --hold 2s --settle 1s >"$dir/idle.json"
  stop_relay
  python3 - "$dir" <<'EOF'
import json, sys
d = sys.argv[1]
rate = json.load(open(f"{d}/rate.json"))
lat = json.load(open(f"{d}/latency.json"))
idle = json.load(open(f"{d}/idle.json"))
rss = {s["stage"]: s["rss_bytes"] for s in idle["result"]["samples"]}
opened = idle["result"]["opened"] or 1
errors = sum(j["errors"]["total"] for j in (rate, lat, idle))
print("conn_per_s", rate["result"]["conn_per_s"])
print("cpu_us_per_conn", rate["proxy"]["cpu_us_per_conn"])
print("req_per_s", lat["result"]["req_per_s"])
print("cpu_us_per_req", lat["proxy"]["cpu_us_per_request"])
print("kib_per_idle_conn", (rss["end_of_hold"] - rss["before"]) / opened / 1024)
print("errors", errors)
EOF
}

for round in $(seq "$rounds"); do
  for label in old new; do
    if [ "$label" = old ]; then binary=$old extra=""; else binary=$new extra=$new_extra; fi
    measure "$label" "$binary" "$extra" | sed "s/^/$label $round /" >>"$dir/results"
    echo "round $round $label done" >&2
  done
done

python3 - "$dir/results" "$old" "$new" <<'EOF'
import sys
from collections import defaultdict
values = defaultdict(list)
for line in open(sys.argv[1]):
    label, _, key, value = line.split()
    values[(key, label)].append(float(value))
def cell(v):
    v = sorted(v)
    fmt = lambda x: f"{x:.3g}" if x < 100 else f"{x:.0f}"
    return f"{fmt(v[len(v) // 2])} ({fmt(v[0])}–{fmt(v[-1])})"
print(f"old: {sys.argv[2]}\nnew: {sys.argv[3]}\n")
print("| metric | old | new | new / old |")
print("|---|---|---|---|")
for key in ["conn_per_s", "cpu_us_per_conn", "req_per_s", "cpu_us_per_req", "kib_per_idle_conn", "errors"]:
    old, new = values[(key, "old")], values[(key, "new")]
    ratio = sorted(new)[len(new) // 2] / sorted(old)[len(old) // 2] if sorted(old)[len(old) // 2] else float("nan")
    print(f"| {key} | {cell(old)} | {cell(new)} | {ratio:.3f} |")
EOF
