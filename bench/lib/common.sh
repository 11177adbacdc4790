# Shared settings and helpers for bench/run.sh and bench/stop.sh. Source it; don't run it.
# shellcheck shell=bash disable=SC2034  # the settings are used by the scripts sourcing this

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
STATE_DIR=${BENCH_STATE_DIR:-$BENCH_DIR/.state}     # configs, pidfiles, logs (git-ignored)
RESULTS_DIR=${BENCH_RESULTS_DIR:-$BENCH_DIR/results}

# --- Ports: everything listens on 127.0.0.1, at fixed offsets from one base ------
# BENCH_PORT_BASE (or run.sh --port-base) moves the whole block, e.g. when another
# copy of the benchmark already uses 18080-18099.
set_ports() {
    PORT_BASE=$1
    UPSTREAM_PORT=$((PORT_BASE + 0))   # fake Medusa admin API (nginx)
    NGINX_PORT=$((PORT_BASE + 1))      # reference proxy: nginx
    HAPROXY_PORT=$((PORT_BASE + 2))    # reference proxy: HAProxy
    CADDY_PORT=$((PORT_BASE + 3))      # reference proxy: Caddy (optional target)
    TOKEN_PORT=$((PORT_BASE + 4))      # short-token mode: the token service (lib/token_service.py)
    PROXY_PORT=$((PORT_BASE + 10))     # medusa-auth-proxy; its ops listener is PROXY_PORT + 1
}
set_ports "${BENCH_PORT_BASE:-18080}"

# --- CPU placement (see README.md, "Method") --------------------------------------
# The load generator gets a core of its own; the upstream and whichever proxy is being
# measured share the other ("server") core, so a proxy's cost shows up directly as lost
# upstream throughput. Override with BENCH_LOADGEN_CPU / BENCH_SERVER_CPU.
NCPU=$(nproc)
LOADGEN_CPU=${BENCH_LOADGEN_CPU:-0}
if [ "$NCPU" -ge 2 ]; then SERVER_CPU=${BENCH_SERVER_CPU:-1}; else SERVER_CPU=${BENCH_SERVER_CPU:-0}; fi

# --- Credentials -------------------------------------------------------------------
JWT_SECRET=bench-secret
ADMIN_EMAIL=admin@bench.local
ADMIN_PASSWORD=bench-password

CLK_TCK=$(getconf CLK_TCK)

log()  { printf '[bench] %s\n' "$*" >&2; }
die()  { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

# nginx's worker_cpu_affinity wants a bit mask, lowest CPU rightmost: 1 -> "10".
cpu_mask() { local m=1 i; for ((i = 0; i < $1; i++)); do m="${m}0"; done; echo "$m"; }

# --- Pidfiles --------------------------------------------------------------------
# A pidfile holds "PID STARTTIME" (STARTTIME = field 22 of /proc/PID/stat), so a recycled
# PID is never mistaken for one of ours.
pidfile()        { echo "$STATE_DIR/run/$1.pid"; }
proc_starttime() { [ -r "/proc/$1/stat" ] && sed 's/^.*) //' "/proc/$1/stat" | awk '{print $20}'; }

# Print the PID recorded for service $1 if that very process is still alive (a zombie,
# i.e. exited but not yet reaped by run.sh, counts as gone).
service_pid() {
    local f pid start state
    f=$(pidfile "$1")
    [ -s "$f" ] || return 1
    read -r pid start _ <"$f" || return 1
    [ -n "$pid" ] && [ "$(proc_starttime "$pid" 2>/dev/null)" = "$start" ] || return 1
    state=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)
    [ "$state" != Z ] || return 1
    echo "$pid"
}

# start_service NAME CMD...: start CMD in the background in its own session (a Ctrl-C
# aimed at run.sh does not hit it directly), output to .state/logs/NAME.log, and record it.
start_service() {
    local name=$1 pid
    shift
    # 9>&-: do not inherit run.sh's saved stderr, so a service left running never holds
    # the caller's terminal or pipe open.
    setsid "$@" >"$STATE_DIR/logs/$name.log" 2>&1 </dev/null 9>&- &
    pid=$!
    echo "$pid $(proc_starttime "$pid")" >"$(pidfile "$name")"
    echo "$pid"
}

# Stop service $1 by its pidfile: SIGTERM to its process group, wait up to 5 s, then
# SIGKILL. start_service made it a session and group leader, so the signal reaches its
# children (e.g. nginx workers) and nothing this harness did not start.
stop_service() {
    local name=$1 pid target i
    if pid=$(service_pid "$name"); then
        target=$pid
        [ "$(ps -o pgid= -p "$pid" | tr -d ' ')" = "$pid" ] && target=-$pid
        kill -TERM -- "$target" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            service_pid "$name" >/dev/null || break
            sleep 0.1
        done
        if service_pid "$name" >/dev/null; then
            log "$name (pid $pid) ignored SIGTERM; sending SIGKILL"
            kill -KILL -- "$target" 2>/dev/null || true
        fi
        log "stopped $name (pid $pid)"
    fi
    rm -f "$(pidfile "$name")"
}

# --- Process metrics -------------------------------------------------------------
# PID plus all its descendants (nginx: master + worker).
process_tree() {
    local pid=$1 child
    echo "$pid"
    for child in $(ps -o pid= --ppid "$pid" 2>/dev/null); do process_tree "$child"; done
}

# Sum of user+system CPU clock ticks consumed so far by the given PIDs.
cpu_ticks() {
    local pid total=0 t
    for pid in "$@"; do
        t=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}')
        total=$((total + ${t:-0}))
    done
    echo "$total"
}

# Sum of a /proc/PID/status field (in kB) over the given PIDs, e.g. VmHWM.
status_kb() {
    local field=$1 pid total=0 v
    shift
    for pid in "$@"; do
        v=$(awk -v f="$field:" '$1 == f {print $2}' "/proc/$pid/status" 2>/dev/null)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# --- Network helpers -------------------------------------------------------------
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_http URL EXPECTED_STATUS TIMEOUT_S [curl args...]: poll until URL answers with
# EXPECTED_STATUS; fail after TIMEOUT_S seconds.
wait_http() {
    local url=$1 want=$2 timeout=$3 deadline code
    shift 3
    deadline=$((SECONDS + timeout))
    while :; do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@" "$url" 2>/dev/null)
        [ "$code" = "$want" ] && return 0
        [ "$SECONDS" -ge "$deadline" ] && { log "timeout waiting for $url ($want), last status '$code'"; return 1; }
        sleep 0.1
    done
}
