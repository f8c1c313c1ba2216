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

from aiprod.core.settings import Settings
from aiprod.db.migrate import upgrade
from aiprod.db.models import Job
from aiprod.db.session import session_scope
from aiprod.jobs.schema import GenerateBody
from aiprod.jobs.submit import Submitter, submit_job
from aiprod.service.keys import create_key
from aiprod.worker.runner import Worker
from tests.service.harness import write_models_toml


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
    url = f"sqlite:///{tmp_path / 'w.db'}"
    upgrade(url)
    settings = Settings(
        data_dir=tmp_path,
        models_file=write_models_toml(tmp_path),
        database_url=url,
        secret_key="s" * 32,
        worker_nice=nice,
    )
    base = _nice()
    worker = Worker(settings, webhooks=False, preload=False)
    writes: list[tuple[str, int]] = []

    def on_write(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        verb = statement.split()[0].upper()
        if verb in ("INSERT", "UPDATE", "DELETE", "BEGIN"):
            writes.append((verb, _nice()))

    event.listen(worker.engine, "before_cursor_execute", on_write)
    try:
        with session_scope(worker.sessions) as s:
            key, _ = create_key(s, secret=settings.resolved_secret_key(), name="t")
            job = submit_job(
                s,
                submitter=Submitter(key.id),
                body=GenerateBody(prompt="a red fox", num_inference_steps=3),
                registry=worker.registry,
                storage=worker.storage,
                settings=settings,
            ).job
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
    finally:
        worker.priorities.shutdown()
        worker.engine.dispose()
