"""Every change of a job's status, and everything that happens with it.

::

    (new) --create--> queued --claim--> running --succeed--> succeeded --expire--> expired
             queued --cancel--> canceled       running --cancel--> canceled
             running --retry / reap / worker stops--> queued
             running --fail / reap (out of attempts)--> failed
    failed or canceled --admin retry (retry_as_new)--> a new job, queued

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

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aiprod.core.errors import Conflict, InvalidRequest
from aiprod.core.logging import log_job_transition
from aiprod.core.registry import Registry
from aiprod.core.settings import Settings
from aiprod.db import queue
from aiprod.db.models import Job, JobStatus, new_id, utcnow
from aiprod.db.repositories import CostRepository, JobRepository, WebhookRepository
from aiprod.jobs.estimate import estimate_seconds
from aiprod.jobs.schema import GenerateBody, JobParams, request_hash, validate_generate
from aiprod.jobs.storage import Storage, input_key
from aiprod.jobs.views import iso, job_to_dict

# The worker, the reaper and retention call the functions that log here: their lines keep
# the worker's logger name.
log = logging.getLogger("aiprod.worker")

MAX_IDEMPOTENCY_KEY = 255


# --- API: create and cancel -----------------------------------------------------------------


def create_job(
    session: Session,
    *,
    api_key_id: str,
    priority: int,
    body: GenerateBody,
    registry: Registry,
    storage: Storage,
    settings: Settings,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """Validate and insert a queued job. Returns (job, created); created=False on an
    idempotent replay of an earlier identical request. Workers see it once the caller commits."""
    repo = JobRepository(session)
    req_hash = request_hash(body)
    if idempotency_key is not None:
        if not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
            raise InvalidRequest(
                f"Idempotency-Key must be 1..{MAX_IDEMPOTENCY_KEY} characters",
                field="Idempotency-Key",
            )
        existing = repo.by_idempotency_key(api_key_id, idempotency_key)
        if existing is not None:
            return _replay(existing, req_hash), False
    v = validate_generate(body, registry, webhook_allow=settings.webhook_allowed_networks)
    seconds, _ = estimate_seconds(session, v.entry, v.params)
    job = Job(
        id=new_id(),
        api_key_id=api_key_id,
        prompt=v.params.prompt,
        model=v.entry.id,
        model_version=v.entry.version,
        params=v.params.as_dict(),
        status=JobStatus.QUEUED,
        priority=priority,
        attempts=0,
        max_attempts=settings.max_attempts,
        available_at=utcnow(),
        progress=0.0,
        cancel_requested=False,
        idempotency_key=idempotency_key,
        request_hash=req_hash,
        webhook_url=body.webhook_url,
        created_at=utcnow(),
        estimated_seconds=seconds,
        estimated_cost_usd=round(seconds * v.entry.price_per_gpu_second, 6),
        metadata_=body.metadata,
    )
    try:
        if v.image is not None:
            job.input_image_path = input_key(job.id)
            storage.write_bytes(job.input_image_path, v.image)
        repo.add(job)
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key won the insert.
        existing = repo.by_idempotency_key(api_key_id, idempotency_key or "")
        if existing is None:
            raise
        return _replay(existing, req_hash), False
    log_job_transition(job.id, old=None, new=JobStatus.QUEUED, model=job.model, key_id=api_key_id)
    return job, True


def _replay(existing: Job, req_hash: str) -> Job:
    if existing.request_hash != req_hash:
        raise Conflict(
            "this Idempotency-Key was already used with a different request body: "
            "use a new key for a new request",
            code="idempotency_conflict",
        )
    return existing


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


def retry_as_new(
    session: Session,
    old: Job,
    *,
    priority: int,
    registry: Registry,
    storage: Storage,
    settings: Settings,
) -> Job:
    """(new) --retry--> queued: a failed or canceled job submitted again as a new job (same
    key, prompt, parameters, seed, image, webhook, metadata; ``retry_of`` = the old id), on the
    model's current version. The old row is left as it is (its cost and webhook stand)."""
    if old.status not in (JobStatus.FAILED, JobStatus.CANCELED):
        raise Conflict(
            f"job {old.id} is {old.status}; only failed or canceled jobs can be retried",
            code="not_retryable",
        )
    entry = registry.get(old.model)
    params = JobParams.from_stored(old.params)
    seconds, _ = estimate_seconds(session, entry, params)
    job = Job(
        id=new_id(),
        api_key_id=old.api_key_id,
        prompt=old.prompt,
        model=entry.id,
        model_version=entry.version,
        params=params.as_dict(),
        status=JobStatus.QUEUED,
        priority=priority,
        attempts=0,
        max_attempts=settings.max_attempts,
        available_at=utcnow(),
        progress=0.0,
        cancel_requested=False,
        webhook_url=old.webhook_url,
        created_at=utcnow(),
        estimated_seconds=seconds,
        estimated_cost_usd=round(seconds * entry.price_per_gpu_second, 6),
        metadata_=old.metadata_,
        retry_of=old.id,
    )
    if old.input_image_path is not None:
        job.input_image_path = input_key(job.id)
        storage.write_bytes(job.input_image_path, storage.read_bytes(old.input_image_path))
    JobRepository(session).add(job)
    log_job_transition(
        job.id,
        old=None,
        new=JobStatus.QUEUED,
        model=job.model,
        key_id=job.api_key_id,
        reason=f"retry of {old.id}",
    )
    return job


# --- Worker: claim, finish, retry -----------------------------------------------------------


def claim(
    session: Session, *, worker_id: str, lease_seconds: float, models: list[str] | None = None
) -> Job | None:
    """queued -> running: the next job in fair order, leased to ``worker_id``; or None."""
    job = queue.claim(session, worker_id=worker_id, lease_seconds=lease_seconds, models=models)
    if job is not None:
        log_job_transition(
            job.id, old=JobStatus.QUEUED, new=JobStatus.RUNNING, model=job.model, worker=worker_id
        )
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
    if job.webhook_url:
        event_type = f"job.{job.status}"
        payload = {
            "type": event_type,
            "timestamp": iso(utcnow()),
            "data": job_to_dict(job, base_url=settings.public_url),
        }
        WebhookRepository(session).enqueue(job=job, event_type=event_type, payload=payload)
