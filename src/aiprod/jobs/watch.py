"""Watching a job without a thread or a database connection per watcher: a short read of the
row every ``POLL_SECONDS`` (on the thread pool), an async sleep in between. Used by
``Prefer: wait`` and the server-sent events of ``GET /api/v1/jobs/{id}/events``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from aiprod.db.models import Job, JobStatus

POLL_SECONDS = 0.5  # how often a watcher reads the row
MAX_WAIT_SECONDS = 60  # default cap of `Prefer: wait=N` (AIPROD_MAX_WAIT_SECONDS)
HEARTBEAT_SECONDS = 15.0  # an idle event stream sends a comment this often


@dataclass(frozen=True)
class JobState:
    status: str
    progress: float

    @property
    def terminal(self) -> bool:
        return JobStatus(self.status).is_terminal


def read_state(session: Session, job_id: str) -> JobState | None:
    """The job's status and progress (one small read); None if the row is gone."""
    row = session.execute(select(Job.status, Job.progress).where(Job.id == job_id)).first()
    return None if row is None else JobState(str(row.status), float(row.progress or 0.0))


async def changes(
    read: Callable[[], Awaitable[JobState | None]],
    *,
    deadline: float | None = None,
    interval: float = POLL_SECONDS,
) -> AsyncIterator[JobState | None]:
    """Yield the job's state now, then every ``interval``: the new state when it changed,
    None when it did not. Ends after a terminal state, a vanished row, or at ``deadline``
    (``time.monotonic()``)."""
    last: JobState | None = None
    first = True
    while True:
        state = await read()
        if state is None:
            return
        yield state if first or state != last else None
        first, last = False, state
        if state.terminal:
            return
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return
        pause = interval if deadline is None else min(interval, deadline - now)
        await asyncio.sleep(pause)
