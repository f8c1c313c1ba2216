"""Fixtures of the fault suite (see tests/faults/kit.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.harness import Stack, db_url, pg_url  # noqa: F401


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(
        tmp_path,
        f"sqlite:///{tmp_path / 'aiprod.db'}",
        workers=0,
        AIPROD_READY_REQUIRES_WORKER="false",
    )
    try:
        yield s
    finally:
        s.stop()
