#!/usr/bin/env bash
# The test command: set up the venv, the private Docker Engine and anvil where the
# project needs them, then run lint and the whole pytest suite.
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate
# Optional infrastructure: each script prints what it did; tests that need a missing
# piece skip with the reason (CI runs as root and gets all of them).
if [ -x scripts/dockerd.sh ]; then
  if out=$(scripts/dockerd.sh start); then eval "$out"; else echo "test: docker engine unavailable" >&2; fi
  [ -x scripts/build-images.sh ] && scripts/build-images.sh || true
fi
if [ -x scripts/install-anvil.sh ]; then scripts/install-anvil.sh || echo "test: anvil unavailable" >&2; fi
# PoPW's torch backend is checked against numpy on the CPU when torch is installed. A CPU
# build of torch is only installed from a local wheel (pip's find-links, e.g. /opt/wheels):
# from PyPI, torch is a CUDA build of several GB.
for whl in /opt/wheels/torch-*+cpu-cp311-*.whl; do
  if [ -f "$whl" ] && ! .venv/bin/python -c 'import torch' 2>/dev/null; then
    .venv/bin/python -m pip install -q "$whl" || echo "test: torch (CPU) unavailable" >&2
  fi
  break
done
ruff check node cli.py tests
mypy node cli.py
set +e
python -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "test: pytest collected no tests" >&2; exit 1; fi
exit "$rc"
