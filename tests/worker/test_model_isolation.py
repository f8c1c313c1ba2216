"""A model that fails to load does not stall the others (issue 32, item 7), through a real
`aiprod serve` with one worker: the healthy model's jobs succeed, the broken model's jobs fail
at once with `model_unavailable`, GET /models, /readyz and /metrics show it unavailable with
the reason, and the worker process stays up (no crash loop)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.harness import MODELS_TOML, Stack, wait_for, wait_job

pytestmark = [pytest.mark.slow, pytest.mark.integration]

# An entry whose weights folder does not exist: engine.load_pipeline raises ConfigError.
BROKEN = """
[[models]]
id = "broken"
family = "ltxv"
path = "no-such-weights"
"""


class _Stack(Stack):
    """Ready when the worker is idle (a broken default model keeps /readyz at 503)."""

    broken_default = False

    def _wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        with self.client(self.admin_key) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"serve exited early:\n{self.logs()}")
                try:
                    ws = c.get("/api/v1/admin/workers").json()["data"]
                    if sum(w["status"] == "idle" for w in ws) >= self.workers:
                        return
                except Exception:
                    pass
                time.sleep(0.2)
        raise AssertionError(f"worker not idle in {timeout}s:\n{self.logs()}")


@pytest.fixture(params=["broken-default", "healthy-default"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[_Stack]:
    toml = MODELS_TOML + BROKEN
    if request.param == "broken-default":
        toml = toml.replace('default = "builtin"', 'default = "broken"', 1)
    s = _Stack(tmp_path, f"sqlite:///{tmp_path / 'aiprod.db'}", workers=1, models_toml=toml)
    s.broken_default = request.param == "broken-default"
    try:
        yield s
    finally:
        s.stop()


def _live_pids(a) -> set[int]:  # type: ignore[no-untyped-def]
    ws = a.get("/api/v1/admin/workers").json()["data"]
    return {w["pid"] for w in ws if w["status"] in {"idle", "busy", "starting"}}


def test_a_broken_model_fails_fast_and_the_healthy_one_is_served(stack: _Stack) -> None:
    key = stack.create_key("client")
    broken_default = stack.broken_default
    with stack.client(key) as c, stack.client(stack.admin_key) as a:
        pids = _live_pids(a)
        assert len(pids) == 1
        bad = c.post("/api/v1/generate", json={"prompt": "doomed", "model": "broken"})
        assert bad.status_code == 202, bad.text
        good = c.post("/api/v1/generate", json={"prompt": "fine", "model": "builtin"})
        assert good.status_code == 202, good.text

        failed = wait_job(c, bad.json()["id"], {"failed", "succeeded"}, timeout=120)
        assert failed["status"] == "failed"
        assert failed["attempts"] == 1  # no retries: the model would not load either
        assert failed["error"]["code"] == "model_unavailable"
        assert "'broken' is unavailable" in failed["error"]["message"]
        ok = wait_job(c, good.json()["id"], {"failed", "succeeded"}, timeout=180)
        assert ok["status"] == "succeeded", ok

        # GET /models: unavailable with the reason; the healthy one available.
        def shown() -> dict | None:
            models = {m["id"]: m for m in c.get("/api/v1/models").json()["data"]}
            return models if not models["broken"]["available"] else None

        models = wait_for(shown, 30, 0.2, "GET /models to show 'broken' unavailable")
        reason = models["broken"]["unavailable_reason"]  # clients see no server path
        assert "does not exist" in reason and "no-such-weights" not in reason, reason
        assert models["builtin"]["available"] and models["builtin"]["unavailable_reason"] is None

        # /readyz: not ready only while the default model is the unavailable one.
        ready = c.get("/readyz")
        body = ready.json()
        assert body["details"]["models"]["broken"]["reason"]
        if broken_default:
            assert ready.status_code == 503 and body["checks"]["models"] == "default unavailable"
            assert any("'broken'" in r and "no-such-weights" in r for r in body["reasons"])
        else:
            assert ready.status_code == 200, body
            assert body["checks"]["models"] == "degraded"

        # The worker tries the model again by itself, with backoff (5 s, then 10 s, ...).
        def failures() -> int:
            m = c.get("/readyz").json()["details"].get("models", {}).get("broken", {})
            return int(m.get("failures") or 0)

        first = failures()
        wait_for(lambda: failures() > first, 60, 0.5, "the worker to retry loading 'broken'")

        metrics = c.get("/metrics").text
        assert 'aiprod_model_available{model="broken"} 0.0' in metrics
        assert 'aiprod_model_available{model="builtin"} 1.0' in metrics
        assert 'aiprod_model_unavailable_info{model="broken"' in metrics

        # A second job for the broken model fails at once too (the model is in its backoff).
        again = c.post("/api/v1/generate", json={"prompt": "doomed 2", "model": "broken"}).json()
        t0 = time.monotonic()
        final = wait_job(c, again["id"], {"failed", "succeeded"}, timeout=60)
        took = time.monotonic() - t0
        assert final["status"] == "failed" and final["attempts"] == 1, final
        print(f"\nsecond job for the broken model failed after {took:.2f}s")

        # The same worker process served all of it: no crash, no restart.
        assert _live_pids(a) == pids
        assert "restarting" not in stack.logs(full=True)
