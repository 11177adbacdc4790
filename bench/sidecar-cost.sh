#!/usr/bin/env bash
# What the proxy costs a pod while it waits: time from exec to /readyz 200 (fake Medusa on
# loopback), resident memory when idle, and wake-ups per second with no traffic and no
# connection open (voluntary context switches of every thread, from /proc). Measured by
# tests/idle.rs on the release binary (or MEDUSA_AUTH_PROXY_BIN), RUNS times (default 3),
# each idle window IDLE_SECONDS long (default 60). Prints each run's figures, then medians.
# Fails if a run wakes more than once a second on average (issue 16).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3}
if [ -z "${MEDUSA_AUTH_PROXY_BIN:-}" ]; then
  cargo build --release --quiet
  export MEDUSA_AUTH_PROXY_BIN=target/release/medusa-auth-proxy
fi
export IDLE_SECONDS=${IDLE_SECONDS:-60}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for i in $(seq "$runs"); do
  cargo test --quiet --test idle -- --nocapture 2>&1 \
    | grep -E "start to ready|idle RSS|idle proxy|panicked" | sed "s/^/run $i: /" | tee -a "$out"
done
median() { sort -n | awk '{a[NR]=$1} END {if (NR) print (NR % 2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2); else print "n/a"}'; }
echo "binary: $MEDUSA_AUTH_PROXY_BIN, $runs runs, idle window ${IDLE_SECONDS} s"
echo "median start to ready: $(grep -o 'ready: [0-9.]*' "$out" | awk '{print $2}' | median) ms"
echo "median idle RSS: $(grep -o 'idle RSS: [0-9.]*' "$out" | awk '{print $3}' | median) MiB"
echo "median idle wake-ups: $(grep -o '([0-9.]*/s)' "$out" | tr -d '()/s' | median) per second"
! grep -q panicked "$out"
