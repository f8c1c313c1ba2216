"""The job object (API responses and webhook payloads), with queue position and ETA."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from aiprod.core.errors import Conflict, Gone
from aiprod.core.recent import Recent
from aiprod.core.settings import Settings
from aiprod.db import queue
from aiprod.db.models import Job, JobStatus
from aiprod.db.repositories import WorkerRepository
from aiprod.db.session import session_scope


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


# How long past its ttl a shared read is still served while a background thread renews it.
STALE_FOR_SECONDS = 4.0
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SessionReads(Generic[K, V]):
    """Values read from the database with a session, shared for ``ttl`` seconds
    (``core.recent``). With ``sessions`` (the API), each read runs in a session of its own and
    is renewed by a background thread while requests keep the previous value, for up to
    ``STALE_FOR_SECONDS`` past ``ttl``; without, the caller that finds a value older than
    ``ttl`` reads it with its own ``session``."""

    def __init__(self, ttl: float, sessions: sessionmaker[Session] | None) -> None:
        self.sessions = sessions
        self._recent: Recent[K, V] = Recent(
            ttl, stale_for=STALE_FOR_SECONDS if sessions is not None else 0.0
        )

    def get(
        self, key: K, session: Session, read: Callable[[Session], V], *, wait: bool = True
    ) -> V:
        """``wait=False``: ``WouldBlock`` where the value would be read here (see Recent)."""
        sessions = self.sessions
        if sessions is None:
            return self._recent.get(key, lambda: read(session), wait=wait)

        def in_own_session() -> V:  # may run after the caller's request has ended
            with session_scope(sessions) as own:
                return read(own)

        return self._recent.get(key, in_own_session, wait=wait)


class QueueView:
    """The queue as status calls see it: one snapshot (and live-worker count) shared for
    ``ttl`` seconds instead of four queries per queued job's status (the profile's largest
    database cost at 200 polling clients). With ``sessions`` (the API), renewed in the
    background (``SessionReads``): a position is then at most ``ttl`` + ``STALE_FOR_SECONDS``
    old, and usually about ``ttl``."""

    def __init__(self, ttl: float = 1.0, *, sessions: sessionmaker[Session] | None = None) -> None:
        self._reads: SessionReads[str, tuple[queue.QueueSnapshot, int]] = SessionReads(
            ttl, sessions
        )

    def get(
        self, session: Session, settings: Settings, *, wait: bool = True
    ) -> tuple[queue.QueueSnapshot, int]:
        def take(s: Session) -> tuple[queue.QueueSnapshot, int]:
            snapshot = queue.QueueSnapshot.take(s)
            return snapshot, len(WorkerRepository(s).alive(settings.lease_seconds * 2))

        return self._reads.get("queue", session, take, wait=wait)


def render_job(
    session: Session,
    job: Job,
    *,
    base_url: str | None,
    settings: Settings,
    queue_view: QueueView | None = None,
    wait: bool = True,
) -> dict[str, Any]:
    """job_to_dict plus the queue position and ETA (live, or from ``queue_view``: as of its
    snapshot, at most ``ttl`` old, with a job queued since placed behind what it holds).
    ``wait=False``: ``WouldBlock`` where ``queue_view`` would have to read its snapshot here."""
    position = None
    eta = None
    per_job = job.estimated_seconds
    if job.status == JobStatus.QUEUED:
        if queue_view is not None:
            snapshot, alive = queue_view.get(session, settings, wait=wait)
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
