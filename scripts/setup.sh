#!/usr/bin/env bash
# Create the project venv (.venv) with Python 3.11 and install kaisar with test extras.
# Idempotent: re-running only installs what changed. Usage: scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 required"' || {
  echo "setup: Python 3.11 is required (found $("$PY" --version 2>&1))" >&2; exit 2; }
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
echo "setup: ok ($(.venv/bin/kaisar --version))"
