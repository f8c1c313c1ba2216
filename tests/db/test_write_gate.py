"""The SQLite write gate (db/write_gate.py): writers take turns, the gate is always given back,
and a writer that cannot get it fails the way SQLite's busy timeout did, not by hanging."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from aiprod.db import write_gate
from aiprod.db.session import make_engine, make_read_sessionmaker, make_sessionmaker


def _engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{tmp_path / 'g.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    return engine


def test_gate_is_given_back_after_commit_rollback_and_a_failed_statement(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    sessions = make_sessionmaker(engine)
    gate_file = f"{tmp_path / 'g.db'}-writelock"
    for end in ("commit", "rollback", "error"):
        s = sessions()
        s.execute(text("INSERT INTO t VALUES (1)"))
        if end == "commit":
            s.commit()
        elif end == "rollback":
            s.rollback()
        else:
            with pytest.raises(OperationalError):
                s.execute(text("INSERT INTO missing VALUES (1)"))
            s.rollback()
        s.close()
        # another process could take the file lock now, and another thread writes at once
        fd = os.open(gate_file, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        done = threading.Event()

        def write(done: threading.Event = done) -> None:
            with sessions.begin() as s2:
                s2.execute(text("INSERT INTO t VALUES (2)"))
            done.set()

        threading.Thread(target=write).start()
        assert done.wait(30), f"gate still held after {end}"
    engine.dispose()


def test_readers_do_not_take_the_gate(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    reads = make_read_sessionmaker(engine)
    writer = make_sessionmaker(engine)()
    writer.execute(text("INSERT INTO t VALUES (1)"))  # holds the gate and SQLite's write lock
    try:
        with reads() as r:
            assert r.execute(text("SELECT count(*) FROM t")).scalar_one() == 0
    finally:
        writer.rollback()
        writer.close()
    engine.dispose()


def test_many_threads_and_processes_write_without_losing_a_row(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    url = f"sqlite:///{tmp_path / 'g.db'}"
    child = (
        "import sys\n"
        "from sqlalchemy import text\n"
        "from aiprod.db.session import make_engine\n"
        "e = make_engine(sys.argv[1])\n"
        "for _ in range(100):\n"
        "    with e.begin() as c:\n"
        "        n = c.execute(text('SELECT count(*) FROM t')).scalar_one()\n"
        "        c.execute(text('INSERT INTO t VALUES (:n)'), {'n': n})\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", child, url]) for _ in range(3)]

    def thread_writes() -> None:
        for _ in range(100):
            with engine.begin() as c:
                n = c.execute(text("SELECT count(*) FROM t")).scalar_one()
                c.execute(text("INSERT INTO t VALUES (:n)"), {"n": n})

    threads = [threading.Thread(target=thread_writes) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0]
    with engine.connect() as c:
        values = [r[0] for r in c.execute(text("SELECT x FROM t ORDER BY x"))]
    # each write read the count and wrote it inside one write transaction: 0..699, no repeats
    assert values == list(range(700))
    engine.dispose()


def test_a_writer_that_cannot_get_the_gate_gives_up_with_database_is_locked(
    tmp_path: Path,
) -> None:
    gate = write_gate.WriteGate(str(tmp_path / "lock"), timeout_s=0.5)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(tmp_path / 'lock')!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            gate.acquire()
        assert time.monotonic() - started >= 0.5
        # the thread lock was given back: once the other process is gone, it works
        holder.kill()
        holder.wait()
        gate.acquire()
        gate.release()
    finally:
        holder.kill()
        holder.wait()
