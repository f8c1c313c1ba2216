"""Run a picklable function over items on a process pool, results in input order."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """Cores this process may use (respects CPU affinity / container limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def run_parallel(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[R]:
    """``[fn(x) for x in items]`` over ``workers`` processes (1: in this process)."""
    n = len(items)
    workers = default_workers() if workers is None else max(1, workers)
    results: list[R | None] = [None] * n
    if workers == 1 or n <= 1:
        for i, item in enumerate(items):
            results[i] = fn(item)
            if on_progress is not None:
                on_progress(i + 1, n)
        return results  # type: ignore[return-value]
    with ProcessPoolExecutor(max_workers=min(workers, n)) as pool:
        futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
        for done, fut in enumerate(as_completed(futures), start=1):
            results[futures[fut]] = fut.result()
            if on_progress is not None:
                on_progress(done, n)
    return results  # type: ignore[return-value]


def run_parallel_where(
    fn: Callable[[T], T],
    items: Sequence[T],
    select: Callable[[T], bool],
    *,
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[list[T], list[T]]:
    """``run_parallel`` on the items ``select`` picks; the others pass through unchanged.

    Returns every item in input order (picked ones replaced by their result) and the results.
    """
    todo = [i for i, x in enumerate(items) if select(x)]
    results = run_parallel(fn, [items[i] for i in todo], workers=workers, on_progress=on_progress)
    out = list(items)
    for i, res in zip(todo, results, strict=True):
        out[i] = res
    return out, results
