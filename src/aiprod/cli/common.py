"""Helpers shared by the ``aiprod`` command modules: settings, logging, consoles, database."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from rich.console import Console

if TYPE_CHECKING:
    from aiprod.core.settings import Settings

out = Console()


def load_settings() -> Settings:
    """Read the settings now (environment and .env), not the process-wide cached ones."""
    from aiprod.core.settings import Settings

    return Settings()


def setup_logging(level: str = "INFO") -> None:
    from aiprod.core.logging import configure_logging

    # JSON lines (text on a terminal; AIPROD_LOG_FORMAT overrides): see aiprod.core.logging.
    configure_logging(level=level.upper())


def table_console() -> Console:
    """Tables at the terminal's width; piped output gets room for full ids."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def open_db(settings: Settings) -> Any:
    """Migrate the database to head and return a sessionmaker for it."""
    from aiprod.db.migrate import upgrade
    from aiprod.db.session import make_engine, make_sessionmaker

    upgrade(settings.resolved_database_url)
    return make_sessionmaker(make_engine(settings.resolved_database_url))


def describe_db(url: str) -> str:
    """The database a URL names, for people: the SQLite file's absolute path, or the URL
    without its password."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        from pathlib import Path

        return str(Path(parsed.database).resolve())
    return parsed.render_as_string(hide_password=True)


def db_exists(url: str) -> bool:
    """Whether the database already holds aiprod's tables (for SQLite: whether its file
    exists), checked before ``open_db`` would create them."""
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        from pathlib import Path

        return bool(parsed.database) and Path(parsed.database).is_file()
    engine = create_engine(url)
    try:
        return inspect(engine).has_table("api_keys")
    finally:
        engine.dispose()
