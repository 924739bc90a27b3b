#!/usr/bin/env bash
# Local PostgreSQL on 127.0.0.1 for development and tests, no Docker needed.
#
#   deploy/local/postgres.sh start    install Debian's postgresql if missing, start the
#                                     Debian cluster (or use a server that already
#                                     listens on 127.0.0.1:5432), make sure role and
#                                     database `backuphub` exist, wait for pg_isready
#   deploy/local/postgres.sh stop     stop the Debian cluster
#   deploy/local/postgres.sh status   exit 0 when 127.0.0.1:<port> accepts connections, 3 if not
#   deploy/local/postgres.sh url      print the DATABASE_URL only
#
# `start` and `url` print one line on stdout, `DATABASE_URL=postgresql+psycopg://...`;
# every other message goes to stderr, so callers can do
#   DATABASE_URL=$(deploy/local/postgres.sh start | sed -n 's/^DATABASE_URL=//p')
#
# Environment:
#   PG_WAIT_TIMEOUT   seconds to wait for pg_isready (default: 60)
#
# The role `backuphub` (password `backuphub`) has LOGIN and CREATEDB, so tests may
# create and drop their own databases.
set -euo pipefail

PG_HOST=127.0.0.1
PG_PORT=5432
DB_USER=backuphub
DB_PASSWORD=backuphub
DB_NAME=backuphub
WAIT_TIMEOUT=${PG_WAIT_TIMEOUT:-60}

log() { printf 'postgres.sh: %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

database_url() {
    printf 'postgresql+psycopg://%s:%s@%s:%s/%s\n' \
        "$DB_USER" "$DB_PASSWORD" "$PG_HOST" "$PG_PORT" "$DB_NAME"
}

ensure_installed() {
    command -v pg_ctlcluster >/dev/null 2>&1 && return 0
    [[ $EUID -eq 0 ]] || die "PostgreSQL is not installed and this is not root: apt-get install postgresql"
    log "PostgreSQL is not installed; installing Debian's postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    timeout 900 apt-get update -q >&2 || die "apt-get update failed"
    timeout 900 apt-get install -y -q postgresql >&2 || die "apt-get install postgresql failed"
    command -v pg_ctlcluster >/dev/null 2>&1 || die "pg_ctlcluster still missing after install"
}

# Sets CLUSTER_VERSION, CLUSTER_NAME and CLUSTER_PORT from pg_lsclusters: the cluster
# on port 5432 if there is one, else the first one listed.
find_cluster() {
    local line
    line=$(pg_lsclusters --no-header 2>/dev/null | awk '$3 == 5432 {print; exit}')
    [[ -n "$line" ]] || line=$(pg_lsclusters --no-header 2>/dev/null | head -n 1)
    if [[ -z "$line" ]]; then
        return 1
    fi
    read -r CLUSTER_VERSION CLUSTER_NAME CLUSTER_PORT _ <<<"$line"
}

newest_installed_version() {
    find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null |
        sort -n | tail -n 1
}

# Run a command as the postgres OS user (peer authentication on the local socket).
as_postgres() {
    if [[ $EUID -eq 0 ]]; then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && sudo -n -u postgres -- "$@")
    fi
}

is_ready() {
    pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 2 >/dev/null 2>&1
}

wait_ready() {
    local deadline=$((SECONDS + WAIT_TIMEOUT))
    until is_ready; do
        if ((SECONDS >= deadline)); then
            die "PostgreSQL on $PG_HOST:$PG_PORT not ready after $WAIT_TIMEOUT s"
        fi
        sleep 1
    done
}

# psql as the backuphub role over TCP (what the application itself does).
app_can_login() {
    PGPASSWORD=$DB_PASSWORD PGCONNECT_TIMEOUT=5 psql -h "$PG_HOST" -p "$PG_PORT" \
        -U "$DB_USER" -d "$DB_NAME" -tAqc 'select 1' >/dev/null 2>&1
}

