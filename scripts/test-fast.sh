#!/usr/bin/env bash
# The quick loop while coding: every test but the `integration` ones (real servers and worker
# subprocesses) and the `slow` ones. The whole suite (scripts/test.sh) is what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec .venv/bin/python -m pytest -n "${AIPROD_TEST_JOBS:-2}" -m "not integration and not slow" "$@"
