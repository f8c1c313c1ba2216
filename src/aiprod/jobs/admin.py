"""The operator's view and actions over every key: jobs, keys, webhook deliveries, workers.

Plain typed functions over a ``Session`` (the caller commits once), shared by the admin API
(``service/routers/admin*.py``), the dashboard and the CLI (``aiprod jobs|keys ...``). Money and
health aggregates are in ``jobs/reports.py``; budgets in ``jobs/budget.py``.

Rules an admin action follows:

- cancel: as a client's cancel (``transitions.cancel_job``), on any key's job.
- delete: removes the stored output of a succeeded job, which becomes ``expired``; the row stays
  for billing. Failed, canceled and expired jobs have no output: nothing changes. A queued or
  running job is refused (409): cancel it first.
- retry: a ``failed`` or ``canceled`` job is submitted again as a NEW job (new id, same key,
  prompt, parameters, seed, conditioning image, webhook and metadata; ``retry_of`` names the
  old job). The old row, its cost and its webhook stay as they were. Any other status: 409.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from aiprod.core.errors import Conflict, InvalidRequest, NotFound
from aiprod.core.registry import Registry
from aiprod.core.settings import Settings
from aiprod.db.models import ApiKey, Job, JobStatus, WebhookDelivery, utcnow
from aiprod.db.repositories import (
    AdminRepository,
    ApiKeyRepository,
    DeliveryPage,
    JobRepository,
    Page,
    WebhookRepository,
    WorkerRepository,
)
from aiprod.jobs import submit, transitions
from aiprod.jobs.budget import month_start
from aiprod.jobs.gpu import GpuStat, load_gpu_stats
from aiprod.jobs.storage import Storage
from aiprod.jobs.webhooks import webhook_secret

MAX_PAGE = 200
DELIVERY_STATUSES = ("pending", "delivered", "failed")


def _unmatchable(*values: str | None) -> bool:
    """A NUL character matches no stored id or text (and PostgreSQL refuses it in a query)."""
    return any(v is not None and "\x00" in v for v in values)


# --- jobs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobFilter:
    """Filters of the admin job list; every one optional (empty = all jobs)."""

    statuses: Sequence[str] = ()
    key_id: str | None = None
    model: str | None = None
    created_after: datetime | None = None  # inclusive
    created_before: datetime | None = None  # exclusive
    text: str | None = None  # a substring of the prompt, case-insensitive


def list_jobs(
    session: Session,
    *,
    filters: JobFilter | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page:
    """Jobs of every key, newest first; ``Page.next_cursor`` fetches the next page."""
    f = filters or JobFilter()
    for s in f.statuses:
        if s not in tuple(JobStatus):
            raise InvalidRequest(
                f"status '{s}' is not one of {', '.join(JobStatus)}", field="status"
            )
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"limit must be 1..{MAX_PAGE}", field="limit")
    if _unmatchable(f.key_id, f.model, f.text):
        return Page([], None)
    return AdminRepository(session).list_jobs(
        statuses=f.statuses,
        key_id=f.key_id,
        model=f.model,
        created_after=f.created_after,
        created_before=f.created_before,
        text=f.text.strip() if f.text and f.text.strip() else None,
        limit=limit,
        cursor=cursor,
    )


def get_job(session: Session, job_id: str) -> Job:
    """Any key's job by id; 404 if there is none."""
    job = None if _unmatchable(job_id) else JobRepository(session).get(job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def key_names(session: Session) -> dict[str, str]:
    """Key id -> client name, for showing who owns a job."""
    return {k.id: k.name for k in ApiKeyRepository(session).list()}


def job_deliveries(session: Session, job_id: str) -> list[WebhookDelivery]:
    """The webhook deliveries of one job, oldest first."""
    rows = WebhookRepository(session).for_job(job_id)
    return sorted(rows, key=lambda d: (d.created_at, d.id))


def cancel_job(session: Session, job_id: str, *, settings: Settings) -> Job:
    """Cancel any key's job (queued: at once; running: its worker stops within a step)."""
    return transitions.cancel_job(session, get_job(session, job_id), settings=settings)


def delete_job_output(
    session: Session, job_id: str, *, storage: Storage, settings: Settings
) -> Job:
    """The client's own DELETE /jobs/{id}, on any key's job (``transitions.delete_output``):
    the output and the conditioning image go, the row stays for billing with ``deleted_at``
    set and its status; a queued or running job is canceled first."""
    return transitions.delete_output(
        session, get_job(session, job_id), storage=storage, settings=settings
    )


def retry_job(
    session: Session, job_id: str, *, registry: Registry, storage: Storage, settings: Settings
) -> Job:
    """A failed or canceled job submitted again as a new queued job (see the module doc)."""
    old = get_job(session, job_id)
    key = ApiKeyRepository(session).get(old.api_key_id)
    if key is None or not key.active:
        raise Conflict(
            f"job {old.id} belongs to a revoked key: reactivate the key to retry its jobs",
            code="key_revoked",
        )
    return submit.retry_as_new(
        session, old, priority=key.priority, registry=registry, storage=storage, settings=settings
    )


# --- keys -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyUsage:
    """A key's settings and its usage (month = the current UTC calendar month)."""

    id: str
    name: str
    scope: str
    prefix: str
    active: bool
    monthly_budget_usd: float | None
    rate_limit_per_minute: int | None  # None: the server's default
    priority: int
    created_at: datetime
    updated_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    jobs_total: int
    jobs_this_month: int  # created this month
    spend_this_month_usd: float  # billed cost of jobs completed this month
    gpu_seconds_this_month: float

    @property
    def over_budget(self) -> bool:
        budget = self.monthly_budget_usd
        return budget is not None and self.spend_this_month_usd >= budget


def _usage(row: ApiKey, u: Mapping[str, Any]) -> KeyUsage:
    return KeyUsage(
        id=row.id,
        name=row.name,
        scope=row.scope,
        prefix=row.prefix,
        active=row.active,
        monthly_budget_usd=row.monthly_budget_usd,
        rate_limit_per_minute=row.rate_limit_per_minute,
        priority=row.priority,
        created_at=row.created_at,
        updated_at=row.updated_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
        jobs_total=int(u.get("jobs_total") or 0),
        jobs_this_month=int(u.get("jobs_month") or 0),
        spend_this_month_usd=round(float(u.get("spend_month") or 0.0), 6),
        gpu_seconds_this_month=round(float(u.get("gpu_seconds_month") or 0.0), 4),
    )


def list_keys(session: Session, *, now: datetime | None = None) -> list[KeyUsage]:
    """Every key (revoked ones too), oldest first, with its usage."""
    usage = AdminRepository(session).usage_per_key(month_start=month_start(now))
    return [_usage(k, usage.get(k.id, {})) for k in ApiKeyRepository(session).list()]


def get_key(session: Session, key_id: str, *, now: datetime | None = None) -> KeyUsage:
    """One key with its usage; 404 if there is none."""
    row = None if _unmatchable(key_id) else ApiKeyRepository(session).get(key_id)
    if row is None:
        raise NotFound(f"API key {key_id} not found: see GET /api/v1/admin/keys")
    usage = AdminRepository(session).usage_per_key(month_start=month_start(now))
    return _usage(row, usage.get(row.id, {}))


def check_name_free(session: Session, name: str, *, exclude_id: str | None = None) -> None:
    """409 ``duplicate_name`` naming the active key that already has this name."""
    other = AdminRepository(session).key_by_name(name, exclude_id=exclude_id)
    if other is not None:
        raise Conflict(
            f"an active key is already named '{other.name}' (id {other.id}): "
            "choose another name, or revoke that key first",
            code="duplicate_name",
            field="name",
        )


MAX_RATE_LIMIT = 1_000_000  # requests per minute
MAX_BUDGET_USD = 1e9
# A key name: 1..200 characters, one of them visible, no control characters.
NAME_PATTERN = r"^[^\x00-\x1f\x7f]*[^\x00-\x1f\x7f\s][^\x00-\x1f\x7f]*$"


def check_key_name(name: object) -> str:
    """The name, stripped; 422 unless it is 1..200 printable characters."""
    if (
        not isinstance(name, str)
        or not 1 <= len(name.strip()) <= 200
        or re.match(NAME_PATTERN, name) is None
        or _invalid_text(name)
    ):
        raise InvalidRequest(
            "name must be 1..200 characters of printable text (no control characters)",
            field="name",
        )
    return name.strip()


def _invalid_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return True
    return False


KEY_FIELDS = frozenset(
    {"name", "rate_limit_per_minute", "monthly_budget_usd", "priority", "active"}
)
MAX_PRIORITY = 1000


def _check_changes(changes: Mapping[str, Any]) -> None:
    unknown = set(changes) - KEY_FIELDS
    if unknown:
        raise InvalidRequest(
            f"cannot change {', '.join(sorted(unknown))}; fields: {', '.join(sorted(KEY_FIELDS))}",
            field=sorted(unknown)[0],
        )
    if "name" in changes:
        check_key_name(changes["name"])
    rate = changes.get("rate_limit_per_minute")
    if rate is not None and (
        not isinstance(rate, int) or isinstance(rate, bool) or not 1 <= rate <= MAX_RATE_LIMIT
    ):
        raise InvalidRequest(
            f"rate_limit_per_minute must be 1..{MAX_RATE_LIMIT} (or null for the server's default)",
            field="rate_limit_per_minute",
        )
    budget = changes.get("monthly_budget_usd")
    if budget is not None and (
        not isinstance(budget, int | float)
        or isinstance(budget, bool)
        or not 0 <= budget <= MAX_BUDGET_USD
    ):
        raise InvalidRequest(
            "monthly_budget_usd must be 0..1e9 US dollars (or null for no budget)",
            field="monthly_budget_usd",
        )
    if "priority" in changes:
        p = changes["priority"]
        if not isinstance(p, int) or isinstance(p, bool) or not -MAX_PRIORITY <= p <= MAX_PRIORITY:
            raise InvalidRequest(
                f"priority must be an integer in -{MAX_PRIORITY}..{MAX_PRIORITY}", field="priority"
            )
    if "active" in changes and not isinstance(changes["active"], bool):
        raise InvalidRequest("active must be true or false", field="active")


def update_key(session: Session, key_id: str, changes: Mapping[str, Any]) -> KeyUsage:
    """Change the fields present in ``changes`` (name, rate_limit_per_minute,
    monthly_budget_usd, priority, active); None for the rate limit or budget removes it.
    ``active=False`` revokes the key, ``active=True`` reactivates it. API processes see the
    change within ``AIPROD_API_KEY_CACHE_SECONDS``."""
    _check_changes(changes)
    row = None if _unmatchable(key_id) else ApiKeyRepository(session).get(key_id)
    if row is None:
        raise NotFound(f"API key {key_id} not found: see GET /api/v1/admin/keys")
    if "name" in changes:
        name = check_key_name(changes["name"])
        if changes.get("active", row.active):
            check_name_free(session, name, exclude_id=row.id)
        row.name = name
    elif changes.get("active") is True and not row.active:
        check_name_free(session, row.name, exclude_id=row.id)
    if "rate_limit_per_minute" in changes:
        row.rate_limit_per_minute = changes["rate_limit_per_minute"]
    if "monthly_budget_usd" in changes:
        budget = changes["monthly_budget_usd"]
        row.monthly_budget_usd = None if budget is None else float(budget)
    if "priority" in changes:
        row.priority = int(changes["priority"])
    if "active" in changes:
        if changes["active"]:
            row.active, row.revoked_at = True, None
        else:
            ApiKeyRepository(session).revoke(row)
    row.updated_at = utcnow()
    session.flush()
    return get_key(session, row.id)


def rotate_webhook_secret(session: Session, key_id: str, *, server_secret: str) -> str:
    """Give the key a new webhook signing secret and return it (``whsec_...``). Deliveries
    sent from now on are signed with it; the old one stops verifying."""
    row = None if _unmatchable(key_id) else ApiKeyRepository(session).get(key_id)
    if row is None:
        raise NotFound(f"API key {key_id} not found: see GET /api/v1/admin/keys")
    row.webhook_secret_salt = secrets.token_hex(16)
    row.updated_at = utcnow()
    session.flush()
    return webhook_secret(row.id, server_secret, row.webhook_secret_salt)


def key_webhook_secret(session: Session, key_id: str, *, server_secret: str) -> str:
    """The key's current webhook signing secret."""
    row = None if _unmatchable(key_id) else ApiKeyRepository(session).get(key_id)
    if row is None:
        raise NotFound(f"API key {key_id} not found: see GET /api/v1/admin/keys")
    return webhook_secret(row.id, server_secret, row.webhook_secret_salt)


# --- webhook deliveries -----------------------------------------------------------------------


def list_deliveries(
    session: Session,
    *,
    status: str | None = None,
    key_id: str | None = None,
    job_id: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> DeliveryPage:
    """Webhook deliveries of every key, newest first."""
    if status is not None and status not in DELIVERY_STATUSES:
        raise InvalidRequest(
            f"status '{status}' is not one of {', '.join(DELIVERY_STATUSES)}", field="status"
        )
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"limit must be 1..{MAX_PAGE}", field="limit")
    if _unmatchable(key_id, job_id):
        return DeliveryPage([], None)
    return AdminRepository(session).list_deliveries(
        status=status, key_id=key_id, job_id=job_id, limit=limit, cursor=cursor
    )


def replay_delivery(session: Session, delivery_id: str) -> WebhookDelivery:
    """Send a delivery again: back to ``pending``, due now, with a fresh attempt count (same
    ``webhook-id`` and body, so receivers can de-duplicate). 409 while it is being sent."""
    d = None
    if not _unmatchable(delivery_id):
        d = session.get(WebhookDelivery, delivery_id, with_for_update=True)
    if d is None:
        raise NotFound(f"webhook delivery {delivery_id} not found: see GET /api/v1/admin/webhooks")
    if d.status == "pending" and d.locked_by is not None:
        raise Conflict(
            f"webhook delivery {d.id} is being sent right now: try again in a minute",
            code="delivery_in_flight",
        )
    d.status = "pending"
    d.attempts = 0
    d.next_attempt_at = utcnow()
    d.locked_by = None
    d.delivered_at = None
    session.flush()
    return d


# --- workers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerView:
    """A worker as the operator sees it; ``status`` is ``lost`` when its heartbeat stopped."""

    id: str
    hostname: str
    pid: int
    device: str | None
    status: str  # starting|idle|busy|stopped|lost
    current_job_id: str | None
    current_job_model: str | None
    jobs_done: int
    cache_epoch: int
    started_at: datetime
    last_seen_at: datetime
    gpus: list[GpuStat] = field(default_factory=list)  # empty without NVML / a GPU


def list_workers(
    session: Session, *, live_seconds: float, include_stopped: bool = True
) -> list[WorkerView]:
    """Registered workers, with GPU memory/utilization/temperature where the worker
    published them within ``live_seconds`` (use ``Settings.worker_live_seconds`` or
    2 x ``lease_seconds``)."""
    horizon = utcnow() - timedelta(seconds=live_seconds)
    rows = WorkerRepository(session).all()
    gpus = load_gpu_stats(session, since=horizon)
    models = AdminRepository(session).job_models(
        [w.current_job_id for w in rows if w.current_job_id]
    )
    out = []
    for w in rows:
        status = w.status if w.last_seen_at >= horizon or w.status == "stopped" else "lost"
        if status == "stopped" and not include_stopped:
            continue
        out.append(
            WorkerView(
                id=w.id,
                hostname=w.hostname,
                pid=w.pid,
                device=w.device,
                status=status,
                current_job_id=w.current_job_id if status == "busy" else None,
                current_job_model=models.get(w.current_job_id or "") if status == "busy" else None,
                jobs_done=w.jobs_done,
                cache_epoch=w.cache_epoch,
                started_at=w.started_at,
                last_seen_at=w.last_seen_at,
                gpus=gpus.get(w.id, []) if status not in ("stopped", "lost") else [],
            )
        )
    return out
