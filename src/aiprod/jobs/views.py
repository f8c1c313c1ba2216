"""The job object (API responses and webhook payloads), with queue position and ETA."""

from __future__ import annotations

import math
import threading
import time
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from aiprod.core.settings import Settings
from aiprod.db import queue
from aiprod.db.models import Job, JobStatus
from aiprod.db.repositories import WorkerRepository


def download_url(job: Job, base_url: str | None) -> str | None:
    if job.status != JobStatus.SUCCEEDED:
        return None
    path = f"/api/v1/jobs/{job.id}/download"
    return f"{base_url.rstrip('/')}{path}" if base_url else path


def iso(dt: datetime | None) -> str | None:
    return dt.isoformat().replace("+00:00", "Z") if dt is not None else None


def job_to_dict(
    job: Job,
    *,
    base_url: str | None,
    queue_position: int | None = None,
    eta_seconds: float | None = None,
) -> dict[str, Any]:
    """The job object of the API and of webhook payloads."""
    params = dict(job.params or {})
    params["image"] = job.input_image_path is not None
    return {
        "id": job.id,
        "status": job.status,
        "progress": 1.0
        if job.status == JobStatus.SUCCEEDED
        else round(float(job.progress or 0.0), 4),
        "queue_position": queue_position if job.status == JobStatus.QUEUED else None,
        "eta_seconds": None if eta_seconds is None else round(eta_seconds, 2),
        "model": job.model,
        "model_version": job.model_version,
        "params": params,
        "attempts": job.attempts,
        "cancel_requested": bool(job.cancel_requested),
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "completed_at": iso(job.completed_at),
        "error": (
            {"code": job.error_code or "error", "message": job.error_message or ""}
            if job.status == JobStatus.FAILED
            else None
        ),
        "estimated_cost_usd": job.estimated_cost_usd,
        "cost_usd": job.cost_usd,
        "gpu_seconds": None if job.gpu_seconds is None else round(job.gpu_seconds, 4),
        "download_url": download_url(job, base_url),
        "metadata": job.metadata_,
        "warnings": list(job.warnings or []),
    }


class QueueView:
    """The queue as status calls see it: one snapshot (and live-worker count) shared for
    ``ttl`` seconds instead of four queries per queued job's status (the profile's largest
    database cost at 200 polling clients). A position is at most ``ttl`` seconds old."""

    def __init__(self, ttl: float = 1.0) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._taken = -math.inf
        self._snapshot: queue.QueueSnapshot | None = None
        self._workers = 0

    def get(self, session: Session, settings: Settings) -> tuple[queue.QueueSnapshot, int]:
        with self._lock:
            if self._snapshot is not None and time.monotonic() - self._taken < self.ttl:
                return self._snapshot, self._workers
        snapshot = queue.QueueSnapshot.take(session)
        workers = len(WorkerRepository(session).alive(settings.lease_seconds * 2))
        with self._lock:
            self._snapshot, self._workers, self._taken = snapshot, workers, time.monotonic()
        return snapshot, workers


def render_job(
    session: Session,
    job: Job,
    *,
    base_url: str | None,
    settings: Settings,
    queue_view: QueueView | None = None,
) -> dict[str, Any]:
    """job_to_dict plus the queue position and ETA (live, or from ``queue_view``: as of its
    snapshot, at most ``ttl`` old, with a job queued since placed behind what it holds)."""
    position = None
    eta = None
    per_job = job.estimated_seconds
    if job.status == JobStatus.QUEUED:
        if queue_view is not None:
            snapshot, alive = queue_view.get(session, settings)
            position = snapshot.position(job.id)
            if position is None:  # queued after the snapshot (e.g. just submitted)
                position = snapshot.position_of(
                    job.priority, job.api_key_id, job.created_at, job.id
                )
        else:
            position = queue.queue_position(session, job)
            alive = len(WorkerRepository(session).alive(settings.lease_seconds * 2))
        workers = max(1, alive)
        if per_job is not None:
            eta = (position // workers + 1) * per_job
    elif job.status == JobStatus.RUNNING and per_job is not None:
        eta = per_job * (1.0 - float(job.progress or 0.0))
    return job_to_dict(job, base_url=base_url, queue_position=position, eta_seconds=eta)
