"""Operations against a real server: /metrics moves when jobs run, /readyz follows the database
and the workers, one JSON log line per request, and the Python client end to end."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from aiprod.cli.serve import _die_with_parent
from aiprod.client import (
    AuthenticationError,
    Client,
    NotFoundError,
    PermissionDenied,
    RateLimitError,
    ServiceUnavailable,
    ValidationError,
)
from aiprod.core.media import read_video
from tests.service.harness import Stack, aiprod_cmd, fresh_pg_database, pg_server_url, wait_for

pytestmark = pytest.mark.integration  # real servers and worker subprocesses

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(c: httpx.Client) -> Series:
    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out: Series = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(series: Series, name: str, **labels: str) -> float:
    return series.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_when_jobs_run_and_client_end_to_end(tmp_path):
    stack = Stack(tmp_path, f"sqlite:///{tmp_path / 'aiprod.db'}", workers=1)
    try:
        key = stack.create_key("acme")
        with stack.client() as anon:
            # The worker may be loading its model (no heartbeat yet): wait until it is live.
            wait_for(lambda: value(scrape(anon), "aiprod_workers_live") == 1, 120, 0.2, "a worker")
            before = scrape(anon)
            assert value(before, "aiprod_database_up") == 1
            assert value(before, "aiprod_jobs", status="succeeded") == 0
            assert (
                value(
                    before,
                    "aiprod_storage_disk_free_bytes",
                    path=str(tmp_path / "data" / "outputs"),
                )
                > 0
            )
            # No NVIDIA GPU here: the GPU series are absent, not zero.
            assert not any(name.startswith("aiprod_gpu_") for name, _ in before)

            with Client(stack.url, api_key=key, timeout=30) as client:
                job = client.generate(
                    "a red fox", seed=3, wait=True, timeout=120, poll_interval=0.1
                )
                assert job.status == "succeeded" and job.gpu_seconds and job.gpu_seconds > 0
                path = client.download(job.id, tmp_path / "videos")
                frames, fps = read_video(path)
                assert frames.shape[0] == 9 and fps == pytest.approx(8)
                # Typed errors
                with pytest.raises(NotFoundError):
                    client.get_job("00000000-0000-0000-0000-000000000000")
                with pytest.raises(ValidationError) as bad:
                    client.generate("a red fox", width=33)
                assert bad.value.field == "width" and bad.value.status == 422
                with pytest.raises(PermissionDenied):
                    client.admin_stats()
            with (
                pytest.raises(AuthenticationError),
                Client(stack.url, api_key="aiprod_sk_nope") as c,
            ):
                c.models()
            slow = stack.create_key("slow", "--rate-limit", "1")
            with Client(stack.url, api_key=slow, max_retries=0) as c:
                c.models()
                with pytest.raises(RateLimitError) as limited:
                    c.models()
                assert limited.value.status == 429 and (limited.value.retry_after or 0) > 0

            after = scrape(anon)
        assert value(after, "aiprod_jobs", status="succeeded") == 1
        assert value(after, "aiprod_queue_depth") == 0
        assert value(after, "aiprod_job_duration_seconds_count", model="builtin") == 1
        assert value(after, "aiprod_job_duration_seconds_sum", model="builtin") > 0
        # the job object rounds gpu_seconds to 4 decimals (jobs.views); the counter does not
        assert value(after, "aiprod_job_gpu_seconds_total", model="builtin") == pytest.approx(
            job.gpu_seconds, abs=5e-5
        )
        generate = dict(method="POST", route="/api/v1/generate")
        assert value(after, "aiprod_http_requests_total", status="202", **generate) == 1
        assert value(after, "aiprod_http_requests_total", status="422", **generate) == 1
        polls = dict(method="GET", route="/api/v1/jobs/{job_id}")
        assert value(after, "aiprod_http_requests_total", status="200", **polls) >= 1
        assert value(after, "aiprod_http_requests_total", status="404", **polls) == 1
        assert value(after, "aiprod_http_request_duration_seconds_count", **generate) == 2
        done = [v for (n, _), v in after.items() if n == "aiprod_worker_jobs_done_total"]
        assert sum(done) >= 1

        # One structured line per request, with request id, key id, route, status, latency.
        lines = []
        for raw in (tmp_path / "serve.log").read_text().splitlines():
            if raw.startswith("{"):
                lines.append(json.loads(raw))
        reqs = [e for e in lines if e.get("event") == "http.request"]
        sub = [e for e in reqs if e["route"] == "/api/v1/generate" and e["status"] == 202]
        assert sub, reqs[-5:]
        entry = sub[0]
        assert entry["key_id"] and entry["request_id"] and entry["latency_ms"] >= 0
        assert entry["method"] == "POST" and entry["level"] == "info"
        # One line per job state change: queued (API), running and succeeded (worker).
        moves = [
            (e["from_status"], e["to_status"])
            for e in lines
            if e.get("event") == "job.transition" and e.get("job_id") == job.id
        ]
        # (A starved heartbeat under heavy machine load may add a requeue and a second run.)
        assert moves[0] == (None, "queued") and moves[-1] == ("running", "succeeded")
        assert ("queued", "running") in moves and len(moves) in (3, 5)
    finally:
        stack.stop()


class ApiOnlyStack(Stack):
    """``aiprod serve --workers 0``: up once /healthz answers (readiness is what we test)."""

    def _wait_ready(self, timeout: float = 90) -> None:
        with self.client() as c:

            def up() -> bool:
                assert self.proc.poll() is None, self.logs()
                try:
                    return c.get("/healthz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(up, timeout, 0.1, "the API to answer /healthz")


def test_several_api_processes_share_the_port_and_the_metrics(tmp_path):
    """`serve --api-processes 2`: both processes answer on one port, /metrics (from whichever
    process answers the scrape) counts every process's requests, SIGTERM stops them all."""
    stack = ApiOnlyStack(
        tmp_path, f"sqlite:///{tmp_path / 'aiprod.db'}", workers=0, api_processes=2
    )
    try:
        with stack.client(stack.admin_key) as c:
            # Until both processes serve, a scrape may miss the other's start-time series.
            wait_for(lambda: len(_start_times(scrape(c))) == 2, 60, 0.1, "two live API processes")
            for _ in range(40):
                assert c.get("/api/v1/models").status_code == 200
            models = dict(method="GET", route="/api/v1/models", status="200")
            for _ in range(6):  # each scrape may land on either process: all agree
                assert value(scrape(c), "aiprod_http_requests_total", **models) == 40
            pids = {int(p) for p in _start_times(scrape(c))}
    finally:
        stack.stop()
    assert stack.proc.returncode is not None
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"API process {pid} outlived serve"


