"""Admin routes (admin-scoped keys only): stats, clear-cache, workers (jobs and webhooks:
``admin_jobs.py``; keys: ``admin_keys.py``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from aiprod.db.repositories import (
    ApiKeyRepository,
    CostRepository,
    JobRepository,
    StateRepository,
    WorkerRepository,
)
from aiprod.jobs.admin import list_workers
from aiprod.jobs.admin_views import worker_dict
from aiprod.jobs.budget import month_start
from aiprod.service.deps import AdminDep, SessionDep, StateDep, read_session
from aiprod.service.schemas import ClearCacheOut, StatsOut, WorkersOut, errors

router = APIRouter(
    prefix="/api/v1/admin", tags=["admin"], responses=errors(401, 403, 422, 429, 503)
)

CACHE_EPOCH = "cache_epoch"


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat().replace("+00:00", "Z") if dt else None


@router.get(
    "/stats",
    summary="Jobs, GPU-seconds, cost and revenue per key and per day",
    response_model=StatsOut,
    responses=errors(422),
)
def stats(
    admin: AdminDep,
    session: SessionDep,
    days: Annotated[int, Query(ge=1, le=366, description="How many days back")] = 30,
) -> JSONResponse:
    """Keys whose billed cost this calendar month (UTC) has reached their monthly budget are
    flagged `over_budget` (their submits get 402 `budget_exceeded`)."""
    now = datetime.now(UTC)
    since = (now - timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    jobs = JobRepository(session)
    per_key = {r["api_key_id"]: r for r in jobs.stats_per_key(since, now + timedelta(seconds=1))}
    month_cost = jobs.cost_since(month_start(now))
    keys_out = []
    for k in ApiKeyRepository(session).list():
        r = per_key.get(k.id, {})
        spent = round(month_cost.get(k.id, 0.0), 6)
        keys_out.append(
            {
                "key_id": k.id,
                "name": k.name,
                "scope": k.scope,
                "active": k.active,
                "jobs": int(r.get("jobs", 0) or 0),
                "succeeded": int(r.get("succeeded", 0) or 0),
                "failed": int(r.get("failed", 0) or 0),
                "canceled": int(r.get("canceled", 0) or 0),
                "gpu_seconds": round(float(r.get("gpu_seconds", 0.0) or 0.0), 4),
                "cost_usd": round(float(r.get("cost_usd", 0.0) or 0.0), 6),
                "month_cost_usd": spent,
                "monthly_budget_usd": k.monthly_budget_usd,
                "over_budget": k.monthly_budget_usd is not None and spent >= k.monthly_budget_usd,
                "last_used_at": _iso(k.last_used_at),
            }
        )
    day_rows = CostRepository(session).days(since.date(), now.date())
    days_out: list[dict[str, Any]] = [
        {
            "day": d.day.isoformat(),
            "videos_generated": d.videos_generated,
            "jobs_failed": d.jobs_failed,
            "gpu_seconds": round(d.gpu_seconds, 4),
            "gpu_cost_usd": round(d.total_cost_usd, 6),
            "revenue_usd": round(d.revenue_usd, 6),
            "margin_usd": round(d.margin_usd, 6),
        }
        for d in day_rows
    ]
    totals: dict[str, Any] = {
        k: round(sum(d[k] for d in days_out), 6)
        for k in (
            "videos_generated",
            "jobs_failed",
            "gpu_seconds",
            "gpu_cost_usd",
            "revenue_usd",
            "margin_usd",
        )
    }
    totals["queued"] = jobs.queued_count()
    totals["running"] = jobs.running_count()
    return JSONResponse(
        {"since": since.date().isoformat(), "keys": keys_out, "days": days_out, "totals": totals}
    )


@router.post(
    "/clear-cache",
    summary="Ask every worker to free cached GPU memory",
    response_model=ClearCacheOut,
)
def clear_cache(admin: AdminDep, session: SessionDep, state: StateDep) -> JSONResponse:
    """Bumps the shared cache epoch; each worker applies it between jobs (within one poll
    interval when idle) and records the epoch it applied (see /admin/workers)."""
    epoch = StateRepository(session).increment(CACHE_EPOCH)
    alive = WorkerRepository(session).alive(state.settings.lease_seconds * 2)
    return JSONResponse({"cache_epoch": epoch, "workers_notified": len(alive)})


@router.get(
    "/workers", summary="Worker processes and what they are doing", response_model=WorkersOut
)
def workers(admin: AdminDep, state: StateDep) -> JSONResponse:
    """Every registered worker: `lost` when its heartbeat stopped, the job and model it is
    running, and its GPUs' memory, utilization and temperature where NVML reports them."""
    opts = state.settings
    live = opts.worker_live_seconds or opts.lease_seconds * 2
    with read_session(state) as session:
        data = [worker_dict(w) for w in list_workers(session, live_seconds=live)]
    return JSONResponse({"data": data})
