"""The operator's queries: every job across keys, deliveries, usage per key, rows for the
money and health aggregates (summed in ``aiprod.jobs.admin``, the same on both backends)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, literal_column, or_, select
from sqlalchemy.orm import Session

from aiprod.db.models import ApiKey, Job, JobStatus, WebhookDelivery
from aiprod.db.repositories.jobs import Page, _decode_cursor, _encode_cursor


@dataclass(frozen=True)
class DeliveryPage:
    items: list[WebhookDelivery]
    next_cursor: str | None


def _like(text: str) -> str:
    """``%text%`` with LIKE's wildcards in ``text`` taken literally (escape character ``\\``)."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class AdminRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def list_jobs(
        self,
        *,
        statuses: Sequence[str] = (),
        key_id: str | None = None,
        model: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        text: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """Jobs of every key, newest first (``created_at``, then id), ``limit`` per page."""
        q = select(Job)
        if statuses:
            q = q.where(Job.status.in_(list(statuses)))
        if key_id:
            q = q.where(Job.api_key_id == key_id)
        if model:
            q = q.where(Job.model == model)
        if created_after is not None:
            q = q.where(Job.created_at >= created_after)
        if created_before is not None:
            q = q.where(Job.created_at < created_before)
        if text:
            q = q.where(Job.prompt.ilike(_like(text), escape="\\"))
        if cursor:
            c_at, c_id = _decode_cursor(cursor)
            q = q.where(or_(Job.created_at < c_at, and_(Job.created_at == c_at, Job.id < c_id)))
        q = q.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
        rows = list(self.s.execute(q).scalars())
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(rows, _encode_cursor(rows[-1]) if more and rows else None)

    def list_deliveries(
        self,
        *,
        status: str | None = None,
        key_id: str | None = None,
        job_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> DeliveryPage:
        """Webhook deliveries, newest first, ``limit`` per page (cursor as for jobs)."""
        d = WebhookDelivery
        q = select(d)
        if status:
            q = q.where(d.status == status)
        if key_id:
            q = q.where(d.api_key_id == key_id)
        if job_id:
            q = q.where(d.job_id == job_id)
        if cursor:
            c_at, c_id = _decode_cursor(cursor)
            q = q.where(or_(d.created_at < c_at, and_(d.created_at == c_at, d.id < c_id)))
        q = q.order_by(d.created_at.desc(), d.id.desc()).limit(limit + 1)
        rows = list(self.s.execute(q).scalars())
        more = len(rows) > limit
        rows = rows[:limit]
        nxt = _encode_cursor(rows[-1]) if more and rows else None  # type: ignore[arg-type]
        return DeliveryPage(rows, nxt)

    def key_by_name(self, name: str, *, exclude_id: str | None = None) -> ApiKey | None:
        """An active key with this name (case and surrounding spaces ignored), if any."""
        q = select(ApiKey).where(
            func.lower(ApiKey.name) == name.strip().lower(), ApiKey.active.is_(True)
        )
        if exclude_id is not None:
            q = q.where(ApiKey.id != exclude_id)
        return self.s.execute(q.limit(1)).scalar_one_or_none()

    def usage_per_key(self, *, month_start: datetime) -> dict[str, dict[str, Any]]:
        """Per key: jobs ever, jobs created this month, and billed cost / GPU-seconds of the
        jobs completed this month (the budget's spend).

        Three queries that each read an index (ix_jobs_owner_created, ix_jobs_completed_at)
        instead of one aggregate over every job row (110 ms at 10,000 jobs on SQLite,
        benchmarks/dashboard_pages.py: the console's keys page)."""
        out: dict[str, dict[str, Any]] = {}

        def row(key_id: str) -> dict[str, Any]:
            return out.setdefault(
                key_id,
                {
                    "api_key_id": key_id,
                    "jobs_total": 0,
                    "jobs_month": 0,
                    "spend_month": 0.0,
                    "gpu_seconds_month": 0.0,
                },
            )

        total = select(Job.api_key_id, func.count()).group_by(Job.api_key_id)
        for key_id, n in self.s.execute(total):
            row(key_id)["jobs_total"] = int(n)
        month = (
            select(Job.api_key_id, func.count())
            .where(Job.created_at >= month_start)
            .group_by(Job.api_key_id)
        )
        for key_id, n in self.s.execute(month):
            row(key_id)["jobs_month"] = int(n)
        # Summed here: with a GROUP BY, SQLite (no ANALYZE statistics) walks
        # ix_jobs_owner_created over every job instead of the month's ix_jobs_completed_at range.
        spend = select(Job.api_key_id, Job.cost_usd, Job.gpu_seconds).where(
            Job.completed_at >= month_start
        )
        for key_id, cost, gpu in self.s.execute(spend):
            r = row(key_id)
            r["spend_month"] += float(cost or 0.0)
            r["gpu_seconds_month"] += float(gpu or 0.0)
        return out

    def spend_since(self, key_id: str, since: datetime) -> float:
        """Billed cost of the key's jobs completed since ``since``."""
        q = select(func.coalesce(func.sum(Job.cost_usd), 0.0)).where(
            Job.api_key_id == key_id, Job.completed_at >= since
        )
        return float(self.s.execute(q).scalar_one() or 0.0)

    def completed_between(
        self, since: datetime, until: datetime, *, key_id: str | None = None
    ) -> list[Any]:
        """(id, api_key_id, model, status, prompt, created_at, started_at, completed_at,
        gpu_seconds, cost_usd) of terminal jobs completed in [since, until), oldest first."""
        q = select(
            Job.id,
            Job.api_key_id,
            Job.model,
            Job.status,
            Job.prompt,
            Job.created_at,
            Job.started_at,
            Job.completed_at,
            Job.gpu_seconds,
            Job.cost_usd,
        ).where(
            # Only terminal transitions set completed_at, so the range alone selects terminal
            # jobs; a ``status IN (...)`` here made SQLite pick ix_jobs_queue over
            # ix_jobs_completed_at and scan every job (126 ms at 10,000 jobs; 0.3 ms without).
            Job.completed_at >= since,
            Job.completed_at < until,
        )
        if key_id:
            q = q.where(Job.api_key_id == key_id)
        return list(self.s.execute(q.order_by(Job.completed_at, Job.id)))

    def _bucket(self, column: Any, chars: int) -> Any:
        """The first ``chars`` characters of the UTC time as text ('YYYY-MM-DD HH', 13;
        'YYYY-MM-DD', 10; 'YYYY-MM', 7): SQLite stores UTC text, PostgreSQL a timestamptz."""
        if self.s.get_bind().dialect.name == "postgresql":
            fmt = {13: "YYYY-MM-DD HH24", 10: "YYYY-MM-DD", 7: "YYYY-MM"}[chars]
            return func.to_char(func.timezone("UTC", column), fmt)
        return func.substr(column, 1, chars)

    def money_rows(
        self, since: datetime, until: datetime, *, chars: int | None, key_id: str | None = None
    ) -> list[Any]:
        """Per (period, key) of the terminal jobs completed in [since, until): period (the
        completion time's first ``chars`` characters, or "all"), api_key_id, jobs, succeeded,
        failed, gpu_seconds, revenue_usd."""
        period = self._bucket(Job.completed_at, chars) if chars else literal_column("'all'")
        ok = (JobStatus.SUCCEEDED, JobStatus.EXPIRED)
        q = select(
            period.label("period"),
            Job.api_key_id,
            func.count().label("jobs"),
            func.sum(case((Job.status.in_(ok), 1), else_=0)).label("succeeded"),
            func.sum(case((Job.status == JobStatus.FAILED, 1), else_=0)).label("failed"),
            func.coalesce(func.sum(Job.gpu_seconds), 0.0).label("gpu_seconds"),
            func.coalesce(func.sum(Job.cost_usd), 0.0).label("revenue_usd"),
        ).where(
            # completed_at alone selects terminal jobs (see completed_between)
            Job.completed_at >= since,
            Job.completed_at < until,
        )
        if key_id:
            q = q.where(Job.api_key_id == key_id)
        groups = [period, Job.api_key_id] if chars else [Job.api_key_id]
        return list(self.s.execute(q.group_by(*groups)))

    def hourly_counts(self, since: datetime, until: datetime) -> list[Any]:
        """(hour 'YYYY-MM-DD HH', completed, succeeded, failed) of jobs ended in the range."""
        hour = self._bucket(Job.completed_at, 13)
        ok = (JobStatus.SUCCEEDED, JobStatus.EXPIRED)
        q = (
            select(
                hour.label("hour"),
                func.count().label("completed"),
                func.sum(case((Job.status.in_(ok), 1), else_=0)).label("succeeded"),
                func.sum(case((Job.status == JobStatus.FAILED, 1), else_=0)).label("failed"),
            )
            .where(Job.completed_at >= since, Job.completed_at < until)  # see completed_between
            .group_by(hour)
        )
        return list(self.s.execute(q))

    def run_times(self, since: datetime, until: datetime) -> list[Any]:
        """(model, created_at, started_at, completed_at) of jobs that succeeded in the range."""
        q = select(Job.model, Job.created_at, Job.started_at, Job.completed_at).where(
            Job.completed_at >= since,
            Job.completed_at < until,
            # as an expression, not ``status IN``: SQLite would walk ix_jobs_queue instead of
            # the completed_at range (see completed_between)
            case((Job.status.in_([JobStatus.SUCCEEDED, JobStatus.EXPIRED]), 1), else_=0) == 1,
            Job.started_at.is_not(None),
        )
        return list(self.s.execute(q))

    def status_counts(self) -> dict[str, int]:
        q = select(Job.status, func.count()).where(
            Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING])
        )
        return {s: int(n) for s, n in self.s.execute(q.group_by(Job.status))}

    def job_models(self, job_ids: Sequence[str]) -> dict[str, str]:
        if not job_ids:
            return {}
        q = select(Job.id, Job.model).where(Job.id.in_(list(job_ids)))
        return {i: m for i, m in self.s.execute(q)}
