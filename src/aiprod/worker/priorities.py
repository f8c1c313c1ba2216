"""A worker's CPU priorities: generation low, database writes at the worker's own
(``AIPROD_WORKER_NICE``; see :class:`Priorities`)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def _lower_this_thread(nice: int) -> None:
    """Give the calling thread (on Linux a nice value is per thread) the nice value ``nice``,
    if that is lower priority than it has."""
    tid = threading.get_native_id()
    os.setpriority(os.PRIO_PROCESS, tid, max(nice, os.getpriority(os.PRIO_PROCESS, tid)))


class Priorities:
    """Generation at a low CPU priority, database writes at the worker's own (``worker_nice``).

    Nicing the whole worker process starves its database writes too. On SQLite, whose one
    write lock every writer takes in turn, a low-priority worker that was preempted while
    holding it stalled every API submit until the CPU freed up: 300 ms waits behind a worker
    holding the lock for 305 ms, measured under the 200-client load test. So the generation
    runs on a thread of its own at the low priority, and each database write it asks for (the
    progress after every step) runs on a thread at the normal priority, created before any
    generation, while the generation waits for it."""

    def __init__(self, nice: int) -> None:
        self.nice = nice
        self._generation: ThreadPoolExecutor | None = None
        self._writes: ThreadPoolExecutor | None = None
        if nice > 0:
            self._generation = ThreadPoolExecutor(
                1, thread_name_prefix="generation", initializer=_lower_this_thread, initargs=(nice,)
            )
            self._writes = ThreadPoolExecutor(1, thread_name_prefix="worker-db")
            self._writes.submit(lambda: None).result()  # its thread exists, at this priority

    def generate(self, fn: Callable[[], T]) -> T:
        """``fn()`` at the generation priority (here when ``nice`` is 0)."""
        return fn() if self._generation is None else self._generation.submit(fn).result()

    def write(self, fn: Callable[[], T]) -> T:
        """``fn()`` (a unit of database work) at the worker's own priority."""
        return fn() if self._writes is None else self._writes.submit(fn).result()

    def shutdown(self) -> None:
        for pool in (self._generation, self._writes):
            if pool is not None:
                pool.shutdown(wait=False)
