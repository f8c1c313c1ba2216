"""The OpenAPI document and its viewers, done once for every route (present and future).

- operationIds: named ones for the documented API (``createJob``, ``getJob``, ...), the route
  function's name in camelCase for any other route (``generate_unique_id_function``).
- Security: ``bearerAuth`` (HTTP Bearer) on every route that depends on the API key (declared
  by ``service.deps.get_api_key``), so Swagger UI has an Authorize button.
- Errors: every status a route of ``/api/...`` can answer, in aiprod's error shape
  (``ErrorOut``): 401/429/503 where a key is checked, 403 on admin routes, 404 where the path
  names something, 400/413/422 where there is a body, 422 where there are parameters. FastAPI's
  own 422 schema (``HTTPValidationError``) is replaced by ``ErrorOut`` wherever it appears.
- Examples on request bodies (named, so Swagger UI offers them in a list).
- Swagger UI at /docs and ReDoc at /redoc from files shipped in the package
  (``service/static/``: swagger-ui-dist 5.36.0, Apache-2.0; redoc 2.5.2, MIT), so both work
  without internet.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles

from aiprod.service.deps import get_api_key, require_admin
from aiprod.service.schemas import ERROR_TEXT, ErrorOut

STATIC = Path(__file__).with_name("static")
ASSETS = "/docs-assets"
SECURITY_SCHEME = "bearerAuth"

# (method, path) -> operationId for the documented API; other routes get their function's name.
OPERATION_IDS = {
    ("POST", "/api/v1/generate"): "createJob",
    ("GET", "/api/v1/jobs"): "listJobs",
    ("GET", "/api/v1/jobs/{job_id}"): "getJob",
    ("DELETE", "/api/v1/jobs/{job_id}"): "deleteJob",
    ("POST", "/api/v1/jobs/{job_id}/cancel"): "cancelJob",
    ("GET", "/api/v1/jobs/{job_id}/download"): "downloadJob",
    ("GET", "/api/v1/jobs/{job_id}/events"): "streamJobEvents",
    ("GET", "/api/v1/models"): "listModels",
    ("POST", "/api/v1/estimate-cost"): "estimateCost",
    ("GET", "/api/v1/admin/stats"): "getAdminStats",
    ("POST", "/api/v1/admin/clear-cache"): "clearCache",
    ("GET", "/api/v1/admin/workers"): "listWorkers",
    ("GET", "/api/v1/admin/jobs"): "adminListJobs",
    ("GET", "/api/v1/admin/jobs/{job_id}"): "adminGetJob",
    ("DELETE", "/api/v1/admin/jobs/{job_id}"): "adminDeleteJobOutput",
    ("POST", "/api/v1/admin/jobs/{job_id}/cancel"): "adminCancelJob",
    ("POST", "/api/v1/admin/jobs/{job_id}/retry"): "adminRetryJob",
    ("GET", "/healthz"): "getHealth",
    ("GET", "/readyz"): "getReadiness",
    ("GET", "/metrics"): "getMetrics",
}

_GENERATE_EXAMPLES: dict[str, Any] = {
    "text": {
        "summary": "Text to video",
        "value": {"prompt": "a red fox running through snow", "num_frames": 9, "seed": 1},
    },
    "tracked": {
        "summary": "With a webhook and your own metadata",
        "value": {
            "prompt": "two blue squares moving left",
            "seed": 7,
            "webhook_url": "https://example.com/hooks/aiprod",
            "metadata": {"order": "A-1042"},
        },
    },
}
# Request bodies (by schema name) and their examples; a body not listed keeps its schema's.
BODY_EXAMPLES: dict[str, dict[str, Any]] = {"GenerateBody": _GENERATE_EXAMPLES}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def operation_id(route: APIRoute) -> str:
    """``generate_unique_id_function``: the named id, else the function's name in camelCase
    (FastAPI's default, ``generate_api_v1_generate_post``, reads badly in generated clients)."""
    method = sorted(route.methods or {"GET"})[0]
    return OPERATION_IDS.get((method, route.path_format)) or _camel(route.name)


def _calls(dependant: Dependant, target: object) -> bool:
    return any(d.call is target or _calls(d, target) for d in dependant.dependencies)


def _error_statuses(route: APIRoute, op: dict[str, Any]) -> set[int]:
    out: set[int] = set()
    if _calls(route.dependant, get_api_key):
        out |= {401, 429, 503}
    if _calls(route.dependant, require_admin):
        out.add(403)
    if "{" in route.path_format:
        out.add(404)
    if "requestBody" in op:
        out |= {400, 413, 422}
    if op.get("parameters"):
        out.add(422)
    return out


_ERROR_REF = {"$ref": "#/components/schemas/ErrorOut"}
_HTTP_422 = re.compile(r"#/components/schemas/(HTTPValidationError|ValidationError)$")


def _replace_fastapi_422(node: Any) -> Any:
    """Every reference to FastAPI's validation error schema -> aiprod's error shape."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and _HTTP_422.search(ref):
            return dict(_ERROR_REF)
        return {k: _replace_fastapi_422(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace_fastapi_422(v) for v in node]
    return node


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document with the additions above (cached on the app)."""
    if app.openapi_schema:
        return app.openapi_schema
    spec = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    error_schema = ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in error_schema.pop("$defs", {}).items():
        schemas.setdefault(name, sub)
    schemas.setdefault("ErrorOut", error_schema)
    scheme = spec["components"].get("securitySchemes", {}).get(SECURITY_SCHEME)
    if scheme is not None:
        scheme.setdefault("bearerFormat", "aiprod_sk_...")
    for route in _api_routes(app):
        if not route.include_in_schema:
            continue
        for method in route.methods or ():
            op = spec["paths"].get(route.path_format, {}).get(method.lower())
            if op is None:
                continue
            _document_errors(route, op)
            _add_examples(op)
    spec = _replace_fastapi_422(spec)
    for name in ("HTTPValidationError", "ValidationError"):
        spec["components"]["schemas"].pop(name, None)
    app.openapi_schema = spec
    return spec


def _api_routes(app: FastAPI) -> Iterator[Any]:
    """Every API route with its effective path (FastAPI >= 0.160 includes routers lazily: their
    routes appear in ``app.routes`` only through ``iter_route_contexts``)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI: included routes are plain APIRoutes
        yield from (r for r in app.routes if isinstance(r, APIRoute))
        return
    for ctx in iter_route_contexts(app.routes):
        if isinstance(ctx.original_route, APIRoute):
            yield ctx


def _document_errors(route: APIRoute, op: dict[str, Any]) -> None:
    # aiprod's own API only: the OpenAI-compatible /v1 routes answer in OpenAI's error shape
    # and document their errors themselves.
    if not route.path_format.startswith("/api/"):
        return
    responses = op.setdefault("responses", {})
    for status in sorted(_error_statuses(route, op)):
        responses.setdefault(
            str(status),
            {
                "description": ERROR_TEXT[status],
                "content": {"application/json": {"schema": dict(_ERROR_REF)}},
            },
        )


def _add_examples(op: dict[str, Any]) -> None:
    media = op.get("requestBody", {}).get("content", {}).get("application/json")
    if not media:
        return
    ref = media.get("schema", {}).get("$ref", "")
    examples = BODY_EXAMPLES.get(ref.rpartition("/")[2])
    if examples and "examples" not in media:
        media["examples"] = examples


def install_docs(app: FastAPI) -> None:
    """/openapi.json (built by ``build_openapi``), /docs and /redoc from the packaged assets."""
    app.openapi = lambda: build_openapi(app)  # type: ignore[method-assign]
    app.mount(ASSETS, StaticFiles(directory=STATIC), name="docs-assets")
    title = f"{app.title} API"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=title,
            swagger_js_url=f"{ASSETS}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/swagger-ui/favicon-32x32.png",
            oauth2_redirect_url="/docs/oauth2-redirect",
            # the key survives a page reload while the tab is open
            swagger_ui_parameters={"persistAuthorization": True, "displayOperationId": True},
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title=title,
            redoc_js_url=f"{ASSETS}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS}/swagger-ui/favicon-32x32.png",
            with_google_fonts=False,
        )
