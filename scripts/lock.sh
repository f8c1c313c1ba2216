#!/usr/bin/env bash
# Rewrite the lock files from pyproject.toml (pip-compile, from pip-tools), after changing a
# dependency. scripts/setup.sh installs with them as constraints, so installs are reproducible:
#   requirements/serve.lock  the `engine` extra (what `make serve` installs), torch included
#   requirements/dev.lock    every extra + the dev tools (`make test`), agreeing with serve.lock
# torch's version comes from requirements/torch.in (its one pin), written without a local label.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP_COMPILE=${PIP_COMPILE:-.venv/bin/pip-compile}
common=(--quiet --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links
        --no-emit-trusted-host --no-header --annotation-style line)
"$PIP_COMPILE" "${common[@]}" --extra engine -o requirements/serve.lock \
    pyproject.toml requirements/torch.in
"$PIP_COMPILE" "${common[@]}" --extra all --extra dev -c requirements/serve.lock \
    -o requirements/dev.lock pyproject.toml requirements/torch.in
# aiprod itself is installed from the checkout, not from the lock; the local label goes
sed -i -E -e '/^aiprod @ /d' -e 's/^(torch==[^+ ]+)\+[A-Za-z0-9.]+/\1/' \
    requirements/serve.lock requirements/dev.lock
