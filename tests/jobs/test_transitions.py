"""Every job status change goes through aiprod.jobs.transitions, with its side effects (cost
row, webhook outbox entry) in the same transaction; on real SQLite and PostgreSQL databases."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from aiprod.core.settings import Settings
from aiprod.db.models import Job, JobStatus, new_id
from aiprod.db.repositories import ApiKeyRepository, CostRepository, WebhookRepository
from aiprod.db.session import make_engine, make_sessionmaker, session_scope
from aiprod.jobs import TERMINAL_STATUSES, transitions
from aiprod.jobs.schema import GenerateBody
from aiprod.jobs.storage import LocalStorage
from aiprod.jobs.submit import Submitter, submit_job
from tests.service.harness import write_models_toml

SRC = Path(__file__).resolve().parents[2] / "src" / "aiprod"
# The only modules that may write a job's status: the transitions and the queue SQL they use.
WRITERS = {SRC / "jobs" / "transitions.py", SRC / "db" / "queue.py"}


def test_job_status_enum() -> None:
    assert [s.value for s in JobStatus] == [
        "queued",
        "running",
        "succeeded",
        "failed",
        "canceled",
        "expired",
    ]
    assert {s for s in JobStatus if s.is_terminal} == TERMINAL_STATUSES
    assert not JobStatus.QUEUED.is_terminal and not JobStatus.RUNNING.is_terminal
    assert JobStatus("canceled").is_terminal and f"job.{JobStatus.FAILED}" == "job.failed"


def _writes_status(node: ast.AST) -> bool:
    """``<x>.status = JobStatus.<Y>`` or ``job.status = <anything>``."""
    if isinstance(node, ast.Assign):
        targets, value = node.targets, node.value
    elif isinstance(node, ast.AnnAssign | ast.AugAssign):
        targets, value = [node.target], node.value
    else:
        return False
    for t in targets:
        if not (isinstance(t, ast.Attribute) and t.attr == "status"):
            continue
        if isinstance(t.value, ast.Name) and t.value.id == "job":
            return True
        if isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name):
            if value.value.id == "JobStatus":
                return True
    return False


def test_only_the_transitions_module_writes_a_job_status() -> None:
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        if path in WRITERS:
            continue
        text = path.read_text()
        bad += [
            f"{path.relative_to(SRC)}:{node.lineno}"
            for node in ast.walk(ast.parse(text))
            if _writes_status(node)
        ]
        if "update(Job)" in text and "status=" in text:
            bad.append(f"{path.relative_to(SRC)}: writes jobs.status with SQL")
    assert not bad, bad
    assert _writes_status(ast.parse("job.status = 'failed'").body[0])
    assert _writes_status(ast.parse("row.status = JobStatus.FAILED").body[0])
    assert not _writes_status(ast.parse("delivery.status = 'failed'").body[0])


@pytest.fixture
def setup(db_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    from aiprod.core.registry import load_registry

    engine = make_engine(db_url)
    settings = Settings(data_dir=tmp_path, max_attempts=2, gpu_cost_per_hour=3.6)
    registry = load_registry(write_models_toml(tmp_path))
    yield make_sessionmaker(engine), settings, registry, LocalStorage(tmp_path / "out")
    engine.dispose()


def _create(s, settings, registry, storage, **body):  # type: ignore[no-untyped-def]
    key = ApiKeyRepository(s).create(key_hash=new_id(), prefix="p", name="k").id
    sub = submit_job(
        s,
        submitter=Submitter(key),
        body=GenerateBody(prompt="a red fox", **body),
        registry=registry,
        storage=storage,
        settings=settings,
    )
    assert sub.created and sub.job.status == JobStatus.QUEUED
    return sub.job.id


def test_a_job_through_retry_to_success(setup) -> None:  # type: ignore[no-untyped-def]
    sessions, settings, registry, storage = setup
    with session_scope(sessions) as s:
        job_id = _create(s, settings, registry, storage, webhook_url="https://example.com/h")
    with session_scope(sessions) as s:
        job = transitions.claim(s, worker_id="w", lease_seconds=30)
        assert job is not None and job.id == job_id and job.status == JobStatus.RUNNING
        s.expunge(job)
    with session_scope(sessions) as s:  # a transient error with attempts left: back in line
        new = transitions.fail_attempt(
            s, job=job, worker_id="w", settings=settings, code="x", message="boom", permanent=False
        )
        assert new == JobStatus.QUEUED
        s.get(Job, job_id).available_at = s.get(Job, job_id).created_at  # due now
    with session_scope(sessions) as s:
        job = transitions.claim(s, worker_id="w", lease_seconds=30)
        assert job is not None and job.attempts == 2
    with session_scope(sessions) as s:
        done = transitions.succeed(
            s,
            job_id=job_id,
            worker_id="w",
            settings=settings,
            output_path="x.mp4",
            output_bytes=3,
            output_sha256="0" * 64,
            gpu_seconds=2.0,
            cost_usd=0.02,
        )
        assert done is not None and done.status == JobStatus.SUCCEEDED
        # A worker that lost its lease cannot finish the job a second time.
        assert (
            transitions.cancel_running(
                s, job_id=job_id, worker_id="w", settings=settings, gpu_seconds=1, cost_usd=0
            )
            is None
        )
    with session_scope(sessions) as s:
        hooks = WebhookRepository(s).for_job(job_id)
        assert [h.event_type for h in hooks] == ["job.succeeded"]
        payload = json.loads(hooks[0].payload)
        assert payload["data"]["status"] == "succeeded" and payload["data"]["cost_usd"] == 0.02
        (day,) = CostRepository(s).days(done.completed_at.date(), done.completed_at.date())
        assert (day.videos_generated, day.gpu_seconds) == (1, 2.0)
        assert day.total_cost_usd == pytest.approx(0.002)
        transitions.expire(s.get(Job, job_id))
    with session_scope(sessions) as s:
        row = s.get(Job, job_id)
        assert (row.status, row.output_path) == ("expired", None)


def test_cancel_and_permanent_failure(setup) -> None:  # type: ignore[no-untyped-def]
    sessions, settings, registry, storage = setup
    with session_scope(sessions) as s:
        queued = _create(s, settings, registry, storage)
    with session_scope(sessions) as s:
        job = transitions.cancel_job(s, s.get(Job, queued), settings=settings)
        assert job.status == JobStatus.CANCELED and job.completed_at is not None
        assert transitions.cancel_job(s, job, settings=settings) is job  # terminal: unchanged
    with session_scope(sessions) as s:
        other = _create(s, settings, registry, storage)
    with session_scope(sessions) as s:
        job = transitions.claim(s, worker_id="w", lease_seconds=30)
        assert job is not None and job.id == other
        job = transitions.cancel_job(s, job, settings=settings)  # running: only flagged
        assert job.status == JobStatus.RUNNING and job.cancel_requested
        s.expunge(job)
    with session_scope(sessions) as s:
        new = transitions.fail_attempt(
            s, job=job, worker_id="w", settings=settings, code="bad", message="no", permanent=True
        )
        assert new == JobStatus.FAILED
        assert s.get(Job, other).error_code == "bad"
