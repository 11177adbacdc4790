#!/usr/bin/env bash
# bench/run.sh - measure medusa-auth-proxy against clients talking to the upstream directly
# and against nginx and HAProxy injecting a STATIC "Authorization: Bearer <JWT>" header,
# all in front of the same fast fake Medusa. With --token-lifetime N the fake upstream
# issues real JWTs that expire after N seconds instead, and the report counts logins and
# failed requests while the proxy renews its token under load.
#
# All targets get the same wrk load, interleaved round by round; the report gives medians
# over rounds and paired throughput ratios, so machine noise mostly cancels. See
# bench/README.md for the method. Everything listens on 127.0.0.1 only.
#
# Services it starts are stopped again when it ends (unless --keep-running); bench/stop.sh
# stops anything left behind, by pidfile.

set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
    cat <<EOF
Usage: bench/run.sh [options]

  --rounds N              interleaved rounds; medians are over these (default 5)
  --duration S            seconds per measured run (default 3)
  --warmup S              seconds per run of one unrecorded warm-up round, 0 = none (default 1)
  --connections LIST      GET /admin/products concurrency levels (default 1,16,64)
  --post LIST             POST /admin/products cases as SIZE:CONNECTIONS, SIZE in bytes
                          or with a k/m suffix (default 4k:16,1m:4); '' for none
  --targets LIST          subset of direct,nginx,haproxy,caddy,proxy
                          (default direct,nginx,haproxy,proxy; caddy is opt-in)

Short-token mode:
  --token-lifetime N      the fake upstream issues JWTs that expire N seconds after the
                          login and rejects expired ones; only direct and proxy can run.
                          Defaults change to: --targets proxy --connections 64 --post ''
                          --rounds 1 --warmup 0 --duration 30 (each can still be given).

Proxy under test:
  --proxy-cmd 'CMD'       how to start it (default: bench/proxy-cmd.sh, which writes a config
                          from the BENCH_* variables and execs target/release/medusa-auth-proxy).
                          Run with bash -c, pinned to the server CPU, with BENCH_LISTEN_ADDR,
                          BENCH_PROXY_PORT, BENCH_UPSTREAM_URL, BENCH_ADMIN_EMAIL,
                          BENCH_ADMIN_PASSWORD, BENCH_STATE_DIR and TOKIO_WORKER_THREADS=1 exported.
  --proxy-name NAME       its label in the tables (default medusa-auth-proxy)
  --proxy-wait S          how long it may take to answer GET /admin/products with 200 (default 30)
  --no-build              do not run 'cargo build --release' when the binary is missing or
                          older than the sources
  --bin NAME=PATH         measure this binary as its own target NAME (repeat it to compare
                          builds, e.g. --bin old=/tmp/old --bin new=target/release/...): each
                          runs side by side with the others, interleaved like every target, and
                          the report adds paired ratios against the first. Replaces 'proxy' in
                          --targets; not in short-token mode.

Services:
  --port-base P           ports P..P+11 are used (default \$BENCH_PORT_BASE or 18080)
  --keep-running          leave the upstream and reference proxies running afterwards
  --restart               restart them even if a previous --keep-running left them up
  --out DIR               results directory (default bench/results/<timestamp>)
  -h, --help              this text

Examples:
  bench/run.sh                              # full comparison, about 7 minutes
  bench/run.sh --rounds 2 --duration 1      # smoke test, about 1 minute
  bench/run.sh --token-lifetime 5           # renewals under load, about 40 seconds
EOF
}

# --- Options -------------------------------------------------------------------------
DURATION=3 ROUNDS=5 WARMUP=1 CONNECTIONS=1,16,64 POSTS=4k:16,1m:4
TARGETS_OPT=direct,nginx,haproxy,proxy
TOKEN_LIFETIME=""
PROXY_CMD=$(printf '%q' "$BENCH_DIR/proxy-cmd.sh")
PROXY_CMD_GIVEN=0
PROXY_NAME=medusa-auth-proxy
PROXY_WAIT=30
BUILD=1 KEEP_RUNNING=0 RESTART=0 OUT=""
BIN_NAMES=() BIN_PATHS=()
PAUSE=0.5   # seconds between two runs, so one target's connection teardown settles
declare -A GIVEN=()

