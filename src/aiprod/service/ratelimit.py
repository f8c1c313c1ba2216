"""Per-key request rate limit: a fixed one-minute window counted in the database, so every API
replica behind a load balancer shares one budget per key.

Counting each request in the database made every request, reads included, a write transaction
(on SQLite: the one write lock; see docs/performance.md). So each process counts locally and
adds its count to the database in batches: at most every ``sync_seconds`` per key, and on every
request once the key is within ``margin`` of its limit or in a new window, so a key near its
limit is counted exactly, as before. A far-from-limit key costs one small upsert a second per
process instead of one per request. The price: with several replicas a key can overshoot its
limit by what the other replicas admitted in their last ``sync_seconds`` before it came within
the margin.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from aiprod.db.repositories import RateLimitRepository
from aiprod.db.session import session_scope


@dataclass(frozen=True)
class RateState:
    limit: int
    remaining: int
    reset_seconds: int  # until the window resets
    allowed: bool


@dataclass
class _KeyWindow:
    start: int  # window start (epoch seconds)
    counted: int = 0  # the window's total in the database at our last sync
    pending: int = 0  # our requests not yet added to the database
    synced_at: float = 0.0


class RateLimiter:
    def __init__(self, window_seconds: int = 60, *, sync_seconds: float = 1.0) -> None:
        self.window = window_seconds
        self.sync_seconds = sync_seconds
        self._keys: dict[str, _KeyWindow] = {}
        self._lock = threading.Lock()

    def hit(
        self, sessions: sessionmaker[Session], key: str, limit: int, now: float | None = None
    ) -> RateState:
        """Count one request for ``key``; writes to the database only when a sync is due."""
        now = time.time() if now is None else now
        start = self._window_start(now)
        with self._lock:
            w = self._keys.get(key)
            new_window = w is None or w.start != start
            if w is None or new_window:
                w = self._keys[key] = _KeyWindow(start=start)
            w.pending += 1
            hits = w.counted + w.pending
            due = new_window or self._due(w, limit, hits, now)
            add = w.pending if due else 0
            if due:
                w.pending = 0
                w.synced_at = now
        if add:
            with session_scope(sessions) as session:
                total = RateLimitRepository(session).hit(
                    key, start, count=add, forget_older=new_window
                )
            with self._lock:
                if w.start == start:
                    w.counted = max(w.counted, total)
                    total = w.counted
                hits = total
        return self._state(limit, hits, start, now)

    def hit_local(self, key: str, limit: int, now: float | None = None) -> RateState | None:
        """Count one request without touching the database, or return None (nothing counted)
        when a database sync is due: then call :meth:`hit` (from a thread: it does I/O)."""
        now = time.time() if now is None else now
        start = self._window_start(now)
        with self._lock:
            w = self._keys.get(key)
            if w is None or w.start != start:
                return None
            hits = w.counted + w.pending + 1
            if self._due(w, limit, hits, now):
                return None
            w.pending += 1
        return self._state(limit, hits, start, now)

    def _window_start(self, now: float) -> int:
        return int(math.floor(now / self.window) * self.window)

    def _due(self, w: _KeyWindow, limit: int, hits: int, now: float) -> bool:
        return (
            limit - hits < max(1, limit // 10)
            or now - w.synced_at >= self.sync_seconds
            or now < w.synced_at  # clock went back
        )

    def _state(self, limit: int, hits: int, start: int, now: float) -> RateState:
        reset = max(1, math.ceil(start + self.window - now))
        return RateState(
            limit=limit, remaining=max(0, limit - hits), reset_seconds=reset, allowed=hits <= limit
        )
