#!/usr/bin/env bash
# Create/refresh the project virtualenv at .venv and install backuphub with its dev
# extras in editable mode.  Almost free when nothing changed: the hash of
# pyproject.toml (plus the interpreter version) is kept in .venv and compared.
#
# Environment:
#   PYTHON                     interpreter used to create the venv (default: python3)
#   BACKUPHUB_FORCE_BOOTSTRAP  set to 1 to reinstall even if the hash matches
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
VENV="$ROOT/.venv"
STAMP="$VENV/.backuphub-bootstrap"
PYTHON=${PYTHON:-python3}

log() { printf 'bootstrap: %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found"
[[ -f pyproject.toml ]] || die "no pyproject.toml in $ROOT"

# A venv whose interpreter no longer runs (Python upgraded or removed) is rebuilt.
if [[ -d "$VENV" ]] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    log "$VENV is broken; recreating it"
    rm -rf "$VENV"
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV with $("$PYTHON" --version 2>&1)"
    if ! "$PYTHON" -m venv "$VENV"; then
        # Debian splits ensurepip into python3-venv.
        if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
            rm -rf "$VENV"
            log "python3 -m venv failed; installing python3-venv"
            DEBIAN_FRONTEND=noninteractive timeout 900 apt-get update -q >&2
            DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q python3-venv >&2
            "$PYTHON" -m venv "$VENV" || die "python3 -m venv failed"
        else
            die "python3 -m venv failed (install python3-venv)"
        fi
    fi
fi

want=$( (
    "$VENV/bin/python" --version 2>&1
    sha256sum pyproject.toml
) | sha256sum | awk '{print $1}')
have=$(cat "$STAMP" 2>/dev/null || true)

if [[ "$want" == "$have" && "${BACKUPHUB_FORCE_BOOTSTRAP:-0}" != 1 ]] &&
    "$VENV/bin/python" -c 'import backuphub' >/dev/null 2>&1; then
    log "up to date ($VENV)"
    exit 0
fi

log "installing backuphub[dev] into $VENV (editable)"
rm -f "$STAMP"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off
timeout 1200 "$VENV/bin/python" -m pip install -q -e '.[dev]' ||
    die "pip install -e '.[dev]' failed"
printf '%s\n' "$want" >"$STAMP"
log "done"
