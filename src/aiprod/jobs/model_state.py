"""Which models the workers could load, for GET /models, /readyz and /metrics.

A worker publishes, with each heartbeat (and at once when a load fails), the models it tried:
loaded, or unavailable with the reason and when it tries again. Stored in ``service_state``
under ``models:<worker id>`` (no schema change). The API reads back the rows of live workers:
a model is unavailable when at least one live worker failed to load it and none has it loaded;
a model no worker has tried yet counts as available (it loads on its first job).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from aiprod.db.models import ServiceState

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


def _state_key(worker_id: str) -> str:
    # service_state.key is 64 characters; long worker ids are hashed (the id is in the value).
    key = MODEL_STATE_PREFIX + worker_id
    if len(key) <= 64:
        return key
    return MODEL_STATE_PREFIX + hashlib.sha256(worker_id.encode()).hexdigest()[:40]


def publish_model_states(session: Session, worker_id: str, states: dict[str, ModelState]) -> None:
    """Store a worker's model states (call with its heartbeat; the caller commits)."""
    value = json.dumps(
        {"worker": worker_id, "models": {m: s.as_dict() for m, s in sorted(states.items())}}
    )
    key = _state_key(worker_id)
    row = session.get(ServiceState, key)
    now = datetime.now(UTC)
    if row is None:
        session.add(ServiceState(key=key, value=value, updated_at=now))
    else:
        row.value = value
        row.updated_at = now


def load_model_states(session: Session, *, since: datetime) -> dict[str, dict[str, ModelState]]:
    """Model states published since ``since``: {worker id: {model id: state}}."""
    rows = session.scalars(
        select(ServiceState).where(
            ServiceState.key.startswith(MODEL_STATE_PREFIX), ServiceState.updated_at >= since
        )
    )
    out: dict[str, dict[str, ModelState]] = {}
    for row in rows:
        try:
            data = json.loads(row.value)
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
            log.warning("ignoring malformed model states in service_state[%s]", row.key)
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
