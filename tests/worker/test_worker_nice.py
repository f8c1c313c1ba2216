"""AIPROD_WORKER_NICE: a worker on a CPU box shared with the API generates at a low CPU
priority, while its database writes (the progress after each step, the claim, the result) keep
the worker's own priority, so it never holds SQLite's one write lock at the low priority.

Issue 32: with the whole worker niced, a worker preempted while holding the write lock made
every API submit wait (305 ms holds, 300 ms waits at 200 clients)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from aiprod.db.models import Job
from aiprod.db.session import session_scope
from aiprod.jobs.schema import GenerateBody
from tests.service.harness import local_worker, queue_job


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


class Recording:
    """The real pipeline, noting the nice value of the thread that runs it."""

    def __init__(self, real: Any, seen: list[int]) -> None:
        self.real, self.seen = real, seen

    def __call__(self, request: Any, **kw: Any) -> Any:
        self.seen.append(_nice())
        return self.real(request, **kw)


@pytest.mark.parametrize("nice", [0, 7])
def test_generation_runs_low_and_database_writes_do_not(tmp_path: Path, nice: int) -> None:
    base = _nice()
    writes: list[tuple[str, int]] = []

    def on_write(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        verb = statement.split()[0].upper()
        if verb in ("INSERT", "UPDATE", "DELETE", "BEGIN"):
            writes.append((verb, _nice()))

    with local_worker(tmp_path, worker_nice=nice) as worker:
        event.listen(worker.engine, "before_cursor_execute", on_write)
        job = queue_job(worker, GenerateBody(prompt="a red fox", num_inference_steps=3))
        entry = worker.registry.get(worker.registry.default)
        ran_at: list[int] = []
        worker.pipelines[entry.id] = Recording(worker.pipeline(entry), ran_at)
        writes.clear()
        assert worker.step()
        with session_scope(worker.sessions) as s:
            row = s.execute(select(Job).where(Job.id == job.id)).scalar_one()
            assert row.status == "succeeded" and row.progress == 1.0, row.error_message
        assert ran_at == [max(base, nice)]
        progress = [n for verb, n in writes if verb == "UPDATE"]
        assert len(progress) >= 3  # a progress write per step, and the result
        assert {n for _verb, n in writes} == {base}, writes