def _start_times(series: Series) -> list[str]:
    return [
        dict(labels)["pid"]
        for (name, labels), _ in series.items()
        if name == "aiprod_process_start_time_seconds"
    ]


def _start_worker(stack: Stack, n: int) -> subprocess.Popen:
    log = (stack.tmp / f"worker{n}.log").open("wb")
    return subprocess.Popen(
        aiprod_cmd("worker"), env=stack.env, stdout=log, stderr=log, preexec_fn=_die_with_parent
    )


def _ready(c: httpx.Client) -> tuple[int, dict]:
    r = c.get("/readyz")
    return r.status_code, r.json()


@pytest.mark.postgres
def test_readyz_follows_database_and_workers(tmp_path):
    with fresh_pg_database("ops") as url:
        db_name = make_url(url).database
        admin = create_engine(make_url(pg_server_url()), isolation_level="AUTOCOMMIT")
        stack = ApiOnlyStack(tmp_path, url, workers=0)
        workers: list[subprocess.Popen] = []
        try:
            with stack.client() as c:
                code, body = _ready(c)
                assert code == 503 and body["status"] == "not_ready"
                assert body["checks"]["database"] == "ok" and body["checks"]["migrations"] == "ok"
                assert body["checks"]["workers"] == 0
                assert any("no live worker" in r for r in body["reasons"])

                workers.append(_start_worker(stack, 1))
                wait_for(lambda: _ready(c)[0] == 200, 120, 0.2, "ready with a worker")
                code, body = _ready(c)
                assert body["reasons"] == [] and body["checks"]["workers"] == 1
                assert set(body["checks"]) == {
                    "database",
                    "migrations",
                    "workers",
                    "storage",
                    "disk",
                    "models",  # issue 32: the default model is not unavailable
                }
                assert body["checks"]["models"] == "ok"

                # Every worker gone (killed: no goodbye) -> not ready once its heartbeat is stale.
                workers[0].send_signal(signal.SIGKILL)
                workers[0].wait()
                wait_for(lambda: _ready(c)[0] == 503, 60, 0.2, "not ready without workers")
                assert any("no live worker" in r for r in _ready(c)[1]["reasons"])
                workers.append(_start_worker(stack, 2))
                wait_for(lambda: _ready(c)[0] == 200, 120, 0.2, "ready again with a new worker")

                # The database gone -> not ready (and /metrics still answers), then back.
                with admin.connect() as conn:
                    conn.execute(text(f'ALTER DATABASE "{db_name}" ALLOW_CONNECTIONS false'))
                    conn.execute(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = :n AND pid <> pg_backend_pid()"
                        ),
                        {"n": db_name},
                    )
                try:
                    code, body = _ready(c)
                    assert code == 503 and body["checks"]["database"].startswith("error")
                    assert any("database unreachable" in r for r in body["reasons"])
                    assert value(scrape(c), "aiprod_database_up") == 0
                    with Client(stack.url, api_key="aiprod_sk_any", max_retries=0) as client:
                        with pytest.raises(ServiceUnavailable) as down:
                            client.models()
                        assert down.value.response.headers["retry-after"]
                finally:
                    with admin.connect() as conn:
                        conn.execute(text(f'ALTER DATABASE "{db_name}" ALLOW_CONNECTIONS true'))
                wait_for(lambda: _ready(c)[0] == 200, 120, 0.2, "ready once the database is back")
                assert value(scrape(c), "aiprod_database_up") == 1
        finally:
            for w in workers:
                if w.poll() is None:
                    w.send_signal(signal.SIGTERM)
                    try:
                        w.wait(20)
                    except subprocess.TimeoutExpired:
                        w.kill()
                        w.wait()
            stack.stop()
            admin.dispose()
