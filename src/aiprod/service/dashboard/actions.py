"""The console's forms (POST, each checked against the session's CSRF token): cancel and
retry a job; create, edit and revoke keys. Each is one unit of work through the admin
query layer; the browser is then sent back to the page it came from with a message."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from aiprod.core.errors import AiprodError, InvalidRequest
from aiprod.db.session import session_scope
from aiprod.jobs import admin as ops
from aiprod.service.dashboard.pages import keys_response
from aiprod.service.dashboard.session import Admin, check_csrf, current_admin
from aiprod.service.dashboard.web import back
from aiprod.service.deps import StateDep, write_slot
from aiprod.service.keys import create_key
from aiprod.service.state import AppState

router = APIRouter(
    prefix="/dashboard",
    include_in_schema=False,
    dependencies=[Depends(write_slot, scope="function")],
)
ConsoleAdmin = Annotated[Admin, Depends(current_admin)]


def _cancel(state: AppState, job_id: str) -> str:
    with session_scope(state.sessions) as s:
        return ops.cancel_job(s, job_id, settings=state.settings).status


def _retry(state: AppState, job_id: str) -> str:
    with session_scope(state.sessions) as s:
        job = ops.retry_job(
            s, job_id, registry=state.registry, storage=state.storage, settings=state.settings
        )
        return job.id


@router.post("/jobs/{job_id}/cancel")
async def cancel(job_id: str, request: Request, admin: ConsoleAdmin, state: StateDep) -> Response:
    await check_csrf(request, admin)
    url = f"/dashboard/jobs/{job_id}"
    try:
        status = await run_in_threadpool(_cancel, state, job_id)
    except AiprodError as exc:
        return back(request, url, error=exc.message)
    msg = "Job canceled." if status == "canceled" else "Cancel requested: the worker stops soon."
    return back(request, url, ok=msg)


@router.post("/jobs/{job_id}/retry")
async def retry(job_id: str, request: Request, admin: ConsoleAdmin, state: StateDep) -> Response:
    await check_csrf(request, admin)
    try:
        new_id = await run_in_threadpool(_retry, state, job_id)
    except AiprodError as exc:
        return back(request, f"/dashboard/jobs/{job_id}", error=exc.message)
    return back(request, f"/dashboard/jobs/{new_id}", ok=f"Retried as a new job (of {job_id}).")


def _number(fields: dict[str, str], name: str, kind: type) -> Any:
    """An optional number field: '' -> None; anything else must parse as ``kind``."""
    raw = fields.get(name, "").strip()
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise InvalidRequest(f"{name} must be {what} (got '{raw}')", field=name) from None


def _create(state: AppState, fields: dict[str, str]) -> tuple[str, str]:
    name = fields.get("name", "").strip()
    with session_scope(state.sessions) as s:
        ops.check_name_free(s, name)
        row, secret = create_key(
            s,
            secret=state.secret,
            name=name,
            admin=fields.get("admin") == "1",
            monthly_budget_usd=_number(fields, "monthly_budget_usd", float),
            rate_limit_per_minute=_number(fields, "rate_limit_per_minute", int),
        )
        return row.name, secret


@router.post("/keys")
async def create(request: Request, admin: ConsoleAdmin, state: StateDep) -> Response:
    fields = await check_csrf(request, admin)
    try:
        name, secret = await run_in_threadpool(_create, state, fields)
    except AiprodError as exc:
        return await run_in_threadpool(
            keys_response, request, admin, state, error=exc.message, status=exc.status_code
        )
    # Shown in this answer only (never stored, never in a URL or a cookie).
    created = {"name": name, "secret": secret}
    return await run_in_threadpool(keys_response, request, admin, state, created=created)


def _update(state: AppState, key_id: str, changes: dict[str, Any]) -> str:
    with session_scope(state.sessions) as s:
        return ops.update_key(s, key_id, changes).name


@router.post("/keys/{key_id}")
async def update(key_id: str, request: Request, admin: ConsoleAdmin, state: StateDep) -> Response:
    fields = await check_csrf(request, admin)
    try:
        changes: dict[str, Any] = {
            "name": fields.get("name", ""),
            "rate_limit_per_minute": _number(fields, "rate_limit_per_minute", int),
            "monthly_budget_usd": _number(fields, "monthly_budget_usd", float),
            "priority": _number(fields, "priority", int) or 0,
        }
        name = await run_in_threadpool(_update, state, key_id, changes)
    except AiprodError as exc:
        return back(request, "/dashboard/keys", error=exc.message)
    state.key_cache.clear()  # this process applies the new limits at once
    return back(request, "/dashboard/keys", ok=f"Key {name} saved.")


@router.post("/keys/{key_id}/revoke")
async def revoke(key_id: str, request: Request, admin: ConsoleAdmin, state: StateDep) -> Response:
    await check_csrf(request, admin)
    if key_id == admin.key_id:
        return back(
            request, "/dashboard/keys", error="You cannot revoke the key you are logged in with."
        )
    try:
        name = await run_in_threadpool(_update, state, key_id, {"active": False})
    except AiprodError as exc:
        return back(request, "/dashboard/keys", error=exc.message)
    state.key_cache.clear()  # refused by this process at once (others: within the key cache)
    return back(request, "/dashboard/keys", ok=f"Key {name} revoked.")
