"""Money and health aggregates for the operator (admin API, dashboard, CLI).

Revenue is what clients were charged (``jobs.cost_usd``); cost is what the GPU time cost the
operator: the ``cost_log``'s ``total_cost_usd`` for the all-keys totals (recorded when each
job finished), and ``gpu_seconds x AIPROD_GPU_COST_PER_HOUR / 3600`` per key (the cost log has
no key). Margin = revenue - cost. A job counts in the UTC day/month it was completed. Rows
are fetched once and summed here, so both databases give the same answer.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

from sqlalchemy.orm import Session

from aiprod.core.errors import InvalidRequest
from aiprod.db.models import JobStatus
from aiprod.db.repositories import AdminRepository, ApiKeyRepository, CostRepository

Period = Literal["day", "month", "all"]


@dataclass(frozen=True)
class MoneyRow:
    """One period (and key) of revenue against cost."""

    period: str  # "2026-12-07" (day), "2026-12" (month) or "all"
    key_id: str | None  # None: every key together
    key_name: str | None
    jobs: int  # jobs that ended in the period (succeeded, failed, canceled)
    succeeded: int
    failed: int
    gpu_seconds: float
    revenue_usd: float
    cost_usd: float
    margin_usd: float


def _period(d: date, period: Period) -> str:
    if period == "day":
        return d.isoformat()
    if period == "month":
        return f"{d.year:04d}-{d.month:02d}"
    return "all"


def _check_range(since: date, until: date) -> None:
    if until < since:
        raise InvalidRequest(f"the range ends ({until}) before it starts ({since})", field="until")


def day_bounds(since: date, until: date) -> tuple[datetime, datetime]:
    """[since 00:00 UTC, the day after ``until`` 00:00 UTC)."""
    start = datetime.combine(since, time(), tzinfo=UTC)
    return start, datetime.combine(until + timedelta(days=1), time(), tzinfo=UTC)


def money_totals(
    session: Session, *, since: date, until: date, period: Period = "day"
) -> list[MoneyRow]:
    """Every key together, per day or month (inclusive dates), from the cost log; days
    without a row are left out."""
    _check_range(since, until)
    acc: dict[str, list[float]] = {}
    for d in CostRepository(session).days(since, until):
        a = acc.setdefault(_period(d.day, period), [0, 0, 0.0, 0.0, 0.0])
        a[0] += d.videos_generated
        a[1] += d.jobs_failed
        a[2] += d.gpu_seconds
        a[3] += d.revenue_usd
        a[4] += d.total_cost_usd
    return [
        MoneyRow(
            period=p,
            key_id=None,
            key_name=None,
            jobs=int(a[0] + a[1]),
            succeeded=int(a[0]),
            failed=int(a[1]),
            gpu_seconds=round(a[2], 4),
            revenue_usd=round(a[3], 6),
            cost_usd=round(a[4], 6),
            margin_usd=round(a[3] - a[4], 6),
        )
        for p, a in sorted(acc.items())
    ]


def money_per_key(
    session: Session,
    *,
    since: date,
    until: date,
    gpu_cost_per_hour: float,
    period: Period = "all",
    key_id: str | None = None,
) -> list[MoneyRow]:
    """Per key (and per day/month, or the whole range), from the jobs completed in
    [since, until] (inclusive dates); sorted by period, then key name."""
    _check_range(since, until)
    start, end = day_bounds(since, until)
    names = {k.id: k.name for k in ApiKeyRepository(session).list()}
    chars = {"day": 10, "month": 7, "all": None}[period]
    acc = {
        (r.period, r.api_key_id): [r.jobs, r.succeeded, r.failed, r.gpu_seconds, r.revenue_usd]
        for r in AdminRepository(session).money_rows(start, end, chars=chars, key_id=key_id)
    }
    rate = gpu_cost_per_hour / 3600.0
    rows = [
        MoneyRow(
            period=p,
            key_id=k,
            key_name=names.get(k),
            jobs=int(a[0]),
            succeeded=int(a[1] or 0),
            failed=int(a[2] or 0),
            gpu_seconds=round(float(a[3] or 0.0), 4),
            revenue_usd=round(float(a[4] or 0.0), 6),
            cost_usd=round(float(a[3] or 0.0) * rate, 6),
            margin_usd=round(float(a[4] or 0.0) - float(a[3] or 0.0) * rate, 6),
        )
        for (p, k), a in acc.items()
    ]
    return sorted(rows, key=lambda r: (r.period, r.key_name or "", r.key_id or ""))


# --- health ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HourBucket:
    start: datetime  # the hour's start (UTC)
    completed: int  # jobs that ended in this hour
    succeeded: int
    failed: int


@dataclass(frozen=True)
class ModelTimes:
    """Job times of one model over the window, of the jobs that succeeded in it."""

    model: str
    jobs: int
    p50_run_seconds: float  # started_at -> completed_at (the last attempt's GPU run)
    p95_run_seconds: float
    p95_total_seconds: float  # created_at -> completed_at (queue wait included)


@dataclass(frozen=True)
class Overview:
    now: datetime
    queued: int
    running: int
    hours: list[HourBucket]  # oldest first, one per hour of the window, empty hours included
    models: list[ModelTimes]  # by model id

    @property
    def jobs_last_hour(self) -> int:
        return self.hours[-1].completed if self.hours else 0

    @property
    def failures_last_hour(self) -> int:
        return self.hours[-1].failed if self.hours else 0

    @property
    def failed(self) -> int:
        return sum(h.failed for h in self.hours)

    @property
    def completed(self) -> int:
        return sum(h.completed for h in self.hours)


def percentile(values: Iterable[float], q: float) -> float:
    """The nearest-rank ``q`` percentile (0 < q <= 100) of a non-empty set of values."""
    data = sorted(values)
    if not data:
        raise ValueError("percentile of no values")
    return data[max(0, math.ceil(q / 100.0 * len(data)) - 1)]


def overview(session: Session, *, hours: int = 24, now: datetime | None = None) -> Overview:
    """Queue depth, running jobs, jobs and failures per hour over the last ``hours`` (the last
    bucket is the current, partial hour), and job times per model over the same window."""
    if not 1 <= hours <= 24 * 31:
        raise InvalidRequest("hours must be 1..744", field="hours")
    now = (now or datetime.now(UTC)).astimezone(UTC)
    current = now.replace(minute=0, second=0, microsecond=0)
    first = current - timedelta(hours=hours - 1)
    repo = AdminRepository(session)
    counts = repo.status_counts()
    buckets: dict[datetime, list[int]] = {
        first + timedelta(hours=i): [0, 0, 0] for i in range(hours)
    }
    end = now + timedelta(seconds=1)
    for r in repo.hourly_counts(first, end):
        start = datetime.strptime(r.hour, "%Y-%m-%d %H").replace(tzinfo=UTC)
        if start in buckets:
            buckets[start] = [int(r.completed), int(r.succeeded or 0), int(r.failed or 0)]
    times: dict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for r in repo.run_times(first, end):
        run, total = times[r.model]
        run.append((r.completed_at - r.started_at).total_seconds())
        total.append((r.completed_at - r.created_at).total_seconds())
    return Overview(
        now=now,
        queued=counts.get(JobStatus.QUEUED, 0),
        running=counts.get(JobStatus.RUNNING, 0),
        hours=[HourBucket(h, b[0], b[1], b[2]) for h, b in sorted(buckets.items())],
        models=[
            ModelTimes(
                model=m,
                jobs=len(run),
                p50_run_seconds=round(percentile(run, 50), 3),
                p95_run_seconds=round(percentile(run, 95), 3),
                p95_total_seconds=round(percentile(total, 95), 3),
            )
            for m, (run, total) in sorted(times.items())
        ],
    )


def as_dict(row: Any) -> dict[str, Any]:
    """A report dataclass as JSON-ready data (datetimes as ISO 8601 with Z)."""
    from dataclasses import asdict

    def conv(v: Any) -> Any:
        if isinstance(v, datetime):
            return v.isoformat().replace("+00:00", "Z")
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, list):
            return [conv(x) for x in v]
        return v

    return {k: conv(v) for k, v in asdict(row).items()}
