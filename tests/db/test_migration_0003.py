"""Migration 0003 (jobs.deleted_at, jobs.webhook_events) up, down and up again on SQLite and
PostgreSQL, with a row written before it keeping its data."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from aiprod.db.migrate import downgrade, upgrade
from tests.service.harness import fresh_pg_database


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_0003_up_down_up(backend: str, tmp_path: Path) -> None:
    if backend == "sqlite":
        _check(f"sqlite:///{tmp_path / 'm.db'}")
    else:
        with fresh_pg_database("mig") as url:
            _check(url)


def _columns(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return {c["name"] for c in inspect(engine).get_columns("jobs")}
    finally:
        engine.dispose()


def _check(url: str) -> None:
    upgrade(url, "0002")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO api_keys (id, key_hash, prefix, name, scope, active, priority, "
                "created_at) VALUES ('k', 'h', 'p', 'n', 'client', true, 0, CURRENT_TIMESTAMP)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO jobs (id, api_key_id, prompt, model, model_version, params, status, "
                "priority, attempts, max_attempts, available_at, progress, cancel_requested, "
                "created_at) VALUES ('j', 'k', 'a fox', 'builtin', 'v', '{}', 'succeeded', 0, 1, "
                "3, CURRENT_TIMESTAMP, 1.0, false, CURRENT_TIMESTAMP)"
            )
        )
    engine.dispose()
    assert not {"deleted_at", "webhook_events"} & _columns(url)
    upgrade(url)
    assert {"deleted_at", "webhook_events"} <= _columns(url)
    engine = create_engine(url)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT prompt, deleted_at, webhook_events FROM jobs")).one()
    engine.dispose()
    assert tuple(row) == ("a fox", None, None)
    downgrade(url, "0002")
    assert not {"deleted_at", "webhook_events"} & _columns(url)
    upgrade(url)
    assert {"deleted_at", "webhook_events"} <= _columns(url)
