"""``Recent``: a value per key, read again once it is older than ``ttl`` seconds, shared by a
process's threads. For the reads every request would otherwise repeat (the queue snapshot
behind queue positions, the models' availability, measured timings) where an answer a second
old is as good.

With ``stale_for`` > 0, a value past its ``ttl`` but younger than ``ttl + stale_for`` is
still returned while one background thread reads it again, so under load no request waits
for the read (with 200 clients, the requests that each API process sent to refresh its
snapshot once a second were the slowest 1-2 % of all). Only a value older than that, as after
an idle spell, is read by the request itself. ``compute`` must then be self-contained (open
its own session): it can run after the request that asked for it has ended.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

log = logging.getLogger("aiprod.recent")


class WouldBlock(Exception):
    """``Recent.get(..., wait=False)``: the value would have to be read (or waited for) here."""


# Background reads of every Recent in this process (a read is a few queries; two suffice).
_REFRESH = ThreadPoolExecutor(max_workers=2, thread_name_prefix="aiprod-refresh")


class Recent(Generic[K, V]):
    def __init__(self, ttl: float, *, stale_for: float = 0.0, max_keys: int = 1024) -> None:
        self.ttl = ttl
        self.stale_for = stale_for
        self.max_keys = max_keys
        self._lock = threading.Lock()
        self._values: dict[K, tuple[float, V]] = {}
        self._refreshing: set[K] = set()
        self._reading: dict[K, threading.Lock] = {}  # key -> held by the thread reading it

    def get(self, key: K, compute: Callable[[], V], *, wait: bool = True) -> V:
        """The value for ``key``: the stored one while younger than ``ttl``; a stale one (see
        the module) while a background thread runs ``compute``; else ``compute()`` here, by
        one thread at a time: the threads that miss together (a burst of requests to a
        process that just started) wait for the first one's read instead of each reading.
        With ``wait=False`` (a caller on an event loop) raise ``WouldBlock`` instead of
        reading or waiting."""
        hit = self._usable(key, compute)
        if hit is not None:
            return hit[1]
        if not wait:
            raise WouldBlock(key)
        with self._lock:
            one_at_a_time = self._reading.setdefault(key, threading.Lock())
        with one_at_a_time:
            hit = self._usable(key, compute)  # read meanwhile by the thread this one waited for
            if hit is not None:
                return hit[1]
            value = compute()
            self._store(key, value)
            return value

    def _usable(self, key: K, compute: Callable[[], V]) -> tuple[float, V] | None:
        """The stored value if fresh, or stale within ``stale_for`` (then renewed in the
        background); None if the caller must read it."""
        with self._lock:
            hit = self._values.get(key)
            if hit is None:
                return None
            age = time.monotonic() - hit[0]
            if age < self.ttl:
                return hit
            if age < self.ttl + self.stale_for:
                if key not in self._refreshing:
                    self._refreshing.add(key)
                    _REFRESH.submit(self._refresh, key, compute)
                return hit
            return None

    def _refresh(self, key: K, compute: Callable[[], V]) -> None:
        try:
            self._store(key, compute())
        except Exception:  # the next get past stale_for reads it itself, and raises there
            log.debug("background read of %r failed", key, exc_info=True)
        finally:
            with self._lock:
                self._refreshing.discard(key)

    def _store(self, key: K, value: V) -> None:
        with self._lock:
            if len(self._values) >= self.max_keys:
                self._values.clear()
                self._reading.clear()
            self._values[key] = (time.monotonic(), value)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
