#!/usr/bin/env bash
# The e2e suite's one entry point: real Medusa servers, the real proxy, a client with no
# credential. See tests/e2e/README.md.
#
#   tests/e2e/run.sh [v1|v2|identities|all] (default all; identities: only that group, which
#                                            runs Medusa v1 and v2 at once)
#   tests/e2e/run.sh --self-check [v1|v2|all]
#        the same scenarios with the driver's own reference client instead of the proxy:
#        proves the servers and the scenarios themselves, needs no proxy binary
#
# Environment (all optional):
#   E2E_DIR            work dir for installs, state, logs (default /tmp/medusa-auth-proxy-e2e)
#   E2E_PROXY_BIN      the proxy binary (default target/release/medusa-auth-proxy, built with
#                      `cargo build --release --locked` when missing)
#   E2E_EXAMPLE_BIN    the built examples/embedded_client (default: next to the proxy binary,
#                      target/{debug,release}/examples/, built with `cargo build [--release]
#                      --examples --locked` when missing)
#   E2E_REQUIRE        flavors that must run, never SKIP (default "v1"; "all" = every flavor)
#   E2E_FLAVORS        run only these flavor groups (default: all five flavors and the
#                      `identities` group, each skipped loudly when `medusa-auth-proxy check`
#                      rejects its config, i.e. not supported yet)
#   E2E_SOAK_SECONDS   v2 short-token soak length (default 120)
#   E2E_SKIP_SETUP=1   skip setup.sh (servers already installed)
#   RUST_LOG           passed to the proxy (default info)
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

VIA=proxy
if [ "${1:-}" = --self-check ]; then VIA=direct; shift; fi
WHICH=${1:-all}
case $WHICH in v1 | v2 | identities | all) ;; *) e2e_die "usage: run.sh [--self-check] [v1|v2|identities|all]" ;; esac

E2E_REQUIRE=${E2E_REQUIRE:-v1}
E2E_FLAVORS=${E2E_FLAVORS:-v1 v1-api-token v2 v2-secret-key auto identities}
SOAK_SECONDS=${E2E_SOAK_SECONDS:-120}
DRIVER=(python3 "$E2E_SRC/driver.py")
CTL=$E2E_SRC/ctl.sh
export MEDUSA_ADMIN_PASSWORD=$E2E_ADMIN_PASSWORD
export RUST_LOG=${RUST_LOG:-info}

PASSED=() FAILED=() SKIPPED=() RAN=()
T_START=$(date +%s)

# ---- bookkeeping -----------------------------------------------------------------------------
banner() { printf '\n=================== %s ===================\n' "$*"; }

# scenario NAME CMD... : run one driver scenario, log it, record the verdict.
scenario() {
    local name=$1 log rc=0
    shift
    log=$E2E_LOGS/scenario-$name.log
    RAN+=("$name")
    banner "scenario $name"
    "$@" 2>&1 | tee "$log" || rc=$?
    if [ $rc -eq 0 ] && grep -q '^RESULT .*"status": "pass"' "$log"; then
        PASSED+=("$name")
    else
        FAILED+=("$name")
        printf '!!! FAILED: %s (log %s)\n' "$name" "$log"
    fi
}

skip() {   # skip NAME REASON
    SKIPPED+=("$1")
    printf '\n!!!!!!!! SKIP %s: %s\n' "$1" "$2"
}

fail() {   # fail NAME REASON (a step that is not a driver scenario)
    FAILED+=("$1")
    printf '\n!!! FAILED: %s: %s\n' "$1" "$2"
}

