"""Alembic environment: runs against the connection aiprod hands over (see aiprod.db.migrate)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from aiprod.db.models import Base
from aiprod.db.session import make_engine

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite ALTER TABLE via copies
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("no database: run migrations through aiprod.db.migrate")
    engine = make_engine(url)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()
