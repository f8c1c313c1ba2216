"""Which models the workers could load, for GET /models, /readyz and /metrics.

A worker publishes, with each heartbeat (and at once when a load fails), the models it tried:
loaded, or unavailable with the reason and when it tries again. Stored in ``service_state``
under ``models:<worker id>`` (no schema change). The API reads back the rows of live workers:
a model is unavailable when at least one live worker failed to load it and none has it loaded;
a model no worker has tried yet counts as available (it loads on its first job).

``model_availability`` adds what the API process sees itself, torch-free: the entries
``load_registry`` skipped (invalid) and, where this host holds the model files
(``Settings.check_model_files``), the file problems of ``aiprod.core.model_files``. It is the
one answer for GET /models, /readyz and the submit refusal (503 naming the model).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from aiprod.core.errors import ModelUnavailable
from aiprod.core.logging import job_error_message
from aiprod.core.model_files import registry_problems
from aiprod.core.registry import Registry
from aiprod.core.settings import Settings
from aiprod.db.repositories import StateRepository

log = logging.getLogger(__name__)

MODEL_STATE_PREFIX = "models:"


@dataclass(frozen=True)
class ModelState:
    """One model as one worker sees it."""

    available: bool
    reason: str | None = None  # why it is unavailable (the load error, one line)
    retry_at: str | None = None  # ISO time of the next load attempt
    failures: int = 0  # consecutive failed loads

    def as_dict(self) -> dict[str, Any]:
        return {
            "available": self.available,
            "reason": self.reason,
            "retry_at": self.retry_at,
            "failures": self.failures,
        }


def publish_model_states(session: Session, worker_id: str, states: dict[str, ModelState]) -> None:
    """Store a worker's model states (call with its heartbeat; the caller commits)."""
    models = {m: st.as_dict() for m, st in sorted(states.items())}
    StateRepository(session).put_worker_value(MODEL_STATE_PREFIX, worker_id, {"models": models})


def load_model_states(session: Session, *, since: datetime) -> dict[str, dict[str, ModelState]]:
    """Model states published since ``since``: {worker id: {model id: state}}."""
    out: dict[str, dict[str, ModelState]] = {}
    for key, data in StateRepository(session).worker_values(MODEL_STATE_PREFIX, since=since):
        try:
            out[str(data["worker"])] = {
                str(m): ModelState(
                    available=bool(s["available"]),
                    reason=s.get("reason"),
                    retry_at=s.get("retry_at"),
                    failures=int(s.get("failures") or 0),
                )
                for m, s in data["models"].items()
            }
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("ignoring malformed model states in service_state[%s]", key)
    return out


def unavailable_models(session: Session, *, since: datetime) -> dict[str, ModelState]:
    """Models that live workers failed to load and none has loaded: {model id: a failing
    worker's state (its reason)}."""
    loaded: set[str] = set()
    failing: dict[str, ModelState] = {}
    for _worker, states in sorted(load_model_states(session, since=since).items()):
        for model_id, st in states.items():
            if st.available:
                loaded.add(model_id)
            else:
                failing.setdefault(model_id, st)
    return {m: st for m, st in failing.items() if m not in loaded}


FILE_CHECK_TTL_SECONDS = 10.0
_file_checks: dict[int, tuple[float, dict[str, list[str]]]] = {}
_file_checks_lock = threading.Lock()


def file_problems(registry: Registry) -> dict[str, list[str]]:
    """``registry_problems`` read again at most every ``FILE_CHECK_TTL_SECONDS`` (a fixed
    folder is seen without a restart; a submit does not read the configs each time)."""
    now = time.monotonic()
    with _file_checks_lock:
        hit = _file_checks.get(id(registry))
        if hit is not None and now - hit[0] < FILE_CHECK_TTL_SECONDS:
            return hit[1]
    problems = registry_problems(registry)
    with _file_checks_lock:
        _file_checks[id(registry)] = (now, problems)
    return problems


def model_availability(
    session: Session, registry: Registry, *, since: datetime, check_files: bool
) -> dict[str, ModelState]:
    """The models that cannot run now, {model id: state with the reason}: invalid entries,
    file problems (``check_files``: this host holds the files) and the live workers' failed
    loads. A model missing here is available."""
    out = unavailable_models(session, since=since)
    problems = file_problems(registry) if check_files else dict.fromkeys(registry.skipped, [])
    for model_id, lines in problems.items():
        reason = registry.skipped.get(model_id) or (lines[0] if lines else "")
        out.setdefault(model_id, ModelState(available=False, reason=reason))
    return out


def refuse_unavailable(model_id: str, state: ModelState | None) -> None:
    """Raise 503 ``model_unavailable`` naming the model and why, with when to retry."""
    if state is None:
        return
    retry_after = None
    if state.retry_at:
        try:
            left = datetime.fromisoformat(state.retry_at) - datetime.now(UTC)
            retry_after = max(1, int(left.total_seconds()) + 1)
        except ValueError:
            retry_after = None
    reason = job_error_message(state.reason or "its load failed")  # no server paths
    raise ModelUnavailable(
        f"model '{model_id}' is unavailable on this server: {reason}. Try another model "
        "(GET /api/v1/models) or retry later; the operator sees the reason in /readyz",
        retry_after=retry_after,
    )


def availability(session: Session, registry: Registry, settings: Settings) -> dict[str, ModelState]:
    """``model_availability`` with the settings' live-worker window and file-check choice."""
    window = settings.worker_live_seconds or 2.0 * float(settings.lease_seconds)
    return model_availability(
        session,
        registry,
        since=datetime.now(UTC) - timedelta(seconds=window),
        check_files=settings.check_model_files is not False,
    )
