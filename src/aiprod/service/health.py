"""Readiness: can this API process usefully take traffic right now, and if not, why not.

``/readyz`` answers 200 only when every check passes, 503 otherwise, and always with the
checks and one human sentence per failing check in ``reasons``::

    {"status": "not_ready",
     "checks": {"database": "ok", "migrations": "ok", "workers": 0, "models": "ok",
                "storage": "ok", "disk": "ok"},
     "reasons": ["no live worker (none heartbeat in the last 60 s): start `aiprod worker` ..."],
     "details": {"migrations": {"current": "0001", "head": "0001"}, ...}}

The checks: the database answers ``SELECT 1``; its Alembic revision is the code's head; at
least one worker heartbeat is recent (``AIPROD_READY_REQUIRES_WORKER=false`` turns this off for
an API that should stay in the load balancer with no workers); the output storage folder takes
a write; its filesystem has more than ``AIPROD_MIN_FREE_DISK_MB`` free (these settings are
fields of ``aiprod.core.settings.Settings``); the default model is not unavailable (the live
workers that tried it all failed to load it; other unavailable models make ``models``
"degraded" and are listed in ``details.models`` without failing readiness). ``details.gpus``
lists the GPUs live workers reported with their last heartbeat (memory, utilization,
temperature).
"""

from __future__ import annotations

import errno
import shutil
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from aiprod.core.registry import Registry
from aiprod.db.migrate import head_revision
from aiprod.db.models import Worker
from aiprod.jobs.gpu import load_gpu_stats
from aiprod.jobs.model_state import ModelState, model_availability, unavailable_models
from aiprod.jobs.storage import StorageError, check_local_writable


@dataclass
class Readiness:
    ready: bool
    checks: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {
            "status": "ready" if self.ready else "not_ready",
            "checks": self.checks,
            "reasons": self.reasons,
            "details": self.details,
        }


def check_readiness(
    *,
    sessions: sessionmaker[Session],
    storage_root: Path | None,
    worker_live_seconds: float,
    min_free_bytes: int,
    require_worker: bool = True,
    storage: Any = None,
    default_model: str | None = None,
    registry: Registry | None = None,
    check_files: bool = True,
) -> Readiness:
    """Run every readiness check (none raises) and collect the results."""
    r = Readiness(ready=True)

    def fail(check: str, value: Any, reason: str) -> None:
        r.checks[check] = value
        r.reasons.append(reason)
        r.ready = False

    # Database, migrations and workers: one connection.
    try:
        with sessions() as session:
            session.execute(text("SELECT 1"))
            r.checks["database"] = "ok"
            current = _current_revision(session)
            head = head_revision()
            r.details["migrations"] = {"current": current, "head": head}
            if current == head:
                r.checks["migrations"] = "ok"
            else:
                fail(
                    "migrations",
                    "behind" if current else "not applied",
                    f"database is at migration {current or 'none'}, the code needs {head}: "
                    "run `aiprod db upgrade`",
                )
            if current is None:
                # Never migrated: there is no workers table to ask.
                r.checks["workers"] = "unknown"
                return _check_storage(r, storage_root, min_free_bytes, storage)
            live = _live_workers(session, worker_live_seconds)
            r.checks["workers"] = live
            r.details["workers"] = {"live": live, "window_seconds": worker_live_seconds}
            # GPU health as the workers last reported it (NVML); informational, never blocking.
            since = datetime.now(UTC) - timedelta(seconds=worker_live_seconds)
            r.details["gpus"] = [
                {"worker": worker_id, **asdict(g)}
                for worker_id, gpus in sorted(load_gpu_stats(session, since=since).items())
                for g in gpus
            ]
            if require_worker and live < 1:
                fail(
                    "workers",
                    live,
                    f"no live worker (none sent a heartbeat in the last {worker_live_seconds:g} s):"
                    " start `aiprod worker` on a GPU machine, or check the workers' logs",
                )
            if default_model is not None:
                bad = (
                    model_availability(session, registry, since=since, check_files=check_files)
                    if registry is not None
                    else unavailable_models(session, since=since)
                )
                _check_models(r, bad, default_model, fail)
    except Exception as exc:  # any database failure means not ready; say which
        if _is_disk_full(exc):
            fail(
                "database",
                "disk full",
                f"the database's disk is full ({_first_line(exc)}): free space on the "
                "database's volume",
            )
        else:
            fail(
                "database",
                f"error: {type(exc).__name__}",
                f"database unreachable ({type(exc).__name__}: {_first_line(exc)}): "
                "check AIPROD_DATABASE_URL and that the database server is up",
            )
        r.checks.setdefault("migrations", "unknown")
        r.checks.setdefault("workers", "unknown")

    return _check_storage(r, storage_root, min_free_bytes, storage)