while [ $# -gt 0 ]; do
    case "$1" in
        --duration)       DURATION=$2; GIVEN[duration]=1; shift 2 ;;
        --rounds)         ROUNDS=$2; GIVEN[rounds]=1; shift 2 ;;
        --warmup)         WARMUP=$2; GIVEN[warmup]=1; shift 2 ;;
        --connections)    CONNECTIONS=$2; GIVEN[connections]=1; shift 2 ;;
        --post)           POSTS=$2; GIVEN[post]=1; shift 2 ;;
        --targets)        TARGETS_OPT=$2; GIVEN[targets]=1; shift 2 ;;
        --token-lifetime) TOKEN_LIFETIME=$2; shift 2 ;;
        --proxy-cmd)      PROXY_CMD=$2; PROXY_CMD_GIVEN=1; shift 2 ;;
        --proxy-name)     PROXY_NAME=$2; shift 2 ;;
        --proxy-wait)     PROXY_WAIT=$2; shift 2 ;;
        --no-build)       BUILD=0; shift ;;
        --bin)            [[ "$2" == *=* ]] || die "--bin wants NAME=PATH, got '$2'"
                          BIN_NAMES+=("${2%%=*}"); BIN_PATHS+=("${2#*=}"); shift 2 ;;
        --port-base)      set_ports "$2"; shift 2 ;;
        --keep-running)   KEEP_RUNNING=1; shift ;;
        --restart)        RESTART=1; shift ;;
        --out)            OUT=$2; shift 2 ;;
        -h|--help)        usage; exit 0 ;;
        *)                usage >&2; die "unknown option: $1" ;;
    esac
done

MODE=fixed
if [ -n "$TOKEN_LIFETIME" ]; then
    [[ "$TOKEN_LIFETIME" =~ ^[1-9][0-9]*$ ]] || die "--token-lifetime must be a whole number of seconds"
    MODE=short-token
    [ -n "${GIVEN[targets]:-}" ] || TARGETS_OPT=proxy
    [ -n "${GIVEN[connections]:-}" ] || CONNECTIONS=64
    [ -n "${GIVEN[post]:-}" ] || POSTS=""
    [ -n "${GIVEN[rounds]:-}" ] || ROUNDS=1
    [ -n "${GIVEN[warmup]:-}" ] || WARMUP=0
    [ -n "${GIVEN[duration]:-}" ] || DURATION=30
    [ "${#BIN_NAMES[@]}" = 0 ] || die "--bin is not for short-token mode (the logins of several proxies cannot be told apart)"
fi
[[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || die "--duration must be a whole number of seconds"
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer"
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "--warmup must be a whole number of seconds"
if ! [[ "$PORT_BASE" =~ ^[0-9]+$ ]] || (( PORT_BASE < 1024 || PORT_BASE > 65000 )); then
    die "--port-base must be a port number between 1024 and 65000"
fi

# --- Scenarios: parallel arrays, one entry per load case -------------------------------
SC_ID=() SC_LABEL=() SC_METHOD=() SC_BYTES=() SC_CONNS=()
add_scenario() { SC_ID+=("$1"); SC_LABEL+=("$2"); SC_METHOD+=("$3"); SC_BYTES+=("$4"); SC_CONNS+=("$5"); }
size_bytes() {   # 4k -> 4096, 1m -> 1048576, 123 -> 123
    case "$1" in
        *[kK]) echo $(( ${1%[kK]} * 1024 )) ;;
        *[mM]) echo $(( ${1%[mM]} * 1024 * 1024 )) ;;
        *)     echo $(( $1 )) ;;
    esac
}
size_label() {   # 4096 -> 4KiB, 1048576 -> 1MiB
    local b=$1
    if (( b % 1048576 == 0 )); then echo "$((b / 1048576))MiB"
    elif (( b % 1024 == 0 )); then echo "$((b / 1024))KiB"
    else echo "${b}B"; fi
}
IFS=, read -r -a _conns <<<"$CONNECTIONS"
for c in "${_conns[@]}"; do
    [[ "$c" =~ ^[1-9][0-9]*$ ]] || die "bad --connections entry '$c'"
    add_scenario "get-c$c" "GET c=$c" GET 0 "$c"
