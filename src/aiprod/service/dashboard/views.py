"""What the console's pages and JSON endpoints show, built from the admin query layer's
objects (``aiprod.jobs.admin``, ``aiprod.jobs.reports``). Times are UTC."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from aiprod.core.logging import job_error_message
from aiprod.db.models import Job, WebhookDelivery
from aiprod.jobs.admin import KeyUsage, WorkerView
from aiprod.jobs.admin_views import delivery_dict, worker_dict
from aiprod.jobs.reports import MoneyRow, Overview


def when(dt: datetime | None) -> str | None:
    return dt.strftime("%Y-%m-%d %H:%M:%S") if dt else None


def money(value: float | None) -> str:
    return "—" if value is None else f"${value:.4f}"


def job_row(job: Job, names: Mapping[str, str]) -> dict[str, Any]:
    """A row of the jobs table (and of the table's live updates)."""
    return {
        "id": job.id,
        "key_id": job.api_key_id,
        "key_name": names.get(job.api_key_id, job.api_key_id[:8]),
        "status": job.status,
        "progress": float(job.progress or 0.0),
        "model": job.model,
        "prompt": job.prompt,
        "created_at": when(job.created_at),
        "cost_usd": job.cost_usd,
    }


def delivery(d: WebhookDelivery) -> dict[str, Any]:
    """The admin API's delivery object, its time as the console shows times."""
    return {**delivery_dict(d), "delivered_at": when(d.delivered_at)}


def job_detail(
    job: Job, names: Mapping[str, str], deliveries: Sequence[WebhookDelivery]
) -> dict[str, Any]:
    """The job page's fields (also its JSON endpoint's answer)."""
    run = None
    if job.started_at and job.completed_at:
        run = round((job.completed_at - job.started_at).total_seconds(), 2)
    error = None
    if job.error_code or job.error_message:
        error = f"{job.error_code or 'error'}: {job_error_message(job.error_message or '')}"
    out = job_row(job, names)
    out.update(
        model_version=job.model_version,
        params=dict(job.params or {}),
        metadata=job.metadata_,
        started_at=when(job.started_at),
        completed_at=when(job.completed_at),
        run_seconds=run,
        attempts=f"{job.attempts} of {job.max_attempts}",
        gpu_seconds=round(job.gpu_seconds, 3) if job.gpu_seconds is not None else None,
        estimated_cost=money(job.estimated_cost_usd),
        cost=money(job.cost_usd),
        error=error,
        webhook_url=job.webhook_url,
        deliveries=[delivery(d) for d in deliveries],
        pending_deliveries=any(d.status == "pending" for d in deliveries),
    )
    return out


def worker(w: WorkerView) -> dict[str, Any]:
    """The admin API's worker object, its time as the console shows times."""
    return {**worker_dict(w), "last_seen_at": when(w.last_seen_at)}


def overview(
    ov: Overview,
    workers: Iterable[WorkerView],
    failures: Iterable[Job],
    names: Mapping[str, str],
) -> dict[str, Any]:
    """The overview page's numbers and series (polled by the page every few seconds)."""
    return {
        "at": when(ov.now),
        "queued": ov.queued,
        "running": ov.running,
        "failures_24h": ov.failed,
        "jobs_per_hour": [
            {
                "hour": h.start.strftime("%H:00"),
                "succeeded": h.succeeded,
                "failed": h.failed,
                "other": h.completed - h.succeeded - h.failed,
            }
            for h in ov.hours
        ],
        "p95": [
            {"model": m.model, "p95_seconds": m.p95_run_seconds, "jobs": m.jobs} for m in ov.models
        ],
        "workers": [worker(w) for w in workers],
        "recent_failures": [
            {
                "id": j.id,
                "key_name": names.get(j.api_key_id, j.api_key_id[:8]),
                "model": j.model,
                "code": j.error_code or "error",
                "message": job_error_message(j.error_message or ""),
                "at": when(j.completed_at),
            }
            for j in failures
        ],
    }


def money_row(r: MoneyRow) -> dict[str, Any]:
    return {
        "period": r.period,
        "key_id": r.key_id,
        "name": r.key_name or (r.key_id or "")[:8],
        "jobs": r.jobs,
        "succeeded": r.succeeded,
        "failed": r.failed,
        "gpu_seconds": r.gpu_seconds,
        "revenue_usd": r.revenue_usd,
        "gpu_cost_usd": r.cost_usd,
        "margin_usd": r.margin_usd,
    }


def key_row(k: KeyUsage) -> dict[str, Any]:
    return {
        "id": k.id,
        "name": k.name,
        "prefix": k.prefix,
        "scope": k.scope,
        "active": k.active,
        "jobs": k.jobs_this_month,
        "jobs_total": k.jobs_total,
        "spent_usd": k.spend_this_month_usd,
        "monthly_budget_usd": k.monthly_budget_usd,
        "over_budget": k.over_budget,
        "rate_limit_per_minute": k.rate_limit_per_minute,
        "priority": k.priority,
        "last_used_at": when(k.last_used_at),
    }
