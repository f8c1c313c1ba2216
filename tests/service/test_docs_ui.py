"""/docs (Swagger UI) and /redoc in headless Chromium against a real uvicorn, with every request
that leaves loopback refused: both viewers work offline, from the packaged assets. In Swagger
UI a real key is entered with Authorize and one call is run with Try it out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.service.harness import Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("docs-ui")
    url = f"sqlite:///{tmp / 'aiprod.db'}"
    s = Stack(tmp, url, workers=0, AIPROD_READY_REQUIRES_WORKER="false")
    try:
        yield s
    finally:
        s.stop()


def _offline(page: Any, base: str) -> list[str]:
    """Abort every request that is not to the server under test; return the list of them."""
    refused: list[str] = []

    def handle(route: Any) -> None:
        url = route.request.url
        if url.startswith(base) or url.startswith("data:") or url.startswith("blob:"):
            route.continue_()
        else:
            refused.append(f"{route.request.resource_type} {url}")
            route.abort()

    page.route("**/*", handle)
    return refused


def test_swagger_ui_authorizes_and_runs_a_call_offline(stack: Stack, page: Any) -> None:
    key = stack.create_key("swagger")
    refused = _offline(page, stack.url)
    page.goto(f"{stack.url}/docs")
    page.locator("button.authorize").first.click()
    dialog = page.locator(".auth-container").filter(has_text="bearerAuth")
    dialog.locator("input").fill(key)
    dialog.locator("button.authorize").click()
    page.locator("button.btn-done").click()

    op = page.locator("#operations-jobs-listModels")
    op.locator(".opblock-summary").first.click()
    op.locator("button.try-out__btn").click()
    op.locator("button.execute").click()
    status = op.locator(".live-responses-table .response .response-col_status").first
    status.wait_for()
    assert status.inner_text().strip().startswith("200"), status.inner_text()
    body = op.locator(".live-responses-table .response-col_description pre").first.inner_text()
    assert '"builtin"' in body
    # The request really carried the key: the curl Swagger shows has the header
    assert key in op.locator(".curl-command").inner_text()
    assert refused == [], f"/docs tried to leave loopback: {refused}"


def test_swagger_ui_without_a_key_shows_the_401_in_the_error_shape(stack: Stack, page: Any) -> None:
    _offline(page, stack.url)
    page.goto(f"{stack.url}/docs")
    op = page.locator("#operations-jobs-listJobs")
    op.locator(".opblock-summary").first.click()
    op.locator("button.try-out__btn").click()
    op.locator("button.execute").click()
    status = op.locator(".live-responses-table .response .response-col_status").first
    status.wait_for()
    assert status.inner_text().strip().startswith("401")
    assert "missing API key" in op.locator(".live-responses-table").inner_text()


def test_redoc_renders_offline(stack: Stack, page: Any) -> None:
    refused = _offline(page, stack.url)
    page.goto(f"{stack.url}/redoc")
    page.locator("h2", has_text="Create a generation job").first.wait_for()
    # the operation's documented errors and the security scheme are rendered
    assert "bearerAuth" in page.content()
    # ReDoc's "powered by" footer shows Redocly's logo from their CDN (no option turns it off);
    # offline it is simply missing. Nothing else may leave loopback.
    assert [r for r in refused if not r.startswith("image ")] == [], refused
