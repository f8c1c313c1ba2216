"""Per-key request rate limit: a fixed one-minute window, counted in this API process.

With several API processes behind a load balancer each enforces the limit on its own share of
the traffic; put the limit per process accordingly (docs/api.md).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class RateState:
    limit: int
    remaining: int
    reset_seconds: int  # until the window resets
    allowed: bool


class RateLimiter:
    def __init__(self, window_seconds: float = 60.0) -> None:
        self.window = window_seconds
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[float, int]] = {}

    def hit(self, key: str, limit: int, now: float | None = None) -> RateState:
        now = time.time() if now is None else now
        start = math.floor(now / self.window) * self.window
        with self._lock:
            w_start, count = self._counts.get(key, (start, 0))
            if w_start != start:
                count = 0
                if len(self._counts) > 10_000:  # drop stale windows now and then
                    self._counts = {k: v for k, v in self._counts.items() if v[0] == start}
            allowed = count < limit
            if allowed:
                count += 1
            self._counts[key] = (start, count)
        reset = max(1, math.ceil(start + self.window - now))
        return RateState(
            limit=limit, remaining=max(0, limit - count), reset_seconds=reset, allowed=allowed
        )
