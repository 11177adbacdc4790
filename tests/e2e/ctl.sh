#!/usr/bin/env bash
# Start and stop the e2e servers by hand or from the driver. Every process is recorded in a
# pidfile under $E2E_DIR/state/pids and only those PIDs are ever signalled.
#
#   ctl.sh start-medusa v1|v2 [--jwt-secret S] [--jwt-expires-in D]   start, wait for /health
#   ctl.sh stop NAME                    SIGTERM (then SIGKILL after 20 s) the recorded PID
#   ctl.sh stop-all                     stop everything this suite started
#   ctl.sh status                       what runs, where, and its RSS
#   ctl.sh port v1|v2                   the port Medusa v1/v2 listens on (picked once per run)
#
# Medusa's port is picked at random the first time and kept in $E2E_DIR/state/medusa-VER.port,
# so a restart (new JWT secret, outage) comes back where the proxy expects it. run.sh removes
# the port files at the start of each run.
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

medusa_port() {
    local ver=$1 f="$E2E_STATE/medusa-$1.port"
    mkdir -p "$E2E_STATE"
    if [ ! -s "$f" ]; then
        e2e_free_port >"$f"
    fi
    cat "$f"
}

start_medusa() {
    local ver=$1 secret="" expires="" port dir name t0 t1
    shift
    while [ $# -gt 0 ]; do
        case $1 in
            --jwt-secret) secret=$2; shift 2 ;;
            --jwt-expires-in) expires=$2; shift 2 ;;
            *) e2e_die "start-medusa: unknown option $1" ;;
        esac
    done
    case $ver in v1 | v2) ;; *) e2e_die "start-medusa: v1 or v2, not '$ver'" ;; esac
    dir=$E2E_DIR/$ver
    [ -x "$dir/node_modules/.bin/medusa" ] || e2e_die "Medusa $ver is not installed in $dir: run $E2E_SRC/setup.sh"
    name=medusa-$ver
    port=$(medusa_port "$ver")
    # The secret and lifetime persist across restarts unless given again.
    mkdir -p "$E2E_STATE"
    if [ -n "$secret" ]; then echo "$secret" >"$E2E_STATE/$name.jwt_secret"; fi
    if [ ! -s "$E2E_STATE/$name.jwt_secret" ]; then echo "e2e-jwt-$ver-initial" >"$E2E_STATE/$name.jwt_secret"; fi
    if [ -n "$expires" ]; then echo "$expires" >"$E2E_STATE/$name.jwt_expires_in"; fi
    secret=$(cat "$E2E_STATE/$name.jwt_secret")
    expires=$(cat "$E2E_STATE/$name.jwt_expires_in" 2>/dev/null || true)

    local -a envs=(
        "E2E_DATABASE_URL=$(e2e_db_url "$ver")"
        "E2E_JWT_SECRET=$secret"
        "E2E_COOKIE_SECRET=e2e-cookie-$ver"
        "E2E_BACKEND_URL=http://127.0.0.1:$port"
        "MEDUSA_DISABLE_TELEMETRY=true"
    )
    local -a cmd
    if [ "$ver" = v1 ]; then
        # medusa start (v1) has no host option and binds every interface: the preload forces
        # 127.0.0.1 into every listen() of the process.
        # --expose-gc and E2E_MEMSTAT_FILE serve the RSS scenario's memory probe (SIGUSR2).
        envs+=("NODE_OPTIONS=--require=$E2E_SRC/lib/preload-v1.js --expose-gc"
            "E2E_LISTEN_HOST=127.0.0.1" "E2E_MEMSTAT_FILE=$E2E_STATE/$name.memstat.json")
        cmd=(node_modules/.bin/medusa start -p "$port")
    else
        # development keeps the session cookie usable over plain http; it also makes Medusa
        # log one line per request, which the driver counts.
        envs+=("NODE_ENV=development")
        if [ -n "$expires" ]; then envs+=("E2E_JWT_EXPIRES_IN=$expires"); fi
        cmd=(node_modules/.bin/medusa start -H 127.0.0.1 -p "$port")
    fi
    rm -f "$E2E_STATE/$name.memstat.json"
    t0=$(date +%s.%N)
    (cd "$dir" && e2e_start "$name" "$E2E_LOGS/$name.log" env "${envs[@]}" "${cmd[@]}")
    if ! e2e_wait_http "http://127.0.0.1:$port/health" 120 "$name"; then
        tail -n 40 "$E2E_LOGS/$name.log" >&2 || true
        e2e_die "$name did not answer /health on 127.0.0.1:$port"
    fi
    t1=$(date +%s.%N)
    check_loopback_only "$name" "$port"
    e2e_log "$name ready on 127.0.0.1:$port in $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}') s (jwt secret '${secret}'${expires:+, jwtExpiresIn $expires})"
}

# The network rule: nothing of ours listens anywhere but loopback.
check_loopback_only() {
    local name=$1 port=$2 pid bad
    pid=$(e2e_service_pid "$name") || return 0
    bad=$(ss -Hltnp 2>/dev/null | grep "pid=$pid," | awk '{print $4}' | grep -Ev '^(127\.0\.0\.1|\[::1\]):' || true)
    if [ -n "$bad" ]; then
        e2e_die "$name (pid $pid) listens on a non-loopback address: $bad"
    fi
}

status() {
    local f name pid rss
    [ -d "$E2E_STATE/pids" ] || { echo "nothing running"; return 0; }
    for f in "$E2E_STATE"/pids/*.pid; do
        [ -e "$f" ] || continue
        name=$(basename "$f" .pid)
        if pid=$(e2e_service_pid "$name"); then
            rss=$(awk '/^VmRSS/ {print $2 " " $3}' "/proc/$pid/status")
            echo "$name pid=$pid rss=$rss listen=$(ss -Hltnp | grep "pid=$pid," | awk '{print $4}' | paste -sd, -)"
        else
            echo "$name not running (stale pidfile)"
        fi
    done
}

main() {
    local sub=${1:-}
    shift || true
    case $sub in
        start-medusa) start_medusa "$@" ;;
        stop) [ $# -eq 1 ] || e2e_die "usage: ctl.sh stop NAME"; e2e_stop "$1" 20 ;;
        stop-all) e2e_stop_all ;;
        status) status ;;
        port) medusa_port "$1" ;;
        *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
    esac
}

main "$@"
