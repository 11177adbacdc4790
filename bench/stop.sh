#!/usr/bin/env bash
# bench/stop.sh - stop what bench/run.sh left running (after --keep-running or a killed run):
# the proxy under test, the reference proxies, the fake upstream and the token service. It goes
# only by the pidfiles in the state directory (${BENCH_STATE_DIR:-bench/.state}/run/), each
# checked against the process start time, so a recycled PID is never signalled.
#
# Usage: bench/stop.sh [NAME...]    NAME: proxy proxy-BIN caddy haproxy nginx upstream tokens
#                                   (default: all)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

names=("$@")
if [ ${#names[@]} -eq 0 ]; then
    names=(proxy)
    # run.sh --bin NAME=PATH: one service proxy-NAME per binary
    for f in "$STATE_DIR"/run/proxy-*.pid; do [ -e "$f" ] && names+=("$(basename "$f" .pid)"); done
    names+=(caddy haproxy nginx upstream tokens)
fi
for name in "${names[@]}"; do
    if [ -f "$(pidfile "$name")" ]; then
        stop_service "$name"
    fi
done
