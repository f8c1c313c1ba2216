"""db.session.ping_when_idle on a real PostgreSQL: a pooled connection unused for a while is
pinged before use, and one the server dropped meanwhile (a restart, an idle timeout) is
replaced instead of failing the request; a connection in steady use costs no ping (issue 32:
``pool_pre_ping`` added a round trip to every unit of work)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError

from aiprod.db.session import make_engine, ping_when_idle
from tests.service.harness import fresh_pg_database


def _drop_pooled_connection(engine: Engine, admin: Engine) -> int:
    """Use the engine's one pooled connection, then have the server end it; its pid."""
    with engine.connect() as conn:
        pid = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
    with admin.connect() as a:
        a.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    return pid


def test_an_idle_connection_the_server_dropped_is_replaced() -> None:
    with fresh_pg_database("ping") as url:
        admin = create_engine(url, isolation_level="AUTOCOMMIT")
        plain = create_engine(url, pool_size=1, max_overflow=0)
        pinged = create_engine(url, pool_size=1, max_overflow=0)
        ping_when_idle(pinged, idle_seconds=0.2)
        try:
            # Without a ping, the dropped connection fails the next unit of work.
            _drop_pooled_connection(plain, admin)
            time.sleep(0.3)
            with pytest.raises(OperationalError), plain.connect() as conn:
                conn.execute(text("SELECT 1"))
            # With it: pinged after 0.2 s idle, found dead, replaced; no error.
            first = _drop_pooled_connection(pinged, admin)
            time.sleep(0.3)
            with pinged.connect() as conn:
                second = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            assert second != first
        finally:
            for e in (admin, plain, pinged):
                e.dispose()


def test_a_connection_in_steady_use_is_not_pinged() -> None:
    """make_engine's PostgreSQL engines ping this way, not at every checkout."""
    with fresh_pg_database("ping") as url:
        engine = make_engine(url, pool_size=1, max_overflow=0)
        sent: list[str] = []
        event.listen(engine, "before_cursor_execute", lambda _c, _cur, sql, *_a: sent.append(sql))
        pings = []
        real_ping = engine.dialect.do_ping
        engine.dialect.do_ping = lambda c: pings.append(1) or real_ping(c)  # type: ignore[method-assign]
        try:
            for _ in range(20):
                with engine.connect() as conn:
                    conn.execute(text("SELECT 42")).scalar_one()
            assert pings == [] and len(sent) == 20
        finally:
            engine.dispose()
