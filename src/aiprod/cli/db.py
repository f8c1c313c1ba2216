"""`aiprod db backup|restore|retention`: the commands over ``aiprod.db.backup`` (database) and
``aiprod.jobs.retention`` (outputs). Heavy imports stay inside the commands: `aiprod --help`
must stay fast.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import typer

from aiprod.cli.common import load_settings
from aiprod.cli.errors import EXIT_FAILED, cli_errors
from aiprod.core.errors import ConfigError


def register_db_commands(db_app: typer.Typer) -> None:
    """Add ``backup``, ``restore`` and ``retention`` to the CLI's ``db`` group."""

    @db_app.command("backup")
    @cli_errors(config_status=EXIT_FAILED)  # these exit 1 on every expected error
    def db_backup(
        output: Path | None = typer.Option(
            None,
            "-o",
            "--output",
            help="Backup file (default: <data dir>/backups/aiprod-<UTC time>.sqlite|.dump).",
        ),
    ) -> None:
        """Back up the database (SQLite: online backup API; PostgreSQL: pg_dump).

        Safe while the server runs. Also keep AIPROD_SECRET_KEY / <data dir>/secret_key.

        Example: aiprod db backup -o backups/aiprod-2026-11-21.sqlite
        """
        settings = load_settings()
        url = settings.resolved_database_url
        dest = output
        if dest is None:
            ext = "sqlite" if url.startswith("sqlite") else "dump"
            stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
            dest = settings.resolved_data_dir / "backups" / f"aiprod-{stamp}.{ext}"
        from aiprod.db.backup import backup

        result = backup(url, dest)
        typer.echo(f"backup of the {result.backend} database: {result.bytes} bytes")
        typer.echo(str(result.path))

    @db_app.command("restore")
    @cli_errors(config_status=EXIT_FAILED)  # these exit 1 on every expected error
    def db_restore(
        backup_file: Path = typer.Argument(..., help="A file written by `aiprod db backup`."),
        yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    ) -> None:
        """Replace the database's contents with a backup. Stop the workers first.

        Example: aiprod db restore backups/aiprod-2026-11-21.sqlite --yes
        """
        settings = load_settings()
        url = settings.resolved_database_url
        if not yes and not typer.confirm(
            f"Replace everything in {url.split('@')[-1]} with {backup_file}?"
        ):
            raise typer.Exit(1)
        from aiprod.db.backup import restore

        backend = restore(url, backup_file)
        typer.echo(f"restored the {backend} database from {backup_file}")

    @db_app.command("retention")
    @cli_errors(config_status=EXIT_FAILED)  # these exit 1 on every expected error
    def db_retention(
        days: float | None = typer.Option(
            None, "--days", help="Age in days (default: AIPROD_RETENTION_DAYS)."
        ),
    ) -> None:
        """Delete outputs of jobs finished more than N days ago; mark those jobs expired.

        Example: aiprod db retention --days 30
        """
        from aiprod.db.session import make_engine, make_sessionmaker
        from aiprod.jobs.retention import apply_retention, output_deleter
        from aiprod.jobs.storage import open_storage

        settings = load_settings()
        if days is None:
            chosen = settings.retention_days
            if chosen is None:
                raise ConfigError("give --days N or set AIPROD_RETENTION_DAYS")
        else:
            chosen = days
        engine = make_engine(settings.resolved_database_url)
        try:
            result = apply_retention(
                make_sessionmaker(engine),
                days=chosen,
                delete_output=output_deleter(open_storage(settings)),
            )
        finally:
            engine.dispose()
        typer.echo(
            f"expired {result.expired_jobs} jobs, deleted {result.deleted_files} files, "
            f"freed {result.freed_bytes} bytes"
        )
