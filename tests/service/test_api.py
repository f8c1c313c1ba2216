"""End to end through a real `aiprod serve` (uvicorn on loopback + 2 worker subprocesses), on
SQLite and on PostgreSQL: generate -> poll -> download -> decode, auth, rate limit, idempotency,
bad input, cancel, a SIGKILLed worker, listing, cost, stats, clear-cache, webhooks."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from aiprod.core.media import read_video
from tests.service.harness import MODELS_TOML, Stack, fresh_pg_database, wait_for, wait_job

pytestmark = [pytest.mark.slow, pytest.mark.integration]

# A registry entry whose weights are missing: named at serve start, refused at submit.
BROKEN_MODEL = """
[[models]]
id = "broken"
family = "ltxv"
path = "no-such-weights"
"""


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp(f"stack-{request.param}")
    with (
        fresh_pg_database("api")
        if request.param == "postgres"
        else _nullctx(f"sqlite:///{tmp / 'aiprod.db'}")
    ) as url:
        s = Stack(
            tmp,
            url,
            workers=2,
            models_toml=MODELS_TOML + BROKEN_MODEL,
            AIPROD_WORKER_STEP_DELAY="0.05",
        )
        try:
            yield s
        finally:
            s.stop()


class _nullctx:
    def __init__(self, value: str) -> None:
        self.value = value

    def __enter__(self) -> str:
        return self.value

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.fixture(scope="module")
def client_key(stack: Stack) -> str:
    return stack.create_key("acme")


@pytest.fixture(scope="module")
def other_key(stack: Stack) -> str:
    return stack.create_key("globex")


def test_generate_poll_download_decode(stack: Stack, client_key: str) -> None:
    with stack.client(client_key) as c:
        r = c.post("/api/v1/generate", json={"prompt": "a red fox", "seed": 7, "num_frames": 9})
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["status"] in {"queued", "running"} and job["model"] == "builtin"
        assert job["params"]["seed"] == 7 and job["estimated_cost_usd"] is not None
        for h in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"):
            assert h in r.headers
        if job["status"] == "queued":
            assert isinstance(job["queue_position"], int)
        seen = []

        def done() -> dict | None:
            j = c.get(f"/api/v1/jobs/{job['id']}").json()
            seen.append(j["progress"])
            return j if j["status"] == "succeeded" else None

        final = wait_for(done, 180, 0.02, "job to succeed")
        assert seen == sorted(seen) and final["progress"] == 1.0
        assert final["gpu_seconds"] > 0 and final["cost_usd"] == pytest.approx(
            final["gpu_seconds"] * 0.01, rel=1e-3, abs=1e-6
        )
        assert final["download_url"].endswith(f"/api/v1/jobs/{job['id']}/download")
        d = c.get(final["download_url"])
        assert d.status_code == 200 and d.headers["content-type"] == "video/mp4"
        path = stack.tmp / "dl.mp4"
        path.write_bytes(d.content)
        frames, fps = read_video(path)
        assert frames.shape == (9, 32, 32, 3) and frames.dtype == np.uint8 and fps == 8
        # Range and ETag
        part = c.get(final["download_url"], headers={"Range": "bytes=0-99"})
        assert part.status_code == 206 and part.content == d.content[:100]
        assert part.headers["content-range"] == f"bytes 0-99/{len(d.content)}"
        etag = d.headers["etag"]
        assert c.get(final["download_url"], headers={"If-None-Match": etag}).status_code == 304
        # the worker measured it: estimates for this shape are now "measured"
        est = c.post("/api/v1/estimate-cost", json={"prompt": "x", "num_frames": 9}).json()
        assert est["basis"] == "measured" and est["estimated_gpu_seconds"] > 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "prompt"),
        ({"prompt": "x" * 10_000_000}, "prompt"),
        ({"prompt": "a", "num_frames": -9}, "num_frames"),
        ({"prompt": "a", "model": "no-such-model"}, "model"),
        ({"prompt": "a", "width": 40}, "width"),
        ({"prompt": "a", "image": "not base64!"}, "image"),
        ({"prompt": "a", "image": base64.b64encode(b"GIF89a garbage").decode()}, "image"),
        ({"prompt": "a", "steps": 3}, "steps"),
        ({"prompt": "a", "webhook_url": "ftp://x"}, "webhook_url"),
        ({"prompt": "a", "seed": "abc"}, "seed"),
        ([1, 2], "body"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(
    stack: Stack, client_key: str, body: object, field: str
) -> None:
    with stack.client(client_key) as c:
        r = c.post("/api/v1/generate", json=body)
        assert 400 <= r.status_code < 500, r.text
        err = r.json()["error"]
        assert err["field"] == field and err["code"] and err["message"]


def test_garbage_json_and_oversized_body(stack: Stack, client_key: str) -> None:
    with stack.client(client_key) as c:
        r = c.post(
            "/api/v1/generate",
            content=b'{"prompt": "a",,,',
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 400 and r.json()["error"]["field"] == "body"
        big = c.post("/api/v1/generate", content=b"x" * (33 * 1024 * 1024))
        assert big.status_code == 413 and big.json()["error"]["code"] == "too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            for _ in range(33):
                yield b"x" * (1024 * 1024)

        chunked = c.post("/api/v1/generate", content=chunks())
        assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "too_large"


def test_image_to_video(stack: Stack, client_key: str) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, format="PNG")
    data = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    with stack.client(client_key) as c:
        r = c.post("/api/v1/generate", json={"prompt": "a red square", "image": data})
        assert r.status_code == 202, r.text
        job = wait_job(c, r.json()["id"], {"succeeded", "failed"})
        assert job["status"] == "succeeded", job["error"]
        assert job["params"]["image"] is True


def test_auth_scopes_and_ownership(stack: Stack, client_key: str, other_key: str) -> None:
    with stack.client() as anon:
        r = anon.get("/api/v1/jobs")
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        r = anon.get("/api/v1/jobs", headers={"Authorization": "Bearer aiprod_sk_wrong"})
        assert r.status_code == 401
    with stack.client(client_key) as c, stack.client(other_key) as o:
        job = c.post("/api/v1/generate", json={"prompt": "mine"}).json()
        for method, path in (
            ("GET", f"/api/v1/jobs/{job['id']}"),
            ("GET", f"/api/v1/jobs/{job['id']}/download"),
            ("POST", f"/api/v1/jobs/{job['id']}/cancel"),
        ):
            r = o.request(method, path)
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", path
        assert all(j["id"] != job["id"] for j in o.get("/api/v1/jobs").json()["data"])
        for method, path in (("GET", "/api/v1/admin/stats"), ("POST", "/api/v1/admin/clear-cache")):
            r = c.request(method, path)
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    # a revoked key is refused
    key = stack.create_key("temp")
    with stack.client(key) as t:
        assert t.get("/api/v1/models").status_code == 200
    listing = stack.cli("keys", "list").stdout
    assert "temp" in listing and key not in listing
    stack.cli("keys", "revoke", _key_id(stack, "temp"))
    revoked_at = time.monotonic()
    with stack.client(key) as t:
        # refused within api_key_cache_seconds (1 s) of the revocation, never later
        while (code := t.get("/api/v1/models").status_code) == 200:
            assert time.monotonic() - revoked_at < 1.5, "revoked key still accepted after 1.5 s"
            time.sleep(0.05)
        assert code == 401


def test_rate_limit_429_with_retry_after(stack: Stack) -> None:
    key = stack.create_key("limited", "--rate-limit", "3")
    with stack.client(key) as c:
        codes = [c.get("/api/v1/models") for _ in range(4)]
        assert [r.status_code for r in codes] == [200, 200, 200, 429]
        assert [r.headers["x-ratelimit-remaining"] for r in codes[:3]] == ["2", "1", "0"]
        last = codes[-1]
        assert 1 <= int(last.headers["retry-after"]) <= 60
        assert last.headers["x-ratelimit-limit"] == "3"
        assert last.json()["error"]["code"] == "rate_limited"


def test_idempotent_retry_returns_the_same_job(stack: Stack, client_key: str) -> None:
    with stack.client(client_key) as c:
        body = {"prompt": "once only", "seed": 1}
        h = {"Idempotency-Key": "order-42"}
        first = c.post("/api/v1/generate", json=body, headers=h)
        again = c.post("/api/v1/generate", json=body, headers=h)
        assert first.status_code == again.status_code == 202
        assert first.json()["id"] == again.json()["id"]
        assert again.headers.get("idempotent-replayed") == "true"
        clash = c.post("/api/v1/generate", json={**body, "seed": 2}, headers=h)
        assert clash.status_code == 409 and clash.json()["error"]["code"] == "idempotency_conflict"
        jobs = c.get("/api/v1/jobs", params={"limit": 100}).json()["data"]
        assert sum(j["params"]["prompt"] == "once only" for j in jobs) == 1


def test_cancel_running_job(stack: Stack, client_key: str) -> None:
    with stack.client(client_key) as c:
        job = c.post("/api/v1/generate", json={"prompt": "long", "num_inference_steps": 300}).json()

        def running() -> bool:
            j = c.get(f"/api/v1/jobs/{job['id']}").json()
            return j["status"] == "running" and j["progress"] > 0

        wait_for(running, 180, 0.05, "job to run")
        r = c.post(f"/api/v1/jobs/{job['id']}/cancel")
        assert r.status_code == 200 and r.json()["cancel_requested"] is True
        final = wait_job(c, job["id"], {"canceled", "succeeded", "failed"}, timeout=60)
        assert final["status"] == "canceled" and final["progress"] < 0.5
        assert final["download_url"] is None
        # idempotent on a terminal job
        assert c.post(f"/api/v1/jobs/{job['id']}/cancel").json()["status"] == "canceled"
        assert c.get(f"/api/v1/jobs/{job['id']}/download").status_code == 409
        # a queued job is canceled at once
        queued = c.post(
            "/api/v1/generate", json={"prompt": "later", "num_inference_steps": 300}
        ).json()
        c.post(f"/api/v1/jobs/{queued['id']}/cancel")
        assert wait_job(c, queued["id"], {"canceled"}, timeout=60)["status"] == "canceled"


def test_job_for_a_model_that_fails_to_load_fails_fast(stack: Stack, client_key: str) -> None:
    # Issues 32/33: a model whose files are broken is refused at submit (503 naming the model,
    # with Retry-After), instead of 202 then a failure; the message names no server path.
    with stack.client(client_key) as c:
        r = c.post("/api/v1/generate", json={"prompt": "doomed", "model": "broken"})
        assert r.status_code == 503, r.text
        assert int(r.headers["Retry-After"]) >= 1
        err = r.json()["error"]
        assert err["code"] == "model_unavailable" and err["field"] == "model"
        assert "does not exist" in err["message"] and "<path>" in err["message"]
        assert "no-such-weights" not in err["message"]
        assert "no-such-weights" in stack.logs(full=True)  # serve's start names it
        # the workers are fine
        ok = c.post("/api/v1/generate", json={"prompt": "fine"}).json()
        assert wait_job(c, ok["id"], {"succeeded", "failed"})["status"] == "succeeded"


def test_sigkilled_worker_job_is_finished_by_another(stack: Stack, client_key: str) -> None:
    with stack.client(client_key) as c, stack.client(stack.admin_key) as a:
        job = c.post(
            "/api/v1/generate", json={"prompt": "survivor", "num_inference_steps": 40}
        ).json()

        def running_on() -> dict | None:
            for w in a.get("/api/v1/admin/workers").json()["data"]:
                if w["current_job_id"] == job["id"] and w["status"] == "busy":
                    return w
            return None

        victim = wait_for(running_on, 180, 0.05, "a worker to take the job")
        wait_for(lambda: c.get(f"/api/v1/jobs/{job['id']}").json()["progress"] > 0, 120)
        os.kill(victim["pid"], signal.SIGKILL)
        final = wait_job(c, job["id"], {"succeeded", "failed"}, timeout=180)
        assert final["status"] == "succeeded" and final["attempts"] == 2
        frames, _ = read_video(_download(c, final, stack.tmp / "survivor.mp4"))
        assert frames.shape == (9, 32, 32, 3)
        # the supervisor restarted the killed worker
        wait_for(
            lambda: (
                sum(
                    w["status"] in {"idle", "busy"}
                    for w in a.get("/api/v1/admin/workers").json()["data"]
                )
                >= 2
            ),
            300,
            0.2,
            "the killed worker to be replaced",
        )


def _download(c, job: dict, path: Path) -> Path:  # type: ignore[no-untyped-def]
    r = c.get(job["download_url"])
    assert r.status_code == 200
    path.write_bytes(r.content)
    return path


def test_list_filters_and_pagination(stack: Stack, other_key: str) -> None:
    with stack.client(other_key) as c:
        ids = [c.post("/api/v1/generate", json={"prompt": f"p{i}"}).json()["id"] for i in range(5)]
        for i in ids:
            wait_job(c, i, {"succeeded"})
        got, cursor = [], None
        while True:
            params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = c.get("/api/v1/jobs", params=params).json()
            got += [j["id"] for j in page["data"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert got[:5] == ids[::-1]
        ok = c.get("/api/v1/jobs", params={"status": "succeeded", "created_after": "2000-01-01"})
        assert {j["id"] for j in ok.json()["data"]} >= set(ids)
        assert c.get("/api/v1/jobs", params={"created_before": "2000-01-01"}).json()["data"] == []
        bad = c.get("/api/v1/jobs", params={"status": "bogus"})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "status"
        bad = c.get("/api/v1/jobs", params={"cursor": "%%%"})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "cursor"


def test_admin_stats_budget_and_clear_cache(stack: Stack, client_key: str) -> None:
    with stack.client(client_key) as c:
        wait_job(
            c, c.post("/api/v1/generate", json={"prompt": "billable"}).json()["id"], {"succeeded"}
        )
    with stack.client(stack.admin_key) as a:
        stats = a.get("/api/v1/admin/stats").json()
        acme = next(k for k in stats["keys"] if k["name"] == "acme")
        assert acme["succeeded"] >= 1 and acme["gpu_seconds"] > 0 and acme["cost_usd"] > 0
        assert acme["monthly_budget_usd"] is None and acme["over_budget"] is False
        # a budget below this month's spend: flagged, and submits are refused until raised
        budget = a.patch(f"/api/v1/admin/keys/{acme['key_id']}", json={"monthly_budget_usd": 0})
        assert budget.status_code == 200, budget.text
        acme = next(
            k for k in a.get("/api/v1/admin/stats").json()["keys"] if k["key_id"] == acme["key_id"]
        )
        assert acme["monthly_budget_usd"] == 0 and acme["over_budget"] is True
        with stack.client(client_key) as c:
            r = c.post("/api/v1/generate", json={"prompt": "over budget"})
            assert r.status_code == 402 and r.json()["error"]["code"] == "budget_exceeded"
        a.patch(f"/api/v1/admin/keys/{acme['key_id']}", json={"monthly_budget_usd": None})
        assert stats["days"] and stats["days"][-1]["videos_generated"] >= 1
        assert stats["days"][-1]["revenue_usd"] > 0
        r = a.post("/api/v1/admin/clear-cache").json()
        epoch = r["cache_epoch"]
        assert epoch >= 1 and r["workers_notified"] >= 1

        def applied() -> bool:
            ws = [w for w in a.get("/api/v1/admin/workers").json()["data"] if w["status"] == "idle"]
            return len(ws) >= 2 and all(w["cache_epoch"] >= epoch for w in ws)

        wait_for(applied, 120, 0.1, "every worker to apply the clear-cache")
        # the workers still run jobs afterwards
    with stack.client(client_key) as c:
        after = c.post("/api/v1/generate", json={"prompt": "after clear"}).json()
        assert wait_job(c, after["id"], {"succeeded", "failed"})["status"] == "succeeded"


class _Receiver(ThreadingHTTPServer):
    received: list[tuple[dict, bytes]]


def _receiver() -> _Receiver:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["content-length"]))
            self.server.received.append((dict(self.headers), body))  # type: ignore[attr-defined]
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    srv = _Receiver(("127.0.0.1", 0), Handler)
    srv.received = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_webhooks_signed_and_a_dead_receiver_blocks_nothing(stack: Stack, client_key: str) -> None:
    # A receiver that accepts connections but never answers, and one that refuses them.
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(16)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    live = _receiver()
    try:
        with stack.client(client_key) as c:
            dead_ids = [
                c.post(
                    "/api/v1/generate",
                    json={"prompt": f"dead {i}", "webhook_url": url},
                ).json()["id"]
                for i, url in enumerate(
                    [f"http://127.0.0.1:{hang.getsockname()[1]}/h"] * 3
                    + [f"http://127.0.0.1:{dead_port}/h"]
                )
            ]
            url = f"http://127.0.0.1:{live.server_address[1]}/hook"
            job = c.post(
                "/api/v1/generate",
                json={"prompt": "live", "webhook_url": url, "metadata": {"o": 1}},
            ).json()
            final = wait_job(c, job["id"], {"succeeded"}, timeout=180)
            for i in dead_ids:  # the dead receivers did not hold up any job
                assert wait_job(c, i, {"succeeded"}, timeout=120)["status"] == "succeeded"
        wait_for(lambda: live.received, 60, 0.05, "the webhook")
        headers, body = live.received[0]
        assert json.loads(body)["data"]["id"] == final["id"]
        key_id = _key_id(stack, "acme")
        secret = stack.cli("keys", "webhook-secret", key_id).stdout.strip()
        payload = Webhook(secret).verify(body, headers)
        assert payload["type"] == "job.succeeded" and payload["data"]["id"] == final["id"]
        assert payload["data"]["metadata"] == {"o": 1}
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(body.replace(b"live", b"evil"), headers)
    finally:
        live.shutdown()
        hang.close()


def _key_id(stack: Stack, name: str) -> str:
    with stack.client(stack.admin_key) as a:
        keys = a.get("/api/v1/admin/stats").json()["keys"]
        return next(k["key_id"] for k in keys if k["name"] == name)


def test_health_docs_and_no_torch_in_the_api_process(stack: Stack) -> None:
    with stack.client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["workers"] >= 1
        assert c.get("/docs").status_code == 200
        spec = c.get("/openapi.json").json()
        assert "/api/v1/generate" in spec["paths"]
        assert c.get("/nope").json()["error"]["code"] == "not_found"
    assert f"{stack.url}/docs" in stack.banner
    maps = Path(f"/proc/{stack.proc.pid}/maps").read_text()
    assert "libtorch" not in maps, "the API process (aiprod serve) loaded torch"


def test_importing_the_app_does_not_import_torch() -> None:
    code = (
        "import sys; from aiprod.service.app import create_app; import aiprod.cli.main; "
        "import aiprod.jobs.webhooks, aiprod.jobs.transitions; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
