#!/usr/bin/env bash
# LinGuinE developer entry point: all set-up happens here, on first use.
#   ./dev.sh demo [--out DIR]   install the CPU engine into .venv and run the demo on real CT
#   ./dev.sh test [PYTEST ARGS] install engine + test tools + GPU backends + service + batch, then run the test suite
set -euo pipefail
cd "$(dirname "$0")"
VENV="${LINGUINE_VENV:-.venv}"
PY="${PYTHON:-python3}"

ensure_env() {  # $1 = pip extras ("" or "[test,gpu]"); reinstalls only when pyproject.toml changed
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    local stamp="$VENV/.linguine-installed$1"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        echo "dev.sh: installing LinGuinE$1 into $VENV (first run takes a few minutes)" >&2
        "$VENV/bin/python" -m pip install -q --upgrade pip >&2
        "$VENV/bin/python" -m pip install -q -e ".$1" >&2
        touch "$stamp"
    fi
}

ensure_checkers() {  # dciodvfy (Debian dicom3tools) for DICOM conformance tests; needs root + apt
    if ! command -v dciodvfy >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "dev.sh: installing dicom3tools (dciodvfy)" >&2
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools >&2 || \
            echo "dev.sh: could not install dicom3tools; DICOM conformance tests will skip" >&2
    fi
}

cmd="${1:-}"; shift || true
case "$cmd" in
    demo) ensure_env ""; exec "$VENV/bin/linguine" demo "$@" ;;
    test) ensure_env "[test,gpu,serve,batch]"; ensure_checkers; PYTHONUTF8=1 exec "$VENV/bin/python" -m pytest "$@" ;;
    *) echo "usage: ./dev.sh demo [--out DIR] | ./dev.sh test [pytest args]" >&2; exit 2 ;;
esac
