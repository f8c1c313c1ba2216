"""Liveness (no auth). Readiness (/readyz) is installed with observability, service/health.py."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from aiprod.service.schemas import HealthOut

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers", response_model=HealthOut)
def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"})
