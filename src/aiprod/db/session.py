"""Engines and sessions for SQLite and PostgreSQL.

SQLite: WAL mode, a generous busy timeout, foreign keys on, and every transaction that may write
opened with ``BEGIN IMMEDIATE`` so it holds the write lock from its first statement. That makes
the queue's claim atomic across processes and avoids the "database is locked" errors that a read
transaction upgrading to a write gets in WAL mode. Sessions from ``make_read_sessionmaker`` open
a deferred ``BEGIN`` instead: they read a WAL snapshot without taking the write lock, so the API's
status polls neither wait for nor block the workers and the writing requests (with every request
taking the one lock, 200 polling clients collapsed into "database is locked"; see
docs/performance.md). On PostgreSQL both kinds are ordinary sessions.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import SingletonThreadPool

from aiprod.core.errors import ConfigError
from aiprod.core.logging import OUTAGE_MARK
from aiprod.db import write_gate

# The API runs sync endpoints and dependencies on anyio's thread pool (40 threads). A request
# holds its session's connection until the dependency's exit, which itself needs a pool thread:
# with fewer connections than threads, 40 requests waiting for a connection can block every
# exit, and all of them time out after 30 s (seen in benchmarks/load_test.py at 200 clients).
# Connections beyond POOL_SIZE are closed when returned. On PostgreSQL each new connection is a
# new server process: with 10 kept, bursts of 200 polling clients kept opening and closing
# connections; 30 are kept for reuse (the load test's 200-client tail did not measurably move
# either way, see docs/performance.md). The pool only grows to what a process uses at once,
# so a worker still holds one or two.
POOL_SIZE = 30
POOL_OVERFLOW = 20
# A pooled PostgreSQL connection unused this long is pinged before use (see ping_when_idle).
PING_AFTER_IDLE_SECONDS = 5.0
_CHECKED_IN = "aiprod_checked_in"
# Execution option marking a read-only unit of work (see make_read_sessionmaker).
READ_ONLY_OPTION = "aiprod_read_only"
# How long a SQLite connection waits for a lock before "database is locked" (seconds).
BUSY_TIMEOUT_S = 30
#: While the database stays unreachable, a process repeats "still unavailable" this often.
OUTAGE_REMINDER_SECONDS = 60.0
# OUTAGE_MARK (from core.logging) is set on a SQLAlchemy exception that OutageLog reported:
# aiprod's log handler drops the tracebacks of such errors (core.logging.OutageFilter).

log = logging.getLogger("aiprod.db")


class OutageLog:
    """One process's view of the database's reachability, logged once per state change
    ("unavailable", "reachable again") plus a reminder every ``remind_every`` seconds while it
    lasts, instead of a traceback from every loop about once a second. Thread-safe."""

    def __init__(
        self,
        logger: logging.Logger = log,
        *,
        remind_every: float = OUTAGE_REMINDER_SECONDS,
        clock: Any = time.monotonic,
    ) -> None:
        self.logger = logger
        self.remind_every = remind_every
        self.clock = clock
        self._lock = threading.Lock()
        self.down_since: float | None = None
        self._reminded_at = 0.0
        self.failures = 0

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, exc: BaseException) -> None:
        """A connection to the database failed (``exc``: why)."""
        with self._lock:
            now = self.clock()
            self.failures += 1
            reason = _one_line(exc)
            if self.down_since is None:
                self.down_since = self._reminded_at = now
                self.failures = 1
                self.logger.error(
                    "database unavailable (%s); retrying, requests get 503 meanwhile", reason
                )
            elif now - self._reminded_at >= self.remind_every:
                self._reminded_at = now
                self.logger.warning(
                    "database still unavailable after %.0f s (%d failed connections): %s",
                    now - self.down_since,
                    self.failures,
                    reason,
                )

    def ok(self) -> None:
        """A connection to the database worked."""
        if self.down_since is None:  # the common case: no lock
            return
        with self._lock:
            if self.down_since is None:
                return
            self.logger.warning(
                "database reachable again after %.0f s", self.clock() - self.down_since
            )
            self.down_since = None


#: This process's outage state, shared by its engines (installed by ``make_engine``).
database_outage = OutageLog()


def _one_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {lines[0][:200] if lines else ''}"


def watch_outages(engine: Engine, outage: OutageLog | None = None) -> None:
    """Report ``engine``'s failed connections (and the first one that works again) to
    ``outage`` (default: this process's ``database_outage``)."""
    tracker = outage or database_outage

    @event.listens_for(engine, "handle_error")
    def _on_error(ctx: Any) -> None:
        # No connection (connect failed) or a lost one: the database is unreachable. Errors on
        # a working connection (a constraint, "database is locked") are not an outage.
        if ctx.connection is None or ctx.is_disconnect:
            tracker.failed(ctx.original_exception)
            if ctx.sqlalchemy_exception is not None:
                setattr(ctx.sqlalchemy_exception, OUTAGE_MARK, True)

    @event.listens_for(engine, "checkout")
    def _on_checkout(*_args: Any) -> None:
        tracker.ok()


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine for ``url`` with the settings aiprod relies on."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError with a terse message
        raise ConfigError(
            f"AIPROD_DATABASE_URL={url!r} is not a database URL; use e.g. "
            "sqlite:///aiprod-data/aiprod.db or postgresql+psycopg://user@host/db"
        ) from exc
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        if parsed.database and parsed.database != ":memory:":
            # See POOL_SIZE / POOL_OVERFLOW: a smaller pool deadlocks the API under load. A file's
            # connections cost no server: keep them all open rather than closing and reopening
            # (with its PRAGMAs) every connection beyond POOL_SIZE under load.
            kwargs.setdefault("pool_size", POOL_SIZE + POOL_OVERFLOW)
            kwargs.setdefault("max_overflow", 0)
        engine = create_engine(
            url,
            connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False},
            **kwargs,
        )
        if parsed.database and parsed.database != ":memory:":
            write_gate.install(engine, str(Path(parsed.database).expanduser()), BUSY_TIMEOUT_S)
        _sqlite_setup(engine)
        watch_outages(engine)
        return engine
    if parsed.get_backend_name() == "postgresql":
        kwargs.setdefault("pool_size", POOL_SIZE)
        kwargs.setdefault("max_overflow", POOL_OVERFLOW)
        engine = create_engine(url, **kwargs)
        if not kwargs.get("pool_pre_ping"):
            ping_when_idle(engine)
        watch_outages(engine)
        return engine
    raise ConfigError(
        f"unsupported database {parsed.get_backend_name()!r}: aiprod runs on SQLite or PostgreSQL"
    )


