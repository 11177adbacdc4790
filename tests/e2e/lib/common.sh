# Shared settings and helpers for the e2e scripts. Source it; don't run it.
# shellcheck shell=bash disable=SC2034  # settings are used by the scripts that source this

E2E_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)   # tests/e2e in the repo
E2E_REPO=$(cd "$E2E_SRC/../.." && pwd)
E2E_DIR=${E2E_DIR:-/tmp/medusa-auth-proxy-e2e}               # installs, state, logs
E2E_STATE=$E2E_DIR/state                                      # pidfiles, ports, configs
E2E_LOGS=$E2E_DIR/logs

# PostgreSQL: Debian's cluster, reached over loopback TCP with a password of our own.
E2E_PG_VERSION=${E2E_PG_VERSION:-15}
E2E_PG_CLUSTER=${E2E_PG_CLUSTER:-main}
E2E_DB_ROLE=medusa_e2e
E2E_DB_PASSWORD=medusa_e2e   # a throwaway role on a loopback-only cluster

# The admin user that setup.sh creates in both servers; the proxy gets the password via env.
E2E_ADMIN_EMAIL=admin@example.com
E2E_ADMIN_PASSWORD=${E2E_ADMIN_PASSWORD:-e2e-admin-password-not-secret}
# A second v2 user: the account of the read-only identity in the `identities` group.
E2E_READER_EMAIL=reader@example.com
E2E_READER_PASSWORD=${E2E_READER_PASSWORD:-e2e-reader-password-not-secret}

export MEDUSA_DISABLE_TELEMETRY=true
export DO_NOT_TRACK=1
export NEXT_TELEMETRY_DISABLED=1
export NPM_CONFIG_UPDATE_NOTIFIER=false
export NPM_CONFIG_FUND=false
export NPM_CONFIG_AUDIT=false

e2e_log()  { printf '[e2e %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
e2e_die()  { printf '[e2e %s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }

# A free TCP port on 127.0.0.1, chosen by the kernel. (Racy in theory; fine on a test box.)
e2e_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# ---- per-server environment ------------------------------------------------------------------
# e2e_db_url v1|v2
e2e_db_url() { echo "postgres://$E2E_DB_ROLE:$E2E_DB_PASSWORD@127.0.0.1:$(e2e_pg_port)/medusa_e2e_$1"; }

e2e_pg_port() {
    pg_lsclusters -h | awk -v v="$E2E_PG_VERSION" -v c="$E2E_PG_CLUSTER" '$1==v && $2==c {print $3}'
}

# ---- pidfiles --------------------------------------------------------------------------------
# A pidfile holds "PID STARTTIME" (field 22 of /proc/PID/stat) so that a recycled PID is never
# mistaken for one of ours. Only processes with a pidfile are ever signalled.
e2e_pidfile()      { echo "$E2E_STATE/pids/$1.pid"; }
e2e_starttime()    { [ -r "/proc/$1/stat" ] && sed 's/^.*) //' "/proc/$1/stat" | awk '{print $20}'; }

# Print the PID of service $1 if that very process is still alive (zombies count as gone).
e2e_service_pid() {
    local f pid start state
    f=$(e2e_pidfile "$1")
    [ -s "$f" ] || return 1
    read -r pid start <"$f" || return 1
    [ -n "$pid" ] && [ "$(e2e_starttime "$pid" 2>/dev/null)" = "$start" ] || return 1
    state=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)
    [ "$state" != Z ] || return 1
    echo "$pid"
}

# e2e_start NAME LOGFILE CMD... : start CMD in its own session (a Ctrl-C aimed at the runner
# does not hit it directly; the runner's trap stops it in order), output appended to LOGFILE.
e2e_start() {
    local name=$1 logfile=$2 pid
    shift 2
    mkdir -p "$E2E_STATE/pids" "$(dirname "$logfile")"
    if pid=$(e2e_service_pid "$name"); then
        e2e_die "$name is already running (pid $pid); stop it first: $E2E_SRC/ctl.sh stop $name"
    fi
    printf '\n===== %s start: %s\n' "$(date '+%F %T')" "$*" >>"$logfile"
    setsid "$@" >>"$logfile" 2>&1 </dev/null &
    pid=$!
    echo "$pid $(e2e_starttime "$pid")" >"$(e2e_pidfile "$name")"
    e2e_log "started $name (pid $pid), log $logfile"
}

# e2e_stop NAME [GRACE_SECONDS] : SIGTERM the recorded PID, SIGKILL it after the grace.
e2e_stop() {
    local name=$1 grace=${2:-20} pid i
    if ! pid=$(e2e_service_pid "$name"); then
        rm -f "$(e2e_pidfile "$name")"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    # Once seen gone, it is gone: a process that exits within the first check can still read
    # as alive a moment later in /proc (seen: "ignored SIGTERM" logged the millisecond the
    # proxy said "drained; bye"), and must not be reported as ignoring SIGTERM.
    local gone=0
    for ((i = 0; i < grace * 10; i++)); do
        if ! e2e_service_pid "$name" >/dev/null; then
            gone=1
            break
        fi
        sleep 0.1
    done
    if [ "$gone" = 0 ] && e2e_service_pid "$name" >/dev/null; then
        e2e_log "$name (pid $pid) ignored SIGTERM for ${grace}s; SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            e2e_service_pid "$name" >/dev/null || break
            sleep 0.1
        done
    fi
    # Reap it if it is our own child, so that it does not linger as a zombie.
    wait "$pid" 2>/dev/null || true
    rm -f "$(e2e_pidfile "$name")"
    e2e_log "stopped $name (pid $pid)"
}

# Stop every service that has a pidfile, proxies first (they sit in front of Medusa).
e2e_stop_all() {
    local f name
    [ -d "$E2E_STATE/pids" ] || return 0
    for f in "$E2E_STATE"/pids/proxy-*.pid "$E2E_STATE"/pids/*.pid; do
        [ -e "$f" ] || continue
        name=$(basename "$f" .pid)
        e2e_stop "$name" 20
    done
}

# e2e_wait_http URL SECONDS [NAME] : until URL answers 200 (curl, no proxy, loopback only).
e2e_wait_http() {
    local url=$1 secs=$2 name=${3:-} i
    for ((i = 0; i < secs * 10; i++)); do
        if curl -fsS --noproxy '*' -o /dev/null --max-time 2 "$url" 2>/dev/null; then
            return 0
        fi
        if [ -n "$name" ] && ! e2e_service_pid "$name" >/dev/null; then
            e2e_log "$name exited while waiting for $url"
            return 1
        fi
        sleep 0.1
    done
    return 1
}
