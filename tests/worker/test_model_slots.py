"""worker/models.py: a model that fails to load is unavailable with its reason, is not tried
again before its backoff (doubling, capped) ends, and comes back once it loads."""

from __future__ import annotations

from typing import Any

import pytest

from aiprod.core.errors import ConfigError
from aiprod.core.registry import load_registry
from aiprod.worker.models import ModelSlots, ModelUnavailable
from tests.service.harness import MODELS_TOML, write_models_toml


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_failed_load_backs_off_exponentially_then_recovers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    entry = load_registry(write_models_toml(tmp_path, MODELS_TOML)).default_entry
    calls: list[str] = []
    broken = {"now": True}

    def load(e: Any) -> object:
        calls.append(e.id)
        if broken["now"]:
            raise ConfigError("model 'builtin': folder /secret/weights is missing\nmore detail")
        return object()

    clock = _Clock()
    slots = ModelSlots(load, base=5, cap=20, clock=clock)
    assert [slots.retry_delay(n) for n in (1, 2, 3, 4, 5)] == [5, 10, 20, 20, 20]

    with pytest.raises(ModelUnavailable) as err:
        slots.get(entry)
    assert err.value.code == "model_unavailable" and err.value.status_code == 503
    assert "folder /secret/weights is missing" in err.value.message
    assert "more detail" not in err.value.message  # one line
    st = slots.states()["builtin"]
    assert not st.available and st.failures == 1 and st.reason and st.retry_at

    assert slots.due() == []
    # Inside the backoff: fails at once, without trying to load.
    clock.t += 4.9
    with pytest.raises(ModelUnavailable):
        slots.get(entry)
    assert len(calls) == 1
    # After it: one more try, which fails and doubles the wait.
    clock.t += 0.2
    assert slots.due() == ["builtin"]
    with pytest.raises(ModelUnavailable):
        slots.get(entry)
    assert len(calls) == 2 and slots.states()["builtin"].failures == 2
    clock.t += 9.9
    with pytest.raises(ModelUnavailable):
        slots.get(entry)
    assert len(calls) == 2
    # Fixed: the next try loads it, and it is available again.
    broken["now"] = False
    clock.t += 0.2
    pipe = slots.get(entry)
    assert slots.get(entry) is pipe and len(calls) == 3
    assert slots.states() == {"builtin": slots.states()["builtin"]}
    assert slots.states()["builtin"].available and not slots.failed
