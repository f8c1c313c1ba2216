"""The worker's loaded pipelines, and the models that failed to load.

A model whose load raises is marked unavailable with the reason (one line) and is not tried
again before its backoff ends (``base`` seconds, doubling per consecutive failure, capped at
``cap``); until then its jobs fail at once with ``model_unavailable``. Once the backoff ends
the worker tries again, on the model's next job or, when idle, by itself (``due``), so a fixed
default model becomes available without waiting for a job. The other models are not
affected and the worker keeps running. ``states()`` is what the worker publishes for the API
(``aiprod.jobs.model_state``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiprod.core.errors import AiprodError, ModelUnavailable
from aiprod.core.registry import ModelEntry
from aiprod.jobs.model_state import ModelState

__all__ = ["ModelSlots", "ModelUnavailable", "load_error_reason"]

log = logging.getLogger("aiprod.worker")

MODEL_RETRY_BASE_SECONDS = 5.0
MODEL_RETRY_CAP_SECONDS = 300.0
MAX_REASON = 300


@dataclass
class _Failure:
    reason: str
    failures: int
    retry_at: float  # monotonic
    retry_wall: datetime


def load_error_reason(exc: BaseException) -> str:
    """One short line for clients: an AiprodError's message, else the exception's type and
    first line."""
    if isinstance(exc, AiprodError):
        text = exc.message
    else:
        text = f"{type(exc).__name__}: {exc}"
    lines = text.strip().splitlines()
    line = lines[0] if lines else type(exc).__name__
    return line[:MAX_REASON]


# Errors a backend raises that are the same on every attempt (a wrong config, an upsampler that
# does not fit the model, a bad input): the job fails at once instead of being retried.
DETERMINISTIC = (ValueError, TypeError, KeyError, IndexError, NotImplementedError)
DETERMINISTIC_TEXT = ("size mismatch", "shape", "must match", "expected", "channels", "dimension")


def classify_crash(model_id: str, exc: BaseException) -> tuple[str, str, bool]:
    """(code, one-line message, permanent) for an exception a backend raised: deterministic
    ones (config/input) fail the job at once as ``model_error``; others (a transient
    failure) are retried as ``generation_failed``."""
    first = (str(exc).strip().splitlines() or [""])[0][:MAX_REASON]
    what = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    text = first.lower()
    oom = "out of memory" in text
    if not oom and (
        isinstance(exc, DETERMINISTIC)
        or (isinstance(exc, RuntimeError) and any(t in text for t in DETERMINISTIC_TEXT))
    ):
        return (
            "model_error",
            f"model '{model_id}' cannot run this request ({what}); its files do not fit "
            "together or the request does not fit the model: the operator checks it with "
            "`aiprod models list` (not retried)",
            True,
        )
    return "generation_failed", f"model '{model_id}' failed ({what}); retried", False


class ModelSlots:
    def __init__(
        self,
        load: Callable[[ModelEntry], Any],
        *,
        base: float = MODEL_RETRY_BASE_SECONDS,
        cap: float = MODEL_RETRY_CAP_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self.base = base
        self.cap = cap
        self._clock = clock
        self.pipelines: dict[str, Any] = {}
        self.failed: dict[str, _Failure] = {}

    def retry_delay(self, failures: int) -> float:
        """Seconds before the next load attempt after ``failures`` consecutive failures."""
        return float(min(self.cap, self.base * 2 ** max(0, failures - 1)))

    def get(self, entry: ModelEntry) -> Any:
        """The loaded pipeline; loads it if needed. Raises ``ModelUnavailable`` while the model
        is in its backoff, or when this load fails."""
        pipe = self.pipelines.get(entry.id)
        if pipe is not None:
            return pipe
        fail = self.failed.get(entry.id)
        if fail is not None and self._clock() < fail.retry_at:
            raise self._unavailable(entry.id, fail)
        t0 = time.perf_counter()
        try:
            pipe = self._load(entry)
        except Exception as exc:
            n = (fail.failures if fail is not None else 0) + 1
            delay = self.retry_delay(n)
            fail = _Failure(
                reason=load_error_reason(exc),
                failures=n,
                retry_at=self._clock() + delay,
                retry_wall=datetime.now(UTC) + timedelta(seconds=delay),
            )
            self.failed[entry.id] = fail
            # The full error (paths, traceback) goes to the log only, once per failed load.
            log.error(
                "model %s failed to load (failure %d; next try in %.0fs): %s",
                entry.id,
                n,
                delay,
                exc,
                exc_info=n == 1,
            )
            raise self._unavailable(entry.id, fail) from exc
        log.info("loaded model %s in %.1fs", entry.id, time.perf_counter() - t0)
        if self.failed.pop(entry.id, None) is not None:
            log.info("model %s is available again", entry.id)
        self.pipelines[entry.id] = pipe
        return pipe

    @staticmethod
    def _unavailable(model_id: str, fail: _Failure) -> ModelUnavailable:
        return ModelUnavailable(
            f"model {model_id!r} is unavailable on this server: {fail.reason}. "
            "The operator has been told (GET /api/v1/models shows it); try another model or "
            "retry later"
        )

    def due(self) -> list[str]:
        """Failed models whose backoff has ended (the worker retries them when idle)."""
        now = self._clock()
        return sorted(m for m, f in self.failed.items() if now >= f.retry_at)

    def states(self) -> dict[str, ModelState]:
        out = {m: ModelState(available=True) for m in self.pipelines}
        for m, f in self.failed.items():
            out[m] = ModelState(
                available=False,
                reason=f.reason,
                retry_at=f.retry_wall.isoformat(),
                failures=f.failures,
            )
        return out
