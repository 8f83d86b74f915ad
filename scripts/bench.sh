#!/usr/bin/env bash
# Run every benchmark (a few minutes) and write benchmarks/RESULTS.md and
# benchmarks/throughput.png. Pass --smoke for a tiny run (and --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[bench]'
exec .venv/bin/python -m benchmarks "$@"
