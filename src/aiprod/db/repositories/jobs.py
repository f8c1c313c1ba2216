"""Jobs as rows: insert, look up, list with cursor pagination, counts for stats.

Status changes are not made here: see ``aiprod.jobs.transitions`` (and ``db/queue.py`` for
the claim/lease SQL it uses)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.orm import Session

from aiprod.core.errors import InvalidRequest, NotFound
from aiprod.db.models import TERMINAL_STATUSES, Job, JobStatus


@dataclass(frozen=True)
class Page:
    items: list[Job]
    next_cursor: str | None


def _encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ts, job_id = raw.split("|", 1)
        dt = datetime.fromisoformat(ts)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt, job_id
    except Exception as exc:
        raise InvalidRequest(
            "cursor is not valid: pass the next_cursor value from the previous page unchanged",
            field="cursor",
        ) from exc


class JobRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def add(self, job: Job, *, savepoint: bool = True) -> Job:
        """Insert a job; raises IntegrityError on a duplicate idempotency key: in a savepoint
        (the session's other work survives it), or with ``savepoint=False`` in the session's
        own transaction, which the caller then rolls back (two round trips fewer on
        PostgreSQL, for a transaction that holds only this insert)."""
        if not savepoint:
            self.s.add(job)
            self.s.flush()
            return job
        with self.s.begin_nested():
            self.s.add(job)
            self.s.flush()
        return job

    def by_idempotency_key(self, api_key_id: str, key: str) -> Job | None:
        q = select(Job).where(Job.api_key_id == api_key_id, Job.idempotency_key == key)
        return self.s.execute(q).scalar_one_or_none()

    def get(self, job_id: str) -> Job | None:
        return self.s.get(Job, job_id)

    def get_owned(self, job_id: str, api_key_id: str) -> Job:
        """The job if the key owns it; otherwise 404, so other clients' jobs stay invisible."""
        job = self.s.get(Job, job_id)
        if job is None or job.api_key_id != api_key_id:
            raise NotFound(f"job {job_id} not found")
        return job

    def list_owned(
        self,
        api_key_id: str,
        *,
        statuses: list[str] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> Page:
        q = select(Job).where(Job.api_key_id == api_key_id)
        if statuses:
            q = q.where(Job.status.in_(statuses))
        if created_after is not None:
            q = q.where(Job.created_at >= created_after)
        if created_before is not None:
            q = q.where(Job.created_at < created_before)
        if cursor:
            c_at, c_id = _decode_cursor(cursor)
            q = q.where(or_(Job.created_at < c_at, and_(Job.created_at == c_at, Job.id < c_id)))
        q = q.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
        rows = list(self.s.execute(q).scalars())
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(rows, _encode_cursor(rows[-1]) if more and rows else None)

    def list_after(
        self, api_key_id: str, *, after: Job | None, limit: int, ascending: bool
    ) -> tuple[list[Job], bool]:
        """The key's jobs not deleted, by creation time, after ``after`` (OpenAI's id
        cursor); returns (jobs, whether more follow)."""
        q = select(Job).where(Job.api_key_id == api_key_id, Job.deleted_at.is_(None))
        if after is not None:
            at, aid = after.created_at, after.id
            if ascending:
                q = q.where(or_(Job.created_at > at, and_(Job.created_at == at, Job.id > aid)))
            else:
                q = q.where(or_(Job.created_at < at, and_(Job.created_at == at, Job.id < aid)))
        order = (
            (Job.created_at.asc(), Job.id.asc())
            if ascending
            else (
                Job.created_at.desc(),
                Job.id.desc(),
            )
        )
        rows = list(self.s.execute(q.order_by(*order).limit(limit + 1)).scalars())
        return rows[:limit], len(rows) > limit

    def lock(self, job_id: str) -> Job | None:
        """The job's current row, locked until commit (refreshes an already-loaded object)."""
        q = (
            select(Job)
            .where(Job.id == job_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        return self.s.execute(q).scalar_one_or_none()

    def count(self, status: JobStatus) -> int:
        return int(self.s.execute(select(func.count()).where(Job.status == status)).scalar_one())

    def running_count(self) -> int:
        return self.count(JobStatus.RUNNING)

    def queued_count(self) -> int:
        return self.count(JobStatus.QUEUED)

    def stats_per_key(self, since: datetime, until: datetime) -> list[dict[str, Any]]:
        q = (
            select(
                Job.api_key_id,
                func.count().label("jobs"),
                func.sum(case((Job.status == JobStatus.SUCCEEDED, 1), else_=0)).label("succeeded"),
                func.sum(case((Job.status == JobStatus.FAILED, 1), else_=0)).label("failed"),
                func.sum(case((Job.status == JobStatus.CANCELED, 1), else_=0)).label("canceled"),
                func.coalesce(func.sum(Job.gpu_seconds), 0.0).label("gpu_seconds"),
                func.coalesce(func.sum(Job.cost_usd), 0.0).label("cost_usd"),
            )
            .where(Job.created_at >= since, Job.created_at < until)
            .group_by(Job.api_key_id)
        )
        return [dict(r._mapping) for r in self.s.execute(q)]

    def cost_since(self, since: datetime) -> dict[str, float]:
        """Billed cost per key for jobs completed since ``since`` (the month, for budgets)."""
        q = (
            select(Job.api_key_id, func.coalesce(func.sum(Job.cost_usd), 0.0))
            .where(Job.completed_at >= since)
            .group_by(Job.api_key_id)
        )
        return {k: float(v or 0.0) for k, v in self.s.execute(q)}

    def completed_per_day(self, since: datetime, until: datetime) -> list[Job]:
        q = select(Job).where(
            Job.completed_at >= since, Job.completed_at < until, Job.status.in_(TERMINAL_STATUSES)
        )
        return list(self.s.execute(q).scalars())
