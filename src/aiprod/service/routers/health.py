"""Liveness and readiness (no auth)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from aiprod.db.migrate import is_up_to_date
from aiprod.db.repositories import WorkerRepository
from aiprod.db.session import session_scope
from aiprod.service.deps import StateDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: database reachable and migrated; workers seen")
def readyz(state: StateDep) -> JSONResponse:
    checks: dict[str, Any] = {}
    ready = True
    try:
        with session_scope(state.sessions) as s:
            s.execute(text("SELECT 1"))
            checks["workers"] = len(WorkerRepository(s).alive(state.settings.lease_seconds * 2))
        checks["database"] = "ok" if is_up_to_date(state.engine) else "not migrated"
        ready = checks["database"] == "ok"
    except Exception as exc:  # any DB failure means not ready; say why
        checks["database"] = f"error: {type(exc).__name__}"
        ready = False
    body = {"status": "ready" if ready else "not_ready", "checks": checks}
    return JSONResponse(body, status_code=200 if ready else 503)
