"""The operator console over HTTP, in process (the browser tests drive it in Chromium against
a real server): login and its cookie, CSRF, client keys refused, every page, the JSON the
pages poll, the video with Range, the statement CSV, key forms. SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import av
import pytest
from fastapi.testclient import TestClient

from aiprod.db.models import JobStatus
from tests.service.dashboard_helpers import add_job, add_key, csrf_of, login, make_app


@pytest.fixture
def console(tmp_path: Path, db_url: str) -> Any:
    app = make_app(tmp_path, db_url)
    with TestClient(app) as client:
        yield app, client


def test_pages_need_a_login_and_json_gets_401(console: Any) -> None:
    app, c = console
    r = c.get("/dashboard", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/login"
    r = c.get("/dashboard/api/overview")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = c.post("/dashboard/keys", data={"name": "x"}, follow_redirects=False)
    assert r.status_code == 401
    # the login form sets a signed, HttpOnly, SameSite=Strict cookie scoped to the console
    r = c.get("/dashboard/login")
    cookie = r.headers["set-cookie"].lower()
    assert "aiprod_dashboard=" in cookie and "httponly" in cookie
    assert "samesite=strict" in cookie and "path=/dashboard" in cookie
    assert "script-src 'self'" in r.headers["content-security-policy"]


def test_a_client_key_or_a_bad_key_cannot_log_in(console: Any) -> None:
    app, c = console
    _, client_key = add_key(app, "acme")
    token = csrf_of(c.get("/dashboard/login").text)
    r = c.post("/dashboard/login", data={"api_key": client_key, "csrf_token": token})
    assert r.status_code == 403 and "This is a client key" in r.text
    r = c.post("/dashboard/login", data={"api_key": "aiprod_sk_nope", "csrf_token": token})
    assert r.status_code == 401 and "Unknown or revoked API key" in r.text
    assert c.get("/dashboard", follow_redirects=False).status_code == 303  # still logged out


def test_login_needs_the_forms_csrf_token(console: Any) -> None:
    app, c = console
    _, admin = add_key(app, "ops", admin=True)
    c.get("/dashboard/login")
    r = c.post("/dashboard/login", data={"api_key": admin}, follow_redirects=False)
    assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_failed"


def test_every_form_refuses_a_missing_or_wrong_csrf_token(console: Any) -> None:
    app, c = console
    _, admin = add_key(app, "ops", admin=True)
    client_id, _ = add_key(app, "acme")
    job = add_job(app, client_id, status=JobStatus.QUEUED)
    token = login(c, admin)
    posts = [
        ("/dashboard/keys", {"name": "new"}),
        (f"/dashboard/keys/{client_id}", {"name": "renamed"}),
        (f"/dashboard/keys/{client_id}/revoke", {}),
        (f"/dashboard/jobs/{job}/cancel", {}),
        (f"/dashboard/jobs/{job}/retry", {}),
        ("/dashboard/logout", {}),
    ]
    for url, fields in posts:
        for sent in ({}, {"csrf_token": token[:-2] + "xx"}):
            r = c.post(url, data={**fields, **sent}, follow_redirects=False)
            assert r.status_code == 403, (url, sent, r.status_code)
    # nothing changed
    page = c.get("/dashboard/keys").text
    assert "acme" in page and "renamed" not in page and "badge revoked" not in page
    assert c.get(f"/dashboard/api/jobs/{job}").json()["status"] == "queued"


def test_a_tampered_or_revoked_session_is_logged_out(console: Any) -> None:
    app, c = console
    admin_id, admin = add_key(app, "ops", admin=True)
    _, other_admin = add_key(app, "ops2", admin=True)
    login(c, admin)
    assert c.get("/dashboard", follow_redirects=False).status_code == 200
    value = c.cookies.get("aiprod_dashboard")
    c.cookies.clear()
    c.cookies.set("aiprod_dashboard", value[:-3] + "abc")
    assert c.get("/dashboard", follow_redirects=False).status_code == 303
    c.cookies.clear()
    token = login(c, admin)
    with TestClient(app) as c2:  # a second operator revokes the first one's key
        t2 = login(c2, other_admin)
        r = c2.post(f"/dashboard/keys/{admin_id}/revoke", data={"csrf_token": t2})
        assert r.status_code == 200 and "revoked" in r.text
    assert c.get("/dashboard", follow_redirects=False).status_code == 303
    r = c.post("/dashboard/logout", data={"csrf_token": token}, follow_redirects=False)
    assert r.status_code == 401


def test_pages_show_every_keys_jobs_and_filter_them(console: Any) -> None:
    app, c = console
    _, admin = add_key(app, "ops", admin=True)
    alice, _ = add_key(app, "alice")
    bob, _ = add_key(app, "bob")
    a = add_job(app, alice, prompt="alice's red ball")
    b = add_job(app, bob, status=JobStatus.FAILED, prompt="bob's blue cube", error_code="oom")
    login(c, admin)
    page = c.get("/dashboard/jobs").text
    assert a in page and b in page and "alice" in page and "bob" in page
    page = c.get("/dashboard/jobs", params={"key": bob}).text
    assert b in page and a not in page
    page = c.get("/dashboard/jobs", params={"q": "RED BALL", "status": "succeeded"}).text
    assert a in page and b not in page
    r = c.get("/dashboard/jobs", params={"created_after": "yesterday"})
    assert r.status_code == 422 and "created_after must be a date" in r.text
    ov = c.get("/dashboard/api/overview").json()
    assert ov["failures_24h"] == 1 and ov["recent_failures"][0]["id"] == b
    assert sum(h["succeeded"] for h in ov["jobs_per_hour"]) == 1
    assert ov["p95"][0]["model"] == "builtin" and ov["p95"][0]["p95_seconds"] == pytest.approx(4)
    job = c.get(f"/dashboard/api/jobs/{b}").json()
    assert job["key_name"] == "bob" and job["error"].startswith("oom")
    live = c.get("/dashboard/api/jobs", params={"ids": f"{a},{b},nope"}).json()["data"]
    assert {j["id"]: j["status"] for j in live} == {a: "succeeded", b: "failed"}
    assert c.get("/dashboard/jobs/nope").status_code == 404
    for url in ("/dashboard", "/dashboard/keys", "/dashboard/costs", f"/dashboard/jobs/{a}"):
        assert c.get(url).status_code == 200, url


def test_jobs_table_pages_with_a_cursor(console: Any) -> None:
    app, c = console
    _, admin = add_key(app, "ops", admin=True)
    alice, _ = add_key(app, "alice")
    ids = {add_job(app, alice) for _ in range(55)}
    login(c, admin)
    first = c.get("/dashboard/jobs").text
    assert first.count("data-job-id=") == 50
    nxt = first.split('id="next-page" href="', 1)[0]  # the link is rendered
    assert 'id="next-page"' in first and nxt
    href = first.split('href="/dashboard/jobs?', 2)[-1]
    second = c.get("/dashboard/jobs?" + href.split('"', 1)[0].replace("&amp;", "&")).text
    assert second.count("data-job-id=") == 5
    shown = {i for i in ids if i in first or i in second}
    assert shown == ids


def test_video_streams_with_range_to_an_admin_session(console: Any) -> None:
    app, c = console
    _, admin = add_key(app, "ops", admin=True)
    alice, _ = add_key(app, "alice")
    job = add_job(app, alice, video=True)
    queued = add_job(app, alice, status=JobStatus.QUEUED)
    assert c.get(f"/dashboard/jobs/{job}/video", follow_redirects=False).status_code == 303
    login(c, admin)
    whole = c.get(f"/dashboard/jobs/{job}/video")
    assert whole.status_code == 200 and whole.headers["content-type"] == "video/mp4"
    assert whole.headers["content-disposition"].startswith("inline")
    with av.open(io.BytesIO(whole.content)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 9
    part = c.get(f"/dashboard/jobs/{job}/video", headers={"Range": "bytes=10-99"})
    assert part.status_code == 206 and part.content == whole.content[10:100]
    assert part.headers["content-range"] == f"bytes 10-99/{len(whole.content)}"
    assert c.get(f"/dashboard/jobs/{queued}/video").status_code == 409


def test_statements_per_key_and_the_operator_summary(console: Any) -> None:
    app, c = console
    _, admin = add_key(app, "ops", admin=True)
    alice, _ = add_key(app, "alice")
    bob, _ = add_key(app, "bob")
    jobs = [add_job(app, alice, seconds=2.0), add_job(app, alice, seconds=3.0)]
    bobs = add_job(app, bob, seconds=5.0)
    login(c, admin)
    costs = c.get("/dashboard/costs").text
    row = costs.split('data-key-name="alice"', 1)[1].split("</tr>", 1)[0]
    href = row.split('class="statement-csv" href="', 1)[1].split('"', 1)[0]
    r = c.get(href.replace("&amp;", "&"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [x["job_id"] for x in rows[:-1]] == jobs and bobs not in r.text
    assert rows[-1]["job_id"] == "TOTAL"
    assert float(rows[-1]["gpu_seconds"]) == pytest.approx(5.0)
    assert float(rows[-1]["price_usd"]) == pytest.approx(0.05)
    html = c.get(href.replace("&amp;", "&").replace("statement.csv", "statement.html"))
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert all(j in html.text for j in jobs) and bobs not in html.text
    summary = c.get(costs.split('id="summary" href="', 1)[1].split('"', 1)[0])
    per_key = {x["key_name"]: x for x in csv.DictReader(io.StringIO(summary.text))}
    assert float(per_key["alice"]["revenue_usd"]) == pytest.approx(0.05)
    assert float(per_key["bob"]["revenue_usd"]) == pytest.approx(0.05)
    bad = c.get("/dashboard/costs/statement.csv", params={"month": "2026-13", "key": alice})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "month"
    unknown = c.get("/dashboard/costs/statement.csv", params={"key": "nope"})
    assert unknown.status_code == 404


def test_keys_create_shows_the_secret_once_edit_and_revoke(console: Any) -> None:
    app, c = console
    _, admin = add_key(app, "ops", admin=True)
    token = login(c, admin)
    r = c.post(
        "/dashboard/keys",
        data={"csrf_token": token, "name": "globex", "monthly_budget_usd": "25"},
    )
    assert r.status_code == 200
    secret = r.text.split('id="new-key-secret">', 1)[1].split("<", 1)[0]
    assert secret.startswith("aiprod_sk_")
    assert secret not in c.get("/dashboard/keys").text  # shown once
    api = c.get("/api/v1/jobs", headers={"Authorization": f"Bearer {secret}"})
    assert api.status_code == 200
    dup = c.post("/dashboard/keys", data={"csrf_token": token, "name": "globex"})
    assert dup.status_code == 409 and "already named" in dup.text
    key_id = r.text.split('data-key-name="globex"', 1)[0].rsplit('data-key-id="', 1)[1][:36]
    fields = {"csrf_token": token, "name": "globex", "rate_limit_per_minute": "7"}
    r = c.post(f"/dashboard/keys/{key_id}", data={**fields, "monthly_budget_usd": "50"})
    assert r.status_code == 200 and "Key globex saved." in r.text and "$50.00" in r.text
    r = c.post(f"/dashboard/keys/{key_id}", data={**fields, "rate_limit_per_minute": "zero"})
    assert "rate_limit_per_minute must be a whole number" in r.text
    r = c.post(f"/dashboard/keys/{key_id}/revoke", data={"csrf_token": token})
    assert "Key globex revoked." in r.text
    api = c.get("/api/v1/jobs", headers={"Authorization": f"Bearer {secret}"})
    assert api.status_code == 401


def test_cancel_and_retry_from_the_job_page(console: Any) -> None:
    app, c = console
    _, admin = add_key(app, "ops", admin=True)
    alice, _ = add_key(app, "alice")
    job = add_job(app, alice, status=JobStatus.QUEUED)
    token = login(c, admin)
    r = c.post(f"/dashboard/jobs/{job}/cancel", data={"csrf_token": token})
    assert r.status_code == 200 and "Job canceled." in r.text
    assert c.get(f"/dashboard/api/jobs/{job}").json()["status"] == "canceled"
    r = c.post(f"/dashboard/jobs/{job}/retry", data={"csrf_token": token})
    assert r.status_code == 200 and f"Retried as a new job (of {job})" in r.text
    new = str(r.url).rsplit("/", 1)[1]
    assert new != job and c.get(f"/dashboard/api/jobs/{new}").json()["status"] == "queued"
    r = c.post(f"/dashboard/jobs/{new}/retry", data={"csrf_token": token})
    assert "only failed or canceled jobs can be retried" in r.text