done
if [ -n "$POSTS" ]; then
    IFS=, read -r -a _posts <<<"$POSTS"
    for p in "${_posts[@]}"; do
        [[ "$p" =~ ^[0-9]+[kKmM]?:[1-9][0-9]*$ ]] || die "bad --post entry '$p' (want SIZE:CONNECTIONS)"
        b=$(size_bytes "${p%%:*}"); c=${p##*:}
        (( b >= 64 )) || die "--post body must be at least 64 bytes"
        add_scenario "post-$(size_label "$b")-c$c" "POST $(size_label "$b") c=$c" POST "$b" "$c"
    done
fi
[ "${#SC_ID[@]}" -gt 0 ] || die "no scenarios selected"

# --- Targets -------------------------------------------------------------------------
# The proxies under test: one target "proxy" (the default), or one target per --bin, each
# with its own label, binary, ports (P+10+2k and the next for its ops listener) and service.
PROXIES=()
declare -A P_LABEL=() P_BIN=() P_PORT=() P_SVC=() P_PID=() P_VERSION=()
if [ "${#BIN_NAMES[@]}" -gt 0 ]; then
    for ((k = 0; k < ${#BIN_NAMES[@]}; k++)); do
        b=${BIN_NAMES[k]}
        [[ "$b" =~ ^[a-z][a-z0-9_]*$ ]] || die "--bin NAME must be lower case letters, digits and _ ('$b')"
        case "$b" in direct|nginx|haproxy|caddy|proxy|upstream|tokens) die "--bin NAME '$b' is taken by a target or service" ;; esac
        [ -z "${P_LABEL[$b]:-}" ] || die "--bin NAME '$b' given twice"
        [ -x "${BIN_PATHS[k]}" ] || die "--bin $b: ${BIN_PATHS[k]} is not an executable file"
        PROXIES+=("$b")
        P_LABEL[$b]=$b P_BIN[$b]=$(realpath "${BIN_PATHS[k]}") P_PORT[$b]=$((PROXY_PORT + 2 * k)) P_SVC[$b]=proxy-$b
    done
else
    PROXIES=(proxy)
    P_LABEL[proxy]=$PROXY_NAME P_PORT[proxy]=$PROXY_PORT P_SVC[proxy]=proxy
fi
is_proxy() { [ -n "${P_SVC[$1]:-}" ]; }

TARGETS=() NEED=(nginx wrk curl python3 taskset setsid ss)
IFS=, read -r -a _targets <<<"$TARGETS_OPT"
for t in "${_targets[@]}"; do
    case "$t" in
        direct) ;;
        proxy) TARGETS+=("${PROXIES[@]}"); continue ;;
        nginx|haproxy|caddy)
            [ "$MODE" = fixed ] || die "target '$t' injects a static token, which expires in short-token mode; use direct and/or proxy"
            [ "$t" = nginx ] || NEED+=("$t") ;;
        *) die "unknown target '$t'" ;;
    esac
    TARGETS+=("$t")
done
[ "${#TARGETS[@]}" -gt 0 ] || die "no targets selected"
has_target() { local t; for t in "${TARGETS[@]}"; do [ "$t" = "$1" ] && return 0; done; return 1; }
has_proxy() { local t; for t in "${TARGETS[@]}"; do is_proxy "$t" && return 0; done; return 1; }
[ "${#BIN_NAMES[@]}" = 0 ] || has_proxy || die "--bin needs 'proxy' in --targets"
for tool in "${NEED[@]}"; do
    command -v "$tool" >/dev/null || die "'$tool' not found; run bench/install-deps.sh (as root) to install the Debian packages"
done

target_port() {
    case "$1" in
        direct)  echo "$UPSTREAM_PORT" ;;
        nginx)   echo "$NGINX_PORT" ;;
        haproxy) echo "$HAPROXY_PORT" ;;
        caddy)   echo "$CADDY_PORT" ;;
        *)       echo "${P_PORT[$1]}" ;;
    esac
}

# --- The proxy binary ----------------------------------------------------------------
# With the default --proxy-cmd, make sure target/release/medusa-auth-proxy exists and is
# not older than the sources (a stale binary is the classic way to benchmark the wrong thing).
PROXY_BIN=""
if has_target proxy && [ "$PROXY_CMD_GIVEN" = 0 ]; then   # (with --bin, the binaries are given)
    PROXY_BIN=${MEDUSA_AUTH_PROXY_BIN:-$REPO_DIR/target/release/medusa-auth-proxy}
    if [ -z "${MEDUSA_AUTH_PROXY_BIN:-}" ]; then
        stale=""
        [ -x "$PROXY_BIN" ] && stale=$(find "$REPO_DIR/src" "$REPO_DIR/Cargo.toml" "$REPO_DIR/Cargo.lock" \
            -newer "$PROXY_BIN" -print -quit 2>/dev/null)
        if [ ! -x "$PROXY_BIN" ] || [ -n "$stale" ]; then
            if [ "$BUILD" = 1 ]; then
                command -v cargo >/dev/null || die "cargo not found; build target/release/medusa-auth-proxy first"
                log "building the release binary (cargo build --release)"
                (cd "$REPO_DIR" && cargo build --release --quiet) || die "cargo build --release failed"
            elif [ ! -x "$PROXY_BIN" ]; then
                die "$PROXY_BIN does not exist (run cargo build --release, or drop --no-build)"
            else
                log "WARNING: $PROXY_BIN is older than $stale (--no-build: measuring it anyway)"
            fi
        fi
    fi
    [ -x "$PROXY_BIN" ] || die "$PROXY_BIN is not executable"
    P_BIN[proxy]=$PROXY_BIN
fi

