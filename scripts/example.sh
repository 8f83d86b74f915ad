#!/usr/bin/env bash
# Serve the example signup service (FastAPI) against the embedded NDAX sandbox
# on 127.0.0.1:8000 (pass --port N or --faults ...). Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[examples]'
exec .venv/bin/python -m examples.run_with_sandbox "$@"