def ping_when_idle(engine: Engine, idle_seconds: float = PING_AFTER_IDLE_SECONDS) -> None:
    """Ping a pooled connection at checkout when it sat unused for ``idle_seconds`` or more;
    a failed ping drops every pooled connection (the server restarted) and checks out a new
    one. SQLAlchemy's ``pool_pre_ping`` pings at every checkout: a round trip more for every
    unit of work, which under load waits for the server's process like any query. A
    connection in steady use needs no ping: if the server went away meanwhile, its next
    statement fails as a disconnect, which also drops the pool (the request gets the outage's
    503)."""

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        if record is not None:
            record.info[_CHECKED_IN] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        last = record.info.get(_CHECKED_IN)
        if last is None or time.monotonic() - last < idle_seconds:
            return  # new (it just connected) or in steady use
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            idle = time.monotonic() - last
            raise InvalidatePoolError(f"ping after {idle:.0f} s idle: {exc}") from exc


def _enable_wal(cur: Any) -> None:
    """``PRAGMA journal_mode=WAL``, retried while another connection holds the lock.

    Switching a new database file to WAL takes an exclusive lock, and when several connections
    do it at once (API replicas and workers starting together on a fresh file) SQLite answers
    the others "database is locked" at once, without waiting out the busy timeout (two
    connections upgrading their shared locks would deadlock). Retry for as long as the busy
    timeout would have waited.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _sqlite_setup(engine: Engine, *, pragmas: bool = True) -> None:
    """BEGIN as aiprod wants it (deferred for read-only units of work, else IMMEDIATE) and,
    with ``pragmas``, WAL mode and the connection settings. Without (the event loop's reads,
    ``make_inline_read_engine``): the file is in WAL mode already, and switching it may wait."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's own is deferred).
        dbapi_conn.isolation_level = None
        if not pragmas:
            return
        cur = dbapi_conn.cursor()
        # SQLite's busy timeout is already BUSY_TIMEOUT_S: pysqlite's connect timeout sets it.
        _enable_wal(cur)
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        read_only = conn.get_execution_options().get(READ_ONLY_OPTION, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def make_read_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions for units of work that only read (SQLite: a deferred BEGIN, no write lock;
    PostgreSQL: autocommit, one round trip per query).

    Writing in one is a bug: on SQLite it would upgrade to a write lock mid-transaction and can
    fail with "database is locked" when another writer committed since its snapshot.
    """
    options: dict[str, Any] = {READ_ONLY_OPTION: True}
    if engine.dialect.name == "postgresql":
        # No BEGIN / COMMIT round trips around a read: each statement sees committed data.
        options["isolation_level"] = "AUTOCOMMIT"
    return sessionmaker(engine.execution_options(**options), expire_on_commit=False)


def make_inline_read_engine(url: str) -> Engine | None:
    """An engine for reads an API process runs on its event loop, without a thread (SQLite
    files only; None for anything else): a connection per thread (``SingletonThreadPool``: the
    loop's own, used one unit of work at a time; the start's warm-up has another) that never
    waits: its busy timeout is 0, so where a read would wait for a lock SQLite answers
    "database is locked" at once and the caller retries on a thread
    (``service.deps.read_inline``). A read of a few rows from a WAL database is a local read
    of cached pages, a fraction of a millisecond: less than the hop to a thread and back,
    which under load (two threads per request taking turns on the GIL) was most of a status
    call's latency.

    PostgreSQL has none: its reads are round trips to a server, and a loop that waited for
    one would stall every request of its process."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    if parsed.database == ":memory:":
        return None
    engine = create_engine(url, poolclass=SingletonThreadPool, connect_args={"timeout": 0})
    # WAL mode is stored in the file (the main engine's connections set it); the sessions
    # are make_read_sessionmaker's: a deferred BEGIN, no write lock.
    _sqlite_setup(engine, pragmas=False)
    return engine


def make_insert_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions for a unit of work that is one INSERT (a submit's job row). PostgreSQL:
    autocommit, so the statement commits itself, one round trip instead of three (BEGIN, the
    INSERT, COMMIT), durable as any commit. SQLite: an ordinary write session (``BEGIN
    IMMEDIATE``; no round trips to save). Anything more than one statement needs
    ``make_sessionmaker``'s sessions: here each statement would commit on its own."""
    if engine.dialect.name == "postgresql":
        return sessionmaker(
            engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False
        )
    return make_sessionmaker(engine)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit at the end, roll back on error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
