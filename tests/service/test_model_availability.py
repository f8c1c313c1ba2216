"""In-process: the model states the workers publish (aiprod.jobs.model_state) as GET /models,
/readyz and /metrics show them; a model is unavailable only while no live worker has it.
The API here is an API-only host (``check_model_files=False``: the files live on the workers'
hosts), so only the published states count; tests/service/test_model_checks.py covers the API
checking the files itself."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from aiprod.core.settings import Settings
from aiprod.db.migrate import upgrade
from aiprod.db.models import ServiceState, utcnow
from aiprod.db.repositories import WorkerRepository
from aiprod.db.session import make_engine, make_sessionmaker, session_scope
from aiprod.jobs.model_state import ModelState, publish_model_states
from aiprod.service.app import create_app
from aiprod.service.keys import create_key
from tests.service.harness import MODELS_TOML, write_models_toml

BROKEN = '\n[[models]]\nid = "broken"\nfamily = "ltxv"\npath = "no-such-weights"\n'
DOWN = ModelState(available=False, reason="weights folder missing", retry_at="x", failures=2)


def _setup(tmp_path: Path, *, default: str) -> tuple[TestClient, str, object]:
    toml = (MODELS_TOML + BROKEN).replace('default = "builtin"', f'default = "{default}"', 1)
    url = f"sqlite:///{tmp_path / 'aiprod.db'}"
    upgrade(url)
    settings = Settings(
        data_dir=tmp_path,
        models_file=write_models_toml(tmp_path, toml),
        database_url=url,
        check_model_files=False,
    )
    sessions = make_sessionmaker(make_engine(url))
    with session_scope(sessions) as s:
        _, key = create_key(s, secret=settings.resolved_secret_key(), name="k")
        for w in ("w1", "w2"):
            WorkerRepository(s).register(worker_id=w, hostname="h", pid=1, device="cpu")
            WorkerRepository(s).seen(w, status="idle")
    return TestClient(create_app(settings)), key, sessions


def _publish(sessions, worker: str, states: dict[str, ModelState]) -> None:  # type: ignore[no-untyped-def]
    with session_scope(sessions) as s:
        publish_model_states(s, worker, states)


@pytest.mark.parametrize("default", ["broken", "builtin"])
def test_unavailable_model_in_models_readyz_and_metrics(tmp_path: Path, default: str) -> None:
    c, key, sessions = _setup(tmp_path, default=default)
    auth = {"Authorization": f"Bearer {key}"}
    with c:
        # Nothing published yet: every model counts as available.
        models = {m["id"]: m for m in c.get("/api/v1/models", headers=auth).json()["data"]}
        assert models["broken"]["available"] and models["broken"]["unavailable_reason"] is None
        assert c.get("/readyz").json()["checks"]["models"] == "ok"

        _publish(sessions, "w1", {"builtin": ModelState(available=True), "broken": DOWN})
        models = {m["id"]: m for m in c.get("/api/v1/models", headers=auth).json()["data"]}
        assert not models["broken"]["available"]
        assert models["broken"]["unavailable_reason"] == "weights folder missing"
        assert models["builtin"]["available"]
        r = c.get("/readyz")
        body = r.json()
        assert body["details"]["models"]["broken"]["reason"] == "weights folder missing"
        if default == "broken":
            assert r.status_code == 503 and body["checks"]["models"] == "default unavailable"
            assert any("weights folder missing" in x for x in body["reasons"])
        else:
            assert r.status_code == 200 and body["checks"]["models"] == "degraded"
        text = c.get("/metrics").text
        assert 'aiprod_model_available{model="broken"} 0.0' in text
        assert 'aiprod_model_available{model="builtin"} 1.0' in text
        assert (
            'aiprod_model_unavailable_info{model="broken",reason="weights folder missing"} 1.0'
            in text
        )

        # Another live worker has it loaded: it is available (that worker serves its jobs).
        _publish(sessions, "w2", {"broken": ModelState(available=True)})
        models = {m["id"]: m for m in c.get("/api/v1/models", headers=auth).json()["data"]}
        assert models["broken"]["available"]
        assert c.get("/readyz").json()["checks"]["models"] == "ok"

        # States of workers no longer live are ignored.
        _publish(sessions, "w2", {})
        with session_scope(sessions) as s:
            row = s.get(ServiceState, "models:w1")
            assert row is not None
            row.updated_at = utcnow() - timedelta(hours=1)
        models = {m["id"]: m for m in c.get("/api/v1/models", headers=auth).json()["data"]}
        assert models["broken"]["available"]
