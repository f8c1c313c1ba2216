"""SQLite writers take turns through a lock that wakes the next one at once.

SQLite allows one writer at a time. A connection that finds the write lock taken waits in
SQLite's busy handler, which does not queue: it sleeps 1, 2, 5, 10, ... 25, 50, then 100 ms
between tries. Under load (4 API processes, their write requests and the workers) a waiter that
has already slept a while polls every 50-100 ms and keeps losing to newcomers: the load test's
submit p99 at 200 clients was 1.1-1.2 s on SQLite while a submit's own work is a few ms.

So every write transaction on a SQLite file first takes this gate, and gives it up as its
COMMIT or ROLLBACK is issued (SQLAlchemy's events fire just before; the next writer's
``BEGIN IMMEDIATE`` may then wait a millisecond in SQLite's handler; SQLite's own lock stays
what makes writes safe, the gate only orders the waiters):

- within a process, a ``threading.Lock``: the process's writers wait in the kernel and the next
  one runs as soon as the holder releases;
- across processes, ``flock`` on a file beside the database, tried without blocking and retried
  every millisecond or two: only one thread per process polls it, so the polling is cheap, and
  the kernel drops the lock of a process that dies.

Both waits give up after the busy timeout with SQLite's own "database is locked" error, so a
caller sees the same error as before, not a hang. Readers (the WAL's snapshots) never take it.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from typing import Any

from sqlalchemy import Engine, event

# The record.info key marking a pooled connection that holds the gate.
_HELD = "aiprod_write_gate"
# Cross-process polling interval bounds (seconds).
_POLL_MIN_S = 0.0005
_POLL_MAX_S = 0.002


class WriteGate:
    def __init__(self, lock_path: str, timeout_s: float) -> None:
        self.lock_path = lock_path
        self.timeout_s = timeout_s
        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        self._fd_pid = 0
        self._fd_lock = threading.Lock()

    def _file(self) -> int:
        with self._fd_lock:
            if self._fd is None or self._fd_pid != os.getpid():
                # a forked child must not share its parent's open file (flock is per open file)
                self._fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
                self._fd_pid = os.getpid()
            return self._fd

    def acquire(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        if not self._thread_lock.acquire(timeout=self.timeout_s):
            raise sqlite3.OperationalError("database is locked")
        try:
            fd = self._file()
            delay = _POLL_MIN_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise sqlite3.OperationalError("database is locked") from None
                    time.sleep(delay)
                    delay = min(delay * 2, _POLL_MAX_S)
        except BaseException:
            self._thread_lock.release()
            raise

    def release(self) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()


def install(engine: Engine, database_path: str, timeout_s: float) -> WriteGate:
    """Gate ``engine``'s write transactions (call before the engine's own "begin" listener, so
    the gate is held when ``BEGIN IMMEDIATE`` runs)."""
    gate = WriteGate(f"{database_path}-writelock", timeout_s)

    @event.listens_for(engine, "begin")
    def _take(conn: Any) -> None:
        if conn.get_execution_options().get("aiprod_read_only", False):
            return
        info = conn.connection.info  # the pooled DBAPI connection's own dict
        if info.get(_HELD):  # still held by this connection (never released: a safety net)
            return
        gate.acquire()
        info[_HELD] = True

    def _give_back(record: Any) -> None:
        if record.info.pop(_HELD, False):
            gate.release()

    @event.listens_for(engine, "commit")
    def _on_commit(conn: Any) -> None:
        _give_back(conn.connection)

    @event.listens_for(engine, "rollback")
    def _on_rollback(conn: Any) -> None:
        _give_back(conn.connection)

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        _give_back(record)

    @event.listens_for(engine, "close")
    def _on_close(_dbapi_conn: Any, record: Any) -> None:
        _give_back(record)

    @event.listens_for(engine, "invalidate")
    def _on_invalidate(_dbapi_conn: Any, record: Any, _exc: Any) -> None:
        _give_back(record)

    return gate
