"""Client routes: generate, jobs, download, cancel, delete, events, models, estimate-cost."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.orm import Session

from aiprod.core.errors import InvalidRequest
from aiprod.core.logging import job_error_message
from aiprod.db.repositories import JobRepository
from aiprod.jobs import JobStatus, transitions
from aiprod.jobs.budget import estimate_for_key
from aiprod.jobs.model_state import availability
from aiprod.jobs.schema import GenerateBody, validate_generate
from aiprod.jobs.submit import MAX_IDEMPOTENCY_KEY
from aiprod.jobs.views import render_job
from aiprod.service.deps import (
    ApiKeyDep,
    SessionDep,
    StateDep,
    known_query_params,
    read_inline,
    read_session,
    storage_writable,
    write_slot,
)
from aiprod.service.schemas import EstimateOut, JobOut, JobPage, ModelsOut, errors
from aiprod.service.streaming import stream_output
from aiprod.service.waiting import (
    PREFER_DESCRIPTION,
    HeldJobResponse,
    job_events,
    job_reader,
    job_renderer,
    prefer_wait,
)

# Every route answers 401 without a valid key, 422 for a bad header or query value (the
# error shape, like every error), 429 past the rate limit and 503 while the
# database is unreachable. The bodies are built by aiprod.jobs.views (shared with webhooks) and
# returned as they are: the response models document them (checked by the tests).
# Every route refuses an unknown query parameter (422 naming it and the route's own).
router = APIRouter(
    prefix="/api/v1",
    tags=["jobs"],
    responses=errors(401, 422, 429, 503),
    dependencies=[Depends(known_query_params)],
)

PreferHeader = Annotated[str | None, Header(alias="Prefer", description=PREFER_DESCRIPTION)]


def base_url(request: Request, public_url: str | None) -> str:
    """Where download URLs point: AIPROD_PUBLIC_URL, else the request's own base URL."""
    return (public_url or str(request.base_url)).rstrip("/")


@router.post(
    "/generate",
    status_code=202,
    summary="Create a generation job",
    response_model=JobOut,
    responses=errors(400, 402, 409, 413, 422),
    # Storage first: a submit refused with 503 (storage not writable) takes no write slot.
    dependencies=[Depends(storage_writable), Depends(write_slot, scope="function")],
)
def generate(
    body: GenerateBody,
    request: Request,
    key: ApiKeyDep,
    state: StateDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            # checked by jobs.submit.prepare_submit (422 naming the header); stated here too
            json_schema_extra={"minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY},
        ),
    ] = None,
    prefer: PreferHeader = None,
) -> Response:
    """Queue a job; returns 202 with the job object. Repeating a request with the same
    `Idempotency-Key` returns the same job instead of creating another. 503 with
    `Retry-After` while the output storage is not writable (full disk, permissions). 402
    `budget_exceeded` once the key's monthly budget is used up. With `Prefer: wait=N` the
    answer (still 202) comes when the job has ended or after N s."""
    # The checks read in a read-only unit of work and the INSERT is one of its own (on SQLite
    # the write lock is held for the INSERT alone): jobs.submit.submit_in_two_transactions.
    sub = state.submit(key.submitter, body, idempotency_key)
    job, base = sub.job, base_url(request, state.settings.public_url)
    headers = {"Location": f"/api/v1/jobs/{job.id}"}
    if not sub.created:
        headers["Idempotent-Replayed"] = "true"
    wait = prefer_wait(prefer, state.settings.max_wait_seconds)
    if wait:  # answered after the insert committed: the job is visible to workers by then
        return HeldJobResponse(
            wait=wait,
            read=job_reader(state, job.id),
            render=job_renderer(state, job.id, base),
            status_code=202,
            headers=headers,
        )
    with read_session(state) as rs:  # the position: from the shared queue snapshot
        out = render_job(
            rs, job, base_url=base, settings=state.settings, queue_view=state.queue_view
        )
    return JSONResponse(out, status_code=202, headers=headers)


