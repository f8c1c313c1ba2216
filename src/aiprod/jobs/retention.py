"""Output retention: delete the outputs of jobs that finished more than N days ago and mark
those jobs ``expired``; their rows (and billing) stay.

Run by ``aiprod db retention`` and, with ``AIPROD_RETENTION_DAYS`` set, by the API process in
the background.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from aiprod.core.errors import ConfigError
from aiprod.db.backup import BackupError
from aiprod.db.models import Job, JobStatus
from aiprod.jobs import transitions
from aiprod.jobs.storage import LocalStorage, Storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetentionResult:
    expired_jobs: int
    deleted_files: int
    freed_bytes: int


def apply_retention(
    session_factory: sessionmaker[Session],
    *,
    days: float,
    delete_output: Callable[[str], int],
    now: datetime | None = None,
    batch_size: int = 500,
) -> RetentionResult:
    """Delete outputs of jobs finished more than ``days`` ago and mark the jobs ``expired``.

    ``delete_output(output_path)`` removes one stored output and returns the bytes freed (0 if
    it was already gone). Each job is committed as expired right after its file is deleted, so
    an interruption leaves no job pointing at a missing file.
    """
    if days <= 0:
        raise ConfigError(f"retention must be a positive number of days, not {days}")
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    expired = deleted = freed = 0
    while True:
        with session_factory() as session:
            jobs = session.scalars(
                select(Job)
                .where(
                    Job.status == JobStatus.SUCCEEDED,
                    Job.completed_at.is_not(None),
                    Job.completed_at < cutoff,
                )
                .order_by(Job.completed_at)
                .limit(batch_size)
            ).all()
            if not jobs:
                break
            for job in jobs:
                if job.output_path:
                    n = delete_output(job.output_path)
                    deleted += 1
                    freed += n
                transitions.expire(job)
                session.commit()
                expired += 1
    log.info(
        "retention applied",
        extra={
            "event": "retention",
            "days": days,
            "expired_jobs": expired,
            "deleted_files": deleted,
            "freed_bytes": freed,
        },
    )
    return RetentionResult(expired_jobs=expired, deleted_files=deleted, freed_bytes=freed)


def delete_local_output(root: Path) -> Callable[[str], int]:
    """A ``delete_output`` for local storage under ``root`` (relative or absolute paths)."""
    base = root.expanduser().resolve()

    def _delete(output_path: str) -> int:
        path = Path(output_path)
        if not path.is_absolute():
            path = base / path
        path = path.resolve()
        if base not in path.parents:
            raise BackupError(f"refusing to delete {path}: it is outside the storage root {base}")
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    return _delete


def output_deleter(storage: Storage) -> Callable[[str], int]:
    """A retention ``delete_output`` for ``storage``: removes one output, returns bytes freed."""
    if isinstance(storage, LocalStorage):
        return delete_local_output(storage.root)
    return lambda key: storage.delete(key) or 0
