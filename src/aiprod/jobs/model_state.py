"""Which models the workers could load, for GET /models, /readyz and /metrics.

A worker publishes, with each heartbeat (and at once when a load fails), the models it tried:
loaded, or unavailable with the reason and when it tries again. Stored in ``service_state``
under ``models:<worker id>`` (no schema change). The API reads back the rows of live workers:
a model is unavailable when at least one live worker failed to load it and none has it loaded;
a model no worker has tried yet counts as available (it loads on its first job).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

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