# What _parse_time accepts, stated in the OpenAPI: a date or a date-time (never empty).
_ISO_TIME: dict[str, Any] = {
    "anyOf": [{"type": "string", "format": "date"}, {"type": "string", "format": "date-time"}]
}


def _parse_time(value: str | None, field: str) -> datetime | None:
    if value is None:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidRequest(
            f"{field} must be an ISO 8601 date or datetime, e.g. 2026-01-31T00:00:00Z",
            field=field,
        ) from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt


@router.get(
    "/jobs",
    summary="List the caller's jobs, newest first",
    response_model=JobPage,
    responses=errors(422),
)
def list_jobs(
    request: Request,
    key: ApiKeyDep,
    state: StateDep,
    status: Annotated[
        list[str] | None,
        Query(
            description="Filter by status (repeatable).",
            json_schema_extra={"items": {"type": "string", "enum": list(JobStatus)}},
        ),
    ] = None,
    created_after: Annotated[
        str | None, Query(description="ISO 8601, inclusive", json_schema_extra=_ISO_TIME)
    ] = None,
    created_before: Annotated[
        str | None, Query(description="ISO 8601, exclusive", json_schema_extra=_ISO_TIME)
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> JSONResponse:
    """E.g. all videos of the last 30 days: `?status=succeeded&created_after=2026-01-01`."""
    statuses = status or None
    for s in statuses or []:
        if s not in tuple(JobStatus):
            raise InvalidRequest(
                f"status '{s}' is not one of {', '.join(JobStatus)}", field="status"
            )
    after = _parse_time(created_after, "created_after")
    before = _parse_time(created_before, "created_before")
    base = base_url(request, state.settings.public_url)
    with read_session(state) as session:  # ends here, not after the response (see read_session)
        page = JobRepository(session).list_owned(
            key.id,
            statuses=statuses,
            created_after=after,
            created_before=before,
            limit=limit,
            cursor=cursor,
        )
        data = [
            render_job(
                session, j, base_url=base, settings=state.settings, queue_view=state.queue_view
            )
            for j in page.items
        ]
    return JSONResponse({"data": data, "next_cursor": page.next_cursor})


@router.get("/jobs/{job_id}", summary="A job object", response_model=JobOut, responses=errors(404))
async def get_job(
    job_id: str, request: Request, key: ApiKeyDep, state: StateDep, prefer: PreferHeader = None
) -> Response:
    """With `Prefer: wait=N`: answered when the job has ended or after N seconds."""
    base = base_url(request, state.settings.public_url)
    wait = prefer_wait(prefer, state.settings.max_wait_seconds)

    def read(session: Session, may_wait: bool) -> Response:
        job = JobRepository(session).get_owned(job_id, key.id)
        if wait and not JobStatus(job.status).is_terminal:
            return HeldJobResponse(
                wait=wait,
                read=job_reader(state, job.id),
                render=job_renderer(state, job.id, base),
            )
        out = render_job(
            session,
            job,
            base_url=base,
            settings=state.settings,
            queue_view=state.queue_view,
            wait=may_wait,
        )
        headers = {"Preference-Applied": f"wait={wait}"} if wait else None
        return JSONResponse(out, headers=headers)

    # on the event loop where that cannot wait (SQLite), else on a thread; the session ends
    # here, not after the response (see read_session)
    return await read_inline(state, read)


@router.get(
    "/jobs/{job_id}/events",
    summary="Server-sent events of a job: progress and status",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **errors(404)},
)
def job_events_route(
    job_id: str, request: Request, key: ApiKeyDep, state: StateDep
) -> StreamingResponse:
    """`event: status` first and on every status change, `event: progress` when progress
    moves; `data:` is the job object. A `: heartbeat` comment every 15 s while idle. Ends
    after the terminal status. One request for the rate limit, however long it lasts."""
    with read_session(state) as session:
        job = JobRepository(session).get_owned(job_id, key.id)
    base = base_url(request, state.settings.public_url)
    stream = job_events(read=job_reader(state, job.id), render=job_renderer(state, job.id, base))
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.delete(
    "/jobs/{job_id}",
    summary="Delete a job's output (the row stays for billing)",
    response_model=JobOut,
    responses=errors(404),
    dependencies=[Depends(write_slot, scope="function")],
)
def delete_job(
    job_id: str, request: Request, key: ApiKeyDep, session: SessionDep, state: StateDep
) -> JSONResponse:
    """Removes the MP4 (local or S3) and the conditioning image. The job keeps its status and
    costs, gets `deleted_at`, and its download answers 410. A queued job is canceled first; a
    running one is asked to cancel (as POST /cancel). Deleting again changes nothing."""
    job = JobRepository(session).get_owned(job_id, key.id)
    job = transitions.delete_output(session, job, storage=state.storage, settings=state.settings)
    base = base_url(request, state.settings.public_url)
    return JSONResponse(render_job(session, job, base_url=base, settings=state.settings))


@router.post(
    "/jobs/{job_id}/cancel",
    summary="Cancel a queued or running job",
    response_model=JobOut,
    responses=errors(404),
    dependencies=[Depends(write_slot, scope="function")],
)
def cancel(
    job_id: str, request: Request, key: ApiKeyDep, session: SessionDep, state: StateDep
) -> JSONResponse:
    """A queued job is canceled at once; a running one stops within one denoising step
    (`cancel_requested` is true until it does). Canceling a finished job changes nothing."""
    job = JobRepository(session).get_owned(job_id, key.id)
    job = transitions.cancel_job(session, job, settings=state.settings)
    base = base_url(request, state.settings.public_url)
    return JSONResponse(render_job(session, job, base_url=base, settings=state.settings))


@router.get(
    "/jobs/{job_id}/download",
    summary="Download the MP4",
    response_class=Response,
    responses={
        200: {"content": {"video/mp4": {}}},
        206: {"description": "Partial content"},
        304: {"description": "Not modified (If-None-Match matched the ETag)"},
        **errors(404, 409, 410, 416),
    },
)
def download(
    job_id: str,
    key: ApiKeyDep,
    state: StateDep,
    range_: Annotated[str | None, Header(alias="Range")] = None,
    if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
) -> Response:
    """The MP4 of a succeeded job (409 before; 410 once deleted or expired). Supports `Range`
    (206) and `ETag`."""
    with read_session(state) as session:  # a read: no SQLite write lock, ended before streaming
        job = JobRepository(session).get_owned(job_id, key.id)
    return stream_output(job, state.storage, range_header=range_, if_none_match=if_none_match)


@router.get("/models", summary="Models this server can run", response_model=ModelsOut)
def models(key: ApiKeyDep, state: StateDep) -> JSONResponse:
    """`available` is false while the live workers that tried a model failed to load it
    (`unavailable_reason` says why; its jobs fail at once with `model_unavailable`)."""
    reg = state.registry
    with read_session(state) as session:
        bad = availability(session, reg, state.settings)
    return JSONResponse(
        {
            "default": reg.default,
            "data": [
                {
                    **m.public_dict(),
                    "default": m.id == reg.default,
                    "available": m.id not in bad,
                    # clients see no server paths (as in job errors); /readyz has the full reason
                    "unavailable_reason": (
                        job_error_message(bad[m.id].reason or "") if m.id in bad else None
                    ),
                }
                for m in reg.models
            ],
        }
    )


@router.post(
    "/estimate-cost",
    summary="Predict GPU-seconds and cost for a request",
    response_model=EstimateOut,
    responses=errors(400, 413, 422),
)
def estimate_cost(
    body: GenerateBody, key: ApiKeyDep, session: SessionDep, state: StateDep
) -> JSONResponse:
    """Same body as /generate. `basis` is `measured` once a worker has timed this model.
    `params.seed` is there only if the request gave one."""
    allow = state.settings.webhook_allowed_networks
    v = validate_generate(body, state.registry, webhook_allow=allow)
    return JSONResponse(estimate_for_key(session, v, key.id, seed_given=body.seed is not None))
