"""Prometheus metrics for ``/metrics``.

Two kinds of series:

- Counted in this API process as requests go by: request count and latency by route template
  (``/api/v1/jobs/{job_id}``, never the raw path, so cardinality stays bounded) and status.
- Read from the database at scrape time, because the jobs table is the queue and workers are
  other processes, often on other machines: jobs by status, queue depth and the oldest queued
  job's age, job duration and GPU-seconds by model, worker heartbeats, the GPU stats each
  worker publishes with its heartbeat (NVML; absent on machines without an NVIDIA GPU),
  webhook delivery failures. Plus free disk on local output storage.

Each app gets its own ``CollectorRegistry`` so several apps in one process (tests) never
collide. A database that cannot be reached during a scrape gives ``aiprod_database_up 0`` and
no database series, never a failed scrape.

This module imports neither FastAPI nor torch. The GPU stats themselves (read by the worker,
stored with its heartbeat) are ``aiprod.jobs.gpu``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, sessionmaker

from aiprod import __version__ as _version
from aiprod.core.logging import is_outage_error
from aiprod.db.models import Job, JobStatus, WebhookDelivery, Worker
from aiprod.jobs.gpu import load_gpu_stats
from aiprod.jobs.model_state import load_model_states, unavailable_models

log = logging.getLogger(__name__)

#: Buckets for HTTP latency (seconds): the API's own work is milliseconds.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Buckets for job wall time (seconds): a tiny CPU model takes seconds, a big GPU one minutes.
JOB_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
#: Statuses shown in ``aiprod_jobs`` even at zero.
SHOWN_STATUSES = tuple(s.value for s in JobStatus)
#: Workers not seen for this long are left out of per-worker series.
WORKER_FORGET_SECONDS = 3600.0


# --------------------------------------------------------------------------------------------
# Scrape-time collectors
# --------------------------------------------------------------------------------------------


def _duration_seconds(dialect: str) -> Any:
    if dialect == "sqlite":
        return (func.julianday(Job.completed_at) - func.julianday(Job.started_at)) * 86400.0
    return func.extract("epoch", Job.completed_at - Job.started_at)


class DatabaseCollector(Collector):
    """Series computed from the database each time Prometheus scrapes."""

    def __init__(
        self, session_factory: sessionmaker[Session], *, worker_live_seconds: float
    ) -> None:
        self.session_factory = session_factory
        self.worker_live_seconds = worker_live_seconds

    def describe(self) -> Iterable[Metric]:
        return []  # dynamic: never checked for duplicates at registration

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "aiprod_database_up", "1 when the database answered this scrape, else 0"
        )
        try:
            with self.session_factory() as session:
                metrics = list(self._collect(session))
        except Exception as exc:  # a scrape must not fail because the DB is down
            if not is_outage_error(exc):  # an outage is logged by aiprod.db.session.OutageLog
                log.warning("metrics: database unavailable during scrape: %s", exc)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield from metrics

    def _collect(self, session: Session) -> Iterator[Metric]:
        now = datetime.now(UTC)
        dialect = session.get_bind().dialect.name

        jobs = GaugeMetricFamily("aiprod_jobs", "Jobs in the database by status", labels=["status"])
        counts = dict(
            session.execute(select(Job.status, func.count()).group_by(Job.status)).tuples().all()
        )
        for status in sorted(set(SHOWN_STATUSES) | set(counts)):
            jobs.add_metric([status], float(counts.get(status, 0)))
        yield jobs

        depth = GaugeMetricFamily("aiprod_queue_depth", "Jobs waiting to be claimed")
        depth.add_metric([], float(counts.get(JobStatus.QUEUED, 0)))
        yield depth

        oldest = session.scalar(
            select(func.min(Job.created_at)).where(Job.status == JobStatus.QUEUED)
        )
        age = GaugeMetricFamily(
            "aiprod_queue_oldest_age_seconds", "Age of the oldest queued job (0 when empty)"
        )
        age.add_metric([], max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)
        yield age

        yield from self._job_durations(session, dialect)

        gpu_s = CounterMetricFamily(
            "aiprod_job_gpu_seconds",
            "GPU-seconds spent on finished jobs, by model",
            labels=["model"],
        )
        rows = session.execute(
            select(Job.model, func.coalesce(func.sum(Job.gpu_seconds), 0.0))
            .where(Job.gpu_seconds.is_not(None))
            .group_by(Job.model)
        ).tuples()
        for model, total in rows:
            gpu_s.add_metric([model], float(total or 0.0))
        yield gpu_s

        yield from self._workers(session, now)
        yield from self._webhooks(session)

    def _job_durations(self, session: Session, dialect: str) -> Iterator[Metric]:
        dur = _duration_seconds(dialect)
        done = Job.started_at.is_not(None) & Job.completed_at.is_not(None)
        done &= Job.status.in_((JobStatus.SUCCEEDED, JobStatus.EXPIRED))
        columns = [func.sum(case((dur <= b, 1), else_=0)) for b in JOB_BUCKETS]
        rows = session.execute(
            select(Job.model, func.count(), func.coalesce(func.sum(dur), 0.0), *columns)
            .where(done)
            .group_by(Job.model)
        ).all()
        hist = HistogramMetricFamily(
            "aiprod_job_duration_seconds",
            "Wall time from start to success of jobs, by model",
            labels=["model"],
        )
        for model, count, total, *cumulative in rows:
            buckets = [
                (_le(b), float(c or 0)) for b, c in zip(JOB_BUCKETS, cumulative, strict=True)
            ]
            buckets.append(("+Inf", float(count)))
            hist.add_metric([model], buckets, float(total))
        yield hist

    def _workers(self, session: Session, now: datetime) -> Iterator[Metric]:
        forget = now - timedelta(seconds=WORKER_FORGET_SECONDS)
        workers = session.scalars(
            select(Worker).where(Worker.last_seen_at >= forget, Worker.status != "stopped")
        ).all()
        live = [
            w for w in workers if (now - w.last_seen_at).total_seconds() <= self.worker_live_seconds
        ]
        live_g = GaugeMetricFamily(
            "aiprod_workers_live", "Workers whose heartbeat is recent enough to take jobs"
        )
        live_g.add_metric([], float(len(live)))
        yield live_g
        age = GaugeMetricFamily(
            "aiprod_worker_heartbeat_age_seconds",
            "Seconds since each worker's last heartbeat",
            labels=["worker", "hostname", "device"],
        )
        busy = GaugeMetricFamily(
            "aiprod_worker_busy", "1 while the worker runs a job", labels=["worker"]
        )
        done = CounterMetricFamily(
            "aiprod_worker_jobs_done", "Jobs finished by each worker", labels=["worker"]
        )
        for w in workers:
            age.add_metric(
                [w.id, w.hostname, w.device or ""], max(0.0, (now - w.last_seen_at).total_seconds())
            )
            busy.add_metric([w.id], 1.0 if w.status == "busy" else 0.0)
            done.add_metric([w.id], float(w.jobs_done))
        yield age
        yield busy
        yield done

        since = now - timedelta(seconds=self.worker_live_seconds)
        yield from self._models(session, since)
        gpus = load_gpu_stats(session, since=since)
        if not gpus:
            return  # no NVIDIA GPU reported: the series are absent, not zero
        labels = ["worker", "gpu", "name"]
        used = GaugeMetricFamily("aiprod_gpu_memory_used_bytes", "GPU memory in use", labels=labels)
        total = GaugeMetricFamily("aiprod_gpu_memory_total_bytes", "GPU memory", labels=labels)
        util = GaugeMetricFamily(
            "aiprod_gpu_utilization_percent", "GPU utilization (NVML)", labels=labels
        )
        temp = GaugeMetricFamily("aiprod_gpu_temperature_celsius", "GPU temperature", labels=labels)
        for worker_id, stats in sorted(gpus.items()):
            for s in stats:
                lv = [worker_id, str(s.index), s.name]
                used.add_metric(lv, float(s.memory_used_bytes))
                total.add_metric(lv, float(s.memory_total_bytes))
                util.add_metric(lv, s.utilization_percent)
                temp.add_metric(lv, s.temperature_celsius)
        yield from (used, total, util, temp)

    @staticmethod
    def _models(session: Session, since: datetime) -> Iterator[Metric]:
        states = load_model_states(session, since=since)
        reported = {m for per_worker in states.values() for m in per_worker}
        if not reported:
            return  # no live worker has tried a model yet
        bad = unavailable_models(session, since=since)
        avail = GaugeMetricFamily(
            "aiprod_model_available",
            "1 when the live workers can run the model, 0 while those that tried failed to load it",
            labels=["model"],
        )
        info = GaugeMetricFamily(
            "aiprod_model_unavailable_info",
            "1 per unavailable model, with the load error as the reason label",
            labels=["model", "reason"],
        )
        for m in sorted(reported):
            avail.add_metric([m], 0.0 if m in bad else 1.0)
            if m in bad:
                info.add_metric([m, bad[m].reason or ""], 1.0)
        yield avail
        yield info

    def _webhooks(self, session: Session) -> Iterator[Metric]:
        query = select(
            WebhookDelivery.status,
            func.count(),
            func.coalesce(func.sum(WebhookDelivery.attempts), 0),
        ).group_by(WebhookDelivery.status)
        rows: dict[str, tuple[int, int]] = {
            status: (int(n), int(attempts)) for status, n, attempts in session.execute(query)
        }
        by_status = GaugeMetricFamily(
            "aiprod_webhook_deliveries", "Webhook outbox rows by status", labels=["status"]
        )
        for status in ("pending", "delivered", "failed"):
            by_status.add_metric([status], float(rows.get(status, (0, 0))[0]))
        yield by_status
        # Every attempt except the one that succeeded was a failure.
        failed_attempts = sum(int(a) for _, a in rows.values()) - rows.get("delivered", (0, 0))[0]
        failures = CounterMetricFamily(
            "aiprod_webhook_delivery_failures",
            "Failed webhook delivery attempts (each retry that failed counts once)",
        )
        failures.add_metric([], float(max(0, failed_attempts)))
        yield failures
        dead = GaugeMetricFamily(
            "aiprod_webhook_deliveries_dead", "Webhooks given up on after every retry failed"
        )
        dead.add_metric([], float(rows.get("failed", (0, 0))[0]))
        yield dead


def _le(bound: float) -> str:
    return repr(float(bound))


class DiskCollector(Collector):
    """Free and total bytes on the filesystem holding local output storage."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        probe = self.path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent  # storage dir not created yet: measure where it will be
        try:
            usage = shutil.disk_usage(probe)
        except OSError as exc:
            log.warning("metrics: cannot stat storage %s: %s", self.path, exc)
            return
        free = GaugeMetricFamily(
            "aiprod_storage_disk_free_bytes",
            "Free bytes on the output storage filesystem",
            labels=["path"],
        )
        free.add_metric([str(self.path)], float(usage.free))
        total = GaugeMetricFamily(
            "aiprod_storage_disk_total_bytes",
            "Size of the output storage filesystem",
            labels=["path"],
        )
        total.add_metric([str(self.path)], float(usage.total))
        yield free
        yield total


