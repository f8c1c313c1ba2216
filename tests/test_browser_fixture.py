"""The shared Chromium fixture itself: a page renders and a screenshot is written."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser import artifacts_dir

pytestmark = pytest.mark.integration


def test_page_renders_html(page: Any) -> None:
    page.set_content("<h1 id='t'>aiprod</h1>")
    assert page.inner_text("#t") == "aiprod"
    shot = artifacts_dir() / "fixture-check.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 0
