#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft) on 127.0.0.1, run from Maven Central jars,
# no Docker needed.
#
#   deploy/local/kafka.sh start    download jars once, format storage once, start the
#                                  broker, return when it answers a metadata request
#                                  (already running -> nothing to do)
#   deploy/local/kafka.sh stop     SIGTERM, bounded wait, then SIGKILL
#   deploy/local/kafka.sh kill     SIGKILL at once (fault drills); `start` recovers
#   deploy/local/kafka.sh status   exit 0 when our broker runs, 3 when it does not
#   deploy/local/kafka.sh wait     wait (bounded) until the broker answers metadata
#
# Environment:
#   BACKUPHUB_CACHE        cache root            (default: $HOME/.cache/backuphub)
#   BACKUPHUB_STATE        state root            (default: $BACKUPHUB_CACHE/state)
#   KAFKA_PORT             PLAINTEXT port        (default: 9092)
#   KAFKA_CONTROLLER_PORT  KRaft controller port (default: 9093)
#   KAFKA_HEAP_OPTS        JVM heap              (default: -Xms256m -Xmx512m)
#   KAFKA_WAIT_TIMEOUT     readiness deadline, s (default: 120)
#   KAFKA_STOP_TIMEOUT     SIGTERM grace, s      (default: 60)
#   KAFKA_WAIT_PYTHON      python with aiokafka to run wait_kafka.py (auto-detected)
#
# Files: jars in $BACKUPHUB_CACHE/kafka-libs; data, server.properties, kafka.pid and
# kafka.log in $BACKUPHUB_STATE/kafka.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
KAFKA_CONF_DIR="$ROOT/deploy/kafka"
HOME=${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}
CACHE=${BACKUPHUB_CACHE:-$HOME/.cache/backuphub}
STATE=${BACKUPHUB_STATE:-$CACHE/state}
LIBS="$CACHE/kafka-libs"
LIBS_MARKER="$LIBS/.complete"
KDIR="$STATE/kafka"
DATA_DIR="$KDIR/data"
PROPS="$KDIR/server.properties"
PID_FILE="$KDIR/kafka.pid"
LOG_FILE="$KDIR/kafka.log"
LOCK_FILE="$KDIR/.lock"

PORT=${KAFKA_PORT:-9092}
CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-9093}
HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}
WAIT_TIMEOUT=${KAFKA_WAIT_TIMEOUT:-120}
STOP_TIMEOUT=${KAFKA_STOP_TIMEOUT:-60}
# Base64url of 16 bytes without padding: the fixed cluster id of the local broker.
CLUSTER_ID="YmFja3VwaHViLWthZmthMQ"
BOOTSTRAP="127.0.0.1:$PORT"

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

# --- process helpers -------------------------------------------------------------

# Prints the pid of the broker this script started, if that process is still alive.
broker_pid() {
    local pid
    [[ -f "$PID_FILE" ]] || return 1
    pid=$(<"$PID_FILE")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    # Guard against pid reuse: it must be a JVM running kafka.Kafka with our config.
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "kafka.Kafka $PROPS" || return 1
    # A zombie is as good as dead.
    [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != "Z" ]] || return 1
    printf '%s\n' "$pid"
}

port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

wait_gone() { # pid seconds
    local pid=$1 deadline=$((SECONDS + $2))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
        sleep 0.5
    done
    ! kill -0 "$pid" 2>/dev/null
}

with_lock() {
    mkdir -p "$KDIR"
    exec 9>"$LOCK_FILE"
    flock -w 300 9 || die "could not take $LOCK_FILE within 300 s (another kafka.sh running?)"
}

# --- prerequisites ----------------------------------------------------------------

apt_install() {
    [[ $EUID -eq 0 ]] || die "need root to apt-get install $*; install it yourself"
    log "installing $* with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    timeout 900 apt-get update -q >&2
    timeout 900 apt-get install -y -q "$@" >&2
}