# --- State directory and rendered configs ----------------------------------------------
mkdir -p "$STATE_DIR"/{conf,run,logs} "$STATE_DIR"/tmp/{upstream,nginx,caddy}
TOKEN=$(python3 "$BENCH_DIR/lib/jwt.py" "$JWT_SECRET")   # the fixed token (exp 2100)
UPSTREAM_TEMPLATE=upstream-nginx.conf.in
[ "$MODE" = short-token ] && UPSTREAM_TEMPLATE=upstream-nginx-short-token.conf.in

render() {   # render TEMPLATE OUTPUT: fill every placeholder the templates use
    python3 "$BENCH_DIR/lib/render.py" "$BENCH_DIR/conf/$1" "$STATE_DIR/conf/$2" \
        STATE="$STATE_DIR" TOKEN="$TOKEN" \
        UPSTREAM_PORT="$UPSTREAM_PORT" NGINX_PORT="$NGINX_PORT" \
        HAPROXY_PORT="$HAPROXY_PORT" CADDY_PORT="$CADDY_PORT" TOKEN_PORT="$TOKEN_PORT" \
        UPSTREAM_CPU_MASK="$(cpu_mask "$SERVER_CPU")" PROXY_CPU_MASK="$(cpu_mask "$SERVER_CPU")" \
        PROXY_CPU="$SERVER_CPU" PRODUCTS_JSON="file:$BENCH_DIR/conf/products.json"
}
check_config() { local out; out=$("$@" 2>&1) || { printf '%s\n' "$out" >&2; die "config check failed: $*"; }; }
render "$UPSTREAM_TEMPLATE" upstream-nginx.conf
check_config nginx -t -q -p "$STATE_DIR" -c "$STATE_DIR/conf/upstream-nginx.conf"
if has_target nginx; then
    render proxy-nginx.conf.in proxy-nginx.conf
    check_config nginx -t -q -p "$STATE_DIR" -c "$STATE_DIR/conf/proxy-nginx.conf"
fi
if has_target haproxy; then
    render proxy-haproxy.cfg.in proxy-haproxy.cfg
    check_config haproxy -c -q -f "$STATE_DIR/conf/proxy-haproxy.cfg"
fi
CADDY_ENV=(XDG_CONFIG_HOME="$STATE_DIR/tmp/caddy" XDG_DATA_HOME="$STATE_DIR/tmp/caddy" GOMAXPROCS=1)
if has_target caddy; then
    render proxy-caddy.Caddyfile.in proxy-caddy.Caddyfile
    check_config env "${CADDY_ENV[@]}" caddy validate --adapter caddyfile --config "$STATE_DIR/conf/proxy-caddy.Caddyfile"
fi

