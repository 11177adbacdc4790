#!/usr/bin/env bash
# Deterministic A/B of the proxy's user-space work: run it under valgrind's callgrind in front
# of an already-running upstream, send a fixed number of keep-alive requests on one connection,
# and print the instructions it executed per request. Two counts (N and 3N requests) are run
# and differenced, so start-up, the login and shutdown cancel out. Unlike CPU time this does
# not move with the machine's load (kernel work is not counted; see cpu-per-request.sh).
#
# Usage: bench/instructions-per-request.sh [requests] [GET|POST] [body bytes]
#   MEDUSA_AUTH_PROXY_BIN=path  the binary (default target/release/medusa-auth-proxy)
#   BENCH_UPSTREAM_URL          the upstream (default http://127.0.0.1:18080; leave one running
#                               with bench/run.sh --targets direct --rounds 1 --duration 1 --keep-running)
#   CALLGRIND_KEEP=dir          keep the callgrind.out files there (for callgrind_annotate)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
n=${1:-1000}; method=${2:-GET}; bytes=${3:-4096}
port=${BENCH_PROXY_PORT:-18090}
command -v valgrind >/dev/null || { echo "valgrind not found (apt-get install valgrind)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export BENCH_LISTEN_ADDR=127.0.0.1:$port BENCH_PROXY_PORT=$port TOKIO_WORKER_THREADS=1
export BENCH_UPSTREAM_URL=${BENCH_UPSTREAM_URL:-http://127.0.0.1:18080}
export BENCH_PROXY_DIR=$work/proxy
bin=$(realpath "${MEDUSA_AUTH_PROXY_BIN:-$here/../target/release/medusa-auth-proxy}")

# requests COUNT: COUNT keep-alive requests on one connection; each must answer 2xx.
requests() {
    python3 - "$port" "$1" "$method" "$bytes" <<'EOF'
import http.client, sys
port, n, method, size = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
body = None
if method == "POST":
    head = b'{"title":"bench","description":"'
    body = head + b"x" * (size - len(head) - 2) + b'"}'
c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
for _ in range(n):
    c.request(method, "/admin/products", body=body,
              headers={"Content-Type": "application/json"} if body else {})
    r = c.getresponse()
    r.read()
    if r.status // 100 != 2:
        sys.exit(f"HTTP {r.status}")
EOF
}

# instructions COUNT: total instructions of one proxy life serving COUNT requests.
instructions() {
    local count=$1 out="$work/callgrind.$1.out" pid i
    # proxy-cmd.sh writes the config and execs "the binary": here valgrind running it.
    printf '#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file=%q %q "$@"\n' \
        "$out" "$bin" >"$work/bin"
    chmod +x "$work/bin"
    MEDUSA_AUTH_PROXY_BIN=$work/bin "$here/proxy-cmd.sh" 2>"$work/valgrind.$count.log" &
    pid=$!
    for i in $(seq 600); do
        curl -fs -o /dev/null "http://127.0.0.1:$port/admin/products" && break
        kill -0 "$pid" 2>/dev/null || { tail "$work/valgrind.$count.log" >&2; exit 1; }
        sleep 0.1
    done
    requests "$count"
    kill -INT "$pid"
    wait "$pid" || true
    [ -z "${CALLGRIND_KEEP:-}" ] || { mkdir -p "$CALLGRIND_KEEP"; cp "$out" "$CALLGRIND_KEEP/"; }
    awk '/^summary:|^totals:/ {print $2; exit}' "$out"
}

a=$(instructions "$n")
b=$(instructions $((3 * n)))
awk -v a="$a" -v b="$b" -v n="$n" -v m="$method" -v s="$bytes" -v bin="$bin" \
    'BEGIN { printf "%s %s%s: %.0f instructions per request (%d requests: %.0f, %d: %.0f)\n",
             bin, m, (m == "POST" ? " " s " B" : ""), (b - a) / (2 * n), n, a, 3 * n, b }'
