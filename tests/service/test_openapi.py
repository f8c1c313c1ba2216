"""/openapi.json documents what clients get (the job object, pages, estimates, models, stats and
the one error shape), and the real responses match those models field for field."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from aiprod.core.settings import Settings
from aiprod.db.migrate import upgrade
from aiprod.db.session import make_engine, make_sessionmaker, session_scope
from aiprod.service.app import create_app
from aiprod.service.keys import create_key
from aiprod.service.schemas import (
    ClearCacheOut,
    ErrorOut,
    EstimateOut,
    HealthOut,
    JobOut,
    JobPage,
    ModelsOut,
    StatsOut,
    WorkersOut,
)
from tests.service.harness import write_models_toml


@pytest.fixture(scope="module")
def app_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str, str]]:
    tmp = tmp_path_factory.mktemp("openapi")
    settings = Settings(data_dir=tmp, models_file=write_models_toml(tmp))
    upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    with session_scope(make_sessionmaker(engine)) as s:
        secret = settings.resolved_secret_key()
        _, client_key = create_key(s, secret=secret, name="client")
        _, admin_key = create_key(s, secret=secret, name="ops", admin=True)
    engine.dispose()
    with TestClient(create_app(settings)) as c:
        yield c, client_key, admin_key


def _ref(schema: dict[str, Any]) -> str:
    return schema["$ref"].rpartition("/")[2]


def _json_schema(op: dict[str, Any], status: str) -> dict[str, Any]:
    schema: dict[str, Any] = op["responses"][status]["content"]["application/json"]["schema"]
    return schema


def test_openapi_has_the_job_schema_and_the_error_shape(app_keys) -> None:  # type: ignore[no-untyped-def]
    c, _, _ = app_keys
    spec = c.get("/openapi.json").json()
    components = spec["components"]["schemas"]
    get_job = spec["paths"]["/api/v1/jobs/{job_id}"]["get"]
    assert _ref(_json_schema(get_job, "200")) == "JobOut"
    job = components["JobOut"]
    for name in ("id", "status", "progress", "params", "error", "download_url", "cost_usd"):
        assert name in job["properties"] and name in job["required"]
    assert _ref(job["properties"]["status"]) == "JobStatus"
    assert components["JobStatus"]["enum"] == [
        "queued",
        "running",
        "succeeded",
        "failed",
        "canceled",
        "expired",
    ]
    for status in ("401", "404", "422", "429"):
        assert _ref(_json_schema(get_job, status)) == "ErrorOut", status
    error = components[_ref(components["ErrorOut"]["properties"]["error"])]
    assert set(error["required"]) == {"code", "message"}
    # FastAPI's own 422 schema is replaced by the error shape everywhere.
    assert "HTTPValidationError" not in components
    generate = spec["paths"]["/api/v1/generate"]["post"]
    assert _ref(_json_schema(generate, "202")) == "JobOut"
    assert {"400", "401", "409", "413", "422", "429"} <= set(generate["responses"])
    listing = spec["paths"]["/api/v1/jobs"]["get"]
    assert _ref(_json_schema(listing, "200")) == "JobPage"
    assert _ref(_json_schema(spec["paths"]["/api/v1/admin/stats"]["get"], "403")) == "ErrorOut"
    # Every JSON route names its response model (none is a bare object any more).
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            ok = next(s for s in op["responses"] if s.startswith("2"))
            content = op["responses"][ok].get("content", {})
            if "application/json" in content:
                assert "$ref" in content["application/json"]["schema"], (method, path)


def _check(model: type[BaseModel], body: Any) -> None:
    """The body is exactly what the model describes (extra fields are refused)."""
    model.model_validate(body)


def _png(size: int) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), (10, 200, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_real_responses_match_their_models(app_keys) -> None:  # type: ignore[no-untyped-def]
    c, client_key, admin_key = app_keys
    auth = {"Authorization": f"Bearer {client_key}"}
    admin = {"Authorization": f"Bearer {admin_key}"}
    # 32x32: the test model's minimum image size (issue 32: smaller is refused at submit)
    body = {"prompt": "a red fox", "seed": 3, "image": _png(32), "metadata": {"order": 7}}
    r = c.post("/api/v1/generate", json=body, headers=auth)
    assert r.status_code == 202, r.text
    _check(JobOut, r.json())
    job_id = r.json()["id"]
    _check(JobOut, c.get(f"/api/v1/jobs/{job_id}", headers=auth).json())
    _check(JobPage, c.get("/api/v1/jobs", headers=auth).json())
    canceled = c.post(f"/api/v1/jobs/{job_id}/cancel", headers=auth).json()
    assert canceled["status"] == "canceled"
    _check(JobOut, canceled)
    _check(EstimateOut, c.post("/api/v1/estimate-cost", json=body, headers=auth).json())
    _check(ModelsOut, c.get("/api/v1/models", headers=auth).json())
    _check(StatsOut, c.get("/api/v1/admin/stats", headers=admin).json())
    _check(WorkersOut, c.get("/api/v1/admin/workers", headers=admin).json())
    _check(ClearCacheOut, c.post("/api/v1/admin/clear-cache", headers=admin).json())
    _check(HealthOut, c.get("/healthz").json())
    for r in (
        c.get("/api/v1/jobs/nope", headers=auth),
        c.get("/api/v1/jobs/nope"),
        c.get("/api/v1/admin/stats", headers=auth),
        c.post("/api/v1/generate", json={"prompt": "a", "width": 3}, headers=auth),
    ):
        assert r.status_code in (401, 403, 404, 422)
        _check(ErrorOut, r.json())


def test_a_conditioning_image_below_the_engine_minimum_is_refused_at_submit(app_keys) -> None:  # type: ignore[no-untyped-def]
    """One decoder, one set of limits: what the engine would refuse, the API refuses first
    (since issue 32 below the model's minimum size, 32x32 for the test model; was 8x8)."""
    c, client_key, _ = app_keys
    r = c.post(
        "/api/v1/generate",
        json={"prompt": "a red fox", "image": _png(4)},
        headers={"Authorization": f"Bearer {client_key}"},
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "image"
    assert "at least 32x32" in r.json()["error"]["message"]


def test_every_route_has_a_named_operation_the_bearer_scheme_and_its_errors(app_keys) -> None:  # type: ignore[no-untyped-def]
    """Done centrally (service/openapi.py), so a route added later gets the same."""
    c, _, _ = app_keys
    spec = c.get("/openapi.json").json()
    scheme = spec["components"]["securitySchemes"]["bearerAuth"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    ops = {(m.upper(), p): op for p, item in spec["paths"].items() for m, op in item.items()}
    ids = [op["operationId"] for op in ops.values()]
    assert len(ids) == len(set(ids))
    assert ops["POST", "/api/v1/generate"]["operationId"] == "createJob"
    assert ops["GET", "/api/v1/jobs/{job_id}"]["operationId"] == "getJob"
    assert ops["GET", "/api/v1/jobs"]["operationId"] == "listJobs"
    for (method, path), op in ops.items():
        assert "_" not in op["operationId"], (method, path)  # not FastAPI's generated ids
        if not path.startswith("/api/"):
            continue
        assert op["security"] == [{"bearerAuth": []}], (method, path)
        need = {"401", "422", "429", "503"}
        need |= {"403"} if "/admin/" in path else set()
        need |= {"404"} if "{" in path else set()
        need |= {"400", "413"} if "requestBody" in op else set()
        assert need <= set(op["responses"]), (method, path, sorted(op["responses"]))
        for status in need:
            assert _ref(_json_schema(op, status)) == "ErrorOut", (method, path, status)
    for path in ("/healthz", "/readyz", "/metrics"):
        assert "security" not in ops["GET", path]
    body = ops["POST", "/api/v1/generate"]["requestBody"]["content"]["application/json"]
    assert body["examples"]["text"]["value"]["prompt"]
    assert "HTTPValidationError" not in str(spec)


def test_docs_and_redoc_load_their_assets_from_the_server(app_keys) -> None:  # type: ignore[no-untyped-def]
    c, _, _ = app_keys
    for page in ("/docs", "/redoc"):
        html = c.get(page).text
        assert "cdn." not in html and "https://" not in html, page
        for src in re.findall(r'(?:src|href)="(/[^"]+)"', html):
            r = c.get(src)
            assert r.status_code == 200 and len(r.content) > 100, src
