#!/usr/bin/env bash
# Create .venv and install aiprod at the versions of the lock files. Idempotent: a second run
# is quick.
#   bash scripts/setup.sh        what `make serve` needs: the API, the worker and the built-in
#                                model (the `engine` extra, requirements/serve.lock)
#   bash scripts/setup.sh dev    + data, training, S3 and the dev/test tools (`make setup`,
#                                `make test`, `make lint`; requirements/dev.lock)
# torch is installed first, on its own, at the lock's version, so nothing else resolves a
# different (much larger) build. Rewrite the locks with scripts/lock.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-serve}
# serve: no bytecode written at install (--no-compile; ~300 MB for modules the server never
# imports); Python compiles what it imports on first use.
case "$profile" in
    serve) lock=requirements/serve.lock extras=engine compile=--no-compile ;;
    dev) lock=requirements/dev.lock extras=all,dev compile=--compile ;;
    *) echo "usage: scripts/setup.sh [serve|dev]" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.aiprod-installed
digest="$(cat pyproject.toml requirements/*.lock requirements/torch.in scripts/setup.sh \
    | sha256sum | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"
# a dev install holds everything a serve install has
if [ "$have" = "$profile $digest" ] || { [ "$profile" = serve ] && [ "$have" = "dev $digest" ]; }; then
    exit 0
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "$compile" -c "$lock" torch
.venv/bin/python -m pip install --quiet "$compile" -c "$lock" -e ".[$extras]"
echo "$profile $digest" > "$stamp"
