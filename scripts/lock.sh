#!/usr/bin/env bash
# Rewrite the lock files from pyproject.toml (pip-compile, from pip-tools), after changing a
# dependency. scripts/setup.sh installs with them as constraints, so installs are reproducible:
#   requirements/serve.lock  the `engine` extra (what `make serve` installs), torch included
#   requirements/dev.lock    every extra + the dev tools (`make test`), agreeing with serve.lock
# torch's pin is written without a local label (`torch==2.13.0`, not `+cpu`): pip then takes the
# CPU wheel where one lies in its find-links, and the CUDA build from PyPI on a GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP_COMPILE=${PIP_COMPILE:-.venv/bin/pip-compile}
common=(--quiet --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links
        --no-emit-trusted-host --no-header --annotation-style line)
"$PIP_COMPILE" "${common[@]}" --extra engine -o requirements/serve.lock pyproject.toml
"$PIP_COMPILE" "${common[@]}" --extra all --extra dev -c requirements/serve.lock \
    -o requirements/dev.lock pyproject.toml
sed -i -E 's/^(torch==[^+ ]+)\+[A-Za-z0-9.]+/\1/' requirements/serve.lock requirements/dev.lock
