"""Response models of every route and the one error shape, so /openapi.json documents what
clients get.

The routes build their bodies with ``aiprod.jobs.views`` (also the webhook payload) and return
them as they are; these models describe them (tests/service/test_openapi.py checks real
responses against them, so the two cannot drift apart).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from aiprod.core.registry import Defaults, Limits
from aiprod.jobs import JobStatus
from aiprod.jobs.schema import JobParams

T = TypeVar("T")


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- errors ---------------------------------------------------------------------------------


class ErrorBody(_Out):
    code: str = Field(description="Stable machine-readable code, e.g. `not_found`.")
    message: str = Field(description="What went wrong and how to fix the request.")
    field: str | None = Field(default=None, description="The request field at fault, if any.")


class ErrorOut(_Out):
    """Every error response: ``{"error": {"code", "message", "field"?}}``."""

    error: ErrorBody


ERROR_TEXT = {
    400: "The body is not valid JSON",
    402: "The key's monthly budget is used up (`budget_exceeded`; the message says when it resets)",
    401: "Missing, invalid or revoked API key",
    403: "The route needs an admin key",
    404: "Not found (or owned by another key)",
    409: "Conflict with the job's state, an earlier request or an existing key name",
    410: "The output was deleted (DELETE) or expired (retention); the job row stays",
    413: "Request body too large",
    416: "Range not satisfiable",
    422: "A field is missing or outside the model's limits (`field` names it)",
    429: "Rate limit exceeded (see Retry-After)",
    503: "Database or storage temporarily unavailable (see Retry-After)",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: the error shape for each status it can return."""
    return {s: {"model": ErrorOut, "description": ERROR_TEXT[s]} for s in statuses}


# --- jobs -----------------------------------------------------------------------------------


class JobErrorOut(_Out):
    code: str
    message: str


class ParamsOut(JobParams):
    """The resolved generation parameters (the model's defaults filled in)."""


class JobParamsOut(ParamsOut):
    image: bool = Field(description="Whether a conditioning image was given (image-to-video).")


class JobOut(_Out):
    """The job object (also the `data` of webhook payloads)."""

    id: str
    status: JobStatus
    progress: float = Field(ge=0, le=1)
    queue_position: int | None = Field(description="Jobs ahead of this one, while queued.")
    eta_seconds: float | None
    model: str
    model_version: str
    params: JobParamsOut
    attempts: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    error: JobErrorOut | None = Field(description="Set when the job failed.")
    estimated_cost_usd: float | None
    cost_usd: float | None
    gpu_seconds: float | None
    download_url: str | None = Field(
        description="Set when the job succeeded (and was not deleted). Absolute: from "
        "AIPROD_PUBLIC_URL, else from the request's base URL."
    )
    expires_at: datetime | None = Field(
        description="When retention deletes the output (completed_at + AIPROD_RETENTION_DAYS); "
        "null without retention, before success, and for failed/canceled/deleted jobs."
    )
    deleted_at: datetime | None = Field(
        description="When DELETE /jobs/{id} removed the output (the row stays for billing)."
    )
    metadata: dict[str, Any] | None
    warnings: list[str] = Field(
        default_factory=list,
        description="What the request does not get as asked, e.g. prompt words the model "
        "ignores (see docs/model_card.md#vocabulary).",
    )


class Page(_Out, Generic[T]):
    """One page of a list, newest first; pass ``next_cursor`` as ``cursor`` for the next."""

    data: list[T]
    next_cursor: str | None


class JobPage(Page[JobOut]):
    """One page of the caller's jobs (GET /jobs)."""


class EstimateParamsOut(ParamsOut):
    """The resolved parameters; ``seed`` only when the request gave one (a job without one
    draws its own at submit)."""

    seed: int | None = None  # type: ignore[assignment]


class EstimateOut(_Out):
    model: str
    model_version: str
    params: EstimateParamsOut
    estimated_gpu_seconds: float
    price_per_gpu_second: float
    estimated_cost_usd: float
    basis: Literal["measured", "heuristic"]
    would_exceed_budget: bool = Field(
        description="This month's spend plus this estimate would pass the key's monthly budget."
    )
    budget_exceeded: bool = Field(description="The budget is used up: /generate answers 402.")
    monthly_budget_usd: float | None
    month_spend_usd: float = Field(description="Billed cost of jobs completed this UTC month.")
    budget_resets_at: datetime = Field(description="00:00 UTC on the first of next month.")


class ModelOut(_Out):
    id: str
    family: str
    version: str
    description: str
    price_per_gpu_second: float
    limits: Limits
    defaults: Defaults
    default: bool
    available: bool = True  # false while the live workers failed to load it
    unavailable_reason: str | None = None


class ModelsOut(_Out):
    default: str
    data: list[ModelOut]


# --- admin ----------------------------------------------------------------------------------


class KeyStatsOut(_Out):
    key_id: str
    name: str
    scope: str
    active: bool
    jobs: int
    succeeded: int
    failed: int
    canceled: int
    gpu_seconds: float
    cost_usd: float
    month_cost_usd: float
    monthly_budget_usd: float | None
    over_budget: bool
    last_used_at: datetime | None


class DayStatsOut(_Out):
    day: date
    videos_generated: int
    jobs_failed: int
    gpu_seconds: float
    gpu_cost_usd: float
    revenue_usd: float
    margin_usd: float


class TotalsOut(_Out):
    videos_generated: int
    jobs_failed: int
    gpu_seconds: float
    gpu_cost_usd: float
    revenue_usd: float
    margin_usd: float
    queued: int
    running: int


class StatsOut(_Out):
    since: date
    keys: list[KeyStatsOut]
    days: list[DayStatsOut]
    totals: TotalsOut


class ClearCacheOut(_Out):
    cache_epoch: int
    workers_notified: int


class GpuOut(_Out):
    index: int
    name: str
    memory_used_bytes: int
    memory_total_bytes: int
    utilization_percent: float
    temperature_celsius: float


class WorkerOut(_Out):
    id: str
    hostname: str
    pid: int
    device: str | None
    status: Literal["starting", "idle", "busy", "stopped", "lost"]
    current_job_id: str | None
    current_job_model: str | None
    cache_epoch: int
    jobs_done: int
    started_at: datetime | None
    last_seen_at: datetime | None
    gpus: list[GpuOut] = Field(description="NVML readings from the last heartbeat; [] without.")


class WorkersOut(_Out):
    data: list[WorkerOut]


# --- health ---------------------------------------------------------------------------------


class HealthOut(_Out):
    status: Literal["ok"]


class ReadinessOut(_Out):
    status: Literal["ready", "not_ready"]
    checks: dict[str, Any]
    reasons: list[str]
    details: dict[str, Any]
