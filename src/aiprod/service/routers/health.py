"""Liveness (no auth). Readiness (/readyz) is installed with observability, service/health.py."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict[str, Any]:
    return {"status": "ok"}
