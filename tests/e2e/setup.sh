#!/usr/bin/env bash
# Install and prepare real Medusa servers for the e2e suite. Idempotent: a second run only
# checks. Usage: tests/e2e/setup.sh [v1|v2|all]   (default all)
#
#  - PostgreSQL from Debian (apt-get install postgresql if missing), cluster started, a
#    loopback-only role and one database per Medusa version;
#  - Medusa 1.20.11 and 2.21.2 with `npm ci` from the lockfiles in tests/e2e/v1 and v2, into
#    $E2E_DIR/v1 and $E2E_DIR/v2 (default /tmp/medusa-auth-proxy-e2e);
#  - migrations run, admin user created (only if missing: `medusa user` fails if it exists);
#    v2 also gets a second user, the read-only identity's account.
# MEDUSA_DISABLE_TELEMETRY=true everywhere (lib/common.sh); nothing here calls out except
# apt and the npm registry.
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

WHICH=${1:-all}
case $WHICH in v1 | v2 | all) ;; *) e2e_die "usage: setup.sh [v1|v2|all]" ;; esac

step_t0=0
step_begin() { step_t0=$(date +%s.%N); e2e_log "$*"; }
step_end()   { e2e_log "  done in $(awk -v a="$step_t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}') s"; }

APT_UPDATED=0
apt_install() {
    if [ "$(id -u)" -ne 0 ]; then e2e_die "need root to apt-get install $*"; fi
    if [ $APT_UPDATED -eq 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# ---- tools -----------------------------------------------------------------------------------
ensure_tools() {
    local missing=()
    command -v curl >/dev/null || missing+=(curl)
    command -v ss >/dev/null || missing+=(iproute2)
    command -v python3 >/dev/null || missing+=(python3)
    if [ ${#missing[@]} -gt 0 ]; then
        step_begin "apt-get install ${missing[*]}"
        apt_install "${missing[@]}"
        step_end
    fi
    command -v node >/dev/null || e2e_die "node is required (Node 20+); none on PATH"
    command -v npm >/dev/null || e2e_die "npm is required; none on PATH"
    local major
    major=$(node -p 'process.versions.node.split(".")[0]')
    [ "$major" -ge 20 ] || e2e_die "Node $major is too old; Medusa 2.21 needs 20+"
}

# ---- PostgreSQL ------------------------------------------------------------------------------
psql_pg() { runuser -u postgres -- psql -X -v ON_ERROR_STOP=1 -qtA "$@"; }

ensure_postgres() {
    if ! command -v pg_lsclusters >/dev/null || ! [ -x "/usr/lib/postgresql/$E2E_PG_VERSION/bin/postgres" ]; then
        step_begin "apt-get install postgresql"
        apt_install postgresql
        step_end
    fi
    if ! pg_lsclusters -h | awk -v v="$E2E_PG_VERSION" -v c="$E2E_PG_CLUSTER" '$1==v && $2==c {f=1} END {exit !f}'; then
        e2e_log "creating cluster $E2E_PG_VERSION/$E2E_PG_CLUSTER"
        pg_createcluster "$E2E_PG_VERSION" "$E2E_PG_CLUSTER" >/dev/null
    fi
    local conf="/etc/postgresql/$E2E_PG_VERSION/$E2E_PG_CLUSTER/postgresql.conf"
    if grep -Eq "^[[:space:]]*listen_addresses[[:space:]]*=[[:space:]]*'(\*|0\.0\.0\.0)" "$conf" 2>/dev/null; then
        e2e_die "$conf listens on every interface; the e2e suite only uses loopback-only servers"
    fi
    if ! pg_lsclusters -h | awk -v v="$E2E_PG_VERSION" -v c="$E2E_PG_CLUSTER" '$1==v && $2==c && $4=="online" {f=1} END {exit !f}'; then
        step_begin "pg_ctlcluster $E2E_PG_VERSION $E2E_PG_CLUSTER start"
        pg_ctlcluster "$E2E_PG_VERSION" "$E2E_PG_CLUSTER" start
        step_end
    fi
    local i
    for ((i = 0; i < 100; i++)); do
        psql_pg -c 'select 1' >/dev/null 2>&1 && break
        sleep 0.1
    done
    psql_pg -c 'select 1' >/dev/null || e2e_die "PostgreSQL does not answer"
    if [ "$(psql_pg -c "select 1 from pg_roles where rolname='$E2E_DB_ROLE'")" != 1 ]; then
        psql_pg -c "CREATE ROLE $E2E_DB_ROLE LOGIN PASSWORD '$E2E_DB_PASSWORD'"
        e2e_log "created role $E2E_DB_ROLE"
    fi
    local ver
    for ver in "$@"; do
        if [ "$(psql_pg -c "select 1 from pg_database where datname='medusa_e2e_$ver'")" != 1 ]; then
            runuser -u postgres -- createdb -O "$E2E_DB_ROLE" "medusa_e2e_$ver"
            e2e_log "created database medusa_e2e_$ver"
        fi
    done
    e2e_log "PostgreSQL $E2E_PG_VERSION/$E2E_PG_CLUSTER online on 127.0.0.1:$(e2e_pg_port)"
}

# ---- Medusa ----------------------------------------------------------------------------------
# Copy FILE from the repo into DIR only when it changed (keeps mtimes stable for npm).
sync_file() {
    local src=$1 dst=$2
    if ! cmp -s "$src" "$dst" 2>/dev/null; then cp "$src" "$dst"; fi
}

medusa_env() {
    local ver=$1
    echo "E2E_DATABASE_URL=$(e2e_db_url "$ver")"
    echo "E2E_JWT_SECRET=e2e-setup-only"
    echo "E2E_COOKIE_SECRET=e2e-setup-only"
    echo "MEDUSA_DISABLE_TELEMETRY=true"
    if [ "$ver" = v2 ]; then echo "NODE_ENV=development"; fi
}

medusa_cmd() {   # medusa_cmd VER LOGFILE ARGS...  (runs node_modules/.bin/medusa in $E2E_DIR/VER)
    local ver=$1 log=$2
    shift 2
    local -a envs
    mapfile -t envs < <(medusa_env "$ver")
    (cd "$E2E_DIR/$ver" && env "${envs[@]}" node_modules/.bin/medusa "$@") >>"$log" 2>&1
}

install_medusa() {
    local ver=$1 dir=$E2E_DIR/$1 f stamp
    mkdir -p "$dir" "$E2E_LOGS"
    for f in package.json package-lock.json; do sync_file "$E2E_SRC/$ver/$f" "$dir/$f"; done
    if [ "$ver" = v1 ]; then
        sync_file "$E2E_SRC/v1/medusa-config.js" "$dir/medusa-config.js"
    else
        sync_file "$E2E_SRC/v2/medusa-config.ts" "$dir/medusa-config.ts"
        sync_file "$E2E_SRC/v2/tsconfig.json" "$dir/tsconfig.json"
    fi
    stamp=$(cat "$dir/package-lock.json" "$(command -v node)" | sha256sum | cut -c1-16)
    if [ "$(cat "$dir/node_modules/.e2e-stamp" 2>/dev/null)" != "$stamp" ]; then
        step_begin "npm ci for Medusa $ver in $dir"
        # Install scripts are not needed (telemetry postinstalls, optional native builds):
        # skip them, which also keeps npm from running anything it downloaded.
        (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) >"$E2E_LOGS/npm-$ver.log" 2>&1 ||
            { tail -n 30 "$E2E_LOGS/npm-$ver.log" >&2; e2e_die "npm ci failed for $ver (log: $E2E_LOGS/npm-$ver.log)"; }
        echo "$stamp" >"$dir/node_modules/.e2e-stamp"
        step_end
    else
        e2e_log "Medusa $ver already installed in $dir ($(node -p "require('$dir/node_modules/@medusajs/medusa/package.json').version"))"
    fi
}

migrate_medusa() {
    local ver=$1 dir=$E2E_DIR/$1 log=$E2E_LOGS/setup-$1.log stamp db
    db=medusa_e2e_$ver
    # Re-run migrations when the install changed or the schema is missing; v1's are cheap and
    # idempotent, v2's take ~15 s even when there is nothing to do.
    stamp="$(cat "$dir/node_modules/.e2e-stamp") $db $(psql_pg -d "$db" -c "select oid from pg_database where datname='$db'")"
    if [ "$(cat "$dir/.e2e-migrated" 2>/dev/null)" = "$stamp" ] &&
        [ "$(psql_pg -d "$db" -c "select to_regclass('public.\"user\"') is not null")" = t ]; then
        e2e_log "Medusa $ver schema is up to date"
        return 0
    fi
    step_begin "migrating Medusa $ver (log $log)"
    if [ "$ver" = v1 ]; then
        medusa_cmd v1 "$log" migrations run || { tail -n 30 "$log" >&2; e2e_die "v1 migrations failed"; }
    else
        medusa_cmd v2 "$log" db:migrate || { tail -n 30 "$log" >&2; e2e_die "v2 db:migrate failed"; }
    fi
    echo "$stamp" >"$dir/.e2e-migrated"
    step_end
}

# ensure_user VER EMAIL PASSWORD : `medusa user` only if the user is missing
ensure_user() {
    local ver=$1 email=$2 pw=$3 log=$E2E_LOGS/setup-$1.log db=medusa_e2e_$1 n
    n=$(psql_pg -d "$db" -c "select count(*) from \"user\" where email='$email' and deleted_at is null")
    if [ "$n" != 0 ]; then
        e2e_log "Medusa $ver user $email exists"
        return 0
    fi
    step_begin "creating Medusa $ver user $email"
    medusa_cmd "$ver" "$log" user -e "$email" -p "$pw" ||
        { tail -n 30 "$log" >&2; e2e_die "medusa user failed for $ver ($email)"; }
    step_end
}

main() {
    local t0 vers ver
    t0=$(date +%s.%N)
    if [ "$WHICH" = all ]; then vers=(v1 v2); else vers=("$WHICH"); fi
    mkdir -p "$E2E_DIR" "$E2E_STATE" "$E2E_LOGS"
    ensure_tools
    ensure_postgres "${vers[@]}"
    # One after the other: side by side was slower here (103 s vs 88 s; both compete for disk).
    for ver in "${vers[@]}"; do
        install_medusa "$ver"
        migrate_medusa "$ver"
        ensure_user "$ver" "$E2E_ADMIN_EMAIL" "$E2E_ADMIN_PASSWORD"
        # The `identities` group's read-only identity logs in as its own v2 user.
        if [ "$ver" = v2 ]; then ensure_user v2 "$E2E_READER_EMAIL" "$E2E_READER_PASSWORD"; fi
    done
    e2e_log "setup ($WHICH) complete in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}') s; work dir $E2E_DIR"
}

main
