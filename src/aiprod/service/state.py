"""What one API process holds: settings, the database, the model registry, storage, limiter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from aiprod.core.registry import Registry
from aiprod.core.settings import Settings
from aiprod.jobs.storage import LocalStorage, S3Storage
from aiprod.jobs.submit import SubmitReads
from aiprod.jobs.views import QueueView
from aiprod.service.ratelimit import RateLimiter


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    registry: Registry
    storage: LocalStorage | S3Storage
    limiter: RateLimiter
    secret: str
    # Read-only sessions (SQLite: deferred BEGIN, no write lock); None: use ``sessions``.
    read_sessions: sessionmaker[Session] | None = None
    # One-INSERT units of work (PostgreSQL: autocommit); None: use ``sessions``.
    insert_sessions: sessionmaker[Session] | None = None
    # key id -> time.monotonic() of its last ``last_used_at`` write (written at most once a minute)
    key_touched: dict[str, float] = field(default_factory=dict)
    # key hash -> (key, its rate limit, time.monotonic() when read); see api_key_cache_seconds
    key_cache: dict[str, tuple[Any, int, float]] = field(default_factory=dict)
    queue_view: QueueView = field(default_factory=QueueView)  # status calls' queue positions
    submit_reads: SubmitReads = field(default_factory=SubmitReads)  # availability, timings
