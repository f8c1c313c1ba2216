"""Hook metrics, structured request logs, detailed readiness and retention into the app.

``create_app`` calls ``install_observability(app)`` once, after its routers are in place:

- ``GET /metrics``: Prometheus exposition from the app's own registry (``service/metrics.py``).
- ``GET /readyz``: the detailed readiness report of ``service/health.py`` (``/healthz``, plain
  liveness, lives in ``service/routers/health.py``).
- An outermost ASGI middleware: a request id (the caller's ``X-Request-ID`` when it looks sane,
  else a new one) echoed in the response and attached to every log line of the request; one
  structured log line per request (request id, key id, method, route template, status,
  latency); request count/latency metrics by route template and status. Probe and scrape
  requests (``/healthz``, ``/readyz``, ``/metrics``) are logged at DEBUG to keep logs readable.
- With ``AIPROD_RETENTION_DAYS`` set, a background task applies output retention every
  ``AIPROD_RETENTION_INTERVAL_SECONDS``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aiprod.core.logging import request_id_var
from aiprod.core.settings import Settings
from aiprod.jobs.retention import apply_retention, output_deleter
from aiprod.service.health import check_readiness
from aiprod.service.metrics import ServiceMetrics
from aiprod.service.schemas import ReadinessOut

http_log = logging.getLogger("aiprod.http")
log = logging.getLogger(__name__)

QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
UNMATCHED = "<unmatched>"


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class ObservabilityMiddleware:
    """Request id, one structured log line and metrics per HTTP request (pure ASGI)."""

    def __init__(self, app: ASGIApp, *, metrics: ServiceMetrics, log_requests: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        state: dict[str, Any] = scope.setdefault("state", {})
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        state["request_id"] = request_id
        token = request_id_var.set(request_id)
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            seconds = time.perf_counter() - start
            route = _route_template(scope)
            method = scope.get("method", "-")
            self.metrics.observe_request(method=method, route=route, status=status, seconds=seconds)
            if self.log_requests:
                path = scope.get("path", "")
                level = logging.DEBUG if path in QUIET_PATHS else logging.INFO
                http_log.log(
                    level,
                    "%s %s %d",
                    method,
                    route,
                    status,
                    extra={
                        "event": "http.request",
                        "request_id": request_id,
                        "key_id": state.get("api_key_id"),
                        "method": method,
                        "route": route,
                        "path": path,
                        "status": status,
                        "latency_ms": round(seconds * 1000, 2),
                    },
                )
            request_id_var.reset(token)


def _read_sessions(engine: Engine, sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    """Sessions for scrapes and readiness probes, which only read.

    aiprod's SQLite engine opens every transaction with BEGIN IMMEDIATE (the database's one
    write lock); a scrape's aggregate queries must not hold that lock against the workers and
    the API. A second engine on the same file without that hook reads from WAL snapshots
    without taking it (``query_only`` makes sure it never writes). PostgreSQL: the app's own.
    """
    if engine.dialect.name != "sqlite" or not engine.url.database:
        return sessions
    if engine.url.database == ":memory:":
        return sessions
    reader = create_engine(
        engine.url,
        connect_args={"timeout": 30, "check_same_thread": False},
        pool_size=2,
        max_overflow=8,
    )

    @event.listens_for(reader, "connect")
    def _read_only(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA query_only=ON")

    return sessionmaker(reader, expire_on_commit=False)


READYZ_SUMMARY = "Readiness: database, migrations, workers, storage, disk"
READYZ_DESCRIPTION = (
    "200 when every check passes, 503 otherwise; the body always has `checks`, one sentence "
    "per failing check in `reasons`, and `details` (migration revisions, live workers, the "
    "GPUs they report, storage path, free disk)."
)


def install_observability(app: FastAPI, state: Any | None = None) -> ServiceMetrics:
    """Add /metrics, detailed /readyz, request logging/metrics and retention to ``app``.

    ``state`` is the app's ``AppState`` (default ``app.state.aiprod``). Returns the app's
    ``ServiceMetrics``, also kept as ``app.state.metrics``.
    """
    existing = getattr(app.state, "metrics", None)
    if isinstance(existing, ServiceMetrics):
        return existing  # already installed: never stack a second middleware
    st = state if state is not None else app.state.aiprod
    opts: Settings = st.settings  # readiness, retention and request-log fields (AIPROD_*)
    live_seconds = opts.worker_live_seconds or 2.0 * float(opts.lease_seconds)
    storage_root = st.storage.local_root  # None for S3: no local disk to measure
    reads = _read_sessions(st.engine, st.sessions)
    metrics = ServiceMetrics(
        session_factory=reads,
        storage_path=storage_root,
        worker_live_seconds=live_seconds,
    )
    app.state.metrics = metrics

    router = APIRouter(tags=["health"])

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}}},
    )
    def prometheus_metrics() -> Response:
        body, content_type = metrics.render()
        return Response(content=body, media_type=content_type)

    @router.get(
        "/readyz",
        summary=READYZ_SUMMARY,
        description=READYZ_DESCRIPTION,
        response_model=ReadinessOut,
        responses={503: {"model": ReadinessOut, "description": "Not ready (see reasons)"}},
    )
    def readiness() -> JSONResponse:
        report = check_readiness(
            sessions=reads,
            storage_root=storage_root,
            storage=st.storage,
            worker_live_seconds=live_seconds,
            min_free_bytes=int(opts.min_free_disk_mb * 2**20),
            require_worker=opts.ready_requires_worker,
            default_model=st.registry.default,
            registry=st.registry,
            check_files=opts.check_model_files is not False,
        )
        return JSONResponse(report.body(), status_code=200 if report.ready else 503)

    app.include_router(router)
    app.add_middleware(ObservabilityMiddleware, metrics=metrics, log_requests=opts.log_requests)
    # Our per-request line replaces the plain access log lines.
    logging.getLogger("aiprod.access").disabled = opts.log_requests
    logging.getLogger("uvicorn.access").disabled = True

    retention_days = opts.retention_days
    if retention_days is not None:
        _add_retention_task(
            app,
            lambda: apply_retention(
                st.sessions,
                days=retention_days,
                delete_output=output_deleter(st.storage),
            ),
            interval=opts.retention_interval_seconds,
        )
    return metrics


def _add_retention_task(app: FastAPI, run: Callable[[], Any], *, interval: float) -> None:
    inner = app.router.lifespan_context

    async def loop() -> None:
        while True:
            try:
                await run_in_threadpool(run)
            except Exception:  # keep serving; the next pass tries again
                log.exception("retention pass failed")
            await asyncio.sleep(interval)

    @asynccontextmanager
    async def lifespan(a: FastAPI) -> AsyncIterator[Any]:
        async with inner(a) as value:
            task = asyncio.create_task(loop(), name="aiprod-retention")
            try:
                yield value
            finally:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass

    app.router.lifespan_context = lifespan
