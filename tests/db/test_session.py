"""SQLite engine setup under concurrency (real files, real threads)."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import text

from aiprod.db.session import make_engine


def test_connections_opening_a_fresh_sqlite_file_at_once_all_get_wal(tmp_path: Path) -> None:
    # Switching a new file to WAL takes an exclusive lock; SQLite answered the connections that
    # raced for it "database is locked" without waiting (seen as a flaky concurrent-upgrade test).
    for round_ in range(20):
        url = f"sqlite:///{tmp_path / f'r{round_}.db'}"
        modes: list[object] = []
        start = threading.Barrier(6)

        def connect(
            url: str = url, modes: list[object] = modes, start: threading.Barrier = start
        ) -> None:
            engine = make_engine(url)
            try:
                start.wait()
                with engine.begin() as conn:  # BEGIN IMMEDIATE, then a write, as a migration does
                    conn.execute(text("CREATE TABLE IF NOT EXISTS t (x INTEGER)"))
                    conn.execute(text("INSERT INTO t VALUES (1)"))
                    modes.append(conn.execute(text("PRAGMA journal_mode")).scalar())
            except Exception as exc:  # collected and asserted below
                modes.append(exc)
            finally:
                engine.dispose()

        threads = [threading.Thread(target=connect) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert modes == ["wal"] * 6, f"round {round_}: {modes}"
