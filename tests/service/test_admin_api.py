"""The operator's API (/api/v1/admin/jobs|keys|webhooks|workers) and budgets, through the real
app on real SQLite and PostgreSQL databases; jobs finish through the real transitions (what a
worker calls), and every body is checked against its response model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from aiprod.client import BudgetExceeded, Client
from aiprod.core.settings import Settings
from aiprod.db.repositories import WorkerRepository
from aiprod.db.session import make_engine, make_sessionmaker, session_scope
from aiprod.jobs import transitions
from aiprod.jobs.gpu import GpuStat, publish_gpu_stats
from aiprod.service.app import create_app
from aiprod.service.keys import create_key
from aiprod.service.schemas import ErrorOut, EstimateOut, JobOut, WorkersOut
from aiprod.service.schemas_admin import (
    AdminJobDetailOut,
    AdminJobOut,
    AdminJobPage,
    DeliveryOut,
    DeliveryPage,
    KeyCreatedOut,
    KeyOut,
    KeysOut,
    RotatedSecretOut,
)
from tests.service.harness import write_models_toml


class Api:
    def __init__(self, c: TestClient, settings: Settings, sessions: Any, keys: dict[str, str]):
        self.c, self.settings, self.sessions, self.keys = c, settings, sessions, keys

    def h(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    def submit(self, who: str, prompt: str, **body: Any) -> str:
        r = self.c.post("/api/v1/generate", json={"prompt": prompt, **body}, headers=self.h(who))
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    def finish(self, job_id: str, *, gpu: float, ok: bool = True) -> None:
        """What a worker does: claim the next job (this one) and end it."""
        with session_scope(self.sessions) as s:
            job = transitions.claim(s, worker_id="w1", lease_seconds=60)
            assert job is not None and job.id == job_id
            s.expunge(job)
        storage = self.c.app.state.aiprod.storage  # type: ignore[attr-defined]
        with session_scope(self.sessions) as s:
            if not ok:
                transitions.fail_attempt(
                    s, job=job, worker_id="w1", settings=self.settings, code="oom",
                    message="out of memory", permanent=True,
                )  # fmt: skip
                return
            storage.write_bytes(f"outputs/{job_id}.mp4", b"\x00\x00\x00\x18ftypmp42")
            transitions.succeed(
                s, job_id=job_id, worker_id="w1", settings=self.settings,
                output_path=f"outputs/{job_id}.mp4", output_bytes=12, output_sha256="0" * 64,
                gpu_seconds=gpu, cost_usd=round(gpu * 0.01, 6),
            )  # fmt: skip


@pytest.fixture
def api(db_url: str, tmp_path: Path) -> Iterator[Api]:
    settings = Settings(
        data_dir=tmp_path,
        database_url=db_url,
        models_file=write_models_toml(tmp_path),
        gpu_cost_per_hour=18.0,
        rate_limit_per_minute=100000,
    )
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    keys = {}
    with session_scope(sessions) as s:
        secret = settings.resolved_secret_key()
        for name, admin in (("acme", False), ("globex", False), ("ops", True)):
            keys[name] = create_key(s, secret=secret, name=name, admin=admin)[1]
    with TestClient(create_app(settings)) as c:
        yield Api(c, settings, sessions, keys)
    engine.dispose()


def _ok(model: type[BaseModel], r: Any, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    model.model_validate(r.json())
    return r.json()


def _err(r: Any, status: int, code: str | None = None) -> str:
    assert r.status_code == status, r.text
    ErrorOut.model_validate(r.json())
    if code:
        assert r.json()["error"]["code"] == code, r.text
    return str(r.json()["error"]["message"])


ADMIN_ROUTES = [
    ("GET", "/api/v1/admin/jobs"),
    ("GET", "/api/v1/admin/jobs/x"),
    ("POST", "/api/v1/admin/jobs/x/cancel"),
    ("DELETE", "/api/v1/admin/jobs/x"),
    ("POST", "/api/v1/admin/jobs/x/retry"),
    ("GET", "/api/v1/admin/keys"),
    ("POST", "/api/v1/admin/keys"),
    ("GET", "/api/v1/admin/keys/x"),
    ("PATCH", "/api/v1/admin/keys/x"),
    ("POST", "/api/v1/admin/keys/x/rotate-webhook-secret"),
    ("GET", "/api/v1/admin/webhooks"),
    ("POST", "/api/v1/admin/webhooks/x/replay"),
    ("GET", "/api/v1/admin/workers"),
]


def test_client_keys_get_403_and_no_key_401(api: Api) -> None:
    for method, path in ADMIN_ROUTES:
        body = {"name": "n"} if method in ("POST", "PATCH") else None
        r = api.c.request(method, path, headers=api.h("acme"), json=body)
        assert "admin key" in _err(r, 403, "forbidden"), (method, path)
        _err(api.c.request(method, path, json=body), 401, "unauthorized")
    for method, path in ADMIN_ROUTES:  # the admin gets 404 for ids that do not exist
        if "/x" in path:
            body = {"priority": 1} if method == "PATCH" else None
            _err(api.c.request(method, path, headers=api.h("ops"), json=body), 404, "not_found")
    ops = api.h("ops")  # a NUL matches nothing (and never reaches PostgreSQL as a 500)
    _err(api.c.get("/api/v1/admin/jobs/a%00b", headers=ops), 404, "not_found")
    assert api.c.get("/api/v1/admin/jobs?q=%00&key_id=%00", headers=ops).json()["data"] == []
    for bad in ({"name": "bell\u0007"}, {"name": "x", "rate_limit_per_minute": 10**12}):
        _err(api.c.post("/api/v1/admin/keys", headers=ops, json=bad), 422, "invalid_request")


def test_admin_sees_and_acts_on_every_keys_jobs(api: Api) -> None:
    a1 = api.submit("acme", "a red fox", webhook_url="https://example.com/hook")
    api.finish(a1, gpu=2.0)
    a2 = api.submit("acme", "a blue whale")
    api.finish(a2, gpu=0.0, ok=False)
    g1 = api.submit("globex", "a green frog")
    ops = api.h("ops")
    # a client still cannot see another client's job; the admin can see and cancel it
    _err(api.c.get(f"/api/v1/jobs/{g1}", headers=api.h("acme")), 404, "not_found")
    page = _ok(AdminJobPage, api.c.get("/api/v1/admin/jobs?limit=2", headers=ops))
    assert len(page["data"]) == 2 and page["next_cursor"]
    rest = _ok(
        AdminJobPage,
        api.c.get(f"/api/v1/admin/jobs?limit=2&cursor={page['next_cursor']}", headers=ops),
    )
    everyone = page["data"] + rest["data"]
    assert {j["key_name"] for j in everyone} == {"acme", "globex"} and len(everyone) == 3
    failed = _ok(AdminJobPage, api.c.get("/api/v1/admin/jobs?status=failed", headers=ops))
    assert [j["id"] for j in failed["data"]] == [a2]
    assert failed["data"][0]["error"] == {"code": "oom", "message": "out of memory"}
    by_text = api.c.get("/api/v1/admin/jobs?q=GREEN&model=builtin", headers=ops).json()
    assert [j["id"] for j in by_text["data"]] == [g1]
    key_id = failed["data"][0]["api_key_id"]
    mine = api.c.get(f"/api/v1/admin/jobs?key_id={key_id}", headers=ops).json()["data"]
    assert {j["id"] for j in mine} == {a1, a2}
    _err(api.c.get("/api/v1/admin/jobs?status=done", headers=ops), 422, "invalid_request")
    _err(api.c.get("/api/v1/admin/jobs?created_after=soon", headers=ops), 422)
    _err(api.c.get("/api/v1/admin/jobs?cursor=zz", headers=ops), 422)

    detail = _ok(AdminJobDetailOut, api.c.get(f"/api/v1/admin/jobs/{a1}", headers=ops))
    assert detail["status"] == "succeeded" and detail["cost_usd"] == pytest.approx(0.02)
    assert [d["event_type"] for d in detail["webhook_deliveries"]] == ["job.succeeded"]

    canceled = _ok(AdminJobOut, api.c.post(f"/api/v1/admin/jobs/{g1}/cancel", headers=ops))
    assert canceled["status"] == "canceled"
    assert api.c.get(f"/api/v1/jobs/{g1}", headers=api.h("globex")).json()["status"] == "canceled"

    _err(api.c.post(f"/api/v1/admin/jobs/{a1}/retry", headers=ops), 409, "not_retryable")
    r = api.c.post(f"/api/v1/admin/jobs/{a2}/retry", headers=ops)
    new = _ok(AdminJobOut, r, 201)
    assert r.headers["location"] == f"/api/v1/admin/jobs/{new['id']}"
    assert (new["status"], new["retry_of"], new["key_name"]) == ("queued", a2, "acme")
    assert new["params"] == api.c.get(f"/api/v1/jobs/{a2}", headers=api.h("acme")).json()["params"]
    # the client sees its new job too
    _ok(JobOut, api.c.get(f"/api/v1/jobs/{new['id']}", headers=api.h("acme")))
    # as the client's own DELETE: a queued job is canceled, then its row marked deleted
    gone = _ok(AdminJobOut, api.c.delete(f"/api/v1/admin/jobs/{new['id']}", headers=ops))
    assert gone["status"] == "canceled" and gone["deleted_at"] is not None

    out = Path(api.settings.resolved_storage_url) / "outputs" / f"{a1}.mp4"
    assert out.exists()
    deleted = _ok(AdminJobOut, api.c.delete(f"/api/v1/admin/jobs/{a1}", headers=ops))
    assert deleted["status"] == "succeeded" and deleted["cost_usd"] == pytest.approx(0.02)
    assert deleted["deleted_at"] is not None
    assert not out.exists()
    r = api.c.get(f"/api/v1/jobs/{a1}/download", headers=api.h("acme"))
    _err(r, 410, "deleted")  # the output is gone; the row and its cost stay


def test_keys_list_create_update_and_rotate(api: Api) -> None:
    ops = api.h("ops")
    api.finish(api.submit("acme", "a fox"), gpu=3.0)
    keys = _ok(KeysOut, api.c.get("/api/v1/admin/keys", headers=ops))["data"]
    acme = next(k for k in keys if k["name"] == "acme")
    assert (acme["jobs_total"], acme["spend_this_month_usd"]) == (1, pytest.approx(0.03))
    r = api.c.post("/api/v1/admin/keys", headers=ops, json={"name": "ACME "})
    assert acme["id"] in _err(r, 409, "duplicate_name")
    created = _ok(
        KeyCreatedOut,
        api.c.post(
            "/api/v1/admin/keys",
            headers=ops,
            json={"name": "initech", "monthly_budget_usd": 10, "priority": 2},
        ),
        201,
    )
    assert created["key"].startswith("aiprod_sk_") and created["webhook_secret"].startswith(
        "whsec_"
    )
    api.keys["initech"] = created["key"]
    _ok(JobOut, api.c.get(f"/api/v1/jobs/{api.submit('initech', 'x')}", headers=api.h("initech")))
    assert "key" not in api.c.get(f"/api/v1/admin/keys/{created['id']}", headers=ops).json()

    path = f"/api/v1/admin/keys/{acme['id']}"
    patched = _ok(
        KeyOut,
        api.c.patch(
            path,
            headers=ops,
            json={"rate_limit_per_minute": 7, "monthly_budget_usd": 25.5, "priority": 3},
        ),
    )
    assert (patched["rate_limit_per_minute"], patched["monthly_budget_usd"]) == (7, 25.5)
    assert patched["priority"] == 3 and patched["updated_at"]
    r = api.c.post("/api/v1/generate", json={"prompt": "a"}, headers=api.h("acme"))
    assert r.headers["x-ratelimit-limit"] == "7"
    cleared = api.c.patch(path, headers=ops, json={"monthly_budget_usd": None}).json()
    assert cleared["monthly_budget_usd"] is None and cleared["rate_limit_per_minute"] == 7
    _err(api.c.patch(path, headers=ops, json={"name": "globex"}), 409, "duplicate_name")
    for bad in ({"priority": "high"}, {"scope": "admin"}, {"rate_limit_per_minute": 0}):
        _err(api.c.patch(path, headers=ops, json=bad), 422)
    same = _ok(KeyOut, api.c.patch(path, headers=ops, json={"name": None, "priority": 4.0}))
    assert (same["name"], same["priority"]) == ("acme", 4)  # null: unchanged; 4.0 is an integer
    _err(api.c.patch(path, headers=ops, json={"priority": "4"}), 422, "invalid_request")
    _err(api.c.patch(path, headers=ops, json={"name": "x\u0000y"}), 422, "invalid_request")

    rotated = _ok(RotatedSecretOut, api.c.post(f"{path}/rotate-webhook-secret", headers=ops))
    again = api.c.post(f"{path}/rotate-webhook-secret", headers=ops).json()
    assert rotated["webhook_secret"] != again["webhook_secret"]

    assert api.c.patch(path, headers=ops, json={"active": False}).json()["active"] is False
    _err(api.c.get("/api/v1/jobs", headers=api.h("acme")), 401, "unauthorized")
    assert api.c.patch(path, headers=ops, json={"active": True}).json()["revoked_at"] is None
    assert api.c.get("/api/v1/jobs", headers=api.h("acme")).status_code == 200


def test_webhook_deliveries_and_replay(api: Api) -> None:
    ops = api.h("ops")
    j = api.submit("acme", "a fox", webhook_url="https://example.com/hook")
    api.finish(j, gpu=1.0)
    page = _ok(DeliveryPage, api.c.get(f"/api/v1/admin/webhooks?job_id={j}", headers=ops))
    (d,) = page["data"]
    assert (d["status"], d["url"], d["event_type"]) == (
        "pending",
        "https://example.com/hook",
        "job.succeeded",
    )
    _err(api.c.get("/api/v1/admin/webhooks?status=lost", headers=ops), 422)
    replayed = _ok(DeliveryOut, api.c.post(f"/api/v1/admin/webhooks/{d['id']}/replay", headers=ops))
    assert replayed["status"] == "pending" and replayed["attempts"] == 0


def test_workers_with_gpu_health(api: Api) -> None:
    j = api.submit("acme", "a fox")
    with session_scope(api.sessions) as s:
        WorkerRepository(s).register(worker_id="gpu-box-0", hostname="box", pid=9, device="cuda:0")
        WorkerRepository(s).seen("gpu-box-0", status="busy", current_job_id=j)
        publish_gpu_stats(
            s, "gpu-box-0", [GpuStat(0, "NVIDIA H100", 5 << 30, 80 << 30, 97.0, 71.0)]
        )
    body = _ok(WorkersOut, api.c.get("/api/v1/admin/workers", headers=api.h("ops")))
    (w,) = [w for w in body["data"] if w["id"] == "gpu-box-0"]
    assert (w["status"], w["current_job_id"], w["current_job_model"]) == ("busy", j, "builtin")
    assert w["gpus"][0]["temperature_celsius"] == 71.0 and w["gpus"][0]["name"] == "NVIDIA H100"


def test_budget_enforced_on_submit_and_shown_by_estimate(api: Api) -> None:
    ops = api.h("ops")
    keys = api.c.get("/api/v1/admin/keys", headers=ops).json()["data"]
    acme = next(k for k in keys if k["name"] == "acme")
    path = f"/api/v1/admin/keys/{acme['id']}"
    api.c.patch(path, headers=ops, json={"monthly_budget_usd": 0.05})
    est = _ok(
        EstimateOut,
        api.c.post("/api/v1/estimate-cost", json={"prompt": "a"}, headers=api.h("acme")),
    )
    assert est["monthly_budget_usd"] == 0.05 and not est["budget_exceeded"]
    assert est["would_exceed_budget"] is (est["estimated_cost_usd"] > 0.05)
    api.finish(api.submit("acme", "a fox"), gpu=6.0)  # $0.06 of $0.05
    r = api.c.post("/api/v1/generate", json={"prompt": "a"}, headers=api.h("acme"))
    msg = _err(r, 402, "budget_exceeded")
    assert "$0.05" in msg and "$0.06" in msg and "resets on" in msg and "00:00 UTC" in msg
    # The OpenAI-compatible route submits through the same checks (it skipped this one).
    r = api.c.post("/v1/videos", json={"prompt": "a"}, headers=api.h("acme"))
    assert r.status_code == 402 and r.json()["error"]["code"] == "budget_exceeded", r.text
    est = _ok(
        EstimateOut,
        api.c.post("/api/v1/estimate-cost", json={"prompt": "a"}, headers=api.h("acme")),
    )
    assert est["budget_exceeded"] and est["would_exceed_budget"] and est["month_spend_usd"] == 0.06
    assert api.submit("globex", "unaffected")  # another client is not affected

    # the Python client: a typed 402, and the admin helpers
    def relay(req: httpx.Request) -> httpx.Response:  # to the app, in process (TestClient)
        r = api.c.request(req.method, str(req.url), headers=req.headers, content=req.content)
        return httpx.Response(r.status_code, headers=r.headers, content=r.content)

    transport = httpx.MockTransport(relay)
    with Client("http://testserver", api_key=api.keys["acme"], transport=transport) as client:
        with pytest.raises(BudgetExceeded, match="resets on"):
            client.generate("a fox")
    with Client("http://testserver", api_key=api.keys["ops"], transport=transport) as admin:
        assert admin.update_key(acme["id"], monthly_budget_usd=0.5)["monthly_budget_usd"] == 0.5
        assert admin.admin_jobs(key_id=acme["id"], status="succeeded")["data"]
    api.c.patch(path, headers=ops, json={"monthly_budget_usd": 1.0})  # the operator raises it
    assert api.submit("acme", "again")
    assert api.c.get(path, headers=ops).json()["over_budget"] is False
