"""A model that cannot run does not stall the others (issues 32 and 33), through a real
`aiprod serve` with one worker.

- Broken files (a path that does not exist): `serve` names it at start and skips it; GET
  /models shows it unavailable at once and a job for it is refused with 503 + Retry-After;
  the healthy model's jobs succeed. A broken default stops `serve` at start (exit 2).
- Files that pass the checks but do not load (corrupt weights): the first job fails at once
  with `model_unavailable` (no retries), then submits get 503; GET /models, /readyz and
  /metrics show the reason; the worker retries with backoff and stays up (no crash loop).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.harness import (
    MODELS_TOML,
    Stack,
    aiprod_cmd,
    stack_env,
    wait_for,
    wait_job,
    write_models_toml,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

# An entry whose weights folder does not exist: every check names it before any load.
MISSING = """
[[models]]
id = "broken"
family = "ltxv"
path = "no-such-weights"
"""
# An LTX-Video folder whose configs are right but whose transformer weights are garbage.
CORRUPT = """
[[models]]
id = "broken"
family = "ltxv"
path = "corrupt"
[models.defaults]
two_stage = false
"""


def _corrupt_model(folder: Path) -> None:
    from aiprod.engine.tiny import save_components, tiny_ltxv_components

    comps = tiny_ltxv_components(seed=1)
    comps.pop("latent_upsampler", None)
    save_components(comps, folder)
    for f in (folder / "transformer").glob("*.safetensors"):
        f.write_bytes(b"not a safetensors file")


@pytest.fixture(params=["missing-files", "corrupt-weights"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    if request.param == "corrupt-weights":
        _corrupt_model(tmp_path / "corrupt")
    toml = MODELS_TOML + (MISSING if request.param == "missing-files" else CORRUPT)
    s = Stack(tmp_path, f"sqlite:///{tmp_path / 'aiprod.db'}", workers=1, models_toml=toml)
    s.kind = request.param  # type: ignore[attr-defined]
    try:
        yield s
    finally:
        s.stop()


def _live_pids(a) -> set[int]:  # type: ignore[no-untyped-def]
    ws = a.get("/api/v1/admin/workers").json()["data"]
    return {w["pid"] for w in ws if w["status"] in {"idle", "busy", "starting"}}


def test_a_broken_default_stops_serve_at_start(tmp_path: Path) -> None:
    toml = (MODELS_TOML + MISSING).replace('default = "builtin"', 'default = "broken"', 1)
    env = stack_env(
        tmp_path / "data", f"sqlite:///{tmp_path / 'a.db'}", write_models_toml(tmp_path, toml)
    )
    res = subprocess.run(
        aiprod_cmd("serve", "--port", "1"),
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert any("model 'broken': path" in x and "does not exist" in x for x in lines), res.stderr
    assert "the default model 'broken' cannot run" in res.stderr


def _refused(c, what: str) -> dict:  # type: ignore[no-untyped-def]
    r = c.post("/api/v1/generate", json={"prompt": what, "model": "broken"})
    assert r.status_code == 503, r.text
    assert int(r.headers["Retry-After"]) >= 1
    err = r.json()["error"]
    assert err["code"] == "model_unavailable" and err["field"] == "model"
    assert "model 'broken' is unavailable" in err["message"]
    assert "no-such-weights" not in err["message"] and "/corrupt" not in err["message"]
    return err


def test_a_broken_model_is_refused_and_the_healthy_one_is_served(stack: Stack) -> None:
    key = stack.create_key("client")
    missing = stack.kind == "missing-files"  # type: ignore[attr-defined]
    with stack.client(key) as c, stack.client(stack.admin_key) as a:
        pids = _live_pids(a)
        assert len(pids) == 1
        if missing:
            # Named at start, one line with the fix; refused at submit from the first request.
            log = stack.logs(full=True)
            assert "warning:" in log and "model 'broken': path" in log, log
            assert "is skipped; the others are served" in log
            _refused(c, "doomed")
        else:
            # The files pass the checks; the load fails on the worker: no retries.
            bad = c.post("/api/v1/generate", json={"prompt": "doomed", "model": "broken"})
            assert bad.status_code == 202, bad.text
            failed = wait_job(c, bad.json()["id"], {"failed", "succeeded"}, timeout=120)
            assert failed["status"] == "failed" and failed["attempts"] == 1, failed
            assert failed["error"]["code"] == "model_unavailable"
            assert "'broken' is unavailable" in failed["error"]["message"]
            # Now known unavailable: the next submit is refused instead of 202-then-fail.
            wait_for(
                lambda: (
                    c.post("/api/v1/generate", json={"prompt": "x", "model": "broken"}).status_code
                    == 503
                ),
                60,
                0.5,
                "submits for 'broken' to be refused",
            )
            _refused(c, "doomed again")
        good = c.post("/api/v1/generate", json={"prompt": "fine", "model": "builtin"})
        assert good.status_code == 202, good.text
        ok = wait_job(c, good.json()["id"], {"failed", "succeeded"}, timeout=180)
        assert ok["status"] == "succeeded", ok

        # GET /models: unavailable with the reason (no server path); the healthy one available.
        models = {m["id"]: m for m in c.get("/api/v1/models").json()["data"]}
        reason = models["broken"]["unavailable_reason"]
        assert not models["broken"]["available"] and reason, models
        assert "no-such-weights" not in reason
        assert models["builtin"]["available"] and models["builtin"]["unavailable_reason"] is None

        # /readyz: ready (the default works), the broken model in its details.
        ready = c.get("/readyz")
        body = ready.json()
        assert ready.status_code == 200, body
        assert body["checks"]["models"] == "degraded"
        assert body["details"]["models"]["broken"]["reason"]

        # The worker tries the model again by itself, with backoff (5 s, then 10 s, ...).
        def failures() -> int:
            with stack.client(stack.admin_key) as a2:
                m = a2.get("/readyz").json()["details"].get("models", {}).get("broken", {})
            return int(m.get("failures") or 0)

        first = failures()
        wait_for(lambda: failures() > first, 60, 0.5, "the worker to retry loading 'broken'")
        metrics = c.get("/metrics").text
        assert 'aiprod_model_available{model="broken"} 0.0' in metrics
        assert 'aiprod_model_available{model="builtin"} 1.0' in metrics

        # The same worker process served all of it: no crash, no restart.
        assert _live_pids(a) == pids
        assert "restarting" not in stack.logs(full=True)
