#!/bin/sh
# Creates (or refreshes) the Python venv used by the interop tests and prints its python path.
#
#   tests/interop/setup-venv.sh            # venv at <repo>/.venv
#   PAIRBUS_VENV=/some/dir tests/interop/setup-venv.sh
#   PAIRBUS_BASE_PYTHON=/usr/bin/python3 tests/interop/setup-venv.sh   # base interpreter
#
# Idempotent: an existing venv is reused and pip only installs what is missing. All output but
# the final python path goes to stderr, so `PAIRBUS_PYTHON=$(tests/interop/setup-venv.sh)` works.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=${PAIRBUS_VENV:-$repo/.venv}
python=${PAIRBUS_BASE_PYTHON:-python3}

log() { printf 'setup-venv: %s\n' "$*" >&2; }

# Only ever delete a directory that is a venv (or an empty one).
remove_venv() {
    if [ -e "$venv" ] && [ ! -f "$venv/pyvenv.cfg" ] && [ -n "$(ls -A "$venv" 2>/dev/null)" ]; then
        log "error: $venv exists and is not a venv; refusing to replace it"
        exit 1
    fi
    rm -rf "$venv"
}

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    log "creating venv at $venv with $(command -v "$python")"
    remove_venv
    if ! "$python" -m venv "$venv" >&2; then
        # Debian's python3 ships venv's ensurepip in a separate package.
        if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
            log "python3 -m venv failed; installing python3-venv"
            remove_venv
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >&2 \
                || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >&2; }
            "$python" -m venv "$venv" >&2
        else
            log "error: '$python -m venv' failed (on Debian: apt-get install python3-venv)"
            exit 1
        fi
    fi
fi

"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$here/requirements.txt" >&2

"$venv/bin/python" -c 'import pycose, cbor2, cryptography, paho.mqtt' \
    || { log "error: the venv at $venv lacks a required package"; exit 1; }

printf '%s\n' "$venv/bin/python"
