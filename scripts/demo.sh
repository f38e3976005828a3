#!/usr/bin/env bash
# Runs l4relay on the bundled default config (config/l4relay.toml: 127.0.0.1:8443 → 127.0.0.1:9000)
# with the bench tool's echo server behind it, pushes a message and a few seconds of bulk traffic
# through, and shows what happened. Loopback only; stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "building (release)"
cargo build --release --quiet --bins
bin=target/release
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

say "starting an echo server on 127.0.0.1:9000 and l4relay on config/l4relay.toml"
"$bin/l4relay-bench" serve --listen 127.0.0.1:9000 --mode echo >"$work/echo.out" 2>&1 &
pids+=($!)
"$bin/l4relay" run --config config/l4relay.toml >"$work/access.log" 2>"$work/relay.err" &
relay=$!
pids+=($relay)

# Wait (bounded) until the relay says it is ready.
for _ in $(seq 100); do
  if (exec 3<>/dev/tcp/127.0.0.1/9090 && printf 'GET /readyz HTTP/1.0\r\n\r\n' >&3 && grep -q '200 OK' <&3) 2>/dev/null; then
    break
  fi
  sleep 0.1
done
cat "$work/relay.err"

say "a message through the relay"
exec 4<>/dev/tcp/127.0.0.1/8443
printf 'hello through l4relay\n' >&4
IFS= read -r -t 5 reply <&4
exec 4>&-
echo "sent:     hello through l4relay"
echo "received: $reply"

say "3 seconds of bulk traffic both ways, 4 connections"
"$bin/l4relay-bench" throughput --target 127.0.0.1:8443 --streams 4 --direction both \
  --duration 3s --warmup 500ms --pid "$relay" --quiet

# The relay logs each connection as it closes: give it a moment (bounded) to log all five.
for _ in $(seq 50); do
  [ "$(wc -l < "$work/access.log")" -ge 5 ] && break
  sleep 0.1
done
say "access log (one line per connection)"
tail -n 6 "$work/access.log"

say "metrics (excerpt of http://127.0.0.1:9090/metrics)"
exec 3<>/dev/tcp/127.0.0.1/9090
printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3
grep -E '^l4relay_(connections_total\{.*relayed|bytes_total|pipes|upstream_connections_total\{.*ok)' <&3 || true
exec 3>&-
