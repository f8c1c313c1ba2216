"""The reaper: many at once never requeue a job twice, and a stale reaper never clobbers a
job another worker has claimed since (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import select

from aiprod.core.settings import Settings
from aiprod.db import queue
from aiprod.db.models import Job, JobStatus, new_id, utcnow
from aiprod.db.repositories import ApiKeyRepository, JobRepository
from aiprod.db.session import make_engine, make_sessionmaker, session_scope
from aiprod.worker.runner import reap


def _sessions(db_url: str):  # type: ignore[no-untyped-def]
    return make_sessionmaker(make_engine(db_url))


def _expired_jobs(sessions, n: int) -> list[str]:  # type: ignore[no-untyped-def]
    now = utcnow()
    with session_scope(sessions) as s:
        key = ApiKeyRepository(s).create(key_hash=new_id(), prefix="p", name="k").id
        ids = []
        for i in range(n):
            job = Job(
                id=new_id(),
                api_key_id=key,
                prompt="p",
                model="builtin",
                model_version="v",
                params={},
                status=JobStatus.QUEUED,
                priority=0,
                attempts=0,
                max_attempts=3,
                available_at=now - timedelta(seconds=i),
                progress=0.0,
                cancel_requested=False,
                created_at=now - timedelta(seconds=i),
            )
            JobRepository(s).add(job)
            ids.append(job.id)
    for _ in ids:
        with session_scope(sessions) as s:
            assert queue.claim(s, worker_id="dead", lease_seconds=0.01) is not None
    threading.Event().wait(0.05)
    return ids


def test_concurrent_reapers_requeue_each_job_once(db_url: str) -> None:
    sessions = _sessions(db_url)
    ids = _expired_jobs(sessions, 12)
    settings = Settings(retry_backoff_seconds=0)
    results: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        try:
            barrier.wait()
            results.append(reap(sessions, settings))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sum(r[0] for r in results) == len(ids) and sum(r[1] for r in results) == 0
    with session_scope(sessions) as s:
        jobs = s.execute(select(Job)).scalars().all()
        assert {j.status for j in jobs} == {"queued"}
        assert {j.attempts for j in jobs} == {1}  # the claim's attempt, counted once
    assert reap(sessions, settings) == (0, 0)


def test_a_stale_reaper_does_not_requeue_a_reclaimed_job(db_url: str) -> None:
    sessions = _sessions(db_url)
    (jid,) = _expired_jobs(sessions, 1)
    with session_scope(sessions) as s:
        stale = queue.expired_jobs(s)[0]  # what a slow reaper read...
        s.expunge(stale)
    assert reap(sessions, Settings(retry_backoff_seconds=0)) == (1, 0)  # ...another reaper won
    with session_scope(sessions) as s:
        job = queue.claim(s, worker_id="alive", lease_seconds=30)
        assert job is not None and job.id == jid and job.attempts == 2
    with session_scope(sessions) as s:  # the slow reaper's write now matches nothing
        assert not queue.reap_one(s, job=stale, now=utcnow(), status=JobStatus.QUEUED)
    with session_scope(sessions) as s:
        job = JobRepository(s).get(jid)
        assert (job.status, job.lease_owner, job.attempts) == ("running", "alive", 2)