# --- Services --------------------------------------------------------------------------
STARTED=()          # services this invocation started (stopped again at exit)
PROXIES_STARTED=()  # the proxies under test it started (always stopped at exit)
exec 9>&2           # original stderr, for cleanup messages
cleanup() {
    local rc=$? i
    trap - EXIT INT TERM
    exec 2>&9       # an interrupt can land inside run_one's "2>file" block
    for i in "${PROXIES_STARTED[@]}"; do stop_service "$i"; trim_log "$STATE_DIR/logs/$i.log"; done
    if [ "$KEEP_RUNNING" = 0 ]; then
        for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do stop_service "${STARTED[i]}"; done
    elif [ "${#STARTED[@]}" -gt 0 ]; then
        log "left running: ${STARTED[*]} (bench/stop.sh stops them)"
    fi
    exit "$rc"
}
# The proxy's access log (one line per request) reaches hundreds of MB in a full run;
# keep its beginning and end.
trim_log() {
    local f=$1
    [ -f "$f" ] && [ "$(stat -c %s "$f")" -gt $((20 * 1024 * 1024)) ] || return 0
    { head -n 200 "$f"; echo "[bench: $(wc -l <"$f") lines, middle trimmed]"; tail -n 200 "$f"; } >"$f.trimmed"
    mv "$f.trimmed" "$f"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'log "ERROR: status $? at line $LINENO: $BASH_COMMAND"' ERR

if [ "$RESTART" = 1 ]; then
    for s in "${P_SVC[@]}" caddy haproxy nginx upstream tokens; do stop_service "$s"; done
fi

# ensure_service NAME PORT READY_URL CONFIG CMD...: reuse a copy left running by an earlier
# --keep-running if its config is unchanged, else (re)start CMD and wait for READY_URL.
REUSED=()
ensure_service() {
    local name=$1 port=$2 ready=$3 conf=$4 pid sum
    shift 4
    sum=$(cat "$conf" <(printf '%s\n' "$@") | cksum | cut -d' ' -f1)
    if pid=$(service_pid "$name") && port_open "$port" \
        && [ "$(cut -d' ' -f3 "$(pidfile "$name")")" = "$sum" ]; then
        log "reusing $name (pid $pid) on port $port"
        REUSED+=("$name")
        return 0
    fi
    stop_service "$name"   # a stale pidfile, or a kept service with another config
    port_open "$port" && die "port $port is in use by something this harness did not start; try --port-base"
    pid=$(start_service "$name" "$@")
    echo "$(cat "$(pidfile "$name")") $sum" >"$(pidfile "$name")"
    STARTED+=("$name")
    if ! wait_http "$ready" 200 15; then
        tail -n 20 "$STATE_DIR/logs/$name.log" >&2 || true
        die "$name did not become ready"
    fi
    log "started $name (pid $pid) on port $port, pinned to CPU $SERVER_CPU"
}

PIN=(taskset -c "$SERVER_CPU")
TOKEN_LOG="$STATE_DIR/logs/token-events.tsv"
if [ "$MODE" = short-token ]; then
    cat "$BENCH_DIR/lib/token_service.py" "$BENCH_DIR/lib/jwt.py" >"$STATE_DIR/conf/token-service.src"
    ensure_service tokens "$TOKEN_PORT" "http://127.0.0.1:$TOKEN_PORT/health" "$STATE_DIR/conf/token-service.src" \
        "${PIN[@]}" python3 "$BENCH_DIR/lib/token_service.py" --port "$TOKEN_PORT" \
        --lifetime "$TOKEN_LIFETIME" --secret "$JWT_SECRET" --log "$TOKEN_LOG" \
        --prime-url "http://127.0.0.1:$UPSTREAM_PORT/admin/products"
else
    stop_service tokens
fi
ensure_service upstream "$UPSTREAM_PORT" "http://127.0.0.1:$UPSTREAM_PORT/health" "$STATE_DIR/conf/upstream-nginx.conf" \
    "${PIN[@]}" nginx -p "$STATE_DIR" -c "$STATE_DIR/conf/upstream-nginx.conf"
has_target nginx && ensure_service nginx "$NGINX_PORT" "http://127.0.0.1:$NGINX_PORT/admin/products" \
    "$STATE_DIR/conf/proxy-nginx.conf" \
    "${PIN[@]}" nginx -p "$STATE_DIR" -c "$STATE_DIR/conf/proxy-nginx.conf"
has_target haproxy && ensure_service haproxy "$HAPROXY_PORT" "http://127.0.0.1:$HAPROXY_PORT/admin/products" \
    "$STATE_DIR/conf/proxy-haproxy.cfg" \
    "${PIN[@]}" haproxy -db -f "$STATE_DIR/conf/proxy-haproxy.cfg"
has_target caddy && ensure_service caddy "$CADDY_PORT" "http://127.0.0.1:$CADDY_PORT/admin/products" \
    "$STATE_DIR/conf/proxy-caddy.Caddyfile" \
    "${PIN[@]}" env "${CADDY_ENV[@]}" caddy run --adapter caddyfile --config "$STATE_DIR/conf/proxy-caddy.Caddyfile"
UPSTREAM_PID=$(service_pid upstream)

# --- Sanity checks: the upstream enforces the token, proxies inject it -------------------
expect_status() {   # expect_status WANT DESCRIPTION curl-args...
    local want=$1 what=$2 code
    shift 2
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$@") || true
    [ "$code" = "$want" ] || die "sanity check failed: $what -> HTTP $code (want $want)"
}
U="http://127.0.0.1:$UPSTREAM_PORT"
LOGIN=(-X POST -H 'Content-Type: application/json' --data "{\"email\":\"$ADMIN_EMAIL\",\"password\":\"$ADMIN_PASSWORD\"}" "$U/admin/auth/token")
BODY_FILE="$STATE_DIR/tmp/body-1MiB.json"
python3 -c 'import sys; n=1048576; h=b"{\"title\":\"bench\",\"description\":\""; sys.stdout.buffer.write(h + b"x"*(n-len(h)-2) + b"\"}")' >"$BODY_FILE"
expect_status 401 "upstream GET without token"      "$U/admin/products"
expect_status 401 "upstream GET with a wrong token" -H "Authorization: Bearer x$TOKEN" "$U/admin/products"
expect_status 200 "upstream GET with the token"     -H "Authorization: Bearer $TOKEN" "$U/admin/products"
if [ "$MODE" = fixed ]; then
    [ "$(curl -s "${LOGIN[@]}")" = "{\"access_token\":\"$TOKEN\"}" ] \
        || die "sanity check failed: login response does not carry the token"
else
    # A fresh token works, and one signed correctly but expired does not. (These logins
    # happen before the proxy starts; the report counts only the proxy's.)
    fresh=$(curl -s "${LOGIN[@]}" | python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])') \
        || die "sanity check failed: the token service's login answer is not JSON with access_token"
    expect_status 200 "upstream GET with a fresh token" -H "Authorization: Bearer $fresh" "$U/admin/products"
    expired=$(python3 -c "import sys, time; sys.path.insert(0, '$BENCH_DIR/lib'); import jwt; t = int(time.time()); print(jwt.make_token('$JWT_SECRET', iat=t - 100, exp=t - 1))")
    expect_status 401 "upstream GET with an expired token" -H "Authorization: Bearer $expired" "$U/admin/products"
