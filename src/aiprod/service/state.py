"""What one API process holds: settings, the database, the model registry, storage, limiter."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from aiprod.core.registry import Registry
from aiprod.core.settings import Settings
from aiprod.service.ratelimit import RateLimiter
from aiprod.service.storage import LocalStorage, S3Storage


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    registry: Registry
    storage: LocalStorage | S3Storage
    limiter: RateLimiter
    secret: str
