"""The console's data endpoints: the small JSON documents its pages poll, the video of a job
(any key's, for an admin session; ``Range`` supported so ``<video>`` can seek) and the month's
statements (``aiprod.jobs.billing``, the files ``aiprod billing statement`` writes)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from aiprod.jobs import admin as ops
from aiprod.jobs import billing
from aiprod.service.dashboard import data
from aiprod.service.dashboard.session import Admin, current_admin
from aiprod.service.deps import StateDep, read_session
from aiprod.service.state import AppState
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


def _statement(state: AppState, month: str, key_id: str, fmt: str) -> tuple[str, str]:
    with read_session(state) as s:
        found = billing.statements(s, month=month, key_id=key_id)
    st = found[0]  # with a key id: exactly that key's statement (maybe without jobs)
    body = billing.statement_csv(st) if fmt == "csv" else billing.statement_html(st)
    return body, billing.statement_basename(st)


def _summary(state: AppState, month: str) -> str:
    with read_session(state) as s:
        summary = billing.operator_summary(
            s, month=month, gpu_cost_per_hour=state.settings.gpu_cost_per_hour
        )
    return billing.summary_csv(summary)


@router.get("/costs/statement.{fmt}")
async def statement(
    fmt: Literal["csv", "html"],
    admin: ConsoleAdmin,
    state: StateDep,
    key: str,
    month: str | None = None,
) -> Response:
    """A key's statement for the month (``aiprod billing statement``'s files): CSV, or the
    printable HTML page."""
    first = data.parse_month(month).strftime("%Y-%m")
    body, base = await run_in_threadpool(_statement, state, first, key, fmt)
    kind = "text/csv" if fmt == "csv" else "text/html"
    disposition = "attachment" if fmt == "csv" else "inline"
    return Response(
        body,
        media_type=f"{kind}; charset=utf-8",
        headers={"Content-Disposition": f'{disposition}; filename="{base}.{fmt}"', **NO_STORE},
    )


@router.get("/costs/summary.csv")
async def summary(admin: ConsoleAdmin, state: StateDep, month: str | None = None) -> Response:
    """The operator's month: revenue against GPU cost per key, then the cost log's total."""
    first = data.parse_month(month).strftime("%Y-%m")
    body = await run_in_threadpool(_summary, state, first)
    name = f"operator-{first}.csv"
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"', **NO_STORE},
    )