def _check_storage(
    r: Readiness, storage_root: Path | None, min_free_bytes: int, storage: Any = None
) -> Readiness:
    def fail(check: str, value: Any, reason: str) -> None:
        r.checks[check] = value
        r.reasons.append(reason)
        r.ready = False

    if storage_root is None:  # object storage (S3): a real write; no local disk to measure
        r.details["storage"] = {"url": storage.describe()}
        r.checks["disk"] = "n/a"
        try:
            storage.check_writable()
            r.checks["storage"] = "ok"
        except Exception as exc:  # StorageError or an unexpected client failure
            fail("storage", "not writable", f"output storage is not writable: {exc}")
        return r

    # Storage: a real write (its probe file removed even when the write fails), then free space.
    r.details["storage"] = {"path": str(storage_root)}
    try:
        check_local_writable(storage_root)
        r.checks["storage"] = "ok"
    except StorageError as exc:
        cause = exc.__cause__
        err = cause.errno if isinstance(cause, OSError) else None
        if err in (errno.ENOSPC, errno.EDQUOT):
            fail(
                "storage",
                "disk full",
                f"output storage {storage_root} is full (no space left on device): free space "
                "or set AIPROD_RETENTION_DAYS",
            )
        else:
            why = cause.strerror if isinstance(cause, OSError) and cause.strerror else exc
            fail(
                "storage",
                "not writable",
                f"output storage {storage_root} is not writable ({why}): "
                "fix its permissions or AIPROD_STORAGE_URL",
            )
    try:
        usage = shutil.disk_usage(storage_root if storage_root.exists() else storage_root.parent)
        r.details["disk"] = {"free_bytes": usage.free, "min_free_bytes": min_free_bytes}
        if usage.free >= min_free_bytes:
            r.checks["disk"] = "ok"
        else:
            fail(
                "disk",
                "low",
                f"only {usage.free / 2**20:.0f} MiB free on {storage_root} (minimum "
                f"{min_free_bytes / 2**20:.0f} MiB): free space, set AIPROD_RETENTION_DAYS, or "
                "lower AIPROD_MIN_FREE_DISK_MB",
            )
    except OSError as exc:
        fail("disk", "unknown", f"cannot measure free space on {storage_root}: {exc}")
    return r


def _check_models(r: Readiness, bad: dict[str, ModelState], default_model: str, fail: Any) -> None:
    r.details["models"] = {
        m: {
            "available": False,
            "reason": st.reason,
            "retry_at": st.retry_at,
            "failures": st.failures,
        }
        for m, st in sorted(bad.items())
    }
    if default_model in bad:
        fail(
            "models",
            "default unavailable",
            f"the default model {default_model!r} cannot run "
            f"({bad[default_model].reason}): fix its entry in models.toml or its files (the "
            "workers retry with backoff; POST /api/v1/admin/clear-cache retries at once)",
        )
    else:
        r.checks["models"] = "degraded" if bad else "ok"


def _live_workers(session: Session, within_seconds: float) -> int:
    since = datetime.now(UTC) - timedelta(seconds=within_seconds)
    q = select(func.count()).where(Worker.last_seen_at >= since, Worker.status != "stopped")
    return int(session.scalar(q) or 0)


def _current_revision(session: Session) -> str | None:
    # Read alembic_version directly: alembic's MigrationContext logs at INFO on every probe.
    try:
        with session.begin_nested():
            return session.scalar(text("SELECT version_num FROM alembic_version"))
    except Exception as exc:
        if _is_missing_table(exc):  # no table yet: never migrated
            return None
        raise  # anything else (a full disk, a lost connection) is that, not "not applied"


def _is_missing_table(exc: BaseException) -> bool:
    msg = str(getattr(exc, "orig", None) or exc).lower()
    # SQLite: "no such table"; PostgreSQL: UndefinedTable, "relation ... does not exist"
    return "no such table" in msg or "does not exist" in msg or "undefinedtable" in msg


def _is_disk_full(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", None) or exc
    msg = str(orig).lower()
    # SQLite: SQLITE_FULL "database or disk is full"; PostgreSQL: DiskFull (SQLSTATE 53100)
    return (
        "disk is full" in msg
        or "no space left on device" in msg
        or getattr(orig, "sqlstate", None) == "53100"
        or (isinstance(orig, OSError) and orig.errno == errno.ENOSPC)
    )


def _first_line(exc: BaseException) -> str:
    text_ = str(exc).strip().splitlines()
    return text_[0][:200] if text_ else ""
