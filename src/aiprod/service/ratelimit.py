"""Per-key request rate limit: a fixed one-minute window counted in the database, so every API
replica behind a load balancer shares one budget per key (one upsert per request, in the same
short transaction that records the key's last use).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from sqlalchemy.orm import Session

from aiprod.db.repositories import RateLimitRepository


@dataclass(frozen=True)
class RateState:
    limit: int
    remaining: int
    reset_seconds: int  # until the window resets
    allowed: bool


class RateLimiter:
    def __init__(self, window_seconds: int = 60) -> None:
        self.window = window_seconds

    def hit(self, session: Session, key: str, limit: int, now: float | None = None) -> RateState:
        """Count one request for ``key``; the caller commits."""
        now = time.time() if now is None else now
        start = math.floor(now / self.window) * self.window
        hits = RateLimitRepository(session).hit(key, int(start))
        reset = max(1, math.ceil(start + self.window - now))
        return RateState(
            limit=limit, remaining=max(0, limit - hits), reset_seconds=reset, allowed=hits <= limit
        )
