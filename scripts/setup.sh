#!/usr/bin/env bash
# Set up Seamline in ./.venv on a fresh machine; idempotent (re-runs are quick).
#   bash scripts/setup.sh          the package, for the dashboard and the CLI
#   bash scripts/setup.sh --test   plus the test tools, Debian's Chromium (browser tests) and
#                                  gdal-bin (ogrinfo reads the GeoPackages we write)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip

# torch first, pinned to the CPU build: a bare `torch` requirement resolved with nothing
# installed pulls several GB of CUDA wheels. pyproject keeps a range that 2.13 satisfies.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"

if [ "${1:-}" = "--test" ]; then
    .venv/bin/python -m pip install -q -e ".[test]"
    # Debian's chromium (browser tests) and gdal-bin (ogrinfo: outputs checked by a second tool)
    missing=""
    command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
    command -v ogrinfo >/dev/null 2>&1 || missing="$missing gdal-bin"
    if [ -n "$missing" ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            apt-get update -qq && apt-get install -y -qq $missing >/dev/null
        else
            echo "setup: install Debian's$missing (apt-get install$missing) for the tests" >&2
        fi
    fi
else
    .venv/bin/python -m pip install -q -e .
fi
