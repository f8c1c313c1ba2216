#!/usr/bin/env bash
# ruff (lint + format) and mypy over the typed layers (pyproject's [tool.mypy] files).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
.venv/bin/mypy