ensure_role_and_db() {
    if ! as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres >&2 <<SQL; then
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '$DB_USER') THEN
        CREATE ROLE $DB_USER LOGIN CREATEDB PASSWORD '$DB_PASSWORD';
    ELSE
        ALTER ROLE $DB_USER LOGIN CREATEDB PASSWORD '$DB_PASSWORD';
    END IF;
END
\$\$;
SELECT 'CREATE DATABASE $DB_NAME OWNER $DB_USER'
WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_database WHERE datname = '$DB_NAME')
\gexec
SQL
        # Not our cluster (no local superuser access): fine if the account already works.
        app_can_login && return 0
        die "could not create role/database $DB_NAME as the postgres user, and $DB_USER cannot log in"
    fi
    app_can_login || die "role $DB_USER cannot log in to $PG_HOST:$PG_PORT/$DB_NAME with its password"
}

cmd_start() {
    local rc
    ensure_installed
    if is_ready; then
        log "a PostgreSQL server already answers on $PG_HOST:$PG_PORT; using it"
    else
        if ! find_cluster; then
            local version
            version=$(newest_installed_version)
            [[ -n "$version" ]] || die "no PostgreSQL server version under /usr/lib/postgresql"
            log "no cluster found; creating $version/main"
            pg_createcluster "$version" main >&2 || die "pg_createcluster $version main failed"
            find_cluster || die "pg_lsclusters still lists no cluster"
        fi
        if [[ "$CLUSTER_PORT" != "$PG_PORT" ]]; then
            log "cluster $CLUSTER_VERSION/$CLUSTER_NAME uses port $CLUSTER_PORT; using that port"
            PG_PORT=$CLUSTER_PORT
        fi
        if ! is_ready; then
            log "starting cluster $CLUSTER_VERSION/$CLUSTER_NAME"
            # "already running" is exit 2 from pg_ctlcluster: not an error for us.
            pg_ctlcluster "$CLUSTER_VERSION" "$CLUSTER_NAME" start >&2 || {
                rc=$?
                [[ $rc -eq 2 ]] || die "pg_ctlcluster $CLUSTER_VERSION $CLUSTER_NAME start failed ($rc)"
            }
        fi
    fi
    wait_ready
    ensure_role_and_db
    log "ready on $PG_HOST:$PG_PORT, database $DB_NAME, role $DB_USER (CREATEDB)"
    printf 'DATABASE_URL=%s\n' "$(database_url)"
}

cmd_stop() {
    if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! find_cluster; then
        log "no Debian PostgreSQL cluster here; nothing to stop"
        return 0
    fi
    if [[ "$(pg_lsclusters --no-header | awk -v v="$CLUSTER_VERSION" -v n="$CLUSTER_NAME" \
        '$1 == v && $2 == n {print $4}')" != "online" ]]; then
        log "cluster $CLUSTER_VERSION/$CLUSTER_NAME is not running"
        return 0
    fi
    log "stopping cluster $CLUSTER_VERSION/$CLUSTER_NAME"
    timeout 120 pg_ctlcluster "$CLUSTER_VERSION" "$CLUSTER_NAME" stop -m fast >&2 ||
        die "pg_ctlcluster stop failed"
}

cmd_status() {
    if command -v pg_ctlcluster >/dev/null 2>&1 && find_cluster && [[ "$CLUSTER_PORT" != "$PG_PORT" ]] &&
        ! is_ready; then
        PG_PORT=$CLUSTER_PORT
    fi
    if is_ready; then
        echo "postgres: accepting connections on $PG_HOST:$PG_PORT ($(database_url))"
        return 0
    fi
    echo "postgres: not running on $PG_HOST:$PG_PORT"
    return 3
}

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
url) printf 'DATABASE_URL=%s\n' "$(database_url)" ;;
-h | --help | help) usage ;;
*)
    usage >&2
    exit 2
    ;;
esac
