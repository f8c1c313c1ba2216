"""Every change of a job's status, and everything that happens with it.

::

    (new) --submit--> queued --claim--> running --succeed--> succeeded --expire--> expired
             queued --cancel--> canceled       running --cancel--> canceled
             running --retry / reap / worker stops--> queued
             running --fail / reap (out of attempts)--> failed
    failed or canceled --admin retry (submit.retry_as_new)--> a new job, queued

The API, the worker, the reaper and retention call these functions and nothing else writes
``jobs.status``. Each one decides the new status, writes it (through ``db/queue.py``'s lease-
checked SQL where a worker holds the job), logs one ``job.transition`` line, and on a terminal
status adds the day's cost row and the webhook outbox entry in the same transaction
(``on_terminal``): the caller commits once, so a job is never terminal without them.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from aiprod.core.logging import log_job_transition
from aiprod.core.settings import Settings
from aiprod.db import queue
from aiprod.db.models import Job, JobStatus, utcnow
from aiprod.db.repositories import CostRepository, JobRepository, WebhookRepository
from aiprod.jobs.schema import DEFAULT_WEBHOOK_EVENTS
from aiprod.jobs.storage import Storage
from aiprod.jobs.views import iso, job_to_dict

# The worker, the reaper and retention call the functions that log here: their lines keep
# the worker's logger name.
log = logging.getLogger("aiprod.worker")

# --- API: cancel (creating a job: jobs/submit.py) ------------------------------------------


def cancel_job(session: Session, job: Job, *, settings: Settings) -> Job:
    """Cancel a queued job now, or flag a running one (its worker stops within one step).
    Terminal jobs are returned unchanged."""
    job = JobRepository(session).lock(job.id) or job
    if JobStatus(job.status).is_terminal:
        return job
    if job.status == JobStatus.QUEUED:
        job.status = JobStatus.CANCELED
        job.completed_at = utcnow()
        job.cancel_requested = True
        on_terminal(session, job, settings=settings)
        log_job_transition(job.id, old=JobStatus.QUEUED, new=JobStatus.CANCELED, model=job.model)
    else:
        job.cancel_requested = True
    session.flush()
    return job


# --- Worker: claim, finish, retry -----------------------------------------------------------


def claim(
    session: Session,
    *,
    worker_id: str,
    lease_seconds: float,
    models: list[str] | None = None,
    settings: Settings | None = None,
) -> Job | None:
    """queued -> running: the next job in fair order, leased to ``worker_id``; or None."""
    job = queue.claim(session, worker_id=worker_id, lease_seconds=lease_seconds, models=models)
    if job is not None:
        log_job_transition(
            job.id, old=JobStatus.QUEUED, new=JobStatus.RUNNING, model=job.model, worker=worker_id
        )
        if job.attempts == 1:  # the first start only: a retry is not a new `started`
            _webhook(session, job, "started", settings)
    return job


def _finish(
    session: Session,
    *,
    job_id: str,
    worker_id: str,
    status: JobStatus,
    settings: Settings,
    **values: Any,
) -> Job | None:
    done = queue.finish(session, job_id=job_id, worker_id=worker_id, status=status, **values)
    if done is None:
        return None  # the lease was lost: the job is someone else's now
    log_job_transition(
        job_id, old=JobStatus.RUNNING, new=status, model=done.model, worker=worker_id
    )
    on_terminal(session, done, settings=settings)
    return done


def succeed(
    session: Session,
    *,
    job_id: str,
    worker_id: str,
    settings: Settings,
    output_path: str,
    output_bytes: int,
    output_sha256: str,
    gpu_seconds: float,
    cost_usd: float,
) -> Job | None:
    """running -> succeeded with its output; None if the lease was lost (result discarded)."""
    return _finish(
        session,
        job_id=job_id,
        worker_id=worker_id,
        status=JobStatus.SUCCEEDED,
        settings=settings,
        progress=1.0,
        output_path=output_path,
        output_bytes=output_bytes,
        output_sha256=output_sha256,
        gpu_seconds=gpu_seconds,
        cost_usd=cost_usd,
        error_code=None,
        error_message=None,
    )


def cancel_running(
    session: Session,
    *,
    job_id: str,
    worker_id: str,
    settings: Settings,
    gpu_seconds: float,
    cost_usd: float,
) -> Job | None:
    """running -> canceled (the client asked; the GPU time so far is billed)."""
    return _finish(
        session,
        job_id=job_id,
        worker_id=worker_id,
        status=JobStatus.CANCELED,
        settings=settings,
        gpu_seconds=gpu_seconds,
        cost_usd=cost_usd,
    )


def fail_attempt(
    session: Session,
    *,
    job: Job,
    worker_id: str,
    settings: Settings,
    code: str,
    message: str,
    permanent: bool,
) -> JobStatus | None:
    """An attempt failed: running -> queued (retry with backoff) while attempts are left and
    the error is not permanent, else running -> failed. Returns the new status (None: the
    lease was lost)."""
    if not permanent and job.attempts < job.max_attempts:
        delay = queue.backoff_seconds(settings.retry_backoff_seconds, job.attempts)
        ok = _retry_later(
            session,
            job_id=job.id,
            worker_id=worker_id,
            delay_seconds=delay,
            error_code=code,
            error_message=message,
        )
        log.warning("job %s failed (%s); retry in %.1fs", job.id, message, delay)
        return JobStatus.QUEUED if ok else None
    done = _finish(
        session,
        job_id=job.id,
        worker_id=worker_id,
        status=JobStatus.FAILED,
        settings=settings,
        error_code=code,
        error_message=message,
    )
    log.warning("job %s failed: %s", job.id, message)
    return JobStatus.FAILED if done is not None else None


def hand_back(session: Session, *, job_id: str, worker_id: str) -> bool:
    """running -> queued at once, without using up an attempt (the worker is stopping)."""
    return _retry_later(
        session,
        job_id=job_id,
        worker_id=worker_id,
        delay_seconds=0,
        error_code="worker_stopped",
        error_message="worker stopped; requeued",
        count_attempt=False,
    )


def _retry_later(
    session: Session,
    *,
    job_id: str,
    worker_id: str,
    delay_seconds: float,
    error_code: str,
    error_message: str,
    count_attempt: bool = True,
) -> bool:
    ok = queue.retry_later(
        session,
        job_id=job_id,
        worker_id=worker_id,
        delay_seconds=delay_seconds,
        error_code=error_code,
        error_message=error_message,
        count_attempt=count_attempt,
    )
    if ok:
        log_job_transition(
            job_id, old=JobStatus.RUNNING, new=JobStatus.QUEUED, worker=worker_id, reason=error_code
        )
    return ok


# --- Reaper and retention -------------------------------------------------------------------


def reap_expired(session: Session, *, settings: Settings) -> tuple[int, int]:
    """Running jobs whose lease expired: -> queued (after backoff) or, out of attempts, ->
    failed. Returns (requeued, failed). Each move is one conditional UPDATE (``queue.reap_one``)
    and the rows are locked, so many reapers may run at once: a job is requeued once, and the
    attempt (counted at claim) is never counted twice."""
    requeued = failed = 0
    now = utcnow()
    for job in queue.expired_jobs(session, now=now):
        msg = f"worker {job.lease_owner} stopped renewing its lease (crashed or hung)"
        values: dict[str, Any] = dict(error_code="worker_lost", error_message=msg)
        if job.attempts >= job.max_attempts:
            status = JobStatus.FAILED
            values["completed_at"] = now
        else:
            status = JobStatus.QUEUED
            values["progress"] = 0.0
            values["available_at"] = now + timedelta(
                seconds=queue.backoff_seconds(settings.retry_backoff_seconds, job.attempts)
            )
        if not queue.reap_one(session, job=job, now=now, status=status, **values):
            continue  # another reaper, or the job's worker, got there first
        session.refresh(job)
        if status == JobStatus.FAILED:
            on_terminal(session, job, settings=settings)
            failed += 1
        else:
            requeued += 1
        log.warning("reaper: job %s %s (%s)", job.id, status, msg)
        log_job_transition(job.id, old=JobStatus.RUNNING, new=status, model=job.model, reason=msg)
    return requeued, failed


def expire(job: Job) -> None:
    """succeeded -> expired: retention deleted its output (the row stays for billing)."""
    job.status = JobStatus.EXPIRED
    job.output_path = None
    log_job_transition(job.id, old=JobStatus.SUCCEEDED, new=JobStatus.EXPIRED, model=job.model)


def delete_output(session: Session, job: Job, *, storage: Storage, settings: Settings) -> Job:
    """DELETE /jobs/{id}: remove the output (and the conditioning image), keep the row for
    billing with ``deleted_at`` set; the status stays. A queued job is canceled first; a
    running one is asked to cancel (if its last step finishes anyway, the worker deletes the
    output it wrote: ``finish_deleted``). Deleting again changes nothing."""
    job = JobRepository(session).lock(job.id) or job
    if not JobStatus(job.status).is_terminal:
        job = cancel_job(session, job, settings=settings)
    if job.deleted_at is None:
        job.deleted_at = utcnow()
    _drop_files(job, storage)
    session.flush()
    return job


def finish_deleted(session: Session, job: Job, *, storage: Storage) -> None:
    """A job deleted while it ran and then succeeded: remove the output it just wrote."""
    if job.deleted_at is not None:
        _drop_files(job, storage)
        session.flush()


def _drop_files(job: Job, storage: Storage) -> None:
    # input_image_path stays: the job object's params.image says whether one was given
    for key in (job.output_path, job.input_image_path):
        if key:
            storage.delete(key)
    job.output_path = None


# --- Terminal side effects ------------------------------------------------------------------


def on_terminal(session: Session, job: Job, *, settings: Settings) -> None:
    """Everything that happens in the same transaction as a job reaching a terminal status:
    the daily cost row and the webhook outbox entry."""
    gpu_seconds = float(job.gpu_seconds or 0.0)
    if gpu_seconds or job.status in (JobStatus.FAILED, JobStatus.SUCCEEDED):
        day = (job.completed_at or utcnow()).date()
        CostRepository(session).record(
            day=day,
            gpu_seconds=gpu_seconds,
            gpu_cost_usd=gpu_seconds * settings.gpu_cost_per_hour / 3600.0,
            revenue_usd=float(job.cost_usd or 0.0),
            succeeded=job.status == JobStatus.SUCCEEDED,
            failed=job.status == JobStatus.FAILED,
        )
    _webhook(session, job, str(job.status), settings)


def _webhook(session: Session, job: Job, event: str, settings: Settings | None) -> None:
    """Add ``job.<event>`` to the outbox if the job has a webhook_url and asked for it.
    Download URLs are absolute only with AIPROD_PUBLIC_URL (no request here: see API.md)."""
    events = job.webhook_events or DEFAULT_WEBHOOK_EVENTS
    if not job.webhook_url or event not in events:
        return
    event_type = f"job.{event}"
    public_url = settings.public_url if settings is not None else None
    payload = {
        "type": event_type,
        "timestamp": iso(utcnow()),
        "data": job_to_dict(job, base_url=public_url, settings=settings),
    }
    WebhookRepository(session).enqueue(job=job, event_type=event_type, payload=payload)