summary() {
    local rc=$? t
    trap - EXIT INT TERM
    set +e
    banner "cleanup"
    e2e_stop_all
    t=$(($(date +%s) - T_START))
    if [ $rc -ne 0 ]; then
        FAILED+=("run.sh-aborted")
        printf '\n!!! run.sh stopped early with exit status %d (see the output above)\n' "$rc"
    fi
    banner "summary (Medusa $WHICH, via $VIA, ${t}s)"
    local n
    for n in "${RAN[@]}"; do
        python3 "$E2E_SRC/lib/report.py" "$n" <"$E2E_LOGS/scenario-$n.log"
    done
    if [ ${#SKIPPED[@]} -gt 0 ]; then
        printf '\n!!!!!!!! SKIPPED (proxy does not support them yet, or not asked for): %s\n' "${SKIPPED[*]}"
    fi
    if [ ${#FAILED[@]} -gt 0 ]; then printf '\nFAILED: %s\n' "${FAILED[*]}"; fi
    printf '\ne2e: %d passed, %d failed, %d skipped\n' "${#PASSED[@]}" "${#FAILED[@]}" "${#SKIPPED[@]}"
    if [ ${#FAILED[@]} -gt 0 ] || [ $rc -ne 0 ]; then exit 1; fi
    exit 0
}

required() {   # is flavor $1 required to run?
    [ "$E2E_REQUIRE" = all ] || [[ " $E2E_REQUIRE " == *" $1 "* ]]
}

wanted() { [[ " $E2E_FLAVORS " == *" $1 "* ]]; }

# ---- the proxy -------------------------------------------------------------------------------
resolve_proxy() {
    PROXY_BIN=${E2E_PROXY_BIN:-$E2E_REPO/target/release/medusa-auth-proxy}
    if [ ! -x "$PROXY_BIN" ] && [ -z "${E2E_PROXY_BIN:-}" ]; then
        e2e_log "building the proxy: cargo build --release --locked"
        (cd "$E2E_REPO" && cargo build --release --locked)
    fi
    [ -x "$PROXY_BIN" ] || e2e_die "no proxy binary at $PROXY_BIN"
    "$PROXY_BIN" --help >/dev/null || e2e_die "$PROXY_BIN --help failed"
    e2e_log "proxy: $PROXY_BIN ($("$PROXY_BIN" --version 2>/dev/null || echo 'no --version'))"
}

# The library's showcase (examples/embedded_client), for the `*-example` scenarios: the one
# next to the proxy binary's profile, built the same way when missing.
resolve_example() {
    local dir profile
    dir=$(dirname "$PROXY_BIN")
    profile=$(basename "$dir")
    if [ "$profile" != debug ] && [ "$profile" != release ]; then
        profile=release dir=$E2E_REPO/target/release
    fi
    EXAMPLE_BIN=${E2E_EXAMPLE_BIN:-$dir/examples/embedded_client}
    if [ ! -x "$EXAMPLE_BIN" ] && [ -z "${E2E_EXAMPLE_BIN:-}" ]; then
        if [ "$profile" = release ]; then
            e2e_log "building the example: cargo build --release --examples --locked"
            (cd "$E2E_REPO" && cargo build --release --examples --locked)
        else
            e2e_log "building the example: cargo build --examples --locked"
            (cd "$E2E_REPO" && cargo build --examples --locked)
        fi
    fi
    [ -x "$EXAMPLE_BIN" ] || e2e_die "no example binary at $EXAMPLE_BIN"
    e2e_log "example: $EXAMPLE_BIN"
}

# write_proxy_config NAME FLAVOR MEDUSA_PORT [AUTH_LINES...]: writes $PROXY_CFG with fresh
# $PROXY_PORT and $OPS_PORT (globals: call it directly, not in $(...))
write_proxy_config() {
    local name=$1 flavor=$2 mport=$3 f line
    shift 3
    f=$E2E_STATE/$name.toml
    PROXY_CFG=$f
    PROXY_PORT=$(e2e_free_port)
    OPS_PORT=$(e2e_free_port)
    while [ "$OPS_PORT" = "$PROXY_PORT" ]; do OPS_PORT=$(e2e_free_port); done
    {
        echo "# written by tests/e2e/run.sh for scenario group $name"
        echo "[proxy]"
        echo "listen = \"127.0.0.1:$PROXY_PORT\""
        echo "shutdown_grace = \"5s\""
        echo
        echo "[upstream]"
        echo "url = \"http://127.0.0.1:$mport\""
        echo "connect_timeout = \"2s\""
        echo "request_timeout = \"30s\""
        echo
        echo "[auth]"
        echo "flavor = \"$flavor\""
        for line in "$@"; do echo "$line"; done
        echo
        echo "[ops]"
        echo "listen = \"127.0.0.1:$OPS_PORT\""
    } >"$f"
}

password_auth_lines() {   # password_auth_lines REFRESH_BEFORE_EXPIRY
    printf '%s\n' \
        "email = \"$E2E_ADMIN_EMAIL\"" \
        "password_env = \"MEDUSA_ADMIN_PASSWORD\"" \
        "refresh_before_expiry = \"$1\"" \
        "login_timeout = \"10s\"" \
        "default_token_lifetime = \"1h\""
}

# flavor_supported FLAVOR CONFIG : `check` accepts the config (prints why not otherwise)
flavor_supported() {
    local flavor=$1 cfg=$2 out
    if out=$("$PROXY_BIN" check --config "$cfg" 2>&1); then
        e2e_log "check --config ($flavor): ${out:-ok}"
        return 0
    fi
    CHECK_ERROR=$out
    return 1
}

# start_proxy NAME CONFIG : start it, wait for /readyz (200 once a credential works)
start_proxy() {
    local name=$1 cfg=$2
    e2e_start "$name" "$E2E_LOGS/$name.log" "$PROXY_BIN" run --config "$cfg"
    PROXY_LOG=$E2E_LOGS/$name.log
    if ! e2e_wait_http "http://127.0.0.1:$OPS_PORT/healthz" 30 "$name"; then
        tail -n 40 "$PROXY_LOG" >&2 || true
        return 1
    fi
    if ! e2e_wait_http "http://127.0.0.1:$OPS_PORT/readyz" 30 "$name"; then
        curl -s --noproxy '*' "http://127.0.0.1:$OPS_PORT/readyz" >&2 || true
        tail -n 40 "$PROXY_LOG" >&2 || true
        return 1
    fi
    local bad pid
    pid=$(e2e_service_pid "$name")
    bad=$(ss -Hltnp | grep "pid=$pid," | awk '{print $4}' | grep -Ev '^(127\.0\.0\.1|\[::1\]):' || true)
    [ -z "$bad" ] || e2e_die "$name listens on a non-loopback address: $bad"
    e2e_log "$name ready: proxy 127.0.0.1:$PROXY_PORT, ops 127.0.0.1:$OPS_PORT"
}

# Arguments that point the driver at the client under test.
target_args() {   # target_args VER
    local mport
    mport=$("$CTL" port "$1")
    if [ "$VIA" = proxy ]; then
        printf '%s\n' --via proxy --proxy "http://127.0.0.1:$PROXY_PORT" --ops "http://127.0.0.1:$OPS_PORT" \
            --proxy-log "$PROXY_LOG" --medusa "http://127.0.0.1:$mport"
    else
        printf '%s\n' --via direct --medusa "http://127.0.0.1:$mport"
    fi
    printf '%s\n' --ver "$1" --medusa-log "$E2E_LOGS/medusa-$1.log" --medusa-dir "$E2E_DIR/$1" \
        --ctl "$CTL" --email "$E2E_ADMIN_EMAIL"
}

# with_flavor FLAVOR VER CONFIG_ARGS... -- BODY_FUNCTION : config, check, start, body, stop
with_flavor() {
    local flavor=$1 ver=$2 name cfg mport
    shift 2
    local -a auth_lines=()
    while [ "$1" != -- ]; do auth_lines+=("$1"); shift; done
    shift
    local body=$1
    name=proxy-$flavor
    if [ "$flavor" = auto ]; then name=proxy-auto-$ver; fi
    if ! wanted "$flavor"; then
        skip "$flavor" "not in E2E_FLAVORS ($E2E_FLAVORS)"
        return 0
    fi
    if [ "$VIA" = direct ]; then
        "$body" "$flavor" "$ver"
        return 0
    fi
    mport=$("$CTL" port "$ver")
    write_proxy_config "$name" "$flavor" "$mport" "${auth_lines[@]}"
    cfg=$PROXY_CFG
    if ! flavor_supported "$flavor" "$cfg"; then
        if required "$flavor"; then
            fail "$flavor" "medusa-auth-proxy check rejected the config: $CHECK_ERROR"
        else
            skip "$flavor" "medusa-auth-proxy check rejects flavor \"$flavor\" (not supported yet?): $CHECK_ERROR"
        fi
        return 0
    fi
    banner "proxy flavor $flavor in front of Medusa $ver"
    sed 's/^/    /' "$cfg"
    if ! start_proxy "$name" "$cfg"; then
        fail "$flavor-start" "the proxy did not become ready (log $E2E_LOGS/$name.log)"
        e2e_stop "$name"
        return 0
    fi
    "$body" "$flavor" "$ver"
    e2e_stop "$name" 10
    check_reload_loop "$name" "$E2E_LOGS/$name.log"
}

# Nothing changes the proxy's config while the suite runs, yet files next to it are read
# (ports, keys): a proxy that reloads on its own reads (inotify open/access events) loops.
check_reload_loop() {   # check_reload_loop NAME LOG
    local n
    n=$(awk '/^===== .* start: /{n=0} /configuration reloaded/{n++} END {print n+0}' "$2")
    if [ "$n" -le 3 ]; then
        PASSED+=("$1-no-reload-loop")
        e2e_log "$1 reloaded its configuration $n times (nothing changed it)"
    else
        fail "$1-no-reload-loop" "the proxy logged 'configuration reloaded' $n times although nothing changed its config (log $2)"
    fi
}

# ---- scenario groups -------------------------------------------------------------------------
mapfile_args() { mapfile -t TARGET < <(target_args "$1"); }

body_v1() {
    local flavor=$1 ver=$2 mport pid
    mapfile_args v1
    mport=$("$CTL" port v1)
    scenario v1-crud "${DRIVER[@]}" crud "${TARGET[@]}" --unauth "http://127.0.0.1:$mport" --expect-logins 0
    scenario v1-creds "${DRIVER[@]}" creds "${TARGET[@]}"
    pid=$(e2e_service_pid medusa-v1)
    scenario v1-rss "${DRIVER[@]}" rss "${TARGET[@]}" --medusa-pid "$pid" \
        --memstat-file "$E2E_STATE/medusa-v1.memstat.json"
    scenario v1-rotate "${DRIVER[@]}" rotate "${TARGET[@]}" --seconds 5
    scenario v1-outage "${DRIVER[@]}" outage "${TARGET[@]}" --max-logins 1
}

body_static() {   # v1-api-token / v2-secret-key: the key was made by mkkey beforehand
    local flavor=$1 ver=$2 mport mark
    mapfile_args "$ver"
    mport=$("$CTL" port "$ver")
    mark=$(stat -c %s "$E2E_LOGS/medusa-$ver.log")
    local -a key=()
    if [ "$VIA" = direct ]; then key=(--api-key-file "$E2E_STATE/$flavor.key"); fi
    scenario "$flavor-crud" "${DRIVER[@]}" crud "${TARGET[@]}" "${key[@]}" --unauth "http://127.0.0.1:$mport"
    scenario "$flavor-outage" "${DRIVER[@]}" outage "${TARGET[@]}" "${key[@]}" --max-logins 0 --down-seconds 3
    scenario "$flavor-nologin" "${DRIVER[@]}" nologin --ver "$ver" --medusa-log "$E2E_LOGS/medusa-$ver.log" --since "$mark"
}

body_v2_long() {
    local flavor=$1 ver=$2 mport
    mapfile_args v2
    mport=$("$CTL" port v2)
    scenario v2-crud "${DRIVER[@]}" crud "${TARGET[@]}" --unauth "http://127.0.0.1:$mport" --expect-logins 0
    scenario v2-creds "${DRIVER[@]}" creds "${TARGET[@]}"
    scenario v2-rotate "${DRIVER[@]}" rotate "${TARGET[@]}" --seconds 5
    scenario v2-outage "${DRIVER[@]}" outage "${TARGET[@]}" --max-logins 1
}

body_v2_short() {
    local flavor=$1 ver=$2 min
    mapfile_args v2
    # 6 s tokens renewed 2 s before exp: a refresh every ~4 s; ask for half of that.
    min=$((SOAK_SECONDS / 8))
    scenario v2-soak "${DRIVER[@]}" soak "${TARGET[@]}" --seconds "$SOAK_SECONDS" \
        --min-refreshes "$min" --max-logins 0 --margin 2
    # Down longer than a token lives: the proxy must log in once when Medusa is back. While
    # the login backs off after connection errors the proxy polls Medusa's /health every
    # second and logs in as soon as it answers (measured: 0.04 s after /health).
    scenario v2-outage-short-tokens "${DRIVER[@]}" outage "${TARGET[@]}" --down-seconds 8 \
        --allow-503-while-down --max-logins 1 --max-recovery 5 --max-failed-logins 15 --margin 2
}

body_auto() {   # flavor "auto": one probe at start-up, then it behaves as the detected flavor
    local flavor=$1 ver=$2
    mapfile_args "$ver"
    if [ "$VIA" = direct ]; then
        skip "auto-$ver" "the reference client has no auto flavor"
        return 0
    fi
    scenario "auto-$ver" "${DRIVER[@]}" smoke "${TARGET[@]}" \
        --expect-log "auto: Medusa $ver detected|flavor\W+$ver\b.*detect|detect.*\b$ver\b"
}

# example VER : the library's showcase straight at Medusa VER (no proxy in between), logging
# in with the suite's admin account; the password reaches it as the name of a variable.
example() {
    local ver=$1 mport
    if ! wanted "$ver"; then
        skip "$ver-example" "not in E2E_FLAVORS ($E2E_FLAVORS)"
        return 0
    fi
    if [ "$VIA" = direct ]; then
        skip "$ver-example" "the self-check runs no binary of ours"
        return 0
    fi
    mport=$("$CTL" port "$ver")
    scenario "$ver-example" "${DRIVER[@]}" example --ver "$ver" --medusa "http://127.0.0.1:$mport" \
        --medusa-log "$E2E_LOGS/medusa-$ver.log" --email "$E2E_ADMIN_EMAIL" \
        --password-env MEDUSA_ADMIN_PASSWORD --example-bin "$EXAMPLE_BIN"
}

make_key() {   # make_key FLAVOR VER : create the static credential with a hand-fetched token
    local flavor=$1 ver=$2 mport
    mport=$("$CTL" port "$ver")
    scenario "$flavor-mkkey" "${DRIVER[@]}" mkkey --ver "$ver" --medusa "http://127.0.0.1:$mport" \
        --email "$E2E_ADMIN_EMAIL" --out "$E2E_STATE/$flavor.key"
    [ -s "$E2E_STATE/$flavor.key" ]
}

run_v1() {
    banner "Medusa v1 (1.20.11)"
    "$CTL" start-medusa v1 --jwt-secret "e2e-jwt-v1-$(date +%s)"
    with_flavor v1 v1 "$(password_auth_lines 60s)" -- body_v1
    if wanted v1-api-token; then
        if make_key v1-api-token v1; then
            with_flavor v1-api-token v1 "api_key_file = \"$E2E_STATE/v1-api-token.key\"" -- body_static
        else
            fail v1-api-token "could not create an api_token"
        fi
    else
        skip v1-api-token "not in E2E_FLAVORS ($E2E_FLAVORS)"
    fi
    with_flavor auto v1 "$(password_auth_lines 60s)" -- body_auto
    example v1
    e2e_stop medusa-v1
}

run_v2() {
    banner "Medusa v2 (2.21.2)"
    # Long-lived tokens first: a rotation is only a rotation if the old token is still valid.
    "$CTL" start-medusa v2 --jwt-secret "e2e-jwt-v2-$(date +%s)" --jwt-expires-in 1h
    with_flavor v2 v2 "$(password_auth_lines 60s)" -- body_v2_long
    example v2
    if wanted v2; then
        banner "Medusa v2 restarted with jwtExpiresIn 6s"
        e2e_stop medusa-v2
        "$CTL" start-medusa v2 --jwt-expires-in 6s
        with_flavor v2 v2 "$(password_auth_lines 2s)" -- body_v2_short
    fi
    if wanted v2-secret-key; then
        if make_key v2-secret-key v2; then
            export MEDUSA_API_KEY
            MEDUSA_API_KEY=$(cat "$E2E_STATE/v2-secret-key.key")
            with_flavor v2-secret-key v2 'api_key_env = "MEDUSA_API_KEY"' -- body_static
            unset MEDUSA_API_KEY
        else
            fail v2-secret-key "could not create a secret API key"
        fi
    else
        skip v2-secret-key "not in E2E_FLAVORS ($E2E_FLAVORS)"
    fi
    with_flavor auto v2 "$(password_auth_lines 60s)" -- body_auto
    e2e_stop medusa-v2
}

# ---- identities: one proxy, Medusa v1 and v2 at once, three identities ---------------------
# write_identities_config MEDUSA_V1_PORT MEDUSA_V2_PORT: $PROXY_CFG with fresh $PROXY_PORT (the
# main listener: v2-reader by client key), $V1_LISTENER_PORT (v1-admin), $V2_LISTENER_PORT
# (v2-admin) and $OPS_PORT; the reader's client key in $E2E_READER_CLIENT_KEY (exported) and
# its keys_file; the reader's password in a password_file (the admins' from the environment).
write_identities_config() {
    local m1=$1 m2=$2 f=$E2E_STATE/proxy-identities.toml p used=" "
    PROXY_CFG=$f
    for p in PROXY_PORT V1_LISTENER_PORT V2_LISTENER_PORT OPS_PORT; do
        printf -v "$p" '%s' "$(e2e_free_port)"
        while [[ "$used" == *" ${!p} "* ]]; do printf -v "$p" '%s' "$(e2e_free_port)"; done
        used+="${!p} "
    done
    export E2E_READER_CLIENT_KEY
    E2E_READER_CLIENT_KEY=e2e-reader-$(python3 -c 'import secrets; print(secrets.token_hex(20))')
    (umask 077 && printf '# callers acting as the v2-reader identity\n%s\n' "$E2E_READER_CLIENT_KEY" \
        >"$E2E_STATE/identities-reader.keys")
    (umask 077 && printf '%s\n' "$E2E_READER_PASSWORD" >"$E2E_STATE/identities-reader.password")
    local upstream_opts login_opts
    upstream_opts=$(printf '%s\n' 'connect_timeout = "2s"' 'request_timeout = "30s"')
    login_opts=$(printf '%s\n' 'refresh_before_expiry = "60s"' 'login_timeout = "10s"' 'default_token_lifetime = "1h"')
    cat >"$f" <<EOF
# written by tests/e2e/run.sh for scenario group identities: one process, Medusa v1 and v2
[proxy]
listen = "127.0.0.1:$PROXY_PORT"
shutdown_grace = "5s"

[upstreams.v1]
url = "http://127.0.0.1:$m1"
$upstream_opts

[upstreams.v2]
url = "http://127.0.0.1:$m2"
$upstream_opts

[identities.v1-admin]
upstream = "v1"
flavor = "v1"
email = "$E2E_ADMIN_EMAIL"
password_env = "MEDUSA_ADMIN_PASSWORD"
$login_opts

[identities.v2-admin]
upstream = "v2"
flavor = "v2"
email = "$E2E_ADMIN_EMAIL"
password_env = "MEDUSA_ADMIN_PASSWORD"
$login_opts

[identities.v2-reader]
upstream = "v2"
flavor = "v2"
email = "$E2E_READER_EMAIL"
password_file = "$E2E_STATE/identities-reader.password"
$login_opts

[identities.v2-reader.policy]
read_only = true

# The main listener: every request needs a client key, which picks the identity.
[[clients]]
keys_file = "$E2E_STATE/identities-reader.keys"
identity = "v2-reader"

[[listeners]]
listen = "127.0.0.1:$V1_LISTENER_PORT"
identity = "v1-admin"

[[listeners]]
listen = "127.0.0.1:$V2_LISTENER_PORT"
identity = "v2-admin"

[ops]
listen = "127.0.0.1:$OPS_PORT"
EOF
}

# Both Medusas at once, one proxy with three identities in front of them (identities.py).
run_identities() {
    local name=proxy-identities cfg m1 m2 s1 s2 sp
    banner "identities: one proxy in front of Medusa v1 and v2 at once"
    if ! wanted identities; then
        skip identities "not in E2E_FLAVORS ($E2E_FLAVORS)"
        return 0
    fi
    if [ "$VIA" = direct ]; then
        skip identities "the reference client has no identities (they are the proxy's feature)"
        return 0
    fi
    "$CTL" start-medusa v1 --jwt-secret "e2e-jwt-v1-ids-$(date +%s)"
    "$CTL" start-medusa v2 --jwt-secret "e2e-jwt-v2-ids-$(date +%s)" --jwt-expires-in 1h
    m1=$("$CTL" port v1)
    m2=$("$CTL" port v2)
    write_identities_config "$m1" "$m2"
    cfg=$PROXY_CFG
    if ! flavor_supported identities "$cfg"; then
        if required identities; then
            fail identities "medusa-auth-proxy check rejected the config: $CHECK_ERROR"
        else
            skip identities "medusa-auth-proxy check rejects the identities config (not supported yet?): $CHECK_ERROR"
        fi
    else
        sed 's/^/    /' "$cfg"
        s1=$(stat -c %s "$E2E_LOGS/medusa-v1.log")
        s2=$(stat -c %s "$E2E_LOGS/medusa-v2.log")
        sp=$(stat -c %s "$E2E_LOGS/$name.log" 2>/dev/null || echo 0)
        if ! start_proxy "$name" "$cfg"; then
            fail identities-start "the proxy did not become ready (log $E2E_LOGS/$name.log)"
            e2e_stop "$name"
        else
            e2e_log "$name: v1-admin on 127.0.0.1:$V1_LISTENER_PORT, v2-admin on 127.0.0.1:$V2_LISTENER_PORT, v2-reader by client key on 127.0.0.1:$PROXY_PORT"
            scenario identities python3 "$E2E_SRC/identities.py" \
                --proxy "http://127.0.0.1:$PROXY_PORT" --v1-proxy "http://127.0.0.1:$V1_LISTENER_PORT" \
                --v2-proxy "http://127.0.0.1:$V2_LISTENER_PORT" --ops "http://127.0.0.1:$OPS_PORT" \
                --medusa-v1 "http://127.0.0.1:$m1" --medusa-v2 "http://127.0.0.1:$m2" \
                --v1-log "$E2E_LOGS/medusa-v1.log" --v2-log "$E2E_LOGS/medusa-v2.log" \
                --v1-since "$s1" --v2-since "$s2" --proxy-log "$E2E_LOGS/$name.log" --proxy-since "$sp" \
                --v1-modules "$E2E_DIR/v1/node_modules" --v2-modules "$E2E_DIR/v2/node_modules" \
                --email "$E2E_ADMIN_EMAIL" --reader-email "$E2E_READER_EMAIL" \
                --reader-key-env E2E_READER_CLIENT_KEY
            e2e_stop "$name" 10
            check_reload_loop "$name" "$E2E_LOGS/$name.log"
        fi
    fi
    unset E2E_READER_CLIENT_KEY
    e2e_stop medusa-v1
    e2e_stop medusa-v2
}

main() {
    # Leftovers of an earlier run (ours: recorded in pidfiles) go first.
    e2e_stop_all
    trap summary EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    if [ "${E2E_SKIP_SETUP:-0}" != 1 ]; then
        if [ "$WHICH" = identities ]; then "$E2E_SRC/setup.sh" all; else "$E2E_SRC/setup.sh" "$WHICH"; fi
    fi
    rm -f "$E2E_STATE"/medusa-*.port "$E2E_STATE"/medusa-*.jwt_* "$E2E_STATE"/*.key "$E2E_LOGS"/scenario-*.log
    if [ "$VIA" = proxy ]; then
        resolve_proxy
        resolve_example
    fi
    if [ "$WHICH" = v1 ] || [ "$WHICH" = all ]; then run_v1; fi
    if [ "$WHICH" = v2 ] || [ "$WHICH" = all ]; then run_v2; fi
    if [ "$WHICH" = identities ] || [ "$WHICH" = all ]; then run_identities; fi
}

main
