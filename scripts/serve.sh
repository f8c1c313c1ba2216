#!/usr/bin/env bash
# Install what serving needs (scripts/setup.sh: the API, workers and the built-in model; no
# dev, data or training tools) and start the server on the embedded default.
# Extra args go to `aiprod serve` (e.g. --port 9000).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/aiprod serve "$@"
