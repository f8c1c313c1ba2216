"""Suite-wide test setup: never touch a model hub, keep every test's data in its own tmp dir."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Keep torch from oversubscribing the 2-core CI machine when tests run in parallel.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from tests.browser import browser, page  # noqa: E402,F401  (shared Chromium fixtures)
