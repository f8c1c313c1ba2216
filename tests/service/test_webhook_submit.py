"""POST /generate and /estimate-cost refuse webhook destinations that are not public (issue 32,
SSRF): a 422 in the API's error shape naming `webhook_url`, and no job is created. In-process;
nothing is sent anywhere (the check needs no network)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from aiprod.core.settings import Settings
from aiprod.db.migrate import upgrade
from aiprod.db.models import Job
from aiprod.db.session import make_engine, make_sessionmaker, session_scope
from aiprod.service.app import create_app
from aiprod.service.keys import create_key
from tests.jobs.test_destinations import REFUSED
from tests.service.harness import write_models_toml


def _app(tmp: Path, **settings: str) -> tuple[Settings, str]:
    s = Settings(
        data_dir=tmp,
        models_file=write_models_toml(tmp),
        rate_limit_per_minute=100_000,
        **settings,  # type: ignore[arg-type]
    )
    upgrade(s.resolved_database_url)
    engine = make_engine(s.resolved_database_url)
    with session_scope(make_sessionmaker(engine)) as session:
        _, key = create_key(session, secret=s.resolved_secret_key(), name="client")
    engine.dispose()
    return s, key


def _jobs(settings: Settings) -> int:
    engine = make_engine(settings.resolved_database_url)
    with session_scope(make_sessionmaker(engine)) as s:
        n = s.query(Job).count()
    engine.dispose()
    return n


@pytest.fixture(scope="module")
def public_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Settings]]:
    settings, key = _app(tmp_path_factory.mktemp("ssrf"))
    with TestClient(create_app(settings)) as c:
        c.headers["Authorization"] = f"Bearer {key}"
        yield c, settings


@pytest.mark.parametrize("url", REFUSED)
def test_generate_refuses_non_public_webhooks(
    public_only: tuple[TestClient, Settings], url: str
) -> None:
    c, settings = public_only
    for route in ("/api/v1/generate", "/api/v1/estimate-cost"):
        r = c.post(route, json={"prompt": "a fox", "webhook_url": url})
        assert r.status_code == 422, (url, r.text)
        err = r.json()["error"]
        assert err["field"] == "webhook_url" and err["code"] == "invalid_request", err
        assert "webhook_url" in err["message"]
    assert _jobs(settings) == 0


def test_public_webhooks_and_allowed_networks_are_accepted(tmp_path: Path) -> None:
    settings, key = _app(tmp_path, webhook_allow_networks="127.0.0.0/8")
    with TestClient(create_app(settings)) as c:
        c.headers["Authorization"] = f"Bearer {key}"
        for url in ["https://example.com/h", "http://127.0.0.1:9/h", "http://localhost:9/h"]:
            r = c.post("/api/v1/generate", json={"prompt": "a fox", "webhook_url": url})
            assert r.status_code == 202, r.text
        r = c.post("/api/v1/generate", json={"prompt": "a", "webhook_url": "http://10.0.0.1/"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "webhook_url"
        assert "a private address" in r.json()["error"]["message"]
    assert _jobs(settings) == 3
