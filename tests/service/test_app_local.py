"""In-process checks of the app that need no server: an unreachable database is a 503, the
rate limiter's window, and keys stored only as keyed hashes."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from aiprod.core.settings import Settings
from aiprod.db.models import RateLimitWindow
from aiprod.db.session import make_engine, make_sessionmaker, session_scope
from aiprod.service.app import create_app
from aiprod.service.ratelimit import RateLimiter
from aiprod.service.security import generate_key, hash_key, webhook_secret
from tests.service.harness import write_models_toml


def test_unreachable_database_is_a_503_not_a_500(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        models_file=write_models_toml(tmp_path),
        database_url="postgresql+psycopg://nobody@127.0.0.1:1/none",
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        r = c.get("/api/v1/jobs", headers={"Authorization": "Bearer aiprod_sk_x"})
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert r.json()["error"]["code"] == "unavailable"
        assert c.get("/healthz").status_code == 200


def test_rate_limiter_fixed_window_in_the_database(db_url: str) -> None:
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    rl = RateLimiter(window_seconds=60)

    def hit(key: str, now: float):  # type: ignore[no-untyped-def]
        with session_scope(sessions) as s:
            return rl.hit(s, key, 2, now=now)

    states = [hit("k", 120.0 + i) for i in range(3)]
    assert [s.allowed for s in states] == [True, True, False]
    assert [s.remaining for s in states] == [1, 0, 0]
    assert states[-1].reset_seconds == 58
    assert hit("other", 122.0).allowed  # per key
    assert hit("k", 180.0).allowed  # next window
    with session_scope(sessions) as s:  # the old window was dropped
        assert s.query(RateLimitWindow).filter_by(api_key_id="k").count() == 1
    engine.dispose()


def test_keys_are_random_and_only_hashed() -> None:
    a, b = generate_key(), generate_key()
    assert a != b and a.startswith("aiprod_sk_") and len(a) >= 50
    h = hash_key(a, "s" * 32)
    assert len(h) == 64 and a not in h and h != hash_key(a, "t" * 32)
    assert webhook_secret("id1", "s" * 32).startswith("whsec_")
    assert webhook_secret("id1", "s" * 32) != webhook_secret("id2", "s" * 32)
