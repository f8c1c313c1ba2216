"""The console's reads: each opens one read-only unit of work and calls the admin query layer
(``aiprod.jobs.admin``, ``aiprod.jobs.reports``); ``views`` shapes the answers."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from aiprod.core.errors import InvalidRequest, NotFound
from aiprod.db.models import JobStatus
from aiprod.jobs import admin as ops
from aiprod.jobs import reports
from aiprod.service.dashboard import views
from aiprod.service.deps import read_session
from aiprod.service.state import AppState

PAGE_SIZE = 50
JOB_FILTERS = ("status", "key", "model", "created_after", "created_before", "q")
RECENT_FAILURES = 8
MONTHS_SHOWN = 12
MAX_LIVE_IDS = 200


def live_seconds(state: AppState) -> float:
    s = state.settings
    return s.worker_live_seconds or 2.0 * float(s.lease_seconds)


def overview(state: AppState) -> dict[str, Any]:
    with read_session(state) as s:
        ov = reports.overview(s, hours=24)
        workers = ops.list_workers(s, live_seconds=live_seconds(state), include_stopped=False)
        failed = ops.list_jobs(
            s, filters=ops.JobFilter(statuses=[JobStatus.FAILED]), limit=RECENT_FAILURES
        ).items
        names = ops.key_names(s) if failed else {}
        return views.overview(ov, workers, failed, names)


def _day(value: str, field: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"{field} must be a date like 2026-01-31", field=field) from None


def _midnight(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def filter_choices(state: AppState) -> tuple[list[dict[str, str]], list[str]]:
    with read_session(state) as s:
        names = ops.key_names(s)
    keys = sorted(({"id": k, "name": n} for k, n in names.items()), key=lambda k: k["name"])
    return keys, [m.id for m in state.registry.models]


def jobs_page(
    state: AppState, form: Mapping[str, str], *, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None, list[dict[str, str]], list[str]]:
    """One page of the filtered job table: (rows, next cursor, key choices, model choices)."""
    after = _day(form.get("created_after", ""), "created_after")
    until = _day(form.get("created_before", ""), "created_before")
    filters = ops.JobFilter(
        statuses=[form["status"]] if form.get("status") else [],
        key_id=form.get("key") or None,
        model=form.get("model") or None,
        created_after=_midnight(after) if after else None,
        # the form's "until" day is included
        created_before=_midnight(until + timedelta(days=1)) if until else None,
        text=form.get("q") or None,
    )
    with read_session(state) as s:
        page = ops.list_jobs(s, filters=filters, limit=PAGE_SIZE, cursor=cursor or None)
        names = ops.key_names(s)
        rows = [views.job_row(j, names) for j in page.items]
    keys = sorted(({"id": k, "name": n} for k, n in names.items()), key=lambda k: k["name"])
    return rows, page.next_cursor, keys, [m.id for m in state.registry.models]


def job(state: AppState, job_id: str) -> dict[str, Any]:
    with read_session(state) as s:
        j = ops.get_job(s, job_id)
        return views.job_detail(j, ops.key_names(s), ops.job_deliveries(s, job_id))


def job_statuses(state: AppState, ids: list[str]) -> list[dict[str, Any]]:
    """Status and progress of the listed jobs (the jobs table's live updates)."""
    if len(ids) > MAX_LIVE_IDS:
        raise InvalidRequest(f"at most {MAX_LIVE_IDS} job ids at once", field="ids")
    with read_session(state) as s:
        out = []
        for job_id in ids:
            try:
                j = ops.get_job(s, job_id)
            except NotFound:
                continue
            out.append({"id": j.id, "status": j.status, "progress": float(j.progress or 0.0)})
        return out


def parse_month(value: str | None) -> date:
    """``YYYY-MM`` -> its first day (None: this month)."""
    if not value:
        today = datetime.now(UTC).date()
        return today.replace(day=1)
    try:
        year, month = value.split("-")
        return date(int(year), int(month), 1)
    except ValueError:
        raise InvalidRequest(
            f"month '{value}' must look like 2026-01 (YYYY-MM)", field="month"
        ) from None


def month_end(first: date) -> date:
    return (first + timedelta(days=32)).replace(day=1) - timedelta(days=1)


def costs(state: AppState, month_arg: str | None) -> tuple[str, dict[str, Any]]:
    """(``YYYY-MM``, the costs page's series): the month per day, the last 12 months, per key."""
    first = parse_month(month_arg)
    last = month_end(first)
    year_start = first
    for _ in range(MONTHS_SHOWN - 1):
        year_start = (year_start - timedelta(days=1)).replace(day=1)
    with read_session(state) as s:
        days = reports.money_totals(s, since=first, until=last, period="day")
        months = reports.money_totals(s, since=year_start, until=last, period="month")
        per_key = reports.money_per_key(
            s,
            since=first,
            until=last,
            gpu_cost_per_hour=state.settings.gpu_cost_per_hour,
            period="all",
        )
    total = {
        "revenue_usd": round(sum(d.revenue_usd for d in days), 6),
        "gpu_cost_usd": round(sum(d.cost_usd for d in days), 6),
        "margin_usd": round(sum(d.margin_usd for d in days), 6),
        "videos": sum(d.succeeded for d in days),
    }
    report = {
        "days": [views.money_row(r) for r in days],
        "months": [views.money_row(r) for r in months],
        "keys": sorted(
            (views.money_row(r) for r in per_key), key=lambda r: -float(r["revenue_usd"])
        ),
        "totals": total,
    }
    return first.strftime("%Y-%m"), report
