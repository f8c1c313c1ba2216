"""Waiting without polling, over HTTP: ``Prefer: wait[=N]`` (RFC 7240) holds a job response
until the job ends or N seconds pass; ``text/event-stream`` streams its progress.

Contract (the Python client relies on these names):

- request header ``Prefer: wait=N`` (or a bare ``Prefer: wait``: the cap,
  ``AIPROD_MAX_WAIT_SECONDS``, 60 by default); N above the cap is cut to it; a malformed
  value is ignored, as RFC 7240 asks. The response carries ``Preference-Applied: wait=N`` (N
  as applied) and the job object as it is when the job ended or the time ran out.
- events: ``event: status`` (first, and on every status change; the last one is terminal),
  ``event: progress`` (progress changed); ``data:`` is the job object as JSON; a comment line
  ``: heartbeat`` while nothing changed for ``HEARTBEAT_SECONDS``. The stream ends after the
  terminal status.

Neither holds a thread or a database connection while waiting (see ``aiprod.jobs.watch``);
each is one request for the rate limit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from aiprod.core.errors import NotFound
from aiprod.db.repositories import JobRepository
from aiprod.jobs.views import render_job
from aiprod.jobs.watch import (
    HEARTBEAT_SECONDS,
    MAX_WAIT_SECONDS,
    POLL_SECONDS,
    JobState,
    changes,
    read_state,
)
from aiprod.service.deps import read_session
from aiprod.service.state import AppState

log = logging.getLogger("aiprod.service")

PREFER_DESCRIPTION = (
    "`wait=N` (or `wait`: the cap): answer when the job has ended or after N seconds (at most "
    f"AIPROD_MAX_WAIT_SECONDS, {MAX_WAIT_SECONDS} by default), instead of at once. The "
    "response then carries `Preference-Applied: wait=N`."
)


def prefer_wait(header: str | None, cap: int = MAX_WAIT_SECONDS) -> int | None:
    """Seconds to hold the answer from a ``Prefer`` header, at most ``cap``; None: do not
    wait."""
    if not header:
        return None
    for pref in header.split(","):
        token = pref.split(";", 1)[0].strip()
        name, _, value = token.partition("=")
        if name.strip().lower() != "wait":
            continue
        value = value.strip().strip('"')
        if not value:
            return cap
        if not value.isdigit():
            return None  # malformed: ignored (RFC 7240 section 2)
        seconds = min(int(value), cap)
        return seconds or None
    return None


class HeldJobResponse(Response):
    """Sends the job object once the job has ended or ``wait`` seconds passed. Runs after the
    route's dependencies have exited (its session committed, its write slot freed), so a held
    submit is visible to workers and holds nothing but this coroutine."""

    def __init__(
        self,
        *,
        wait: int,
        read: Callable[[], JobState | None],
        render: Callable[[], dict[str, Any]],
        status_code: int = 200,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status_code)
        self.wait = wait
        self._read = read
        self._render = render
        self._extra_headers = {**(headers or {}), "Preference-Applied": f"wait={wait}"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.create_task(_disconnected(receive))

        async def read() -> JobState | None:
            return None if gone.done() else await run_in_threadpool(self._read)

        try:
            async for _ in changes(read, deadline=time.monotonic() + self.wait):
                pass
        finally:
            gone.cancel()
        if gone.done() and not gone.cancelled():
            return  # the client left: nobody to answer
        out = await run_in_threadpool(self._render)
        response = JSONResponse(out, status_code=self.status_code, headers=self._extra_headers)
        await response(scope, receive, send)


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def job_events(
    *,
    read: Callable[[], JobState | None],
    render: Callable[[], dict[str, Any]],
    heartbeat: float = HEARTBEAT_SECONDS,
    interval: float = POLL_SECONDS,
) -> AsyncIterator[str]:
    """The server-sent events of one job (see the module docstring)."""

    async def read_async() -> JobState | None:
        return await run_in_threadpool(read)

    idle_since = time.monotonic()
    sent_status: object = None
    try:
        async for state in changes(read_async, interval=interval):
            now = time.monotonic()
            if state is None:
                if now - idle_since >= heartbeat:
                    idle_since = now
                    yield ": heartbeat\n\n"
                continue
            idle_since = now
            # The event is named from the object sent (read after ``state``: a worker may have
            # moved the job on in between), so one status never goes out twice.
            obj = await run_in_threadpool(render)
            status = obj.get("status", state.status)
            if status != sent_status:
                event, sent_status = "status", status
            elif state.terminal:
                continue  # the terminal status already went out with the previous event
            else:
                event = "progress"
            data = json.dumps(obj, separators=(",", ":"))
            yield f"event: {event}\ndata: {data}\n\n"
    except Exception:  # the database went away mid-stream: end it, the client reconnects
        log.exception("event stream ended by an error")


def job_reader(state: AppState, job_id: str) -> Callable[[], JobState | None]:
    """A short read of the job's status and progress, its session ended at once."""

    def read() -> JobState | None:
        with read_session(state) as session:
            return read_state(session, job_id)

    return read


def job_renderer(state: AppState, job_id: str, base_url: str) -> Callable[[], dict[str, Any]]:
    """The job object, read in a session of its own."""

    def render() -> dict[str, Any]:
        with read_session(state) as session:
            job = JobRepository(session).get(job_id)
            if job is None:
                raise NotFound(f"job {job_id} not found")
            return render_job(
                session,
                job,
                base_url=base_url,
                settings=state.settings,
                queue_view=state.queue_view,
            )

    return render