# --------------------------------------------------------------------------------------------
# The per-app metrics object
# --------------------------------------------------------------------------------------------


class ServiceMetrics:
    """All of one app's collectors, in the app's own registry."""

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session] | None = None,
        storage_path: Path | None = None,
        worker_live_seconds: float = 60.0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        # `aiprod serve --api-processes N` sets PROMETHEUS_MULTIPROC_DIR for its processes:
        # then the counters live in files there and a scrape of any process sums them all.
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        self._collectors: list[Collector] = []
        self.requests = Counter(
            "aiprod_http_requests",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "aiprod_http_request_duration_seconds",
            "HTTP request latency by method and route template",
            ["method", "route"],
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "aiprod_http_requests_in_flight",
            "Requests being handled now",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.info = Gauge(
            "aiprod_build_info",
            "aiprod version of this API process",
            ["version"],
            registry=self.registry,
            multiprocess_mode="max",
        )
        self.info.labels(version=_version).set(1)
        self.started = Gauge(
            "aiprod_process_start_time_seconds",
            "When this API process started (unix time)",
            registry=self.registry,
            multiprocess_mode="liveall",
        )
        self.started.set(time.time())
        if session_factory is not None:
            self._collectors.append(
                DatabaseCollector(session_factory, worker_live_seconds=worker_live_seconds)
            )
        if storage_path is not None:
            self._collectors.append(DiskCollector(storage_path))
        for c in self._collectors:
            self.registry.register(c)

    def observe_request(self, *, method: str, route: str, status: int, seconds: float) -> None:
        """Count one finished request (``route`` must be the template, not the raw path)."""
        self.requests.labels(method=method, route=route, status=str(status)).inc()
        self.latency.labels(method=method, route=route).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client.multiprocess import MultiProcessCollector

        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self.multiprocess_dir)
        for c in self._collectors:
            merged.register(c)
        return generate_latest(merged), CONTENT_TYPE_LATEST

    def process_exited(self) -> None:
        """Drop this process's live gauges from the shared files (multiprocess mode)."""
        if self.multiprocess_dir is not None:
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(os.getpid(), self.multiprocess_dir)
