#!/usr/bin/env bash
# Start medusa-auth-proxy for a benchmark harness: writes a config from the BENCH_* variables
# (listen address, upstream URL, admin email/password) and execs the release binary, so the
# harness measures the proxy process itself. Extra TOML can be appended with BENCH_EXTRA_TOML.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${MEDUSA_AUTH_PROXY_BIN:-$here/target/release/medusa-auth-proxy}
# Its own directory per proxy (run.sh --bin runs several; each watches its config file).
dir=${BENCH_PROXY_DIR:-${BENCH_STATE_DIR:-/tmp/medusa-auth-proxy-bench}/proxy}
mkdir -p "$dir"
ops_port=$(( ${BENCH_PROXY_PORT:-18090} + 1 ))
cat >"$dir/config.toml" <<TOML
[proxy]
listen = "${BENCH_LISTEN_ADDR:-127.0.0.1:18090}"
shutdown_grace = "2s"

[upstream]
url = "${BENCH_UPSTREAM_URL:-http://127.0.0.1:18080}"

[auth]
flavor = "v1"
email = "${BENCH_ADMIN_EMAIL:-admin@bench.local}"
password_env = "BENCH_ADMIN_PASSWORD"

[ops]
listen = "127.0.0.1:${ops_port}"
${BENCH_EXTRA_TOML:-}
TOML
export BENCH_ADMIN_PASSWORD=${BENCH_ADMIN_PASSWORD:-bench-password}
exec "$bin" run --config "$dir/config.toml"
