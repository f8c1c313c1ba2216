"""The jobs table as a queue: atomic claim, lease + heartbeat, progress, finish, retry, reaper.

Fair order: higher ``priority`` first; then round-robin across API keys (the key whose job was
claimed longest ago, or never, goes next: ``api_keys.last_claimed_at``), then age within a key.
One client's 100 queued jobs therefore never starve another client's single job: it waits for
at most one job per other key.

Claim is atomic on both backends: PostgreSQL locks the chosen row with ``FOR UPDATE SKIP
LOCKED`` (concurrent workers skip it and take the next); SQLite transactions are all
``BEGIN IMMEDIATE`` (see ``session.py``), so only one claim runs at a time. Every write a worker
makes afterwards is conditional on it still holding the lease (``lease_owner``), so a worker
whose job was reaped and handed to another can never overwrite the new owner's result.

This is repository code: which status a job goes to, and what else happens then (cost row,
webhook, log line), is decided in ``aiprod.jobs.transitions``, the only caller of the writes.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, Update, and_, func, or_, select, update
from sqlalchemy.orm import Session

from aiprod.db.models import ApiKey, Job, JobStatus, utcnow


def claim(
    session: Session,
    *,
    worker_id: str,
    lease_seconds: float,
    models: list[str] | None = None,
    now: datetime | None = None,
) -> Job | None:
    """Take the next job in fair order, or None. The caller commits."""
    now = now or utcnow()
    q = (
        select(Job)
        .join(ApiKey, ApiKey.id == Job.api_key_id)
        .where(Job.status == JobStatus.QUEUED, Job.available_at <= now)
        .order_by(
            Job.priority.desc(),
            # Round-robin: the key served longest ago (or never) goes first...
            ApiKey.last_claimed_at.is_not(None),
            ApiKey.last_claimed_at,
            # ...with its oldest job.
            Job.created_at,
            Job.id,
        )
        .limit(1)
        .with_for_update(skip_locked=True, of=Job)
    )
    if models is not None:
        q = q.where(Job.model.in_(models))
    job = session.execute(q).scalars().first()
    if job is None:
        return None
    job.status = JobStatus.RUNNING
    job.attempts += 1
    job.lease_owner = worker_id
    job.lease_expires_at = now + timedelta(seconds=lease_seconds)
    job.heartbeat_at = now
    job.started_at = now
    job.progress = 0.0
    job.error_code = None
    job.error_message = None
    session.execute(update(ApiKey).where(ApiKey.id == job.api_key_id).values(last_claimed_at=now))
    session.flush()
    return job


@dataclass(frozen=True)
class LeaseState:
    owned: bool  # False: the lease was lost (reaped, or the job ended elsewhere)
    cancel_requested: bool


def _owned(job_id: str, worker_id: str) -> ColumnElement[bool]:
    return and_(Job.id == job_id, Job.lease_owner == worker_id, Job.status == JobStatus.RUNNING)


def _rowcount(session: Session, stmt: Update) -> int:
    result = cast(CursorResult[Any], session.execute(stmt))
    return int(result.rowcount)


def _state(session: Session, job_id: str, worker_id: str, rowcount: int) -> LeaseState:
    if rowcount != 1:
        return LeaseState(owned=False, cancel_requested=False)
    cancel = session.execute(select(Job.cancel_requested).where(Job.id == job_id)).scalar_one()
    return LeaseState(owned=True, cancel_requested=bool(cancel))


def heartbeat(
    session: Session,
    *,
    job_id: str,
    worker_id: str,
    lease_seconds: float,
    now: datetime | None = None,
) -> LeaseState:
    """Renew the lease; tells the worker whether it still owns the job and if cancel was asked."""
    now = now or utcnow()
    n = _rowcount(
        session,
        update(Job)
        .where(_owned(job_id, worker_id))
        .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_seconds)),
    )
    return _state(session, job_id, worker_id, n)


def set_progress(session: Session, *, job_id: str, worker_id: str, progress: float) -> LeaseState:
    n = _rowcount(
        session,
        update(Job)
        .where(_owned(job_id, worker_id))
        .values(progress=max(0.0, min(1.0, float(progress)))),
    )
    return _state(session, job_id, worker_id, n)


def finish(
    session: Session,
    *,
    job_id: str,
    worker_id: str,
    status: JobStatus,
    now: datetime | None = None,
    **values: object,
) -> Job | None:
    """Move an owned running job to ``status`` (terminal); None if the lease was lost."""
    now = now or utcnow()
    n = _rowcount(
        session,
        update(Job)
        .where(_owned(job_id, worker_id))
        .values(status=status, completed_at=now, lease_owner=None, lease_expires_at=None, **values),
    )
    if n != 1:
        return None
    return session.get(Job, job_id, populate_existing=True)


def retry_later(
    session: Session,
    *,
    job_id: str,
    worker_id: str,
    delay_seconds: float,
    error_code: str,
    error_message: str,
    count_attempt: bool = True,
    now: datetime | None = None,
) -> bool:
    """Put an owned running job back in the queue, available after ``delay_seconds``."""
    now = now or utcnow()
    values: dict[str, object] = dict(
        status=JobStatus.QUEUED,
        lease_owner=None,
        lease_expires_at=None,
        progress=0.0,
        available_at=now + timedelta(seconds=delay_seconds),
        error_code=error_code,
        error_message=error_message,
    )
    if not count_attempt:
        values["attempts"] = Job.attempts - 1
    return _rowcount(session, update(Job).where(_owned(job_id, worker_id)).values(**values)) == 1


def backoff_seconds(base: float, attempts: int) -> float:
    """Exponential backoff after the ``attempts``-th failed try, capped at 10 minutes."""
    return min(600.0, base * (2 ** max(0, attempts - 1)))


def expired_jobs(session: Session, *, now: datetime | None = None, limit: int = 100) -> list[Job]:
    """Running jobs whose lease ran out (their worker died or hung), locked for the reaper."""
    now = now or utcnow()
    q = (
        select(Job)
        .where(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now)
        .order_by(Job.lease_expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(session.execute(q).scalars())


def reap_one(
    session: Session, *, job: Job, now: datetime, status: JobStatus, **values: object
) -> bool:
    """Move an expired running job (as ``expired_jobs`` read it) to ``status``: one UPDATE
    that matches only while the job is still running under the same expired lease, so of two
    reapers (or a reaper and a late heartbeat) exactly one wins. False: someone else did."""
    n = _rowcount(
        session,
        update(Job)
        .where(
            Job.id == job.id,
            Job.status == JobStatus.RUNNING,
            Job.lease_owner == job.lease_owner,
            Job.lease_expires_at < now,
        )
        .values(status=status, lease_owner=None, lease_expires_at=None, **values),
    )
    return n == 1


def queue_position(session: Session, job: Job) -> int:
    """How many queued jobs come before ``job`` in fair order (0 = next).

    For the current round-robin state (ties aside): all higher-priority jobs, this key's older jobs,
    and from every other key of the same priority as many jobs as it gets turns before ours.
    """
    higher = session.execute(
        select(func.count()).where(Job.status == JobStatus.QUEUED, Job.priority > job.priority)
    ).scalar_one()
    rows = session.execute(
        select(Job.api_key_id, func.count(), ApiKey.last_claimed_at, func.min(Job.created_at))
        .join(ApiKey, ApiKey.id == Job.api_key_id)
        .where(Job.status == JobStatus.QUEUED, Job.priority == job.priority)
        .group_by(Job.api_key_id, ApiKey.last_claimed_at)
    ).all()
    older_mine = session.execute(
        select(func.count()).where(
            Job.status == JobStatus.QUEUED,
            Job.api_key_id == job.api_key_id,
            Job.priority == job.priority,
            or_(
                Job.created_at < job.created_at,
                and_(Job.created_at == job.created_at, Job.id < job.id),
            ),
        )
    ).scalar_one()
    turn = older_mine + 1  # our job is served in our key's turn number `turn`
    never = datetime.min.replace(tzinfo=UTC)
    mine = next(((r[2] or never, r[3]) for r in rows if r[0] == job.api_key_id), (never, never))
    ahead = older_mine
    for key_id, count, last, oldest in rows:
        if key_id == job.api_key_id:
            continue
        # A key whose turn comes before ours in each round gets `turn` jobs in first.
        before = (last or never, oldest) < mine
        ahead += min(count, turn if before else turn - 1)
    return int(higher + ahead)


@dataclass(frozen=True)
class QueueSnapshot:
    """The queued jobs' ordering keys, read in one query, answering ``queue_position`` for any of
    them without more queries (the API's status calls share one for a second instead of running
    three counting queries each)."""

    jobs: dict[str, tuple[int, str, datetime]]  # job id -> (priority, api key id, created_at)
    per_priority: dict[int, int]  # priority -> queued jobs
    # (priority, api key id) -> that key's queued (created_at, job id), oldest first
    per_key: dict[tuple[int, str], list[tuple[datetime, str]]]
    last_claimed: dict[str, datetime | None]  # api key id -> its last claim (every key)

    @classmethod
    def take(cls, session: Session) -> QueueSnapshot:
        rows = session.execute(
            select(Job.id, Job.priority, Job.api_key_id, Job.created_at).where(
                Job.status == JobStatus.QUEUED
            )
        ).all()
        per_key: dict[tuple[int, str], list[tuple[datetime, str]]] = {}
        for job_id, priority, key_id, created_at in rows:
            per_key.setdefault((priority, key_id), []).append((created_at, job_id))
        for entries in per_key.values():
            entries.sort()
        return cls(
            jobs={r[0]: (r[1], r[2], r[3]) for r in rows},
            per_priority=dict(Counter(r[1] for r in rows)),
            per_key=per_key,
            last_claimed=dict(
                session.execute(select(ApiKey.id, ApiKey.last_claimed_at)).tuples().all()
            ),
        )

    def position(self, job_id: str) -> int | None:
        """``queue_position`` as of the snapshot; None if the job was not queued then."""
        if job_id not in self.jobs:
            return None
        priority, key_id, created_at = self.jobs[job_id]
        return self.position_of(priority, key_id, created_at, job_id)

    def position_of(self, priority: int, key_id: str, created_at: datetime, job_id: str) -> int:
        """``queue_position`` of a queued job, in the snapshot or queued after it (e.g. one
        just submitted)."""
        higher = sum(n for p, n in self.per_priority.items() if p > priority)
        mine_entries = self.per_key.get((priority, key_id), [])
        older_mine = bisect.bisect_left(mine_entries, (created_at, job_id))
        turn = older_mine + 1  # as in queue_position
        never = datetime.min.replace(tzinfo=UTC)
        claimed = self.last_claimed.get(key_id)
        oldest = mine_entries[0][0] if mine_entries else created_at
        mine = (claimed or never, min(oldest, created_at))
        ahead = older_mine
        for (p, other), entries in self.per_key.items():
            if p != priority or other == key_id:
                continue
            before = (self.last_claimed.get(other) or never, entries[0][0]) < mine
            ahead += min(len(entries), turn if before else turn - 1)
        return higher + ahead
