"""The API's submit (jobs.submit.submit_in_two_transactions), on real SQLite and PostgreSQL:
what it sends to the database, and that the split into a read unit of work and a one-INSERT
unit of work keeps every rule of the one-session submit (idempotent replays, 409 on a reused
key, budgets, model availability).

Issue 32: at 200 clients, a submit held SQLite's write lock through every query it ran
(budget, idempotency lookup, availability, estimate, the insert, the rendering), and on
PostgreSQL ran about a dozen round trips. Now the INSERT is the only statement a new request
sends once the process's shared reads are warm."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select

from aiprod.core.errors import AiprodError, Conflict
from aiprod.core.settings import Settings
from aiprod.db.models import Job, new_id
from aiprod.db.repositories import ApiKeyRepository
from aiprod.db.session import (
    make_engine,
    make_insert_sessionmaker,
    make_read_sessionmaker,
    make_sessionmaker,
    session_scope,
)
from aiprod.jobs.budget import BudgetExceeded
from aiprod.jobs.model_state import ModelState, publish_model_states
from aiprod.jobs.schema import GenerateBody
from aiprod.jobs.storage import LocalStorage
from aiprod.jobs.submit import SubmitReads, Submitted, Submitter, submit_in_two_transactions
from tests.service.harness import write_models_toml


class Statements:
    """The SQL an engine sends, per thread that sent it."""

    def __init__(self, engine: Engine) -> None:
        self.sent: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        event.listen(engine, "before_cursor_execute", self._record)
        event.listen(engine, "begin", self._begin)
        event.listen(engine, "commit", self._commit)

    def _add(self, sql: str) -> None:
        with self._lock:
            self.sent.append((threading.current_thread().name, sql.split()[0].upper()))

    def _record(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self._add(statement)

    @staticmethod
    def _autocommit(conn: Any) -> bool:
        return bool(getattr(conn.connection.dbapi_connection, "autocommit", False))

    def _begin(self, conn: Any) -> None:
        # psycopg sends BEGIN itself before the first statement, unless in autocommit;
        # SQLite's BEGIN IMMEDIATE is a statement (recorded by _record)
        if conn.engine.dialect.name == "postgresql" and not self._autocommit(conn):
            self._add("BEGIN")

    def _commit(self, conn: Any) -> None:
        if not self._autocommit(conn):  # a DBAPI commit in autocommit sends nothing
            self._add("COMMIT")

    def take(self) -> list[str]:
        with self._lock:
            out = [sql for _thread, sql in self.sent]
            self.sent.clear()
        return out


@pytest.fixture
def world(db_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    from aiprod.core.registry import load_registry

    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    with session_scope(sessions) as s:
        key = ApiKeyRepository(s).create(key_hash=new_id(), prefix="p", name="k").id
    yield {
        "engine": engine,
        "sessions": sessions,
        "read": make_read_sessionmaker(engine),
        "insert": make_insert_sessionmaker(engine),
        "settings": Settings(data_dir=tmp_path),
        "registry": load_registry(write_models_toml(tmp_path)),
        "storage": LocalStorage(tmp_path / "out"),
        "key": key,
    }
    engine.dispose()


def _submit(w: dict[str, Any], body: GenerateBody, **kw: Any) -> Submitted:
    kw.setdefault("submitter", Submitter(w["key"], 0, None))
    return submit_in_two_transactions(
        w["read"],
        w["insert"],
        body=body,
        registry=w["registry"],
        storage=w["storage"],
        settings=w["settings"],
        **kw,
    )


def _jobs(w: dict[str, Any]) -> int:
    with session_scope(w["sessions"]) as s:
        return int(s.execute(select(func.count()).select_from(Job)).scalar_one())


def test_a_new_submit_sends_one_insert(world: dict[str, Any]) -> None:
    sql = Statements(world["engine"])
    reads = SubmitReads(ttl=60.0)
    body = GenerateBody(prompt="a red fox")
    _submit(world, body, reads=reads, idempotency_key="first")  # warms the shared reads
    sql.take()
    sub = _submit(world, body, reads=reads, idempotency_key="second")
    assert sub.created and sub.job.idempotency_key == "second"
    sent = sql.take()
    if world["engine"].dialect.name == "postgresql":
        assert sent == ["INSERT"], sent  # autocommit: the statement commits itself
    else:  # the write lock is taken for the INSERT alone
        assert sent == ["BEGIN", "INSERT", "COMMIT"], sent
    assert _jobs(world) == 2


def test_a_replay_returns_the_first_job_whatever_the_checks_say_now(
    world: dict[str, Any],
) -> None:
    reads = SubmitReads(ttl=60.0)
    body = GenerateBody(prompt="a red fox")
    first = _submit(world, body, reads=reads, idempotency_key="k1")
    again = _submit(world, body, reads=reads, idempotency_key="k1")
    assert not again.created and again.job.id == first.job.id
    # The key is over its budget now: a replay still returns the job; a new request is 402.
    over = Submitter(world["key"], 0, 0.0)
    replay = _submit(world, body, reads=reads, idempotency_key="k1", submitter=over)
    assert not replay.created and replay.job.id == first.job.id
    with pytest.raises(BudgetExceeded):
        _submit(world, body, reads=reads, idempotency_key="k2", submitter=over)
    # The same key with another body: 409, also when that body would be refused anyway.
    with pytest.raises(Conflict) as conflict:
        _submit(world, GenerateBody(prompt="a blue fox"), reads=reads, idempotency_key="k1")
    assert conflict.value.code == "idempotency_conflict"
    with pytest.raises(Conflict):
        _submit(world, GenerateBody(prompt="x", width=33), reads=reads, idempotency_key="k1")
    assert _jobs(world) == 1


def test_concurrent_requests_with_one_key_make_one_job(world: dict[str, Any]) -> None:
    """The Idempotency-Key is not looked up before the INSERT: the unique index decides, and
    the losers return the winner's job."""
    body = GenerateBody(prompt="a red fox")
    results: list[Submitted] = []
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def one() -> None:
        start.wait()
        try:
            results.append(_submit(world, body, reads=SubmitReads(), idempotency_key="same"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len({r.job.id for r in results}) == 1 and sum(r.created for r in results) == 1
    assert _jobs(world) == 1


def test_a_model_that_became_unavailable_is_refused_once_the_shared_read_is_renewed(
    world: dict[str, Any],
) -> None:
    reads = SubmitReads(ttl=0.0)  # renewed on every submit: what a second later looks like
    body = GenerateBody(prompt="a red fox")
    assert _submit(world, body, reads=reads).created
    with session_scope(world["sessions"]) as s:
        down = ModelState(available=False, reason="out of memory while loading")
        publish_model_states(s, "w1", {"builtin": down})
    with pytest.raises(AiprodError) as refused:
        _submit(world, body, reads=reads)
    assert refused.value.code == "model_unavailable" and refused.value.status_code == 503
    assert _jobs(world) == 1
