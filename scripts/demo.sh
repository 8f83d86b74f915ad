#!/usr/bin/env bash
# Run the demo: onboard a batch through the SDK against the embedded sandbox
# with faults on. Creates .venv and installs the project first; no network
# beyond PyPI for that install, no credentials.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[sandbox]'
exec .venv/bin/ndax-async demo "$@"
