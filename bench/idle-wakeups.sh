#!/usr/bin/env bash
# Idle cost of the proxy: wake-ups per second with no traffic and no connection open, counted
# from /proc (voluntary context switches of every thread) by tests/idle.rs, on the release
# binary over IDLE_SECONDS (default 60). Prints the figure; fails above one per second.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
IDLE_SECONDS=${IDLE_SECONDS:-60} \
MEDUSA_AUTH_PROXY_BIN=${MEDUSA_AUTH_PROXY_BIN:-target/release/medusa-auth-proxy} \
  cargo test --quiet --test idle -- --nocapture 2>&1 | grep -E "idle proxy|test result|panicked"
