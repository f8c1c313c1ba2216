"""The jobs-table queue and repositories on real SQLite and PostgreSQL databases."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import inspect, select

from aiprod.core.settings import Settings
from aiprod.db import queue
from aiprod.db.migrate import downgrade, head_revision, upgrade
from aiprod.db.models import CostLog, Job, new_id, utcnow
from aiprod.db.repositories import (
    ApiKeyRepository,
    CostRepository,
    JobRepository,
    StateRepository,
    TimingRepository,
)
from aiprod.db.session import make_engine, make_sessionmaker, session_scope
from aiprod.worker.runner import reap


@pytest.fixture
def sessions(db_url: str):  # type: ignore[no-untyped-def]
    engine = make_engine(db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def _key(s, name: str) -> str:  # type: ignore[no-untyped-def]
    return ApiKeyRepository(s).create(key_hash=new_id(), prefix="p", name=name).id


def _job(s, key: str, *, at: datetime, priority: int = 0, **kw) -> Job:  # type: ignore[no-untyped-def]
    job = Job(
        id=new_id(),
        api_key_id=key,
        prompt="p",
        model="builtin",
        model_version="v",
        params={},
        status="queued",
        priority=priority,
        attempts=0,
        max_attempts=kw.pop("max_attempts", 3),
        available_at=at,
        progress=0.0,
        cancel_requested=False,
        created_at=at,
        **kw,
    )
    JobRepository(s).add(job)
    return job


def test_migrations_round_trip(db_url: str) -> None:
    engine = make_engine(db_url)
    tables = set(inspect(engine).get_table_names())
    assert {"jobs", "api_keys", "cost_log", "webhook_deliveries"} <= tables
    engine.dispose()
    assert downgrade(db_url, "base") is None
    assert upgrade(db_url) == head_revision()
    assert upgrade(db_url) == head_revision()  # idempotent


def test_fair_order_priority_then_round_robin_then_age(sessions) -> None:  # type: ignore[no-untyped-def]
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    with session_scope(sessions) as s:
        a, b, c = _key(s, "a"), _key(s, "b"), _key(s, "c")
        a_jobs = [_job(s, a, at=t0 + timedelta(seconds=i)).id for i in range(5)]
        b_job = _job(s, b, at=t0 + timedelta(seconds=10)).id
        c_urgent = _job(s, c, at=t0 + timedelta(seconds=20), priority=5).id
    order = []
    with session_scope(sessions) as s:
        first = JobRepository(s).get(b_job)
        assert queue.queue_position(s, first) == 2  # after c's urgent job and a's oldest
    while True:
        with session_scope(sessions) as s:
            job = queue.claim(s, worker_id="w", lease_seconds=30)
            if job is None:
                break
            order.append(job.id)
    # Priority first; then a's oldest and b's only job alternate before a's backlog.
    assert order == [c_urgent, a_jobs[0], b_job, *a_jobs[1:]]


def test_concurrent_claims_take_each_job_once(sessions) -> None:  # type: ignore[no-untyped-def]
    t0 = utcnow()
    with session_scope(sessions) as s:
        key = _key(s, "k")
        ids = {_job(s, key, at=t0 - timedelta(seconds=i)).id for i in range(40)}
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        while True:
            with session_scope(sessions) as s:
                job = queue.claim(s, worker_id=f"w{n}", lease_seconds=30)
                if job is None:
                    return
                with lock:
                    claimed.append(job.id)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)
    with session_scope(sessions) as s:
        assert all(j.attempts == 1 for j in s.execute(select(Job)).scalars())


def test_lease_heartbeat_reaper_and_retry(sessions) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(retry_backoff_seconds=0)
    now = utcnow()
    with session_scope(sessions) as s:
        key = _key(s, "k")
        jid = _job(s, key, at=now, max_attempts=2).id
    with session_scope(sessions) as s:
        queue.claim(s, worker_id="dead", lease_seconds=0.01)
    # Another worker cannot renew or finish a lease it does not hold.
    with session_scope(sessions) as s:
        assert not queue.heartbeat(s, job_id=jid, worker_id="other", lease_seconds=5).owned
    with session_scope(sessions) as s:
        st = queue.set_progress(s, job_id=jid, worker_id="dead", progress=0.5)
        assert st.owned and not st.cancel_requested
    threading.Event().wait(0.05)
    assert reap(sessions, settings) == (1, 0)
    with session_scope(sessions) as s:
        job = JobRepository(s).get(jid)
        assert (job.status, job.error_code, job.lease_owner) == ("queued", "worker_lost", None)
        # The dead worker's late writes are refused.
        assert not queue.set_progress(s, job_id=jid, worker_id="dead", progress=0.9).owned
        assert queue.finish(s, job_id=jid, worker_id="dead", status="succeeded") is None
    with session_scope(sessions) as s:
        job = queue.claim(s, worker_id="w2", lease_seconds=0.01)
        assert job is not None and job.attempts == 2
    threading.Event().wait(0.05)
    assert reap(sessions, settings) == (0, 1)  # out of attempts -> failed
    with session_scope(sessions) as s:
        assert JobRepository(s).get(jid).status == "failed"


def test_retry_backoff_delays_the_next_claim(sessions) -> None:  # type: ignore[no-untyped-def]
    with session_scope(sessions) as s:
        jid = _job(s, _key(s, "k"), at=utcnow()).id
    with session_scope(sessions) as s:
        queue.claim(s, worker_id="w", lease_seconds=30)
        assert queue.retry_later(
            s, job_id=jid, worker_id="w", delay_seconds=60, error_code="x", error_message="boom"
        )
    with session_scope(sessions) as s:
        assert queue.claim(s, worker_id="w", lease_seconds=30) is None  # not yet due
        later = utcnow() + timedelta(seconds=61)
        job = queue.claim(s, worker_id="w", lease_seconds=30, now=later)
        assert job is not None and job.id == jid and job.attempts == 2
    assert queue.backoff_seconds(5, 1) == 5 and queue.backoff_seconds(5, 3) == 20


def test_cost_log_upsert_and_timings(sessions) -> None:  # type: ignore[no-untyped-def]
    day = date(2026, 3, 1)
    with session_scope(sessions) as s:
        for ok in (True, True, False):
            CostRepository(s).record(
                day=day,
                gpu_seconds=2.0,
                gpu_cost_usd=0.5,
                revenue_usd=1.0 if ok else 0.0,
                succeeded=ok,
                failed=not ok,
            )
    with session_scope(sessions) as s:
        row = s.get(CostLog, day)
        assert (row.videos_generated, row.jobs_failed, row.gpu_seconds) == (2, 1, 6.0)
        assert row.revenue_usd == pytest.approx(2.0) and row.margin_usd == pytest.approx(0.5)
        t = TimingRepository(s)
        shape = dict(model="m", model_version="v", height=32, num_frames=9, two_stage=False)
        assert t.estimate(width=32, steps=2, **shape) is None
        t.record(width=32, steps=2, seconds=1.0, **shape)
        t.record(width=64, steps=2, seconds=2.5, **shape)
        assert t.estimate(width=32, steps=2, **shape) == pytest.approx(1.0)
        # between the two measured shapes, by the linear fit
        assert 1.0 < t.estimate(width=32, steps=3, **shape) < 2.5
        assert StateRepository(s).increment("cache_epoch") == 1
    with session_scope(sessions) as s:
        assert StateRepository(s).increment("cache_epoch") == 2


def test_list_owned_cursor_pagination(sessions) -> None:  # type: ignore[no-untyped-def]
    t0 = datetime(2026, 2, 1, tzinfo=UTC)
    with session_scope(sessions) as s:
        a, b = _key(s, "a"), _key(s, "b")
        mine = [_job(s, a, at=t0 + timedelta(minutes=i)).id for i in range(7)]
        _job(s, b, at=t0)
    seen: list[str] = []
    cursor = None
    with session_scope(sessions) as s:
        repo = JobRepository(s)
        while True:
            page = repo.list_owned(a, limit=3, cursor=cursor)
            seen += [j.id for j in page.items]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == mine[::-1]
        recent = repo.list_owned(a, created_after=t0 + timedelta(minutes=5))
        assert [j.id for j in recent.items] == mine[:4:-1]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_concurrent_upgrades_on_a_fresh_database(backend: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from contextlib import nullcontext

    from tests.service.harness import fresh_pg_database

    ctx = (
        fresh_pg_database("mig")
        if backend == "postgres"
        else nullcontext(f"sqlite:///{tmp_path / 'm.db'}")
    )
    with ctx as url:
        results: list[object] = []

        def run() -> None:
            try:
                results.append(upgrade(url))
            except Exception as exc:  # collected and asserted below
                results.append(exc)

        threads = [threading.Thread(target=run) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [head_revision()] * 4


def test_queue_snapshot_positions_match_queue_position(sessions) -> None:  # type: ignore[no-untyped-def]
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    with session_scope(sessions) as s:
        a, b, c = _key(s, "a"), _key(s, "b"), _key(s, "c")
        ids = [_job(s, a, at=t0 + timedelta(seconds=i)).id for i in range(4)]
        ids += [_job(s, b, at=t0 + timedelta(seconds=2 + i)).id for i in range(3)]
        ids += [_job(s, c, at=t0 + timedelta(seconds=1), priority=p).id for p in (0, 5, 5)]
        ids.append(_job(s, b, at=t0 + timedelta(seconds=3)).id)  # same created_at as another
    with session_scope(sessions) as s:  # a round-robin state where some keys were served
        queue.claim(s, worker_id="w", lease_seconds=30)
    with session_scope(sessions) as s:
        queue.claim(s, worker_id="w", lease_seconds=30)
    with session_scope(sessions) as s:
        snapshot = queue.QueueSnapshot.take(s)
        jobs = [JobRepository(s).get(i) for i in ids]
        queued = [j for j in jobs if j is not None and j.status == "queued"]
        assert len(queued) == len(ids) - 2
        for job in queued:
            assert snapshot.position(job.id) == queue.queue_position(s, job), job.id
        claimed = [j for j in jobs if j is not None and j.status != "queued"]
        assert [snapshot.position(j.id) for j in claimed] == [None, None]
        assert sorted(snapshot.position(j.id) for j in queued) == list(range(len(queued)))


def test_queue_snapshot_places_jobs_queued_after_it(sessions) -> None:  # type: ignore[no-untyped-def]
    # A submit renders its new job's position from the shared snapshot taken before the job
    # existed (no counting queries inside the write transaction): it must equal the live count,
    # for a key with queued jobs, a key with none queued that was served before, and a new key.
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    with session_scope(sessions) as s:
        a, b, c, d = _key(s, "a"), _key(s, "b"), _key(s, "c"), _key(s, "d")
        for i in range(3):
            _job(s, a, at=t0 + timedelta(seconds=i))
        _job(s, b, at=t0 + timedelta(seconds=1))
        _job(s, c, at=t0 + timedelta(seconds=2), priority=5)
        _job(s, d, at=t0)
    with session_scope(sessions) as s:  # d's only job is claimed: d has none queued, served once
        while queue.claim(s, worker_id="w", lease_seconds=30).api_key_id != d:
            pass
    with session_scope(sessions) as s:
        snapshot = queue.QueueSnapshot.take(s)
        e = _key(s, "e")  # created after the snapshot
    for n, (key, priority) in enumerate([(a, 0), (b, 0), (d, 0), (e, 0), (c, 5), (a, 5)]):
        with session_scope(sessions) as s:
            job = _job(s, key, at=t0 + timedelta(seconds=10 + n), priority=priority)
            live = queue.queue_position(s, job)
            placed = snapshot.position_of(job.priority, job.api_key_id, job.created_at, job.id)
            assert placed == live, (key, priority)
            s.rollback()  # each one alone: the snapshot never saw the others
