#!/usr/bin/env bash
# A short soak for CI: tests/soak.rs in a release build for SOAK_SECONDS (default 120), the
# mixed load with reloads and server flaps, then its leak checks (see the test's doc comment).
# The nightly-length run is SOAK_SECONDS=1200.
set -euo pipefail
cd "$(dirname "$0")/.."
export SOAK_SECONDS="${SOAK_SECONDS:-120}"
exec cargo test --release --locked --test soak -- --ignored --nocapture
