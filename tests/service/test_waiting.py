"""Waiting without polling (`Prefer: wait`, server-sent events), DELETE, expires_at, the
webhook event filter, absolute download URLs, unknown query parameters and /estimate-cost's
seed, through a real `aiprod serve` on SQLite and on PostgreSQL (migrated by `aiprod serve`,
so the 0003 migration runs on both)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.service.harness import Stack, fresh_pg_database, wait_for, wait_job

pytestmark = [pytest.mark.slow, pytest.mark.integration]

PUBLIC = "https://video.example.com"
SETTINGS = {
    "AIPROD_RETENTION_DAYS": "2",
    "AIPROD_PUBLIC_URL": PUBLIC,
    "AIPROD_WORKER_STEP_DELAY": "0.02",
}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp(f"waiting-{request.param}")
    if request.param == "postgres":
        with fresh_pg_database("wait") as url:
            s = Stack(tmp, url, **SETTINGS)
            try:
                yield s
            finally:
                s.stop()
    else:
        s = Stack(
            tmp,
            f"sqlite:///{tmp / 'aiprod.db'}",
            **SETTINGS,
        )
        try:
            yield s
        finally:
            s.stop()


@pytest.fixture(scope="module")
def c(stack: Stack) -> Iterator[httpx.Client]:
    with stack.client(stack.create_key("waiter")) as client:
        client.timeout = httpx.Timeout(120)
        yield client


def _dt(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


# A job that runs for at least 400 x AIPROD_WORKER_STEP_DELAY = 8 s (the default 2-step jobs
# take 0.04 s more).
SLOW = {"prompt": "a slow fox", "num_inference_steps": 400}


def test_prefer_wait_on_generate_answers_when_the_job_ended(c: httpx.Client) -> None:
    # The rate limit counts in fixed one-minute windows: measure within one window (retry if
    # the window turned over meanwhile: X-RateLimit-Reset went up).
    for _ in range(3):
        m1 = c.get("/api/v1/models").headers
        r = c.post("/api/v1/generate", json={"prompt": "a red fox"}, headers={"Prefer": "wait=60"})
        m2 = c.get("/api/v1/models").headers
        if int(m2["x-ratelimit-reset"]) <= int(m1["x-ratelimit-reset"]):
            break
    # the held request counted once: the POST and the second GET
    assert int(m1["x-ratelimit-remaining"]) - int(m2["x-ratelimit-remaining"]) == 2
    assert r.status_code == 202, r.text
    assert r.headers["preference-applied"] == "wait=60"
    job = r.json()
    assert job["status"] == "succeeded" and job["progress"] == 1.0
    # absolute, from AIPROD_PUBLIC_URL; expires_at from AIPROD_RETENTION_DAYS=2
    assert job["download_url"] == f"{PUBLIC}/api/v1/jobs/{job['id']}/download"
    assert _dt(job["expires_at"]) == _dt(job["completed_at"]) + timedelta(days=2)
    assert job["deleted_at"] is None


def test_prefer_wait_is_capped_and_times_out(c: httpx.Client) -> None:
    slow = c.post("/api/v1/generate", json=SLOW).json()
    t0 = time.monotonic()
    r = c.get(f"/api/v1/jobs/{slow['id']}", headers={"Prefer": "wait=1"})
    held = time.monotonic() - t0
    assert r.status_code == 200 and r.headers["preference-applied"] == "wait=1"
    assert r.json()["status"] in ("queued", "running") and held >= 0.9
    # a finished job answers at once; `wait` alone and a larger N are capped at 60
    c.post(f"/api/v1/jobs/{slow['id']}/cancel")
    done = wait_job(c, slow["id"], {"canceled"})
    for prefer in ("wait", "wait=3600", "respond-async, wait=120"):
        r = c.get(f"/api/v1/jobs/{done['id']}", headers={"Prefer": prefer})
        assert r.headers["preference-applied"] == "wait=60", prefer
    r = c.get(f"/api/v1/jobs/{done['id']}", headers={"Prefer": "wait=soon"})
    assert "preference-applied" not in r.headers  # malformed: ignored (RFC 7240)


def test_events_stream_progress_then_the_terminal_status(c: httpx.Client) -> None:
    job = c.post("/api/v1/generate", json={"prompt": "a fox", "num_inference_steps": 40}).json()
    events: list[tuple[str, dict]] = []
    with c.stream("GET", f"/api/v1/jobs/{job['id']}/events") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                assert name is not None
                events.append((name, json.loads(line[6:])))
    names = [n for n, _ in events]
    assert names[0] == "status" and names[-1] == "status"
    assert events[-1][1]["status"] == "succeeded" and events[-1][1]["id"] == job["id"]
    progress = [d["progress"] for n, d in events]
    assert progress == sorted(progress)
    assert all(d["status"] == "running" for n, d in events if n == "progress")
    # status events only when the status changed (queued? -> running -> succeeded)
    statuses = [d["status"] for n, d in events if n == "status"]
    assert len(statuses) == len(set(statuses))


def test_delete_removes_the_output_and_keeps_the_row(c: httpx.Client, stack: Stack) -> None:
    job = c.post("/api/v1/generate", json={"prompt": "to delete"}, headers={"Prefer": "wait"})
    job = job.json()
    assert job["status"] == "succeeded"
    files = list((stack.data_dir / "outputs").rglob(f"*{job['id']}*"))
    assert files, "the output exists before the delete"
    r = c.delete(f"/api/v1/jobs/{job['id']}")
    assert r.status_code == 200, r.text
    gone = r.json()
    assert gone["status"] == "succeeded" and gone["deleted_at"] is not None
    assert gone["download_url"] is None and gone["expires_at"] is None
    assert gone["cost_usd"] == job["cost_usd"]  # billing unchanged
    assert not any(f.exists() for f in files)
    assert c.get(f"/api/v1/jobs/{job['id']}").json()["deleted_at"] == gone["deleted_at"]
    d = c.get(f"/api/v1/jobs/{job['id']}/download")
    assert d.status_code == 410 and d.json()["error"]["code"] == "deleted"
    assert "deleted" in d.json()["error"]["message"]
    again = c.delete(f"/api/v1/jobs/{job['id']}")  # idempotent
    assert again.status_code == 200 and again.json()["deleted_at"] == gone["deleted_at"]
    # a queued or running job is canceled first
    slow = c.post("/api/v1/generate", json=SLOW).json()
    r = c.delete(f"/api/v1/jobs/{slow['id']}")
    assert r.status_code == 200 and r.json()["deleted_at"] is not None
    final = wait_job(c, slow["id"], {"canceled", "succeeded", "failed"})
    assert final["status"] == "canceled" and final["download_url"] is None
    assert c.delete("/api/v1/jobs/no-such-job").status_code == 404


def test_unknown_query_parameters_and_the_estimate_seed(c: httpx.Client) -> None:
    r = c.get("/api/v1/jobs", params={"after": "abc"})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["field"] == "after" and "cursor" in err["message"] and "limit" in err["message"]
    assert c.get("/api/v1/jobs", params={"limit": 1, "status": "succeeded"}).status_code == 200
    r = c.get("/api/v1/jobs/x", params={"verbose": "1"})
    assert r.status_code == 422 and "no query parameters" in r.json()["error"]["message"]
    est = c.post("/api/v1/estimate-cost", json={"prompt": "x"}).json()
    assert "seed" not in est["params"]
    assert (
        c.post("/api/v1/estimate-cost", json={"prompt": "x", "seed": 5}).json()["params"]["seed"]
        == 5
    )


class _Receiver(ThreadingHTTPServer):
    received: list[dict]


def _receiver() -> _Receiver:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["content-length"]))
            self.server.received.append(json.loads(body))  # type: ignore[attr-defined]
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    srv = _Receiver(("127.0.0.1", 0), Handler)
    srv.received = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_webhook_event_filter_and_started(c: httpx.Client) -> None:
    r = c.post(
        "/api/v1/generate",
        json={"prompt": "x", "webhook_url": "https://example.com/h", "webhook_events": ["done"]},
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "webhook_events"
    assert "started, succeeded, failed, canceled" in r.json()["error"]["message"]
    rx = _receiver()
    try:
        url = f"http://127.0.0.1:{rx.server_address[1]}/hook"
        job = c.post(
            "/api/v1/generate",
            json={
                "prompt": "hooked",
                "webhook_url": url,
                "webhook_events": ["started", "succeeded"],
            },
            headers={"Prefer": "wait=60"},
        ).json()
        assert job["status"] == "succeeded"
        wait_for(lambda: len(rx.received) >= 2, 60, 0.05, "the two webhooks")
        types = sorted(p["type"] for p in rx.received)
        assert types == ["job.started", "job.succeeded"]
        done = next(p for p in rx.received if p["type"] == "job.succeeded")["data"]
        assert done["download_url"] == f"{PUBLIC}/api/v1/jobs/{job['id']}/download"
        started = next(p for p in rx.received if p["type"] == "job.started")["data"]
        assert started["status"] == "running" and started["id"] == job["id"]
        # only terminal events by default: no `started`
        rx.received.clear()
        plain = c.post(
            "/api/v1/generate",
            json={"prompt": "default hooks", "webhook_url": url},
            headers={"Prefer": "wait=60"},
        ).json()
        wait_for(lambda: rx.received, 60, 0.05, "the default webhook")
        time.sleep(0.5)  # a wrongly sent `started` would have come first anyway
        assert [p["type"] for p in rx.received] == ["job.succeeded"]
        assert rx.received[0]["data"]["id"] == plain["id"]
    finally:
        rx.shutdown()
