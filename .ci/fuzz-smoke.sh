#!/usr/bin/env bash
# A short run of every cargo-fuzz target (FUZZ_SECONDS each, default 30), seeded from
# fuzz/corpus/: enough to catch a parser or relay change that breaks an invariant on the seeds
# or their near neighbours. The 10-minute runs are in fuzz/README.md.
#
# One build without a sanitizer serves all four targets (the parsers are safe Rust, and the
# relay's unsafe code is the splice/pipe syscalls); libFuzzer's flags are nightly-only, which
# RUSTC_BOOTSTRAP=1 unlocks on the stable toolchain. New inputs go to a scratch directory, so
# the committed corpus is only read; a crash leaves its input in fuzz/artifacts/ and fails CI.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-30}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version '^0.13'
export RUSTC_BOOTSTRAP=1

cargo fuzz build --sanitizer none
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in proxy_protocol client_hello config relay_state; do
  extra=()
  case $target in
    client_hello) extra=(-max_len=17000) ;;
    config) extra=(-dict=fuzz/config.dict) ;;
    relay_state) extra=(-max_len=257) ;;
  esac
  mkdir -p "$scratch/$target"
  echo "fuzz: $target for ${seconds}s"
  log="$scratch/$target.log"
  status=0
  cargo fuzz run --sanitizer none "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 "${extra[@]}" >"$log" 2>&1 || status=$?
  grep -E '^stat::number_of_executed_units|^Done ' "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -n 60 "$log" >&2
    echo "fuzz: $target FAILED (exit $status)" >&2
    exit 1
  fi
done