ensure_tools() {
    command -v java >/dev/null 2>&1 || apt_install openjdk-17-jre-headless
    command -v mvn >/dev/null 2>&1 || apt_install maven
}

pom_hash() {
    sha256sum "$KAFKA_CONF_DIR/pom.xml" | awk '{print $1}'
}

# Copies the runtime classpath once; the marker (written last) holds the POM hash, so
# a half-finished download or a changed POM triggers a fresh copy.
ensure_libs() {
    local want tmp started
    want=$(pom_hash)
    if [[ -f "$LIBS_MARKER" && "$(<"$LIBS_MARKER")" == "$want" ]]; then
        return 0
    fi
    ensure_tools
    mkdir -p "$CACHE"
    tmp="$CACHE/kafka-libs.tmp.$$"
    rm -rf "$tmp"
    log "collecting Kafka jars from Maven Central into $LIBS (first run only)"
    started=$SECONDS
    # Maven 3.8 prints bare ANSI resets even in batch/quiet mode; sed drops them.
    if ! timeout 900 mvn -q -B -f "$KAFKA_CONF_DIR/pom.xml" \
        dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$tmp" 2>&1 | sed -e 's/\x1b\[[0-9;]*m//g' >&2; then
        rm -rf "$tmp"
        die "mvn dependency:copy-dependencies failed (see output above)"
    fi
    ls "$tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || die "no kafka_2.13 jar in $tmp"
    rm -rf "$LIBS"
    mv "$tmp" "$LIBS"
    printf '%s\n' "$want" >"$LIBS_MARKER"
    log "jars ready ($(find "$LIBS" -name '*.jar' | wc -l) files, $((SECONDS - started)) s)"
}

render_props() {
    mkdir -p "$DATA_DIR"
    sed -e "s|@KAFKA_PORT@|$PORT|g" \
        -e "s|@KAFKA_CONTROLLER_PORT@|$CONTROLLER_PORT|g" \
        -e "s|@LOG_DIRS@|$DATA_DIR|g" \
        "$KAFKA_CONF_DIR/server.properties.template" >"$PROPS.tmp"
    mv "$PROPS.tmp" "$PROPS"
}

# The JVM command line shared by StorageTool and the broker.
java_args() {
    local -a heap
    read -r -a heap <<<"$HEAP_OPTS"
    JAVA_ARGS=(java "${heap[@]}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20
        -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true
        "-Dlog4j2.configurationFile=$KAFKA_CONF_DIR/log4j2.properties"
        -cp "$LIBS/*")
}

format_storage() {
    [[ -f "$DATA_DIR/meta.properties" ]] && return 0
    log "formatting $DATA_DIR (cluster id $CLUSTER_ID)"
    java_args
    "${JAVA_ARGS[@]}" kafka.tools.StorageTool format -t "$CLUSTER_ID" -c "$PROPS" \
        --ignore-formatted >>"$LOG_FILE" 2>&1 ||
        die "StorageTool format failed; see $LOG_FILE"
}

# Picks a python that can import aiokafka; creates a tiny tools venv as a last resort.
wait_python() {
    local py tools_venv="$CACHE/tools-venv"
    for py in "${KAFKA_WAIT_PYTHON:-}" "$ROOT/.venv/bin/python" "$CACHE/venv/bin/python" \
        "$tools_venv/bin/python" python3; do
        [[ -n "$py" ]] || continue
        if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import aiokafka' 2>/dev/null; then
            printf '%s\n' "$py"
            return 0
        fi
    done
    log "no python with aiokafka found; creating $tools_venv"
    python3 -m venv "$tools_venv" >&2 || die "python3 -m venv failed"
    timeout 600 "$tools_venv/bin/pip" install -q --disable-pip-version-check \
        'aiokafka==0.14.0' >&2 || die "pip install aiokafka failed"
    printf '%s\n' "$tools_venv/bin/python"
}

