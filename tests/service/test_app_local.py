"""In-process checks of the app that need no server: an unreachable database is a 503, the
rate limiter's window, keys stored only as keyed hashes, a process warm before its first request,
status reads on the event loop where they cannot wait (SQLite)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import event

from aiprod.core.settings import Settings
from aiprod.db.models import Job, RateLimitWindow
from aiprod.db.session import make_engine, make_sessionmaker, session_scope
from aiprod.jobs.webhooks import webhook_secret
from aiprod.service.app import create_app
from aiprod.service.keys import create_key
from aiprod.service.ratelimit import RateLimiter
from aiprod.service.security import generate_key, hash_key
from tests.service.harness import write_models_toml


def test_unreachable_database_is_a_503_not_a_500(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        models_file=write_models_toml(tmp_path),
        database_url="postgresql+psycopg://nobody@127.0.0.1:1/none",
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        r = c.get("/api/v1/jobs", headers={"Authorization": "Bearer aiprod_sk_x"})
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert r.json()["error"]["code"] == "unavailable"
        assert c.get("/healthz").status_code == 200


def test_rate_limiter_fixed_window_in_the_database(db_url: str) -> None:
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    rl = RateLimiter(window_seconds=60)

    def hit(key: str, now: float):  # type: ignore[no-untyped-def]
        return rl.hit(sessions, key, 2, now=now)

    states = [hit("k", 120.0 + i) for i in range(3)]
    assert [s.allowed for s in states] == [True, True, False]
    assert [s.remaining for s in states] == [1, 0, 0]
    assert states[-1].reset_seconds == 58
    assert hit("other", 122.0).allowed  # per key
    assert hit("k", 180.0).allowed  # next window
    with session_scope(sessions) as s:  # the old window was dropped
        assert s.query(RateLimitWindow).filter_by(api_key_id="k").count() == 1
    engine.dispose()


def _db_hits(sessions, key: str) -> int:  # type: ignore[no-untyped-def]
    with session_scope(sessions) as s:
        return sum(w.hits for w in s.query(RateLimitWindow).filter_by(api_key_id=key))


def test_rate_limiter_batches_writes_and_replicas_share_the_budget(db_url: str) -> None:
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    a, b = RateLimiter(window_seconds=60), RateLimiter(window_seconds=60)  # two API replicas
    # Far from the limit: the first hit of the window is written, the next ones only once a
    # second; the answers still count every request.
    states = [a.hit(sessions, "k", 1000, now=120.0 + i * 0.01) for i in range(50)]
    assert [s.remaining for s in states] == [1000 - i for i in range(1, 51)]
    assert _db_hits(sessions, "k") == 1
    a.hit(sessions, "k", 1000, now=121.5)  # a second later: the batch is added
    assert _db_hits(sessions, "k") == 51
    # The other replica sees the shared count at its first sync.
    assert b.hit(sessions, "k", 1000, now=121.6).remaining == 1000 - 52
    for i in range(900 - 52):
        b.hit(sessions, "k", 1000, now=122.0 + i * 0.001)
    assert _db_hits(sessions, "k") == 653  # b's once-a-second sync at 122.6; the rest pending
    # Near the limit (within 10%) every request is counted in the database, so the replicas
    # stop together at the shared limit.
    decisions = [
        (a if i % 2 else b).hit(sessions, "k", 1000, now=123.0 + i * 0.001) for i in range(110)
    ]
    assert [d.allowed for d in decisions] == [True] * 100 + [False] * 10
    assert _db_hits(sessions, "k") == 1010
    engine.dispose()


def test_read_sessions_take_no_write_lock_on_sqlite(tmp_path: Path) -> None:
    from sqlalchemy import text

    from aiprod.db.migrate import upgrade
    from aiprod.db.session import make_read_sessionmaker

    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    engine = make_engine(url)
    writes, reads = make_sessionmaker(engine), make_read_sessionmaker(engine)
    with session_scope(writes) as w:  # holds the write lock (BEGIN IMMEDIATE) until it ends
        w.execute(text("UPDATE api_keys SET active = active"))
        with session_scope(reads) as r:  # a deferred BEGIN: reads the snapshot at once
            assert r.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 0
    engine.dispose()


def test_keys_are_random_and_only_hashed() -> None:
    a, b = generate_key(), generate_key()
    assert a != b and a.startswith("aiprod_sk_") and len(a) >= 50
    h = hash_key(a, "s" * 32)
    assert len(h) == 64 and a not in h and h != hash_key(a, "t" * 32)
    assert webhook_secret("id1", "s" * 32).startswith("whsec_")
    assert webhook_secret("id1", "s" * 32) != webhook_secret("id2", "s" * 32)


def _on_event_loop() -> bool:
    """True in the thread of a running asyncio loop (a route's own code), False on a worker
    thread (the thread pool)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _client_with_key(db_url: str, tmp_path: Path) -> tuple[TestClient, dict[str, str]]:
    settings = Settings(
        data_dir=tmp_path, models_file=write_models_toml(tmp_path), database_url=db_url
    )
    setup = make_engine(db_url)
    with session_scope(make_sessionmaker(setup)) as s:
        _, token = create_key(s, secret=settings.resolved_secret_key(), name="k")
    setup.dispose()
    return TestClient(create_app(settings)), {"Authorization": f"Bearer {token}"}


def test_a_started_process_answers_its_first_requests_warm(db_url: str, tmp_path: Path) -> None:
    """AppState.warm_up at start: the first submit and the first status call of a new API
    process find their queries compiled (SQLAlchemy's statement cache) and read nothing the
    warm-up read for them (a cold process paid 40 ms instead of 6 for its first submit)."""
    client, auth = _client_with_key(db_url, tmp_path)
    app = client.app
    engine = app.state.aiprod.engine  # type: ignore[attr-defined]
    selects: list[tuple[str, bool]] = []

    def record(_conn, _cursor, statement, _params, context, _many):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("SELECT"):
            selects.append((statement, context.cache_hit == context.dialect.CACHE_HIT))

    with client as c:
        for e in (engine, app.state.aiprod.inline_engine):  # type: ignore[attr-defined]
            if e is not None:  # after the start's warm-up
                event.listen(e, "after_cursor_execute", record)
        job = c.post("/api/v1/generate", json={"prompt": "a fox"}, headers=auth)
        assert job.status_code == 202, job.text
        assert c.get(f"/api/v1/jobs/{job.json()['id']}", headers=auth).status_code == 200
    assert selects, "the first requests read nothing: this test no longer sees their queries"
    cold = [statement.split("\n")[0] for statement, hit in selects if not hit]
    assert not cold, f"compiled by the first requests instead of the warm-up: {cold}"
    with session_scope(make_sessionmaker(engine)) as s:  # the warm-up only read
        assert s.query(Job).count() == 1


def test_status_reads_run_on_the_event_loop_only_on_sqlite(db_url: str, tmp_path: Path) -> None:
    """A status call (aiprod's and the OpenAI-compatible one) reads its job on the event loop
    on SQLite, without the hop to a thread and back; on PostgreSQL (a round trip to a server)
    on a thread, never on the loop."""
    client, auth = _client_with_key(db_url, tmp_path)
    reads: list[tuple[str, bool]] = []

    def record(_conn, _cursor, statement, _params, _context, _many):  # type: ignore[no-untyped-def]
        if "FROM jobs" in statement and "jobs.id =" in statement:
            reads.append((statement.split("\n")[0], _on_event_loop()))

    with client as c:
        state = c.app.state.aiprod  # type: ignore[attr-defined]
        sqlite = db_url.startswith("sqlite")
        assert (state.inline_engine is not None) is sqlite
        for e in (state.engine, state.inline_engine):
            if e is not None:
                event.listen(e, "before_cursor_execute", record)
        job = c.post("/api/v1/generate", json={"prompt": "a fox"}, headers=auth).json()
        reads.clear()
        status = c.get(f"/api/v1/jobs/{job['id']}", headers=auth)
        assert status.status_code == 200 and status.json()["status"] == "queued"
        assert status.json()["queue_position"] == 0
        video = c.get(f"/v1/videos/{job['id']}", headers=auth)
        assert video.status_code == 200 and video.json()["id"] == job["id"]
        missing = c.get("/api/v1/jobs/no-such-job", headers=auth)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert len(reads) == 3, reads
    assert all(on_loop is sqlite for _, on_loop in reads), reads


def test_an_inline_read_that_would_wait_is_answered_from_a_thread(tmp_path: Path) -> None:
    """SQLite: a status read that would have to wait on the event loop runs again on a thread
    and answers as usual: the queue snapshot that must be read again (``WouldBlock``), and a
    database error on the loop's connection."""
    from aiprod.db.migrate import upgrade
    from aiprod.db.session import make_inline_read_engine, make_read_sessionmaker
    from aiprod.jobs.views import QueueView

    url = f"sqlite:///{tmp_path / 'test.db'}"
    upgrade(url)
    client, auth = _client_with_key(url, tmp_path)
    snapshot_reads: list[bool] = []

    def record(_conn, _cursor, statement, _params, _context, _many):  # type: ignore[no-untyped-def]
        if "last_claimed_at" in statement:  # the queue snapshot's second query
            snapshot_reads.append(_on_event_loop())

    with client as c:
        state = c.app.state.aiprod  # type: ignore[attr-defined]
        first = c.post("/api/v1/generate", json={"prompt": "a fox"}, headers=auth).json()
        second = c.post("/api/v1/generate", json={"prompt": "a cat"}, headers=auth).json()
        event.listen(state.engine, "before_cursor_execute", record)
        # A process whose snapshot is gone (as after an idle spell): the loop may not read it.
        state.queue_view = QueueView(sessions=state.read_sessions)
        status = c.get(f"/api/v1/jobs/{second['id']}", headers=auth)
        assert status.status_code == 200 and status.json()["queue_position"] == 1
        assert snapshot_reads and not any(snapshot_reads), snapshot_reads  # read on a thread
        # The loop's connection fails (here: a database without aiprod's tables).
        empty = make_inline_read_engine(f"sqlite:///{tmp_path / 'empty.db'}")
        assert empty is not None
        state.inline_engine, state.inline_reads = empty, make_read_sessionmaker(empty)
        status = c.get(f"/api/v1/jobs/{first['id']}", headers=auth)
        assert status.status_code == 200 and status.json()["id"] == first["id"]
        video = c.get(f"/v1/videos/{first['id']}", headers=auth)
        assert video.status_code == 200 and video.json()["id"] == first["id"]
        empty.dispose()
