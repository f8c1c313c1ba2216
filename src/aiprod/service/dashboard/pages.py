"""The console's pages (GET, server-rendered) and its login / logout."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from aiprod.core.errors import AiprodError
from aiprod.db.models import JobStatus
from aiprod.db.repositories import ApiKeyRepository
from aiprod.jobs import admin as ops
from aiprod.service.dashboard import data, session, views
from aiprod.service.dashboard.session import Admin, check_csrf, current_admin
from aiprod.service.dashboard.web import back, render
from aiprod.service.deps import StateDep, read_session
from aiprod.service.security import hash_key
from aiprod.service.state import AppState

router = APIRouter(prefix="/dashboard", include_in_schema=False)
ConsoleAdmin = Annotated[Admin, Depends(current_admin)]


# --------------------------------------------------------------------------- login / logout


def _login_page(request: Request, *, error: str | None = None, status: int = 200) -> Response:
    """The login form, with the CSRF token of a new (not logged-in) session unless the
    browser already holds one."""
    current = session.read(request) or session.new_session()
    response = render(
        request,
        "login.html",
        page="login",
        title="Log in",
        admin=None,
        csrf=current.csrf,
        status_code=status,
        **({"error": error} if error else {}),
    )
    del response.headers["set-cookie"]
    session.write(request, response, replace(current, key_id=None, key_name=None, flash=None))
    return response


@router.get("/login")
async def login_form(request: Request) -> Response:
    current = session.read(request)
    if current is not None and current.key_id:
        return RedirectResponse("/dashboard", status_code=303)
    return _login_page(request)


def _find_key(state: AppState, token: str) -> tuple[str, str, str, bool] | None:
    with read_session(state) as s:
        row = ApiKeyRepository(s).by_hash(hash_key(token, state.secret))
        return None if row is None else (row.id, row.name, row.scope, row.active)


@router.post("/login")
async def login(request: Request, state: StateDep) -> Response:
    fields = await check_csrf(request)
    token = fields.get("api_key", "").strip()
    row = await run_in_threadpool(_find_key, state, token) if token else None
    if row is None or not row[3]:
        return _login_page(request, error="Unknown or revoked API key.", status=401)
    key_id, name, scope, _ = row
    if scope != "admin":
        return _login_page(
            request,
            status=403,
            error=(
                "This is a client key: the console needs an admin key "
                "(create one with `aiprod keys create --name NAME --admin`)."
            ),
        )
    response = RedirectResponse("/dashboard", status_code=303)
    session.write(request, response, session.new_session(key_id, name))  # a new CSRF token
    return response


@router.post("/logout")
async def logout(request: Request, admin: ConsoleAdmin) -> Response:
    await check_csrf(request, admin)
    response = RedirectResponse("/dashboard/login", status_code=303)
    session.clear(response)
    return response


# --------------------------------------------------------------------------- pages


@router.get("")
def overview_page(request: Request, admin: ConsoleAdmin, state: StateDep) -> Response:
    return render(
        request,
        "overview.html",
        page="overview",
        title="Overview",
        admin=admin,
        data=data.overview(state),
    )


@router.get("/jobs")
def jobs_page(request: Request, admin: ConsoleAdmin, state: StateDep) -> Response:
    q = request.query_params
    form = {k: q.get(k, "").strip() for k in data.JOB_FILTERS}
    try:
        jobs, next_cursor, keys, models = data.jobs_page(state, form, cursor=q.get("cursor"))
        error = None
    except AiprodError as exc:
        jobs, next_cursor, error = [], None, exc.message
        keys, models = data.filter_choices(state)
    next_url = None
    if next_cursor:
        next_url = "/dashboard/jobs?" + urlencode(
            {**{k: v for k, v in form.items() if v}, "cursor": next_cursor}
        )
    return render(
        request,
        "jobs.html",
        page="jobs",
        title="Jobs",
        admin=admin,
        jobs=jobs,
        f=form,
        keys=keys,
        models=models,
        statuses=list(JobStatus),
        next_url=next_url,
        status_code=422 if error else 200,
        **({"error": error} if error else {}),
    )


@router.get("/jobs/{job_id}")
def job_page(job_id: str, request: Request, admin: ConsoleAdmin, state: StateDep) -> Response:
    try:
        job = data.job(state, job_id)
    except AiprodError as exc:
        return render(
            request,
            "message.html",
            page="job",
            title="Job not found",
            admin=admin,
            status_code=exc.status_code,
            error=exc.message,
        )
    return render(request, "job.html", page="job", title=f"Job {job_id[:8]}", admin=admin, j=job)


def keys_response(
    request: Request,
    admin: Admin,
    state: AppState,
    *,
    created: dict[str, str] | None = None,
    error: str | None = None,
    status: int = 200,
) -> Response:
    """The keys page (also the answer to a create, which shows the new secret once)."""
    with read_session(state) as s:
        keys = [views.key_row(k) for k in ops.list_keys(s)]
    extra = {"error": error} if error else {}
    return render(
        request,
        "keys.html",
        page="keys",
        title="API keys",
        admin=admin,
        keys=keys,
        created=created,
        month=datetime.now(UTC).strftime("%Y-%m"),
        status_code=status,
        **extra,
    )


@router.get("/keys")
def keys_page(request: Request, admin: ConsoleAdmin, state: StateDep) -> Response:
    return keys_response(request, admin, state)


@router.get("/costs")
def costs_page(request: Request, admin: ConsoleAdmin, state: StateDep) -> Response:
    month_arg = request.query_params.get("month") or None
    try:
        month, report = data.costs(state, month_arg)
    except AiprodError as exc:
        return back(request, "/dashboard/costs", error=exc.message)
    return render(
        request,
        "costs.html",
        page="costs",
        title="Costs and revenue",
        admin=admin,
        month=month,
        data=report,
        totals=report["totals"],
    )
