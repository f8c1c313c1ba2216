"""Database backup and restore (SQLite and PostgreSQL).

- SQLite: the online backup API (``sqlite3.Connection.backup``) copies a consistent snapshot
  while the server keeps running; restore copies a backup file back into the live database the
  same way, under SQLite's own lock, so readers see the old or the new database, never a mix.
- PostgreSQL: ``pg_dump --format=custom`` and ``pg_restore --clean --single-transaction``
  (the PostgreSQL client tools must be on PATH); the restore is one transaction.

A backup is written to a temporary file next to the destination and renamed into place, so a
failed or interrupted backup never leaves a half-written file under the final name.

Output retention lives in ``aiprod.jobs.retention``; the ``aiprod db`` commands in
``aiprod.cli.db``.

Remember the secret key: API keys are stored as keyed hashes, so a restored database only
accepts the old keys with the same ``AIPROD_SECRET_KEY`` (or ``<data dir>/secret_key``).
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aiprod.core.errors import AiprodError, ConfigError

if TYPE_CHECKING:  # SQLAlchemy is imported lazily: `aiprod --help` must stay fast
    from sqlalchemy.engine import URL

log = logging.getLogger(__name__)

SQLITE_MAGIC = b"SQLite format 3\x00"
PG_CUSTOM_MAGIC = b"PGDMP"


class BackupError(AiprodError):
    """A backup or restore could not be done; the message says why and what to do."""

    status_code = 500
    code = "backup_failed"


@dataclass(frozen=True)
class BackupResult:
    path: Path
    backend: str  # sqlite | postgresql
    bytes: int


def _parse(url: str) -> URL:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url)
    except Exception as exc:
        raise ConfigError(f"{url!r} is not a database URL") from exc


def _sqlite_path(url: URL) -> Path:
    if not url.database or url.database == ":memory:":
        raise BackupError("an in-memory SQLite database cannot be backed up or restored")
    return Path(url.database).expanduser()


def _tmp_for(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.{os.getpid()}.tmp")


def backup(database_url: str, dest: str | Path) -> BackupResult:
    """Write a consistent backup of ``database_url`` to ``dest`` (atomically) and return it.

    SQLite gives a SQLite file, PostgreSQL a ``pg_dump`` custom-format archive.
    """
    url = _parse(database_url)
    dest = Path(dest).expanduser()
    if dest.is_dir():
        raise BackupError(f"backup destination {dest} is a folder; give a file name")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_for(dest)
    backend = url.get_backend_name()
    try:
        if backend == "sqlite":
            _sqlite_backup(_sqlite_path(url), tmp)
        elif backend == "postgresql":
            _pg_dump(url, tmp)
        else:
            raise BackupError(f"cannot back up a {backend!r} database: use SQLite or PostgreSQL")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    size = dest.stat().st_size
    log.info(
        "database backup written",
        extra={"event": "db.backup", "path": str(dest), "backend": backend, "bytes": size},
    )
    return BackupResult(path=dest, backend=backend, bytes=size)


def restore(database_url: str, src: str | Path) -> str:
    """Replace the contents of ``database_url`` with the backup at ``src``; returns the backend.

    Everything in the target database is replaced. Stop workers first (the API may stay up):
    a worker holding a job that the backup does not know would fail its next heartbeat.
    """
    url = _parse(database_url)
    src = Path(src).expanduser()
    if not src.is_file():
        raise BackupError(f"backup file {src} does not exist")
    with src.open("rb") as fh:
        head = fh.read(16)
    backend = url.get_backend_name()
    if backend == "sqlite":
        if not head.startswith(SQLITE_MAGIC):
            raise BackupError(
                f"{src} is not a SQLite backup"
                + (
                    " (it is a PostgreSQL dump: restore it into PostgreSQL)"
                    if head.startswith(PG_CUSTOM_MAGIC)
                    else ""
                )
            )
        _sqlite_restore(src, _sqlite_path(url))
    elif backend == "postgresql":
        if not head.startswith(PG_CUSTOM_MAGIC):
            raise BackupError(
                f"{src} is not a pg_dump custom-format archive"
                + (
                    " (it is a SQLite backup: restore it into SQLite)"
                    if head.startswith(SQLITE_MAGIC)
                    else ""
                )
            )
        _pg_restore(url, src)
    else:
        raise BackupError(f"cannot restore into a {backend!r} database: use SQLite or PostgreSQL")
    log.info(
        "database restored",
        extra={"event": "db.restore", "path": str(src), "backend": backend},
    )
    return backend


# --- SQLite ---------------------------------------------------------------------------------


def _sqlite_backup(db: Path, tmp: Path) -> None:
    if not db.is_file():
        raise BackupError(f"SQLite database {db} does not exist; check AIPROD_DATABASE_URL")
    src = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)
            # A self-contained file: no -wal sidecar needed to read it.
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    finally:
        src.close()


def _sqlite_restore(src: Path, db: Path) -> None:
    check = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    try:
        ok = check.execute("PRAGMA integrity_check").fetchone()
        tables = {r[0] for r in check.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{src} is not a readable SQLite database: {exc}") from exc
    finally:
        check.close()
    if not ok or ok[0] != "ok":
        raise BackupError(f"{src} failed SQLite's integrity check: {ok}")
    if "jobs" not in tables or "alembic_version" not in tables:
        raise BackupError(f"{src} is a SQLite file but not an aiprod database (no jobs table)")
    db.parent.mkdir(parents=True, exist_ok=True)
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    try:
        target = sqlite3.connect(db, timeout=30)
        try:
            source.backup(target)
        finally:
            target.close()
    finally:
        source.close()


# --- PostgreSQL -----------------------------------------------------------------------------


def _pg_env_args(url: URL) -> tuple[dict[str, str], list[str]]:
    env = dict(os.environ)
    if url.password is not None:
        env["PGPASSWORD"] = str(url.password)
    args: list[str] = []
    if url.host:
        args += ["--host", url.host]
    if url.port:
        args += ["--port", str(url.port)]
    if url.username:
        args += ["--username", url.username]
    if not url.database:
        raise BackupError("the PostgreSQL URL names no database")
    return env, args


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BackupError(
            f"{name} not found on PATH: install the PostgreSQL client tools "
            "(Debian/Ubuntu: apt-get install postgresql-client) with a version >= the server's"
        )
    return path


def _run(cmd: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip().splitlines()
        raise BackupError(f"{Path(cmd[0]).name} failed: {err[-1] if err else proc.returncode}")


def _pg_dump(url: URL, tmp: Path) -> None:
    env, args = _pg_env_args(url)
    cmd = [_tool("pg_dump"), *args, "--format=custom", "--no-owner", "--no-privileges"]
    _run([*cmd, "--file", str(tmp), str(url.database)], env)


def _pg_restore(url: URL, src: Path) -> None:
    env, args = _pg_env_args(url)
    cmd = [_tool("pg_restore"), *args, "--clean", "--if-exists", "--no-owner", "--no-privileges"]
    _run(
        [*cmd, "--single-transaction", "--exit-on-error", "--dbname", str(url.database), str(src)],
        env,
    )
