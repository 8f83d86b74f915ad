#!/usr/bin/env bash
# Run the test suite on every Python the package claims besides the main one
# (3.11, scripts/test.sh): 3.10 and 3.13 from pyenv, each in its own venv
# (.venv-3.10, .venv-3.13) with the `test` extra. Arguments go to pytest,
# e.g. `scripts/test-pythons.sh -x -q`. PYTHONS="3.10.13" picks versions.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHONS=${PYTHONS:-"3.10.13 3.13.0"}
PYENV_VERSIONS=${PYENV_VERSIONS:-/root/.pyenv/versions}
status=0
for version in $PYTHONS; do
    python="$PYENV_VERSIONS/$version/bin/python"
    venv=".venv-${version%.*}"
    if [ ! -x "$python" ]; then
        echo "test-pythons: no Python $version at $python" >&2
        exit 2
    fi
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test]'
    echo "== Python $version ($venv)"
    "$venv/bin/python" -m pytest -p no:cacheprovider "$@" || status=1
done
exit $status