wait_ready() { # [pid]
    local py args=(--bootstrap-servers "$BOOTSTRAP" --timeout "$WAIT_TIMEOUT")
    if [[ $# -gt 0 ]]; then args+=(--pid "$1"); fi
    py=$(wait_python)
    "$py" "$ROOT/deploy/local/wait_kafka.py" "${args[@]}"
}

# --- subcommands ------------------------------------------------------------------

cmd_start() {
    local pid started rc
    with_lock
    if pid=$(broker_pid); then
        log "already running (pid $pid); checking it answers"
        wait_ready "$pid"
        return
    fi
    rm -f "$PID_FILE"
    if port_open "$PORT"; then
        # Someone else's broker (or anything else) holds the port: use it if it is Kafka.
        log "127.0.0.1:$PORT is already in use by a process this script did not start"
        WAIT_TIMEOUT=15 wait_ready ||
            die "127.0.0.1:$PORT is taken by something that is not a working Kafka broker"
        log "using the Kafka broker already listening on $BOOTSTRAP"
        return 0
    fi
    port_open "$CONTROLLER_PORT" &&
        die "controller port 127.0.0.1:$CONTROLLER_PORT is taken (set KAFKA_CONTROLLER_PORT)"

    ensure_libs
    command -v java >/dev/null 2>&1 || ensure_tools
    render_props
    format_storage

    started=$SECONDS
    log "starting Kafka on $BOOTSTRAP (data $DATA_DIR, log $LOG_FILE)"
    printf '\n===== %s start =====\n' "$(date -u +%FT%TZ)" >>"$LOG_FILE"
    java_args
    # setsid: own session, so the broker outlives this shell and its process group.
    # 9>&- keeps the start/stop lock out of the broker (it would hold it forever).
    setsid "${JAVA_ARGS[@]}" kafka.Kafka "$PROPS" </dev/null >>"$LOG_FILE" 2>&1 9>&- &
    pid=$!
    printf '%s\n' "$pid" >"$PID_FILE"
    if wait_ready "$pid"; then
        log "Kafka ready on $BOOTSTRAP (pid $pid, $((SECONDS - started)) s)"
        return 0
    else
        rc=$?
    fi
    log "Kafka did not become ready (wait_kafka exit $rc); last lines of $LOG_FILE:"
    tail -n 40 "$LOG_FILE" >&2 || true
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        wait_gone "$pid" 20 || kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PID_FILE"
    exit 1
}

cmd_stop() {
    local pid
    with_lock
    if ! pid=$(broker_pid); then
        rm -f "$PID_FILE"
        log "not running"
        return 0
    fi
    log "stopping pid $pid (SIGTERM, up to $STOP_TIMEOUT s)"
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" "$STOP_TIMEOUT"; then
        log "still alive after $STOP_TIMEOUT s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 15 || die "pid $pid survived SIGKILL"
    fi
    rm -f "$PID_FILE"
    log "stopped"
}

cmd_kill() {
    local pid
    # No lock on purpose: a fault drill must be able to kill a broker that is starting.
    if ! pid=$(broker_pid); then
        rm -f "$PID_FILE"
        log "not running"
        return 0
    fi
    log "SIGKILL pid $pid"
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" 15 || die "pid $pid survived SIGKILL"
    rm -f "$PID_FILE"
    log "killed"
}

cmd_status() {
    local pid
    if pid=$(broker_pid); then
        if port_open "$PORT"; then
            echo "kafka: running (pid $pid) on $BOOTSTRAP, data $DATA_DIR"
        else
            echo "kafka: starting (pid $pid), $BOOTSTRAP not listening yet"
        fi
        return 0
    fi
    if port_open "$PORT"; then
        echo "kafka: not started by this script, but something listens on $BOOTSTRAP"
    else
        echo "kafka: not running"
    fi
    return 3
}

cmd_wait() {
    local pid
    if pid=$(broker_pid); then
        wait_ready "$pid"
    else
        wait_ready
    fi
}

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
kill) cmd_kill ;;
status) cmd_status ;;
wait) cmd_wait ;;
-h | --help | help) usage ;;
*)
    usage >&2
    exit 2
    ;;
esac
