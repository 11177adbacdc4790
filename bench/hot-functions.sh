#!/usr/bin/env bash
# Regenerate build/hot-functions.txt: the functions the release binary runs while it serves
# requests (and while it idles between them), hottest first. build.rs hands the list to the
# linker, which places those functions together, so the code pages a busy proxy keeps
# resident are few (docs/performance.md, "Memory (issue 16)"). Rerun it after changes to the
# request path or to dependencies: a stale list costs memory, never correctness.
#
# Needs valgrind (callgrind), wrk and curl, and an upstream already running at
# BENCH_UPSTREAM_URL (default http://127.0.0.1:18080); leave one running with
#   bench/run.sh --targets direct --rounds 1 --duration 1 --keep-running
# Start-up is not recorded: its code is unmapped after the first login anyway (src/memory.rs).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
for tool in valgrind callgrind_control wrk curl nm; do
    command -v "$tool" >/dev/null || { echo "hot-functions.sh: $tool is missing" >&2; exit 1; }
done
(cd "$root" && cargo build --release --quiet)
bin=$root/target/release/medusa-auth-proxy
port=${BENCH_PROXY_PORT:-18090}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export BENCH_LISTEN_ADDR=127.0.0.1:$port BENCH_PROXY_PORT=$port TOKIO_WORKER_THREADS=1
export BENCH_UPSTREAM_URL=${BENCH_UPSTREAM_URL:-http://127.0.0.1:18080}
export BENCH_STATE_DIR=$work
printf '#!/bin/sh\nexec valgrind --tool=callgrind --instr-atstart=no --demangle=no --callgrind-out-file=%s "%s" "$@"\n' \
    "$work/callgrind.out" "$bin" >"$work/under-callgrind"
chmod +x "$work/under-callgrind"
MEDUSA_AUTH_PROXY_BIN=$work/under-callgrind "$here/proxy-cmd.sh" 2>"$work/proxy.log" &
pid=$!
ops=http://127.0.0.1:$((port + 1))
for _ in $(seq 600); do curl -fs -o /dev/null "$ops/readyz" && break; sleep 0.1; done
if ! kill -0 "$pid" 2>/dev/null || ! curl -fs -o /dev/null "$ops/readyz"; then
    echo "the proxy did not become ready" >&2; tail "$work/proxy.log" >&2; exit 1
fi
callgrind_control -i on "$pid" >/dev/null
load() {   # load CONNECTIONS METHOD BODY_BYTES SECONDS
    BENCH_METHOD=$2 BENCH_BODY_BYTES=$3 wrk -t1 -c"$1" -d"$4"s --timeout 10s \
        -s "$here/lib/bench.lua" "http://127.0.0.1:$port/admin/products" >/dev/null
}
load 1 GET 0 2; load 16 GET 0 2; load 64 GET 0 2; load 16 POST 4096 2; load 4 POST 1048576 3
# curl sends large bodies after `Expect: 100-continue`, as many HTTP clients do.
head -c 2097152 /dev/zero | tr '\0' 'x' >"$work/body"
for _ in 1 2 3; do
    curl -s -o /dev/null -H 'Content-Type: application/json' --data-binary @"$work/body" \
        "http://127.0.0.1:$port/admin/products"
    curl -s -o /dev/null "http://127.0.0.1:$port/admin/products"
done
# What an idle pod still runs: the kubelet's probes and the metrics scrape.
for path in readyz healthz metrics readyz; do curl -s -o /dev/null "$ops/$path"; done
# Idle until the pooled connections close and memory is released (pool_idle_timeout + 1 s).
sleep "${HOT_IDLE_SECONDS:-7}"
callgrind_control -i off "$pid" >/dev/null
kill -TERM "$pid" 2>/dev/null || { echo "the proxy had stopped:" >&2; tail "$work/proxy.log" >&2; exit 1; }
wait "$pid" 2>/dev/null || true
# Self cost per function (first event, Ir), from callgrind's compressed name table; only names
# the binary defines (libc's are not ours to place).
nm "$bin" | awk '$2 ~ /^[tTwW]$/ {print $3}' >"$work/defined"
python3 - "$work/callgrind.out" "$work/defined" >"$root/build/hot-functions.txt" <<'EOF'
import collections, re, sys
names, cost, cur, skip = {}, collections.Counter(), None, False
for line in open(sys.argv[1]):
    m = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
    if m:
        kind, ident, name = m.groups()
        if name:
            names[ident] = re.sub(r"'\d+$", "", name)
        if kind == "fn":
            cur = ident
        continue
    if line.startswith("calls="):
        skip = True
        continue
    if line[:1].isdigit() or line[:1] in "+-*":
        if skip:
            skip = False
            continue
        parts = line.split()
        if len(parts) >= 2 and cur:
            cost[names.get(cur, cur)] += int(parts[1])
defined = set(open(sys.argv[2]).read().split())
print("# Functions the proxy runs while serving and idling, hottest first: bench/hot-functions.sh")
print("# writes this file; build.rs hands it to the linker (see there for how a stale list")
print("# degrades).")
for name in sorted((n for n in set(names.values()) if n in defined), key=lambda n: (-cost[n], n)):
    print(name)
EOF
echo "build/hot-functions.txt: $(grep -vc "^#" "$root/build/hot-functions.txt") functions"
