"""The job object (API responses and webhook payloads), with queue position and ETA."""

from __future__ import annotations

import math
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from aiprod.core.errors import Conflict, Gone
from aiprod.core.settings import Settings
from aiprod.db import queue
from aiprod.db.models import Job, JobStatus
from aiprod.db.repositories import WorkerRepository


def download_url(job: Job, base_url: str | None) -> str | None:
    """Absolute with ``base_url`` (AIPROD_PUBLIC_URL, else the request's), else a path."""
    if job.status != JobStatus.SUCCEEDED or job.deleted_at is not None:
        return None
    path = f"/api/v1/jobs/{job.id}/download"
    return f"{base_url.rstrip('/')}{path}" if base_url else path


def iso(dt: datetime | None) -> str | None:
    return dt.isoformat().replace("+00:00", "Z") if dt is not None else None


def expires_at(job: Job, retention_days: float | None) -> datetime | None:
    """When retention deletes the output: completed_at + AIPROD_RETENTION_DAYS for a job with an
    output (succeeded, or expired: then in the past); None without retention, before the job
    succeeded, for failed and canceled jobs (no output) and once the output was deleted."""
    has_output = job.status in (JobStatus.SUCCEEDED, JobStatus.EXPIRED)
    if retention_days is None or not has_output or job.completed_at is None:
        return None
    if job.deleted_at is not None:
        return None
    return job.completed_at + timedelta(days=retention_days)


def running_eta(job: Job, now: datetime | None = None) -> float | None:
    """Seconds left for a running job: from measured progress once there is some
    (elapsed * (1 - p) / p), else the estimate times what is left."""
    p = float(job.progress or 0.0)
    if p > 0 and job.started_at is not None:
        elapsed = max(0.0, ((now or datetime.now(UTC)) - job.started_at).total_seconds())
        return elapsed * (1.0 - p) / p
    if job.estimated_seconds is None:
        return None
    return job.estimated_seconds * (1.0 - p)


def job_to_dict(
    job: Job,
    *,
    base_url: str | None,
    queue_position: int | None = None,
    eta_seconds: float | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """The job object of the API and of webhook payloads (``settings``: for expires_at)."""
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
        "expires_at": iso(expires_at(job, settings.retention_days if settings else None)),
        "deleted_at": iso(job.deleted_at),
        "metadata": job.metadata_,
        "warnings": list(job.warnings or []),
    }


def require_output(job: Job) -> str:
    """The storage key of a job's MP4, or why there is none: 410 once deleted or expired,
    409 before the job succeeded."""
    if job.deleted_at is not None:
        raise Gone(
            f"the video of job {job.id} was deleted at {iso(job.deleted_at)} "
            "by a DELETE request; the job stays listed for billing",
            code="deleted",
        )
    if job.status == JobStatus.EXPIRED:
        raise Gone(
            f"the video of job {job.id} expired: retention removed it "
            "(AIPROD_RETENTION_DAYS); generate it again with the same params and seed",
            code="expired",
        )
    if job.status != JobStatus.SUCCEEDED or not job.output_path:
        raise Conflict(
            f"job {job.id} is {job.status}; the video can be downloaded once it has succeeded",
            code="not_ready",
        )
    return job.output_path


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
    elif job.status == JobStatus.RUNNING:
        eta = running_eta(job)
    return job_to_dict(
        job, base_url=base_url, queue_position=position, eta_seconds=eta, settings=settings
    )
