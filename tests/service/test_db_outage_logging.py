"""During a database outage each process logs once per state change plus a rate-limited
reminder, not a traceback from every loop about once a second (issue 32). The database is a
closed loopback port."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from aiprod.core.logging import configure_logging
from aiprod.core.settings import Settings
from aiprod.db import session as db_session
from aiprod.db.session import OutageLog, make_engine, make_sessionmaker, session_scope
from aiprod.service.app import create_app
from tests.service.harness import free_port, write_models_toml


@pytest.fixture
def outage(monkeypatch: pytest.MonkeyPatch) -> OutageLog:
    """A fresh per-process outage state for this test (engines made now report to it)."""
    fresh = OutageLog()
    monkeypatch.setattr(db_session, "database_outage", fresh)
    return fresh


@pytest.fixture
def unreachable_url() -> str:
    return f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none"  # nothing listens


@pytest.fixture
def aiprod_log() -> Iterator[io.StringIO]:
    """aiprod's own handler (as every process installs it), writing to a buffer."""
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = configure_logging(level="INFO", fmt="text", stream=stream)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "aiprod.db"]


def test_a_retrying_loop_logs_the_outage_once_without_tracebacks(
    outage: OutageLog,
    unreachable_url: str,
    caplog: pytest.LogCaptureFixture,
    aiprod_log: io.StringIO,
) -> None:
    engine = make_engine(unreachable_url)
    sessions = make_sessionmaker(engine)
    loop_log = logging.getLogger("aiprod.worker")
    caplog.set_level(logging.INFO)
    try:
        for _ in range(20):  # e.g. a heartbeat loop, once a second
            try:
                with session_scope(sessions) as s:
                    s.execute(text("SELECT 1"))
            except Exception:
                loop_log.exception("heartbeat failed")
    finally:
        engine.dispose()
    lines = _outage_lines(caplog)
    assert len(lines) == 1 and lines[0].startswith("database unavailable"), lines
    assert outage.down and outage.failures == 20
    out = aiprod_log.getvalue()
    assert out.count("database unavailable") == 1, out
    assert "Traceback" not in out and "heartbeat failed" not in out, out
    # Errors that are not an outage keep their traceback.
    try:
        raise ValueError("a bug")
    except ValueError:
        loop_log.exception("heartbeat failed")
    assert "Traceback" in aiprod_log.getvalue()


def test_the_api_logs_an_outage_once_not_per_request(
    outage: OutageLog, unreachable_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(
        data_dir=tmp_path, models_file=write_models_toml(tmp_path), database_url=unreachable_url
    )
    caplog.set_level(logging.INFO)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        for _ in range(10):
            r = c.get("/api/v1/jobs", headers={"Authorization": "Bearer aiprod_sk_x"})
            assert r.status_code == 503 and r.headers["retry-after"]
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage().split(" (")[0] for r in errors] == ["database unavailable"], [
        r.getMessage() for r in errors
    ]


def test_reminders_are_rate_limited_and_recovery_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    log = OutageLog(remind_every=60, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="aiprod.db")
    exc = ConnectionRefusedError("connection refused")
    for _ in range(59):  # a minute of failures, one a second
        log.failed(exc)
        now[0] += 1
    assert len(_outage_lines(caplog)) == 1
    log.failed(exc)  # 59 s after the first: still quiet
    now[0] += 1
    log.failed(exc)  # 60 s: one reminder
    lines = _outage_lines(caplog)
    assert len(lines) == 2 and lines[1].startswith("database still unavailable after 60 s")
    for _ in range(30):
        log.failed(exc)
        now[0] += 1
    assert len(_outage_lines(caplog)) == 2
    log.ok()
    log.ok()
    lines = _outage_lines(caplog)
    assert len(lines) == 3 and lines[2].startswith("database reachable again after 90 s")
    assert not log.down
    log.failed(exc)  # a new outage is a new state change
    assert _outage_lines(caplog)[-1].startswith("database unavailable")


def test_recovery_is_noticed_by_the_engine(
    outage: OutageLog, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aiprod.db")
    engine = make_engine(f"sqlite:///{tmp_path / 'ok.db'}")
    outage.failed(ConnectionRefusedError("down"))  # as if it had been down
    with session_scope(make_sessionmaker(engine)) as s:
        s.execute(text("SELECT 1"))
    engine.dispose()
    assert not outage.down
    assert _outage_lines(caplog)[-1].startswith("database reachable again")
