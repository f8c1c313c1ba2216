"""Submitting a job: the one path from a request to a queued row, shared by
``POST /api/v1/generate`` and the OpenAI-compatible ``POST /v1/videos``.

(idempotent replay) -> validate -> budget -> model availability -> estimate -> insert. A check
every submit must pass goes in :func:`prepare_submit`, so both routes get it. The API runs the
reads and the insert as two units of work (:func:`submit_in_two_transactions`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from aiprod.core.errors import AiprodError, Conflict, InvalidRequest
from aiprod.core.logging import log_job_transition
from aiprod.core.registry import Registry
from aiprod.core.settings import Settings
from aiprod.db.models import Job, JobStatus, new_id, utcnow
from aiprod.db.repositories import JobRepository
from aiprod.db.session import session_scope
from aiprod.jobs.budget import UNREAD, Unread, check_budget
from aiprod.jobs.estimate import estimate_seconds
from aiprod.jobs.model_state import ModelState, availability, refuse_unavailable
from aiprod.jobs.schema import GenerateBody, JobParams, request_hash, validate_generate
from aiprod.jobs.storage import Storage, input_key
from aiprod.jobs.views import SessionReads

MAX_IDEMPOTENCY_KEY = 255


@dataclass(frozen=True)
class Submitter:
    """Who submits: the API key's id, its queue priority and, when the caller has the key's
    row at hand, its monthly budget (otherwise the submit reads it)."""

    api_key_id: str
    priority: int = 0
    monthly_budget_usd: float | None | Unread = UNREAD


class SubmitReads:
    """What an API process's submits share instead of reading it for each one: the models'
    availability and the measured timings behind the estimate, read again after ``ttl``
    seconds (with ``sessions``, by a background thread: see ``jobs.views.SessionReads``). A
    model that has just become unavailable can still be accepted meanwhile (a few seconds at
    most); its job then fails at once on the worker with ``model_unavailable``."""

    def __init__(self, ttl: float = 1.0, *, sessions: sessionmaker[Session] | None = None):
        self.availability: SessionReads[str, dict[str, ModelState]] = SessionReads(ttl, sessions)
        self.estimates: SessionReads[tuple[Any, ...], float] = SessionReads(ttl, sessions)


@dataclass(frozen=True)
class Prepared:
    """A checked submit, not stored yet: the job row and the image to store with it."""

    job: Job
    image: bytes | None


@dataclass(frozen=True)
class Submitted:
    job: Job
    created: bool  # False: an idempotent replay of an earlier identical request


def prepare_submit(
    session: Session,
    *,
    submitter: Submitter,
    body: GenerateBody,
    registry: Registry,
    settings: Settings,
    idempotency_key: str | None = None,
    reads: SubmitReads | None = None,
    replay_first: bool = True,
) -> Submitted | Prepared:
    """Everything a submit reads, in order: an idempotent replay (``Submitted``, created=False:
    the earlier job, before any other check), the body's validation (InvalidRequest naming the
    field), the key's monthly budget (402), the model's availability (503) and the estimate.
    Returns the job to insert (not added to ``session``, which only reads) with its image.
    ``reads``: the process's shared recent reads (the API); without, everything is read.
    ``replay_first=False``: the caller looks the Idempotency-Key up itself, when needed."""
    req_hash = request_hash(body)
    if idempotency_key is not None:
        if not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
            raise InvalidRequest(
                f"Idempotency-Key must be 1..{MAX_IDEMPOTENCY_KEY} characters",
                field="Idempotency-Key",
            )
        if replay_first:
            replay = _replay_of(session, submitter, idempotency_key, body)
            if replay is not None:
                return replay
    v = validate_generate(body, registry, webhook_allow=settings.webhook_allowed_networks)
    check_budget(session, submitter.api_key_id, budget_usd=submitter.monthly_budget_usd)

    # A model known unavailable (broken files, a failed load): 503 now, not 202 then a failure.
    def read_availability(s: Session) -> dict[str, ModelState]:
        return availability(s, registry, settings)

    def read_estimate(s: Session) -> float:
        return estimate_seconds(s, v.entry, v.params)[0]

    if reads is None:
        unavailable, seconds = read_availability(session), read_estimate(session)
    else:
        unavailable = reads.availability.get("models", session, read_availability)
        shape = (v.entry.id, v.entry.version, *sorted(v.params.shape().items()))
        seconds = reads.estimates.get(shape, session, read_estimate)
    refuse_unavailable(v.entry.id, unavailable.get(v.entry.id))
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
    return Prepared(job, v.image)


def insert_job(
    session: Session, prepared: Prepared, storage: Storage, *, own_transaction: bool = False
) -> Submitted:
    """Store a job from ``prepare_submit``: its image first (outside any transaction's
    lock), then the row. A concurrent request with the same Idempotency-Key that won the insert
    makes this a replay of that job (this one's image removed). Workers see the job once the
    caller commits. ``own_transaction``: the session holds nothing else, so a duplicate rolls
    it back instead of using a savepoint."""
    job = prepared.job
    if prepared.image is not None:
        job.input_image_path = input_key(job.id)
        storage.write_bytes(job.input_image_path, prepared.image)
    try:
        JobRepository(session).add(job, savepoint=not own_transaction)
    except IntegrityError:
        if own_transaction:
            session.rollback()
        existing = JobRepository(session).by_idempotency_key(
            job.api_key_id, job.idempotency_key or ""
        )
        if existing is None:
            raise
        if job.input_image_path is not None:
            storage.delete(job.input_image_path)
        return Submitted(_replay(existing, job.request_hash or ""), created=False)
    log_job_transition(
        job.id, old=None, new=JobStatus.QUEUED, model=job.model, key_id=job.api_key_id
    )
    return Submitted(job, created=True)


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
    """``prepare_submit`` then ``insert_job`` in one session (the caller commits)."""
    prepared = prepare_submit(
        session,
        submitter=submitter,
        body=body,
        registry=registry,
        settings=settings,
        idempotency_key=idempotency_key,
    )
    if isinstance(prepared, Submitted):
        return prepared
    return insert_job(session, prepared, storage)


def submit_in_two_transactions(
    read_sessions: sessionmaker[Session],
    insert_sessions: sessionmaker[Session],
    *,
    submitter: Submitter,
    body: GenerateBody,
    registry: Registry,
    storage: Storage,
    settings: Settings,
    idempotency_key: str | None = None,
    reads: SubmitReads | None = None,
) -> Submitted:
    """``submit_job`` for the API: the checks in a read-only unit of work, then the INSERT as a
    unit of work of its own (``insert_sessions``: see ``db.session.make_insert_sessionmaker``),
    committed before this returns. On SQLite the write lock is held for the INSERT alone, not
    for every query of the submit (under a burst of submits, the queries run while holding it
    were most of the wait); on PostgreSQL the INSERT is one round trip.

    The Idempotency-Key is looked up only when the insert finds it taken or a check refuses
    the request (a replay returns the earlier job whatever the checks say now), so a new
    request costs no lookup: with ``reads``, a key without a budget, a fresh queue snapshot
    and no image, the INSERT is the submit's only statement."""
    with session_scope(read_sessions) as session:
        try:
            prepared = prepare_submit(
                session,
                submitter=submitter,
                body=body,
                registry=registry,
                settings=settings,
                idempotency_key=idempotency_key,
                reads=reads,
                replay_first=False,
            )
        except AiprodError:
            replay = _replay_of(session, submitter, idempotency_key, body)
            if replay is None:
                raise
            return replay
    assert isinstance(prepared, Prepared)
    with session_scope(insert_sessions) as session:
        return insert_job(session, prepared, storage, own_transaction=True)


def _replay_of(
    session: Session, submitter: Submitter, idempotency_key: str | None, body: GenerateBody
) -> Submitted | None:
    """The earlier job of this Idempotency-Key (409 if its body differed), or None."""
    if idempotency_key is None or not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
        return None
    existing = JobRepository(session).by_idempotency_key(submitter.api_key_id, idempotency_key)
    if existing is None:
        return None
    return Submitted(_replay(existing, request_hash(body)), created=False)


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
