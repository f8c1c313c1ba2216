"""The console's data endpoints: the small JSON documents its pages poll, the video of a job
(any key's, for an admin session; ``Range`` supported so ``<video>`` can seek) and the month's
statement download."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from aiprod.jobs import admin as ops
from aiprod.service.dashboard import data, statement
from aiprod.service.dashboard.session import Admin, current_admin
from aiprod.service.deps import StateDep, read_session
from aiprod.service.streaming import stream_output

router = APIRouter(prefix="/dashboard", include_in_schema=False)
ConsoleAdmin = Annotated[Admin, Depends(current_admin)]
NO_STORE = {"Cache-Control": "no-store"}


@router.get("/api/overview")
def overview(admin: ConsoleAdmin, state: StateDep) -> JSONResponse:
    return JSONResponse(data.overview(state), headers=NO_STORE)


@router.get("/api/jobs")
def job_statuses(admin: ConsoleAdmin, state: StateDep, ids: str = "") -> JSONResponse:
    """Status and progress of the comma-separated job ids (the jobs table's live cells)."""
    wanted = [i for i in ids.split(",") if i.strip()]
    return JSONResponse({"data": data.job_statuses(state, wanted)}, headers=NO_STORE)


@router.get("/api/jobs/{job_id}")
def job(job_id: str, admin: ConsoleAdmin, state: StateDep) -> JSONResponse:
    return JSONResponse(data.job(state, job_id), headers=NO_STORE)


@router.get("/jobs/{job_id}/video")
def video(
    job_id: str,
    admin: ConsoleAdmin,
    state: StateDep,
    range_: Annotated[str | None, Header(alias="Range")] = None,
    if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
) -> Response:
    with read_session(state) as s:  # ended before streaming
        j = ops.get_job(s, job_id)
    return stream_output(
        j,
        state.storage,
        range_header=range_,
        if_none_match=if_none_match,
        disposition="inline",
    )


@router.get("/costs/statement.csv")
async def statement_csv(
    request: Request, admin: ConsoleAdmin, state: StateDep, month: str | None = None
) -> Response:
    """Every job completed in the month, per key, with GPU-seconds, price and totals."""
    first = data.parse_month(month)
    body = await run_in_threadpool(statement.month_csv, state, first)
    name = f"aiprod-statement-{first.strftime('%Y-%m')}.csv"
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"', **NO_STORE},
    )
