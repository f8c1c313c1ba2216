"""Headless Chromium for the tests that drive a real browser (Swagger UI, the operator console).

Debian's `chromium` package driven by Playwright (`.ci/run` installs the package when it is
missing). Every test that uses `page` leaves a screenshot of its last state under
`test-artifacts/` (or `$AIPROD_TEST_ARTIFACTS`), pass or fail.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def chromium_path() -> str:
    found = os.environ.get("AIPROD_TEST_CHROMIUM") or shutil.which("chromium")
    if not found:
        pytest.fail("Chromium is not installed: `apt-get install chromium` (.ci/run does this)")
    return found


def artifacts_dir() -> Path:
    path = Path(os.environ.get("AIPROD_TEST_ARTIFACTS", ROOT / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


# Module scope, not session: Playwright's sync API keeps an event loop running in the thread
# while it is open, and a later test of another module in the same xdist worker that calls
# asyncio.run() would fail ("cannot be called from a running event loop").
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser context (no cookies) at laptop width; screenshot saved at teardown."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(30_000)
    pg = context.new_page()
    try:
        yield pg
    finally:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid.split("::", 1)[-1])
        try:
            pg.screenshot(path=str(artifacts_dir() / f"{name}.png"), full_page=True)
        finally:
            context.close()
