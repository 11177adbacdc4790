#!/usr/bin/env bash
# Quick A/B check while optimising: start the proxy (bench/proxy-cmd.sh) pinned to the server
# CPU in front of an already-running upstream, drive it with wrk from the other CPU, and print
# the proxy's CPU microseconds per request (user+system from /proc), which is far steadier on
# a noisy machine than req/s. Usage: bench/cpu-per-request.sh [connections] [seconds] [path]
# BENCH_METHOD=POST BENCH_BODY_BYTES=N send a JSON body of N bytes (bench/lib/bench.lua).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
conns=${1:-16}; secs=${2:-5}; path=${3:-/admin/products}
port=${BENCH_PROXY_PORT:-18090}
export BENCH_LISTEN_ADDR=127.0.0.1:$port BENCH_PROXY_PORT=$port TOKIO_WORKER_THREADS=1
export BENCH_UPSTREAM_URL=${BENCH_UPSTREAM_URL:-http://127.0.0.1:18080}
taskset -c "${BENCH_SERVER_CPU:-1}" "$here/proxy-cmd.sh" 2>"${TMPDIR:-/tmp}/cpu-per-request.log" &
pid=$!
trap 'kill -INT $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$port$path" && break; sleep 0.1; done
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
uticks() { awk '{print $14}' "/proc/$pid/stat"; }
# Context switches of all the proxy's threads: voluntary (it slept: nothing to do) and not.
ctxt() { cat /proc/"$pid"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt/ {v += $2} /^nonvoluntary_ctxt/ {n += $2} END {print v, n}'; }
export BENCH_METHOD=${BENCH_METHOD:-GET} BENCH_BODY_BYTES=${BENCH_BODY_BYTES:-0}
taskset -c "${BENCH_LOADGEN_CPU:-0}" wrk -t1 -c"$conns" -d1s -s "$here/lib/bench.lua" "http://127.0.0.1:$port$path" >/dev/null
t0=$(ticks); u0=$(uticks); read -r v0 n0 < <(ctxt)
out=$(taskset -c "${BENCH_LOADGEN_CPU:-0}" wrk -t1 -c"$conns" -d"${secs}s" -s "$here/lib/bench.lua" "http://127.0.0.1:$port$path")
t1=$(ticks); u1=$(uticks); read -r v1 n1 < <(ctxt)
reqs=$(awk '/requests in/ {print $1}' <<<"$out")
rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
hz=$(getconf CLK_TCK)
awk -v t=$((t1 - t0)) -v u=$((u1 - u0)) -v r="$reqs" -v hz="$hz" -v rps="$rps" -v rss="$(awk '/VmHWM/ {print $2}' /proc/$pid/status)" \
  -v vcs=$((v1 - v0)) -v ncs=$((n1 - n0)) \
  'BEGIN { printf "requests %d  req/s %s  proxy CPU %.1f us/req (user %.1f, system %.1f)  peak RSS %.1f MiB  context switches/req %.3f voluntary %.3f involuntary\n", r, rps, t / hz * 1e6 / r, u / hz * 1e6 / r, (t - u) / hz * 1e6 / r, rss / 1024, vcs / r, ncs / r }'