fi
check_proxy() {   # the proxy on port $2 must add the header and forward a 1 MiB body whole
    local name=$1 port=$2 resp
    expect_status 200 "$name GET /admin/products (no client token)" "http://127.0.0.1:$port/admin/products"
    # With --post '' no POST is measured: a GET-only proxy (an experiment) can still be run.
    [ -n "$POSTS" ] || return 0
    resp=$(curl -s --max-time 10 -X POST -H 'Content-Type: application/json' \
        --data-binary "@$BODY_FILE" "http://127.0.0.1:$port/admin/products") || true
    if ! [[ "$resp" =~ \"request_length\":([0-9]+) ]] || (( BASH_REMATCH[1] < 1048576 )); then
        die "sanity check failed: $name POST 1 MiB -> '${resp:0:200}'"
    fi
}
for t in nginx haproxy caddy; do has_target "$t" && check_proxy "$t" "$(target_port "$t")"; done

# --- The proxy under test ----------------------------------------------------------------
LOGIN_LOG="$STATE_DIR/logs/upstream-logins.log"
login_count() { if [ -f "$LOGIN_LOG" ]; then wc -l <"$LOGIN_LOG"; else echo 0; fi; }
DENIED_LOG="$STATE_DIR/logs/upstream-401.log"
: >"$DENIED_LOG"   # nginx appends (O_APPEND), so emptying it here restarts the count

# PID of the process listening on port $1 (via ss -p): the topmost if several share it.
listener_pid() {
    local pids p
    pids=$(ss -Htlnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u)
    for p in $pids; do
        if ! grep -qx "$(ps -o ppid= -p "$p" | tr -d ' ')" <<<"$pids"; then echo "$p"; return 0; fi
    done
}

LOGINS_BEFORE=0 PROXY_T0=""
# start_proxy ID: start one proxy under test on its ports and wait until it has logged in.
start_proxy() {
    local id=$1 port=${P_PORT[$1]} svc=${P_SVC[$1]} label=${P_LABEL[$1]} pid
    stop_service "$svc"   # leftover from an interrupted run
    port_open "$port" && die "port $port is in use; try --port-base"
    port_open "$((port + 1))" && die "port $((port + 1)) ($label's ops listener) is in use; try --port-base"
    [ -n "${P_BIN[$id]:-}" ] && P_VERSION[$id]=$("${P_BIN[$id]}" --version 2>/dev/null || true)
    pid=$(
        export BENCH_LISTEN_ADDR="127.0.0.1:$port" BENCH_PROXY_PORT="$port" \
            BENCH_UPSTREAM_URL="$U" BENCH_ADMIN_EMAIL="$ADMIN_EMAIL" \
            BENCH_ADMIN_PASSWORD="$ADMIN_PASSWORD" BENCH_STATE_DIR="$STATE_DIR" \
            BENCH_PROXY_DIR="$STATE_DIR/$svc" TOKIO_WORKER_THREADS=1
        [ -z "${P_BIN[$id]:-}" ] || export MEDUSA_AUTH_PROXY_BIN="${P_BIN[$id]}"
        start_service "$svc" "${PIN[@]}" bash -c "$PROXY_CMD"
    )
    PROXIES_STARTED+=("$svc")
    log "started $label (pid $pid): ${P_BIN[$id]:-$PROXY_CMD}"
    if ! wait_http "http://127.0.0.1:$port/admin/products" 200 "$PROXY_WAIT"; then
        tail -n 30 "$STATE_DIR/logs/$svc.log" >&2 || true
        die "$label did not answer 200 on GET /admin/products within ${PROXY_WAIT}s"
    fi
    P_PID[$id]=$(listener_pid "$port")
    [ -n "${P_PID[$id]}" ] || P_PID[$id]=$(service_pid "$svc" 2>/dev/null || true)
    [ -n "${P_PID[$id]}" ] || log "WARNING: cannot find $label's PID; CPU and RSS will read 0"
    check_proxy "$label" "$port"
}
if has_proxy; then
    LOGINS_BEFORE=$(login_count)
    PROXY_T0=$(date +%s.%N)
    for id in "${PROXIES[@]}"; do start_proxy "$id"; done
fi

# PIDs whose CPU time and memory count as "the proxy" for a target.
target_pids() {
    local pid
    if [ "$1" = direct ]; then return 0
    elif is_proxy "$1"; then pid=${P_PID[$1]}
    else pid=$(service_pid "$1") || return 0; fi
    [ -n "$pid" ] && process_tree "$pid"
}

# --- Benchmark loop ------------------------------------------------------------------------
if [ -z "$OUT" ]; then
    OUT="$RESULTS_DIR/$(date +%Y%m%d-%H%M%S)"
    if [ "$MODE" = short-token ]; then OUT="$OUT-token$TOKEN_LIFETIME"; fi
fi
mkdir -p "$OUT/wrk"
RAW="$OUT/raw.csv"
echo "round,scenario,label,target,method,body_bytes,connections,requests,duration_us,non2xx,sock_errors,p50_us,p90_us,p99_us,mean_us,max_us,proxy_cpu_ticks,upstream_cpu_ticks,loadgen_cpu_s,t_start,t_end" >"$RAW"

# run_one ROUND SCENARIO_INDEX TARGET SECONDS: one wrk run, one CSV row.
run_one() {
    local round=$1 i=$2 target=$3 secs=$4
    local url auth="" pids upids p0 u0 p1 u1 t0 t1 file tfile line cpu
    url="http://127.0.0.1:$(target_port "$target")/admin/products"
    [ "$target" = direct ] && auth="Bearer $TOKEN"   # direct: the client carries the token
    mapfile -t pids < <(target_pids "$target")
    mapfile -t upids < <(process_tree "$UPSTREAM_PID")
    file="$OUT/wrk/r${round}-${SC_ID[i]}-${target}.txt"
    tfile="$OUT/wrk/.time"
    p0=$(cpu_ticks "${pids[@]}"); u0=$(cpu_ticks "${upids[@]}")
    t0=$(date +%s.%N)
    TIMEFORMAT='%3U %3S'
    { time BENCH_METHOD="${SC_METHOD[i]}" BENCH_BODY_BYTES="${SC_BYTES[i]}" BENCH_AUTH="$auth" \
        taskset -c "$LOADGEN_CPU" wrk -t1 -c"${SC_CONNS[i]}" -d"${secs}s" --timeout 5s \
        -s "$BENCH_DIR/lib/bench.lua" "$url" >"$file" 2>&1 || true; } 2>"$tfile"
    t1=$(date +%s.%N)
    p1=$(cpu_ticks "${pids[@]}"); u1=$(cpu_ticks "${upids[@]}")
    cpu=$(awk '{printf "%.3f", $1 + $2}' "$tfile")
    line=$(grep '^BENCH_RESULT ' "$file" || true)
    if [ -z "$line" ]; then
        log "WARNING: no result from wrk for $target ${SC_LABEL[i]} (see $file)"
        line="BENCH_RESULT requests=0 duration_us=1 non2xx=0 connect_err=1 read_err=0 write_err=0 timeout_err=0 p50_us=0 p90_us=0 p99_us=0 mean_us=0 max_us=0"
    fi
    awk -v pre="$round,${SC_ID[i]},${SC_LABEL[i]},$target,${SC_METHOD[i]},${SC_BYTES[i]},${SC_CONNS[i]}" \
        -v post="$((p1 - p0)),$((u1 - u0)),$cpu,$t0,$t1" '{
            for (k = 2; k <= NF; k++) { split($k, kv, "="); v[kv[1]] = kv[2] }
            errs = v["connect_err"] + v["read_err"] + v["write_err"] + v["timeout_err"]
            printf "%s,%d,%d,%d,%d,%d,%d,%d,%d,%d,%s\n", pre, v["requests"], v["duration_us"],
                v["non2xx"], errs, v["p50_us"], v["p90_us"], v["p99_us"], v["mean_us"], v["max_us"], post
        }' <<<"$line" >>"$RAW"
    sleep "$PAUSE"
}

n_t=${#TARGETS[@]} n_s=${#SC_ID[@]}
first_round=1; [ "$WARMUP" -gt 0 ] && first_round=0
est=$(( (WARMUP * n_s * n_t) + ROUNDS * n_s * n_t * DURATION + (ROUNDS + 1) * n_s * n_t ))
if [ "$MODE" = short-token ]; then log "mode: short-token (tokens expire ${TOKEN_LIFETIME}s after login)"; else log "mode: fixed token"; fi
log "targets: ${TARGETS[*]}; scenarios: ${SC_LABEL[*]}"
log "CPU placement: load generator on CPU $LOADGEN_CPU; upstream and proxies on CPU $SERVER_CPU"
log "$ROUNDS rounds x $n_s scenarios x $n_t targets x ${DURATION}s (+ warm-up), about $((est / 60)) min $((est % 60)) s"
LOADAVG_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

for ((round = first_round; round <= ROUNDS; round++)); do
    secs=$DURATION; [ "$round" = 0 ] && secs=$WARMUP
    for ((i = 0; i < n_s; i++)); do
        # Rotate the target order every round (A B C, B C A, ...) so that no target always
        # runs first or last after a scenario change.
        order=()
        for ((k = 0; k < n_t; k++)); do order+=("${TARGETS[(k + round) % n_t]}"); done
        if [ "$round" = 0 ]; then log "warm-up: ${SC_LABEL[i]}"; else log "round $round/$ROUNDS: ${SC_LABEL[i]}: ${order[*]}"; fi
        for t in "${order[@]}"; do run_one "$round" "$i" "$t" "$secs"; done
    done
done
PROXY_T1=$(date +%s.%N)

# --- Memory and login counts (read while everything is still running) -----------------------
RSS="$OUT/rss.csv"
echo "target,label,pids,vmhwm_kb,vmrss_kb,reused" >"$RSS"
for t in upstream "${TARGETS[@]}"; do
    [ "$t" = direct ] && continue
    if [ "$t" = upstream ]; then mapfile -t pids < <(process_tree "$UPSTREAM_PID")
    else mapfile -t pids < <(target_pids "$t"); fi
    reused=0   # 1: started before this run, so its peak RSS includes earlier load
    for r in "${REUSED[@]}"; do if [ "$r" = "$t" ]; then reused=1; fi; done
    label=$t; is_proxy "$t" && label=${P_LABEL[$t]}
    echo "$t,$label,${#pids[@]},$(status_kb VmHWM "${pids[@]}"),$(status_kb VmRSS "${pids[@]}"),$reused" >>"$RSS"
done

LOGINS=""
has_proxy && LOGINS=$(( $(login_count) - LOGINS_BEFORE ))
if [ "$MODE" = short-token ]; then
    # Events while the proxy ran (the sanity checks' own logins came before).
    awk -v t0="$PROXY_T0" -v t1="$PROXY_T1" -F'\t' '$2 + 0 >= t0 + 0 && $2 + 0 <= t1 + 0' \
        "$TOKEN_LOG" >"$OUT/token-events.tsv"
    cp "$DENIED_LOG" "$OUT/upstream-401.log"
fi
{
    echo "date=$(date -Is)"
    echo "mode=$MODE"
    echo "token_lifetime_s=$TOKEN_LIFETIME"
    echo "cpus=$NCPU"
    echo "cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "kernel=$(uname -r)"
    echo "loadgen_cpu=$LOADGEN_CPU"
    echo "server_cpu=$SERVER_CPU"
    echo "duration_s=$DURATION"
    echo "rounds=$ROUNDS"
    echo "warmup_s=$WARMUP"
    echo "clk_tck=$CLK_TCK"
    echo "port_base=$PORT_BASE"
    echo "proxy_name=$PROXY_NAME"
    echo "proxy_cmd=$(has_proxy && echo "$PROXY_CMD")"
    echo "proxy_version=${P_VERSION[proxy]:-}"
    # Several proxies under test (--bin): their target names, labels, binaries, versions.
    echo "proxies=$(IFS=,; echo "${PROXIES[*]}")"
    for id in "${PROXIES[@]}"; do
        echo "label_$id=${P_LABEL[$id]}"
        echo "bin_$id=${P_BIN[$id]:-}"
        echo "version_$id=${P_VERSION[$id]:-}"
    done
    echo "proxy_commit=$(git -C "$REPO_DIR" describe --always --dirty 2>/dev/null || true)"
    echo "proxy_logins=$LOGINS"
    echo "proxy_t0=$PROXY_T0"
    echo "proxy_t1=$PROXY_T1"
    echo "upstream_401=$(wc -l <"$DENIED_LOG")"
    echo "loadavg_before=$LOADAVG_BEFORE"
    echo "loadavg_after=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "nginx=$(nginx -v 2>&1 | sed 's/.*version: //')"
    has_target haproxy && echo "haproxy=$(haproxy -v | head -n 1 | awk '{print $3}')"
    has_target caddy && echo "caddy=$(caddy version | awk '{print $1}')"
    echo "wrk=$(wrk -v 2>&1 | head -n 1 | awk '{print $2}')"
} >"$OUT/meta.txt"

python3 "$BENCH_DIR/lib/report.py" "$OUT" | tee "$OUT/summary.md"
log "raw data and wrk logs: $OUT"
