"""Metrics computed from the database at scrape time, on a real migrated SQLite file."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from aiprod.db.migrate import upgrade
from aiprod.db.models import ApiKey, Job, WebhookDelivery, Worker
from aiprod.db.session import make_engine, make_sessionmaker
from aiprod.jobs.gpu import GpuStat, publish_gpu_stats, read_gpu_stats
from aiprod.service.health import check_readiness
from aiprod.service.metrics import ServiceMetrics


def _series(m: ServiceMetrics) -> dict[tuple[str, tuple], float]:
    body, ctype = m.render()
    assert ctype.startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def factory(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    engine = make_engine(url)
    f = make_sessionmaker(engine)
    with f.begin() as s:
        s.add(ApiKey(id="k", key_hash="h", prefix="p", name="c"))
    yield f
    engine.dispose()


def _job(i: int, status: str, **kw) -> Job:
    return Job(
        id=f"job-{i}",
        api_key_id="k",
        prompt="p",
        model=kw.pop("model", "builtin"),
        model_version="v",
        params={},
        status=status,
        **kw,
    )


def test_queue_jobs_durations_webhooks_from_the_database(factory, tmp_path):
    now = datetime.now(UTC)
    with factory.begin() as s:
        s.add(_job(1, "queued", created_at=now - timedelta(seconds=90)))
        s.add(_job(2, "queued", created_at=now - timedelta(seconds=10)))
        s.add(_job(3, "running", started_at=now))
        for i, secs in enumerate((2.0, 20.0, 200.0), start=4):
            s.add(
                _job(
                    i,
                    "succeeded",
                    started_at=now - timedelta(seconds=secs),
                    completed_at=now,
                    gpu_seconds=secs - 0.5,
                )
            )
        s.add(_job(7, "failed", model="big"))
        s.flush()
        for i, (status, attempts) in enumerate((("delivered", 3), ("pending", 2), ("failed", 8))):
            s.add(
                WebhookDelivery(
                    job_id=f"job-{4 + i}",
                    api_key_id="k",
                    url="http://127.0.0.1:9/x",
                    event_type="job.succeeded",
                    payload="{}",
                    status=status,
                    attempts=attempts,
                )
            )
    m = ServiceMetrics(session_factory=factory, storage_path=tmp_path)
    x = _series(m)
    assert x[("aiprod_database_up", ())] == 1
    assert x[("aiprod_queue_depth", ())] == 2
    assert 89 <= x[("aiprod_queue_oldest_age_seconds", ())] < 120
    jobs = {dict(k[1])["status"]: v for k, v in x.items() if k[0] == "aiprod_jobs"}
    assert jobs == {
        "queued": 2,
        "running": 1,
        "succeeded": 3,
        "failed": 1,
        "canceled": 0,
        "expired": 0,
    }
    b = "aiprod_job_duration_seconds_bucket"
    assert x[(b, (("le", "2.5"), ("model", "builtin")))] == 1
    assert x[(b, (("le", "30.0"), ("model", "builtin")))] == 2
    assert x[(b, (("le", "120.0"), ("model", "builtin")))] == 2
    assert x[(b, (("le", "+Inf"), ("model", "builtin")))] == 3
    assert x[("aiprod_job_duration_seconds_sum", (("model", "builtin"),))] == pytest.approx(222)
    assert x[("aiprod_job_gpu_seconds_total", (("model", "builtin"),))] == pytest.approx(220.5)
    # delivered after 3 tries: 2 failures; pending after 2: 2; given up after 8: 8.
    assert x[("aiprod_webhook_delivery_failures_total", ())] == 12
    assert x[("aiprod_webhook_deliveries_dead", ())] == 1
    assert x[("aiprod_webhook_deliveries", (("status", "pending"),))] == 1
    assert x[("aiprod_storage_disk_free_bytes", (("path", str(tmp_path)),))] > 0

    # Series move with the data, at the next scrape.
    with factory.begin() as s:
        s.get(Job, "job-1").status = "running"
    assert _series(m)[("aiprod_queue_depth", ())] == 1


def test_workers_and_gpu_stats_published_with_heartbeats(factory, tmp_path):
    now = datetime.now(UTC)
    with factory.begin() as s:
        s.add(Worker(id="w-live", hostname="gpu1", pid=1, device="cuda", status="busy"))
        s.add(
            Worker(
                id="w-stale",
                hostname="gpu2",
                pid=2,
                device="cuda",
                last_seen_at=now - timedelta(seconds=600),
            )
        )
        # What a worker on an NVIDIA machine stores from NVML with its heartbeat.
        publish_gpu_stats(
            s, "w-live", [GpuStat(0, "NVIDIA H100", 30 * 2**30, 80 * 2**30, 97.0, 71.0)]
        )
    m = ServiceMetrics(session_factory=factory, worker_live_seconds=60)
    x = _series(m)
    assert x[("aiprod_workers_live", ())] == 1
    age = "aiprod_worker_heartbeat_age_seconds"
    assert x[(age, (("device", "cuda"), ("hostname", "gpu2"), ("worker", "w-stale")))] >= 600
    assert x[("aiprod_worker_busy", (("worker", "w-live"),))] == 1
    labels = (("gpu", "0"), ("name", "NVIDIA H100"), ("worker", "w-live"))
    assert x[("aiprod_gpu_memory_used_bytes", labels)] == 30 * 2**30
    assert x[("aiprod_gpu_memory_total_bytes", labels)] == 80 * 2**30
    assert x[("aiprod_gpu_utilization_percent", labels)] == 97
    assert x[("aiprod_gpu_temperature_celsius", labels)] == 71

    report = check_readiness(
        sessions=factory,
        storage_root=tmp_path / "out",
        worker_live_seconds=60,
        min_free_bytes=0,
    )
    assert report.ready and report.checks["workers"] == 1
    assert report.details["gpus"][0]["worker"] == "w-live"
    assert report.details["gpus"][0]["temperature_celsius"] == 71
    # A huge threshold makes the disk check fail with a reason naming the setting.
    low = check_readiness(
        sessions=factory,
        storage_root=tmp_path / "out",
        worker_live_seconds=60,
        min_free_bytes=2**62,
    )
    assert not low.ready and low.checks["disk"] == "low"
    assert any("AIPROD_MIN_FREE_DISK_MB" in r for r in low.reasons)


def test_no_gpu_here_means_no_gpu_series():
    stats = read_gpu_stats()
    if stats:
        pytest.skip("this machine has an NVIDIA GPU")
    assert stats == []


def test_registries_are_per_app(factory):
    a = ServiceMetrics(session_factory=factory)
    b = ServiceMetrics(session_factory=factory)  # would raise "Duplicated timeseries" if shared
    a.observe_request(method="GET", route="/x/{id}", status=200, seconds=0.01)
    xa, xb = _series(a), _series(b)
    key = (
        "aiprod_http_requests_total",
        (("method", "GET"), ("route", "/x/{id}"), ("status", "200")),
    )
    assert xa[key] == 1 and key not in xb


def test_unreachable_database_gives_database_up_zero(tmp_path):
    # A path whose parent is a file: SQLite cannot open it.
    (tmp_path / "f").write_text("")
    broken = sessionmaker(create_engine(f"sqlite:///{tmp_path / 'f' / 'x.db'}"))
    x = _series(ServiceMetrics(session_factory=broken))
    assert x[("aiprod_database_up", ())] == 0
    assert ("aiprod_queue_depth", ()) not in x
    report = check_readiness(
        sessions=broken, storage_root=tmp_path / "out", worker_live_seconds=60, min_free_bytes=0
    )
    assert not report.ready and report.checks["database"].startswith("error")


def test_alert_rules_use_metrics_the_app_exposes(factory, tmp_path):
    """deploy/alerts.yml must not reference a series name that /metrics never produces."""
    import re

    import yaml

    root = Path(__file__).resolve().parents[2]
    with factory.begin() as s:
        s.add(Worker(id="w", hostname="h", pid=1, device="cuda", status="idle"))
        publish_gpu_stats(s, "w", [GpuStat(0, "GPU", 1, 2, 3.0, 4.0)])
        s.add(_job(1, "succeeded", started_at=datetime.now(UTC), completed_at=datetime.now(UTC)))
    m = ServiceMetrics(session_factory=factory, storage_path=tmp_path)
    m.observe_request(method="GET", route="/api/v1/jobs/{job_id}", status=200, seconds=0.01)
    exposed = {name for name, _ in _series(m)}

    rules = yaml.safe_load((root / "deploy" / "alerts.yml").read_text())["groups"][0]["rules"]
    assert len(rules) >= 8
    prom = yaml.safe_load((root / "deploy" / "prometheus.yml").read_text())
    assert prom["rule_files"] == ["alerts.yml"]
    for rule in rules:
        assert rule["alert"] and rule["annotations"]["summary"]
        for name in re.findall(r"\baiprod_[a-z_]+", rule["expr"]):
            assert name in exposed, f"{rule['alert']}: {name} is not exposed"


def test_scrapes_and_probes_do_not_wait_for_the_sqlite_write_lock(tmp_path):
    """A writer holding SQLite's lock (a worker mid-transaction) must not stall /metrics."""
    import sqlite3
    import time

    from aiprod.service.observability import _read_sessions

    db = tmp_path / "lock.db"
    url = f"sqlite:///{db}"
    upgrade(url)
    engine = make_engine(url)
    reads = _read_sessions(engine, make_sessionmaker(engine))
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute(
        "INSERT INTO service_state (key, value, updated_at) VALUES ('x', 'y', '2026-01-01')"
    )
    try:
        t0 = time.monotonic()
        x = _series(ServiceMetrics(session_factory=reads))
        report = check_readiness(
            sessions=reads, storage_root=tmp_path / "out", worker_live_seconds=60, min_free_bytes=0
        )
        assert time.monotonic() - t0 < 5  # the app's own engine would wait up to 30 s here
        assert x[("aiprod_database_up", ())] == 1
        assert report.checks["database"] == "ok" and report.checks["migrations"] == "ok"
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        engine.dispose()


def test_readiness_of_a_database_never_migrated(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    report = check_readiness(
        sessions=make_sessionmaker(engine),
        storage_root=tmp_path / "out",
        worker_live_seconds=60,
        min_free_bytes=0,
    )
    engine.dispose()
    assert not report.ready
    assert report.checks["database"] == "ok" and report.checks["migrations"] == "not applied"
    assert report.checks["workers"] == "unknown"
    assert any("aiprod db upgrade" in r for r in report.reasons)
