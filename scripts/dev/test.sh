#!/usr/bin/env bash
# The one test command: bootstrap the venv, bring up PostgreSQL and Kafka on loopback,
# then ruff check, ruff format --check, mypy and pytest.  Extra arguments go to pytest:
#
#   scripts/dev/test.sh                      everything
#   scripts/dev/test.sh tests/unit -x -q     a subset
#
# Services named by the environment come first: when DATABASE_URL or
# KAFKA_BOOTSTRAP_SERVERS is already set, that service is used as-is and not started.
# Services are left running afterwards (fast reruns) unless BACKUPHUB_STOP_SERVICES=1,
# in which case the ones this run started are stopped on exit.
#
# Every step runs even if an earlier one failed; the exit status is non-zero if any
# step failed.  pytest collecting no tests (its exit code 5) counts as a failure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

say() { printf '\n==> %s\n' "$*"; }

STARTED_PG=0
STARTED_KAFKA=0
cleanup() {
    if [[ "${BACKUPHUB_STOP_SERVICES:-0}" == 1 ]]; then
        if [[ $STARTED_KAFKA == 1 ]]; then deploy/local/kafka.sh stop || true; fi
        if [[ $STARTED_PG == 1 ]]; then deploy/local/postgres.sh stop || true; fi
    fi
}
trap cleanup EXIT

say "bootstrap"
scripts/dev/bootstrap.sh

# --- services ---------------------------------------------------------------------
if [[ -n "${DATABASE_URL:-}" ]]; then
    say "postgres: using DATABASE_URL from the environment (not starting one)"
else
    say "postgres: start"
    deploy/local/postgres.sh status >/dev/null 2>&1 || STARTED_PG=1
    pg_out=$(deploy/local/postgres.sh start)
    DATABASE_URL=$(sed -n 's/^DATABASE_URL=//p' <<<"$pg_out")
    [[ -n "$DATABASE_URL" ]] || {
        echo "test.sh: postgres.sh start printed no DATABASE_URL" >&2
        exit 1
    }
    export DATABASE_URL
fi

if [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
    say "kafka: using KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS from the environment (not starting one)"
else
    say "kafka: start"
    deploy/local/kafka.sh status >/dev/null 2>&1 || STARTED_KAFKA=1
    deploy/local/kafka.sh start
    export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:${KAFKA_PORT:-9092}"
fi

# promtool checks deploy/prometheus/rules.yml (tests/unit/test_ops_config.py); Debian ships
# it in the prometheus package. Its server must not start (it would listen on all
# interfaces): a policy-rc.d that refuses service starts is in place during the install.
if ! command -v promtool >/dev/null 2>&1 && [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    say "promtool: apt-get install prometheus (its server is not started)"
    POLICY=/usr/sbin/policy-rc.d
    OWN_POLICY=0
    if [[ ! -e $POLICY ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$POLICY" && chmod 755 "$POLICY" && OWN_POLICY=1
    fi
    {
        DEBIAN_FRONTEND=noninteractive timeout 900 apt-get update -q &&
            DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q --no-install-recommends prometheus
    } >&2 || echo "test.sh: could not install prometheus (promtool); its test will fail" >&2
    if [[ $OWN_POLICY == 1 ]]; then rm -f "$POLICY"; fi
fi
export BACKUPHUB_REQUIRE_SERVICES=1

# --- checks -----------------------------------------------------------------------
declare -a NAMES=() RESULTS=()
FAILED=0
step() { # name command...
    local name=$1 rc=0 t0=$SECONDS
    shift
    say "$name: $*"
    "$@" || rc=$?
    NAMES+=("$name")
    if [[ $rc -eq 0 ]]; then
        RESULTS+=("ok ($((SECONDS - t0)) s)")
    else
        RESULTS+=("FAILED, exit $rc ($((SECONDS - t0)) s)")
        FAILED=1
    fi
    return 0
}

run_pytest() {
    local rc=0
    .venv/bin/python -m pytest "$@" || rc=$?
    if [[ $rc -eq 5 ]]; then
        echo "test.sh: pytest collected no tests (exit 5) - treated as a failure" >&2
    fi
    return "$rc"
}

step "ruff check" .venv/bin/ruff check .
step "ruff format" .venv/bin/ruff format --check .
step "mypy" .venv/bin/mypy
step "pytest" run_pytest "$@"

echo
echo "test.sh summary (DATABASE_URL=${DATABASE_URL%%:*}://...@${DATABASE_URL#*@}, KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS):"
for i in "${!NAMES[@]}"; do
    printf '  %-12s %s\n' "${NAMES[$i]}" "${RESULTS[$i]}"
done
if [[ $FAILED -ne 0 ]]; then
    echo "test.sh: FAILED"
    exit 1
fi
echo "test.sh: all checks passed"
