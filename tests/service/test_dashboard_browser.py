"""The operator console in a real headless Chromium against a real ``aiprod serve`` (uvicorn on
loopback + a worker running the tiny built-in model): log in with an admin key, see two keys'
jobs, watch a running job reach ``succeeded`` without a reload, play its video, revoke a key,
download a statement; a client key is refused; a POST without the CSRF token is refused; no
horizontal overflow at a phone's width. Screenshots go to test-artifacts/."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser import artifacts_dir
from tests.service.harness import Stack, wait_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("console")
    # Each denoising step sleeps 0.4 s: a job with 8 steps runs long enough to watch it.
    s = Stack(tmp, f"sqlite:///{tmp / 'aiprod.db'}", AIPROD_WORKER_STEP_DELAY="0.4")
    try:
        yield s
    finally:
        s.stop()


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(artifacts_dir() / f"dashboard-{name}.png"))


def log_in(page: Any, stack: Stack, key: str) -> None:
    page.goto(f"{stack.url}/dashboard/login")
    page.fill("#api_key", key)
    page.click("#login")


def submit(client: httpx.Client, prompt: str, steps: int = 2) -> str:
    r = client.post("/api/v1/generate", json={"prompt": prompt, "num_inference_steps": steps})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def test_a_client_key_cannot_log_in(page: Any, stack: Stack) -> None:
    key = stack.create_key("client-only")
    log_in(page, stack, key)
    assert "This is a client key" in page.inner_text("#error")
    assert page.url.endswith("/dashboard/login")
    page.goto(f"{stack.url}/dashboard/keys")
    assert page.url.endswith("/dashboard/login")  # still not logged in


def test_operator_console_end_to_end(page: Any, stack: Stack, tmp_path: Path) -> None:
    alice_key, bob_key = stack.create_key("alice"), stack.create_key("bob")
    with stack.client(alice_key) as alice, stack.client(bob_key) as bob:
        a = submit(alice, "a red ball bounces on grass")
        b = submit(bob, "a blue cube slides left")
        wait_job(alice, a, {"succeeded"})
        wait_job(bob, b, {"succeeded"})

        log_in(page, stack, stack.admin_key)
        page.wait_for_selector("#chart-hourly svg")
        first = page.inner_text("#updated-at")
        # the overview refreshes itself (Playwright's expect polls: the console's CSP forbids
        # the eval that wait_for_function needs)
        expect(page.locator("#updated-at")).not_to_have_text(first, timeout=30_000)
        shot(page, "overview")

        page.goto(f"{stack.url}/dashboard/jobs")
        names = page.locator("#jobs-table td.key-name").all_inner_texts()
        assert "alice" in names and "bob" in names
        assert page.locator(f'tr[data-job-id="{a}"]').count() == 1
        assert page.locator(f'tr[data-job-id="{b}"]').count() == 1
        page.select_option("#f-key", label="bob")
        page.click("#filters button[type=submit]")
        page.wait_for_url("**/dashboard/jobs?*")
        assert set(page.locator("#jobs-table td.key-name").all_inner_texts()) == {"bob"}
        shot(page, "jobs")

        # A job that runs for a few seconds, watched from its page without reloading.
        slow = submit(alice, "a green ball rolls right", steps=8)
        page.goto(f"{stack.url}/dashboard/jobs/{slow}")
        page.evaluate("window.__sameDocument = true")
        expect(page.locator("#job")).to_have_attribute("data-status", "running", timeout=120_000)
        expect(page.locator("#job-status")).to_have_text("succeeded", timeout=180_000)
        assert page.evaluate("window.__sameDocument") is True  # no reload happened
        expect(page.locator("#cancel")).to_be_hidden()  # nothing left to cancel or retry
        expect(page.locator("#retry")).to_be_hidden()
        duration = page.evaluate(
            """() => new Promise((resolve, reject) => {
                const v = document.querySelector('#video-slot video');
                if (!v) return reject(new Error('no <video>'));
                if (v.readyState >= 1) return resolve(v.duration);
                v.addEventListener('loadedmetadata', () => resolve(v.duration));
                v.addEventListener('error', () => reject(new Error('video error')));
            })"""
        )
        assert duration > 0
        assert page.inner_text("[data-field=cost]").startswith("$")
        shot(page, "job")

        # Revoke bob's key from the keys page: his next request is refused.
        page.goto(f"{stack.url}/dashboard/keys")
        row = page.locator('tr[data-key-name="bob"]')
        row.locator("summary").click()
        page.once("dialog", lambda d: d.accept())
        row.locator("button.revoke").click()
        page.wait_for_selector("text=Key bob revoked.")
        assert "revoked" in page.locator('tr[data-key-name="bob"] .key-status').inner_text()
        shot(page, "keys")
        assert bob.get("/api/v1/jobs").status_code == 401

        # The month's statement of alice (CSV) and the operator's summary of both keys.
        page.goto(f"{stack.url}/dashboard/costs")
        page.wait_for_selector("#chart-keys svg")
        shot(page, "costs")
        with page.expect_download() as dl:
            page.click('tr[data-key-name="alice"] a.statement-csv')
        saved = tmp_path / "statement.csv"
        dl.value.save_as(saved)
        rows = list(csv.DictReader(io.StringIO(saved.read_text())))
        assert {a, slow} <= {r["job_id"] for r in rows} and b not in saved.read_text()
        assert rows[-1]["job_id"] == "TOTAL" and float(rows[-1]["price_usd"]) > 0
        with page.expect_download() as dl:
            page.click("#summary")
        dl.value.save_as(saved)
        keys = {r["key_name"] for r in csv.DictReader(io.StringIO(saved.read_text()))}
        assert {"alice", "bob"} <= keys


def test_a_post_without_the_csrf_token_is_refused(page: Any, stack: Stack) -> None:
    victim = stack.create_key("csrf-victim")
    log_in(page, stack, stack.admin_key)
    page.goto(f"{stack.url}/dashboard/keys")
    key_id = page.locator('tr[data-key-name="csrf-victim"]').get_attribute("data-key-id")
    status = page.evaluate(
        """id => fetch(`/dashboard/keys/${id}/revoke`, {method: 'POST',
              body: new URLSearchParams({csrf_token: 'forged'})}).then(r => r.status)""",
        key_id,
    )
    assert status == 403
    status = page.evaluate(
        """id => fetch(`/dashboard/keys/${id}/revoke`, {method: 'POST'}).then(r => r.status)""",
        key_id,
    )
    assert status == 403
    with stack.client(victim) as c:
        assert c.get("/api/v1/jobs").status_code == 200  # still active


def test_phone_width_has_no_horizontal_overflow(browser: Any, stack: Stack) -> None:
    context = browser.new_context(viewport=PHONE, device_scale_factor=1)
    context.set_default_timeout(30_000)
    page = context.new_page()
    try:
        with stack.client(stack.create_key("phone")) as c:
            job = submit(c, "a yellow ball bounces")
            wait_job(c, job, {"succeeded"})
        log_in(page, stack, stack.admin_key)
        urls = ["/dashboard", "/dashboard/jobs", "/dashboard/keys", "/dashboard/costs"]
        urls.append(f"/dashboard/jobs/{job}")
        for url in urls:
            page.goto(stack.url + url)
            page.wait_for_load_state("networkidle")
            sizes = page.evaluate(
                """() => { const m = document.getElementById('main');
                    return [m.scrollWidth, m.clientWidth, document.documentElement.scrollWidth,
                            window.innerWidth]; }"""
            )
            assert sizes[0] <= sizes[1] and sizes[2] <= sizes[3], (url, sizes)
        page.goto(stack.url + "/dashboard")
        page.wait_for_selector("#chart-hourly svg")
        page.screenshot(path=str(artifacts_dir() / "dashboard-phone.png"))
    finally:
        context.close()
