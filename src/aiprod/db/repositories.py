"""Repositories: the only place that runs queries (besides the queue in ``queue.py``).

Each takes a ``Session``; the caller owns the transaction (one unit of work, committed once).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aiprod.core.errors import InvalidRequest, NotFound
from aiprod.db.models import (
    TERMINAL_STATUSES,
    ApiKey,
    CostLog,
    Job,
    ModelTiming,
    RateLimitWindow,
    ServiceState,
    WebhookDelivery,
    Worker,
    utcnow,
)

# --------------------------------------------------------------------------- api keys


class ApiKeyRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def create(
        self,
        *,
        key_hash: str,
        prefix: str,
        name: str,
        scope: str = "client",
        monthly_budget_usd: float | None = None,
        rate_limit_per_minute: int | None = None,
        priority: int = 0,
    ) -> ApiKey:
        row = ApiKey(
            key_hash=key_hash,
            prefix=prefix,
            name=name,
            scope=scope,
            active=True,
            monthly_budget_usd=monthly_budget_usd,
            rate_limit_per_minute=rate_limit_per_minute,
            priority=priority,
            created_at=utcnow(),
        )
        self.s.add(row)
        self.s.flush()
        return row

    def by_hash(self, key_hash: str) -> ApiKey | None:
        return self.s.execute(
            select(ApiKey).where(ApiKey.key_hash == key_hash)
        ).scalar_one_or_none()

    def get(self, key_id: str) -> ApiKey | None:
        return self.s.get(ApiKey, key_id)

    def find(self, ref: str) -> ApiKey:
        """A key by id, id prefix (>= 6 chars) or display prefix; exactly one must match."""
        rows = list(
            self.s.execute(
                select(ApiKey).where(
                    or_(ApiKey.id == ref, ApiKey.prefix == ref, ApiKey.id.startswith(ref))
                )
            ).scalars()
        )
        if len(ref) < 6 or not rows:
            raise NotFound(f"no API key matches '{ref}': use an id from `aiprod keys list`")
        if len(rows) > 1:
            raise InvalidRequest(f"'{ref}' matches {len(rows)} keys: give the full id")
        return rows[0]

    def list(self) -> Sequence[ApiKey]:
        return self.s.execute(select(ApiKey).order_by(ApiKey.created_at)).scalars().all()

    def touch(self, key_id: str, now: datetime | None = None) -> None:
        self.s.execute(
            update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now or utcnow())
        )

    def revoke(self, key: ApiKey) -> None:
        key.active = False
        key.revoked_at = key.revoked_at or utcnow()

    def has_admin(self) -> bool:
        q = select(ApiKey.id).where(ApiKey.scope == "admin", ApiKey.active.is_(True)).limit(1)
        return self.s.execute(q).first() is not None


# --------------------------------------------------------------------------- jobs


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

    def add(self, job: Job) -> Job:
        """Insert a job; raises IntegrityError on a duplicate idempotency key (in a savepoint)."""
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

    def lock(self, job_id: str) -> Job | None:
        """The job's current row, locked until commit (refreshes an already-loaded object)."""
        q = (
            select(Job)
            .where(Job.id == job_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        return self.s.execute(q).scalar_one_or_none()

    def running_count(self) -> int:
        return int(self.s.execute(select(func.count()).where(Job.status == "running")).scalar_one())

    def queued_count(self) -> int:
        return int(self.s.execute(select(func.count()).where(Job.status == "queued")).scalar_one())

    def stats_per_key(self, since: datetime, until: datetime) -> list[dict[str, Any]]:
        q = (
            select(
                Job.api_key_id,
                func.count().label("jobs"),
                func.sum(case((Job.status == "succeeded", 1), else_=0)).label("succeeded"),
                func.sum(case((Job.status == "failed", 1), else_=0)).label("failed"),
                func.sum(case((Job.status == "canceled", 1), else_=0)).label("canceled"),
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
        return {k: float(v) for k, v in self.s.execute(q)}

    def completed_per_day(self, since: datetime, until: datetime) -> list[Job]:
        q = select(Job).where(
            Job.completed_at >= since, Job.completed_at < until, Job.status.in_(TERMINAL_STATUSES)
        )
        return list(self.s.execute(q).scalars())


# --------------------------------------------------------------------------- cost log


def _upsert(session: Session, table: Any, values: dict[str, Any], keys: list[str], incr: dict):  # type: ignore[no-untyped-def]
    dialect = session.get_bind().dialect.name
    ins = (postgresql if dialect == "postgresql" else sqlite).insert(table).values(**values)
    set_ = {k: getattr(table.c, k) + v for k, v in incr.items()}
    session.execute(ins.on_conflict_do_update(index_elements=keys, set_=set_))


class CostRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def record(
        self,
        *,
        day: date,
        gpu_seconds: float,
        gpu_cost_usd: float,
        revenue_usd: float,
        succeeded: bool,
        failed: bool,
    ) -> None:
        values = {
            "day": day,
            "total_cost_usd": gpu_cost_usd,
            "videos_generated": int(succeeded),
            "jobs_failed": int(failed),
            "gpu_seconds": gpu_seconds,
            "revenue_usd": revenue_usd,
            "margin_usd": revenue_usd - gpu_cost_usd,
        }
        _upsert(
            self.s,
            CostLog.__table__,
            values,
            ["day"],
            {k: v for k, v in values.items() if k != "day"},
        )

    def days(self, since: date, until: date) -> Sequence[CostLog]:
        q = select(CostLog).where(CostLog.day >= since, CostLog.day <= until).order_by(CostLog.day)
        return self.s.execute(q).scalars().all()


# --------------------------------------------------------------------------- timings

EMA = 0.3  # weight of a new measurement


def _work(width: int, height: int, num_frames: int, steps: int, two_stage: bool) -> float:
    # A two-stage run does its steps at half resolution and a few refinement steps at full.
    scale = 0.25 + 0.25 if two_stage else 1.0
    return width * height * num_frames * steps * scale


class TimingRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def record(
        self,
        *,
        model: str,
        model_version: str,
        width: int,
        height: int,
        num_frames: int,
        steps: int,
        two_stage: bool,
        seconds: float,
    ) -> None:
        shape = dict(
            model=model,
            model_version=model_version,
            width=width,
            height=height,
            num_frames=num_frames,
            steps=steps,
            two_stage=two_stage,
        )
        q = select(ModelTiming).filter_by(**shape).with_for_update()
        row = self.s.execute(q).scalar_one_or_none()
        if row is not None:
            row.seconds = (1 - EMA) * row.seconds + EMA * seconds
            row.samples += 1
            row.updated_at = utcnow()
            return
        try:
            with self.s.begin_nested():
                self.s.add(ModelTiming(**shape, seconds=seconds, samples=1, updated_at=utcnow()))
        except IntegrityError:  # another worker inserted the same shape first; fine
            pass

    def estimate(
        self,
        *,
        model: str,
        model_version: str,
        width: int,
        height: int,
        num_frames: int,
        steps: int,
        two_stage: bool,
    ) -> float | None:
        """Predicted seconds from measurements of this model version, or None if none exist.

        An exact shape match uses its average; otherwise a least-squares fit of
        ``seconds = overhead + rate * work`` over the measured shapes.
        """
        rows = list(
            self.s.execute(
                select(ModelTiming).where(
                    ModelTiming.model == model, ModelTiming.model_version == model_version
                )
            ).scalars()
        )
        if not rows:
            return None
        target = _work(width, height, num_frames, steps, two_stage)
        for r in rows:
            if (r.width, r.height, r.num_frames, r.steps, r.two_stage) == (
                width,
                height,
                num_frames,
                steps,
                two_stage,
            ):
                return r.seconds
        pts = [
            (_work(r.width, r.height, r.num_frames, r.steps, r.two_stage), r.seconds) for r in rows
        ]
        xs = {x for x, _ in pts}
        if len(xs) == 1:
            x0, y0 = pts[0]
            return y0 * target / x0 if x0 else y0
        n = len(pts)
        mx = sum(x for x, _ in pts) / n
        my = sum(y for _, y in pts) / n
        var = sum((x - mx) ** 2 for x, _ in pts)
        rate = max(0.0, sum((x - mx) * (y - my) for x, y in pts) / var)
        overhead = max(0.0, my - rate * mx)
        return overhead + rate * target

    def average_seconds(self) -> float | None:
        v = self.s.execute(select(func.avg(ModelTiming.seconds))).scalar_one()
        return float(v) if v is not None else None


# --------------------------------------------------------------------------- webhooks


class WebhookRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def enqueue(self, *, job: Job, event_type: str, payload: dict[str, Any]) -> WebhookDelivery:
        assert job.webhook_url
        row = WebhookDelivery(
            job_id=job.id,
            api_key_id=job.api_key_id,
            url=job.webhook_url,
            event_type=event_type,
            payload=json.dumps(payload, separators=(",", ":"), default=str),
            status="pending",
            next_attempt_at=utcnow(),
            created_at=utcnow(),
        )
        self.s.add(row)
        self.s.flush()
        return row

    def claim_due(
        self, *, owner: str, lease_seconds: float, limit: int = 8, now: datetime | None = None
    ) -> list[WebhookDelivery]:
        """Due deliveries, leased to ``owner`` by pushing next_attempt_at past the lease."""
        now = now or utcnow()
        q = (
            select(WebhookDelivery)
            .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        rows = list(self.s.execute(q).scalars())
        for r in rows:
            r.locked_by = owner
            r.next_attempt_at = now + timedelta(seconds=lease_seconds)
        self.s.flush()
        return rows

    def get(self, delivery_id: str) -> WebhookDelivery | None:
        return self.s.get(WebhookDelivery, delivery_id)

    def for_job(self, job_id: str) -> Sequence[WebhookDelivery]:
        q = select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)
        return self.s.execute(q).scalars().all()


# --------------------------------------------------------------------------- state, workers


class StateRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def get_int(self, key: str, default: int = 0) -> int:
        row = self.s.get(ServiceState, key)
        return int(row.value) if row is not None else default

    def increment(self, key: str) -> int:
        row = self.s.execute(
            select(ServiceState).where(ServiceState.key == key).with_for_update()
        ).scalar_one_or_none()
        if row is None:
            try:
                with self.s.begin_nested():
                    self.s.add(ServiceState(key=key, value="1", updated_at=utcnow()))
                return 1
            except IntegrityError:
                row = self.s.execute(
                    select(ServiceState).where(ServiceState.key == key).with_for_update()
                ).scalar_one()
        row.value = str(int(row.value) + 1)
        row.updated_at = utcnow()
        return int(row.value)


class WorkerRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def register(self, *, worker_id: str, hostname: str, pid: int, device: str | None) -> Worker:
        now = utcnow()
        row = self.s.get(Worker, worker_id)
        if row is None:
            row = Worker(id=worker_id, started_at=now)
            self.s.add(row)
        row.hostname, row.pid, row.device = hostname, pid, device
        row.status, row.current_job_id, row.last_seen_at = "starting", None, now
        self.s.flush()
        return row

    def seen(self, worker_id: str, **values: Any) -> None:
        self.s.execute(
            update(Worker).where(Worker.id == worker_id).values(last_seen_at=utcnow(), **values)
        )

    def alive(self, within_seconds: float) -> Sequence[Worker]:
        since = utcnow() - timedelta(seconds=within_seconds)
        q = select(Worker).where(Worker.last_seen_at >= since, Worker.status != "stopped")
        return self.s.execute(q).scalars().all()

    def all(self) -> Sequence[Worker]:
        return self.s.execute(select(Worker).order_by(Worker.started_at)).scalars().all()


class RateLimitRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def hit(
        self, api_key_id: str, window_start: int, *, count: int = 1, forget_older: bool = False
    ) -> int:
        """Add ``count`` requests to the key's window (atomic upsert); returns the window's count.

        The first count of a window (or ``forget_older``) deletes the key's older windows.
        """
        dialect = self.s.get_bind().dialect.name
        table = RateLimitWindow.__table__
        ins = (postgresql if dialect == "postgresql" else sqlite).insert(table)
        stmt = (
            ins.values(api_key_id=api_key_id, window_start=window_start, hits=count)
            .on_conflict_do_update(
                index_elements=["api_key_id", "window_start"], set_={"hits": table.c.hits + count}
            )
            .returning(table.c.hits)
        )
        hits = int(self.s.execute(stmt).scalar_one())
        if hits == count or forget_older:  # a new window: forget the key's older windows
            self.s.execute(
                delete(RateLimitWindow).where(
                    RateLimitWindow.api_key_id == api_key_id,
                    RateLimitWindow.window_start < window_start,
                )
            )
        return hits
