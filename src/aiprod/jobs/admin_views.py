"""JSON bodies of the operator's objects (admin API; the CLI prints the same fields):
a job with its owner and last error, a key with its usage, a webhook delivery, a worker."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sqlalchemy.orm import Session

from aiprod.core.settings import Settings
from aiprod.db.models import Job, WebhookDelivery
from aiprod.jobs.admin import KeyUsage, WorkerView
from aiprod.jobs.budget import next_month_start
from aiprod.jobs.views import QueueView, iso, render_job


def admin_job_dict(
    session: Session,
    job: Job,
    *,
    key_names: dict[str, str],
    base_url: str | None,
    settings: Settings,
    queue_view: QueueView | None = None,
) -> dict[str, Any]:
    """The client's job object plus who owns it, the last error (also while a failed attempt
    waits for its retry), the webhook URL and ``retry_of``."""
    out = render_job(session, job, base_url=base_url, settings=settings, queue_view=queue_view)
    out["api_key_id"] = job.api_key_id
    out["key_name"] = key_names.get(job.api_key_id)
    out["last_error"] = (
        {"code": job.error_code or "error", "message": job.error_message or ""}
        if job.error_code or job.error_message
        else None
    )
    out["webhook_url"] = job.webhook_url
    out["retry_of"] = job.retry_of
    out["output_bytes"] = job.output_bytes
    return out


def delivery_dict(d: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": d.id,
        "job_id": d.job_id,
        "api_key_id": d.api_key_id,
        "url": d.url,
        "event_type": d.event_type,
        "status": d.status,
        "attempts": d.attempts,
        "next_attempt_at": iso(d.next_attempt_at) if d.status == "pending" else None,
        "last_status_code": d.last_status_code,
        "last_error": d.last_error,
        "created_at": iso(d.created_at),
        "delivered_at": iso(d.delivered_at),
    }


def key_dict(k: KeyUsage) -> dict[str, Any]:
    return {
        "id": k.id,
        "name": k.name,
        "scope": k.scope,
        "prefix": k.prefix,
        "active": k.active,
        "monthly_budget_usd": k.monthly_budget_usd,
        "rate_limit_per_minute": k.rate_limit_per_minute,
        "priority": k.priority,
        "created_at": iso(k.created_at),
        "updated_at": iso(k.updated_at),
        "last_used_at": iso(k.last_used_at),
        "revoked_at": iso(k.revoked_at),
        "jobs_total": k.jobs_total,
        "jobs_this_month": k.jobs_this_month,
        "spend_this_month_usd": k.spend_this_month_usd,
        "gpu_seconds_this_month": k.gpu_seconds_this_month,
        "over_budget": k.over_budget,
        "budget_resets_at": iso(next_month_start()),
    }


def worker_dict(w: WorkerView) -> dict[str, Any]:
    return {
        "id": w.id,
        "hostname": w.hostname,
        "pid": w.pid,
        "device": w.device,
        "status": w.status,
        "current_job_id": w.current_job_id,
        "current_job_model": w.current_job_model,
        "cache_epoch": w.cache_epoch,
        "jobs_done": w.jobs_done,
        "started_at": iso(w.started_at),
        "last_seen_at": iso(w.last_seen_at),
        "gpus": [asdict(g) for g in w.gpus],
    }
