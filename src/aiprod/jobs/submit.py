"""Submitting a job: the one path from a request to a queued row, shared by
``POST /api/v1/generate`` and the OpenAI-compatible ``POST /v1/videos``.

validate -> (idempotent replay) -> estimate -> insert. A check every submit must pass (a
budget, model availability) goes in :func:`submit_job`, so both routes get it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aiprod.core.errors import Conflict, InvalidRequest
from aiprod.core.logging import log_job_transition
from aiprod.core.registry import Registry
from aiprod.core.settings import Settings
from aiprod.db.models import Job, JobStatus, new_id, utcnow
from aiprod.db.repositories import JobRepository
from aiprod.jobs.estimate import estimate_seconds
from aiprod.jobs.model_state import availability, refuse_unavailable
from aiprod.jobs.schema import GenerateBody, JobParams, request_hash, validate_generate
from aiprod.jobs.storage import Storage, input_key

MAX_IDEMPOTENCY_KEY = 255


@dataclass(frozen=True)
class Submitter:
    """Who submits: the API key's id and its queue priority."""

    api_key_id: str
    priority: int = 0


@dataclass(frozen=True)
class Submitted:
    job: Job
    created: bool  # False: an idempotent replay of an earlier identical request


def submit_job(
    session: Session,
    *,
    submitter: Submitter,
    body: GenerateBody,
    registry: Registry,
    storage: Storage,
    settings: Settings,
    idempotency_key: str | None = None,
) -> Submitted:
    """Validate ``body`` and insert a queued job (InvalidRequest naming the field otherwise).
    Workers see it once the caller commits."""
    repo = JobRepository(session)
    req_hash = request_hash(body)
    if idempotency_key is not None:
        if not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
            raise InvalidRequest(
                f"Idempotency-Key must be 1..{MAX_IDEMPOTENCY_KEY} characters",
                field="Idempotency-Key",
            )
        existing = repo.by_idempotency_key(submitter.api_key_id, idempotency_key)
        if existing is not None:
            return Submitted(_replay(existing, req_hash), created=False)
    v = validate_generate(body, registry, webhook_allow=settings.webhook_allowed_networks)
    # A model known unavailable (broken files, a failed load): 503 now, not 202 then a failure.
    refuse_unavailable(v.entry.id, availability(session, registry, settings).get(v.entry.id))
    seconds, _ = estimate_seconds(session, v.entry, v.params)
    now = utcnow()
    job = Job(
        id=new_id(),
        api_key_id=submitter.api_key_id,
        prompt=v.params.prompt,
        model=v.entry.id,
        model_version=v.entry.version,
        params=v.params.as_dict(),
        status=JobStatus.QUEUED,
        priority=submitter.priority,
        attempts=0,
        max_attempts=settings.max_attempts,
        available_at=now,
        progress=0.0,
        cancel_requested=False,
        idempotency_key=idempotency_key,
        request_hash=req_hash,
        webhook_url=body.webhook_url,
        webhook_events=body.webhook_events,
        created_at=now,
        estimated_seconds=seconds,
        estimated_cost_usd=round(seconds * v.entry.price_per_gpu_second, 6),
        metadata_=body.metadata,
        warnings=v.warnings or None,
    )
    try:
        if v.image is not None:
            job.input_image_path = input_key(job.id)
            storage.write_bytes(job.input_image_path, v.image)
        repo.add(job)
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key won the insert.
        existing = repo.by_idempotency_key(submitter.api_key_id, idempotency_key or "")
        if existing is None:
            raise
        return Submitted(_replay(existing, req_hash), created=False)
    log_job_transition(
        job.id, old=None, new=JobStatus.QUEUED, model=job.model, key_id=submitter.api_key_id
    )
    return Submitted(job, created=True)


def _replay(existing: Job, req_hash: str) -> Job:
    if existing.request_hash != req_hash:
        raise Conflict(
            "this Idempotency-Key was already used with a different request body: "
            "use a new key for a new request",
            code="idempotency_conflict",
        )
    return existing


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
        webhook_events=old.webhook_events,
        created_at=utcnow(),
        estimated_seconds=seconds,
        estimated_cost_usd=round(seconds * entry.price_per_gpu_second, 6),
        metadata_=old.metadata_,
        retry_of=old.id,
        warnings=old.warnings,
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
