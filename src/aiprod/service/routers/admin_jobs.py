"""Admin routes over every key's jobs and webhook deliveries (admin-scoped keys only).

The rules of cancel, delete and retry are in ``aiprod.jobs.admin`` (its module docstring).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from aiprod.jobs import JobStatus
from aiprod.jobs import admin as ops
from aiprod.jobs.admin_views import admin_job_dict, delivery_dict
from aiprod.service.deps import AdminDep, SessionDep, StateDep, read_session, write_slot
from aiprod.service.routers.jobs import _ISO_TIME, _parse_time, base_url
from aiprod.service.schemas import errors
from aiprod.service.schemas_admin import (
    AdminJobDetailOut,
    AdminJobOut,
    AdminJobPage,
    DeliveryOut,
    DeliveryPage,
)

router = APIRouter(
    prefix="/api/v1/admin", tags=["admin"], responses=errors(401, 403, 422, 429, 503)
)


@router.get(
    "/jobs", summary="Every key's jobs, newest first (filters, cursor)", response_model=AdminJobPage
)
def list_jobs(
    request: Request,
    admin: AdminDep,
    state: StateDep,
    status: Annotated[
        list[str] | None,
        Query(
            description="Filter by status (repeatable).",
            json_schema_extra={"items": {"type": "string", "enum": list(JobStatus)}},
        ),
    ] = None,
    key_id: Annotated[str | None, Query(description="Only this key's jobs.")] = None,
    model: Annotated[str | None, Query(description="Only this model's jobs.")] = None,
    created_after: Annotated[
        str | None, Query(description="ISO 8601, inclusive", json_schema_extra=_ISO_TIME)
    ] = None,
    created_before: Annotated[
        str | None, Query(description="ISO 8601, exclusive", json_schema_extra=_ISO_TIME)
    ] = None,
    q: Annotated[
        str | None, Query(max_length=200, description="Text in the prompt (case-insensitive).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=ops.MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> JSONResponse:
    """E.g. a client's failures this month: `?key_id=...&status=failed&created_after=2026-12-01`."""
    filters = ops.JobFilter(
        statuses=tuple(status or ()),
        key_id=key_id,
        model=model,
        created_after=_parse_time(created_after, "created_after"),
        created_before=_parse_time(created_before, "created_before"),
        text=q,
    )
    base = base_url(request, state.settings.public_url)
    with read_session(state) as session:
        page = ops.list_jobs(session, filters=filters, limit=limit, cursor=cursor)
        names = ops.key_names(session)
        data = [
            admin_job_dict(
                session,
                j,
                key_names=names,
                base_url=base,
                settings=state.settings,
                queue_view=state.queue_view,
            )
            for j in page.items
        ]
    return JSONResponse({"data": data, "next_cursor": page.next_cursor})


@router.get(
    "/jobs/{job_id}",
    summary="Any key's job, with its webhook deliveries",
    response_model=AdminJobDetailOut,
    responses=errors(404),
)
def get_job(job_id: str, request: Request, admin: AdminDep, state: StateDep) -> JSONResponse:
    with read_session(state) as session:
        job = ops.get_job(session, job_id)
        out = admin_job_dict(
            session,
            job,
            key_names=ops.key_names(session),
            base_url=base_url(request, state.settings.public_url),
            settings=state.settings,
        )
        out["webhook_deliveries"] = [delivery_dict(d) for d in ops.job_deliveries(session, job.id)]
    return JSONResponse(out)


def _job_out(request: Request, session: SessionDep, state: StateDep, job_id: str) -> JSONResponse:
    job = ops.get_job(session, job_id)
    body = admin_job_dict(
        session,
        job,
        key_names=ops.key_names(session),
        base_url=base_url(request, state.settings.public_url),
        settings=state.settings,
    )
    return JSONResponse(body)


@router.post(
    "/jobs/{job_id}/cancel",
    summary="Cancel any key's queued or running job",
    response_model=AdminJobOut,
    responses=errors(404),
    dependencies=[Depends(write_slot, scope="function")],
)
def cancel_job(
    job_id: str, request: Request, admin: AdminDep, session: SessionDep, state: StateDep
) -> JSONResponse:
    """As the client's own cancel: a queued job at once, a running one within a step."""
    job = ops.cancel_job(session, job_id, settings=state.settings)
    return _job_out(request, session, state, job.id)


@router.delete(
    "/jobs/{job_id}",
    summary="Delete any key's output (the row stays for billing)",
    response_model=AdminJobOut,
    responses=errors(404),
    dependencies=[Depends(write_slot, scope="function")],
)
def delete_job(
    job_id: str, request: Request, admin: AdminDep, session: SessionDep, state: StateDep
) -> JSONResponse:
    """As the client's own `DELETE /api/v1/jobs/{id}`, on any key's job: the video (and the
    conditioning image) are removed from storage; the job keeps its status and cost and gets
    `deleted_at`, and its download answers 410 `deleted`. A queued or running job is canceled
    first. Deleting again changes nothing."""
    job = ops.delete_job_output(session, job_id, storage=state.storage, settings=state.settings)
    return _job_out(request, session, state, job.id)


@router.post(
    "/jobs/{job_id}/retry",
    status_code=201,
    summary="Submit a failed or canceled job again, as a new job",
    response_model=AdminJobOut,
    responses=errors(404, 409),
    dependencies=[Depends(write_slot, scope="function")],
)
def retry_job(
    job_id: str, request: Request, admin: AdminDep, session: SessionDep, state: StateDep
) -> JSONResponse:
    """201 with the NEW job (same key, prompt, parameters, seed, image, webhook, metadata;
    `retry_of` = the old id). The old job, its cost and its webhook stay as they were. Other
    statuses: 409 `not_retryable`; a revoked key's job: 409 `key_revoked`."""
    job = ops.retry_job(
        session, job_id, registry=state.registry, storage=state.storage, settings=state.settings
    )
    out = _job_out(request, session, state, job.id)
    out.status_code = 201
    out.headers["Location"] = f"/api/v1/admin/jobs/{job.id}"
    return out


@router.get(
    "/webhooks",
    summary="Webhook deliveries of every key, newest first",
    response_model=DeliveryPage,
)
def list_webhooks(
    admin: AdminDep,
    state: StateDep,
    status: Annotated[
        str | None,
        Query(
            description="pending, delivered or failed",
            json_schema_extra={"enum": list(ops.DELIVERY_STATUSES)},
        ),
    ] = None,
    key_id: Annotated[str | None, Query()] = None,
    job_id: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=ops.MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> JSONResponse:
    with read_session(state) as session:
        page = ops.list_deliveries(
            session, status=status, key_id=key_id, job_id=job_id, limit=limit, cursor=cursor
        )
        data = [delivery_dict(d) for d in page.items]
    return JSONResponse({"data": data, "next_cursor": page.next_cursor})


@router.post(
    "/webhooks/{delivery_id}/replay",
    summary="Send a webhook delivery again",
    response_model=DeliveryOut,
    responses=errors(404, 409),
    dependencies=[Depends(write_slot, scope="function")],
)
def replay_webhook(delivery_id: str, admin: AdminDep, session: SessionDep) -> JSONResponse:
    """Back to `pending`, due now, attempts reset; same `webhook-id` and body (receivers
    de-duplicate on it), signed with the key's current secret. 409 while it is being sent."""
    return JSONResponse(delivery_dict(ops.replay_delivery(session, delivery_id)))
