"""The FastAPI application factory: ``create_app(settings) -> FastAPI``.

Never imports torch (directly or indirectly): the API process only validates, queues and serves.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

import aiprod
from aiprod.core.registry import load_registry
from aiprod.core.settings import Settings, get_settings
from aiprod.db.session import (
    make_engine,
    make_inline_read_engine,
    make_insert_sessionmaker,
    make_read_sessionmaker,
    make_sessionmaker,
)
from aiprod.jobs.storage import open_storage
from aiprod.jobs.submit import SubmitReads
from aiprod.jobs.views import QueueView
from aiprod.service.dashboard import install_dashboard
from aiprod.service.errors import install_error_handlers
from aiprod.service.middleware import ServiceMiddleware
from aiprod.service.observability import install_observability
from aiprod.service.openapi import install_docs, operation_id
from aiprod.service.ratelimit import RateLimiter
from aiprod.service.routers import admin, admin_jobs, admin_keys, health, jobs, openai_videos
from aiprod.service.state import AppState

log = logging.getLogger("aiprod.api")

# How long an API process's start waits for its warm-up (AppState.warm_up) before it takes
# requests anyway (the warm-up then finishes beside them).
WARM_UP_SECONDS = 10.0

DESCRIPTION = """Text/image-to-video generation jobs.

Authenticate with `Authorization: Bearer aiprod_sk_...` (create keys with `aiprod keys create`;
in Swagger UI: **Authorize**, paste the key, then **Try it out** on any route).
Every error has the shape `{"error": {"code": "...", "message": "...", "field": "..."}}`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    engine = make_engine(settings.resolved_database_url)
    reads = make_read_sessionmaker(engine)
    inline_engine = make_inline_read_engine(settings.resolved_database_url)
    state = AppState(
        settings=settings,
        engine=engine,
        sessions=make_sessionmaker(engine),
        registry=load_registry(settings.models_file),
        storage=open_storage(settings),
        limiter=RateLimiter(),
        secret=settings.resolved_secret_key(),
        read_sessions=reads,
        insert_sessions=make_insert_sessionmaker(engine),
        inline_engine=inline_engine,
        inline_reads=make_read_sessionmaker(inline_engine) if inline_engine is not None else None,
        # shared reads renewed in the background: no request waits for them
        queue_view=QueueView(sessions=reads),
        submit_reads=SubmitReads(sessions=reads),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Before the process accepts a connection (uvicorn runs this first); other processes
        # of `serve --api-processes N` already up take the requests meanwhile.
        try:
            await asyncio.wait_for(asyncio.to_thread(state.warm_up), WARM_UP_SECONDS)
        except TimeoutError:
            log.info("warm-up not done after %.0f s; taking requests", WARM_UP_SECONDS)
        # Everything imported and built so far lives as long as the process: move it out of
        # the garbage collector's sight. Otherwise every full collection walks it all, and
        # under load those pauses (60-110 ms, measured with benchmarks/load_test.py) were
        # the slowest status calls.
        gc.collect()
        gc.freeze()
        yield
        engine.dispose()
        if inline_engine is not None:
            inline_engine.dispose()
        metrics = getattr(app.state, "metrics", None)
        if metrics is not None:
            metrics.process_exited()

    app = FastAPI(
        title="aiprod",
        version=getattr(aiprod, "__version__", "0.1.0"),
        description=DESCRIPTION,
        lifespan=lifespan,
        # /docs and /redoc come from install_docs (packaged assets, no CDN)
        docs_url=None,
        redoc_url=None,
        generate_unique_id_function=operation_id,
        # aiprod's own Prometheus metrics and JSON request logs cover this; FastAPI's built-in
        # OpenTelemetry hooks looked up the environment several times per request (~5 % of
        # the API's CPU at 200 clients in benchmarks/load_test.py) to find no provider.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.aiprod = state
    install_error_handlers(app)
    app.add_middleware(ServiceMiddleware, max_request_bytes=settings.max_request_bytes)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(admin.router)
    app.include_router(openai_videos.router)
    app.include_router(admin_jobs.router)
    app.include_router(admin_keys.router)
    install_dashboard(app)  # the operator's web console at /dashboard
    install_observability(app, state)  # /metrics, detailed /readyz, request logs (ops)
    install_docs(app)  # /openapi.json's additions for every route, /docs, /redoc
    return app


def create_app_for_process() -> FastAPI:
    """App factory for each process of ``aiprod serve --api-processes N`` (uvicorn workers):
    a spawned process starts without aiprod's logging, so it sets that up first."""
    from aiprod.core.logging import configure_logging

    configure_logging()
    return create_app()
