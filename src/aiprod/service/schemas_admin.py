"""Request and response models of the operator's routes (``/api/v1/admin/jobs|keys|webhooks|
workers``); the bodies are built by ``aiprod.jobs.admin_views`` and checked against these by
the tests."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aiprod.jobs.admin import MAX_BUDGET_USD, MAX_PRIORITY, MAX_RATE_LIMIT, NAME_PATTERN
from aiprod.service.schemas import JobErrorOut, JobOut, Page, _Out


class AdminJobOut(JobOut):
    """The job object plus its owner, its last error, webhook URL and retry link."""

    api_key_id: str
    key_name: str | None
    last_error: JobErrorOut | None = Field(
        description="The last attempt's error, also while the job waits for a retry."
    )
    webhook_url: str | None
    retry_of: str | None = Field(description="The failed/canceled job this one retries.")
    output_bytes: int | None


class DeliveryOut(_Out):
    id: str = Field(description="Also the `webhook-id` header the receiver sees.")
    job_id: str
    api_key_id: str
    url: str
    event_type: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


class AdminJobDetailOut(AdminJobOut):
    webhook_deliveries: list[DeliveryOut]


class AdminJobPage(Page[AdminJobOut]):
    """One page of every key's jobs (GET /admin/jobs)."""


class DeliveryPage(Page[DeliveryOut]):
    """One page of webhook deliveries (GET /admin/webhooks)."""


class KeyOut(_Out):
    id: str
    name: str
    scope: Literal["client", "admin"]
    prefix: str
    active: bool
    monthly_budget_usd: float | None
    rate_limit_per_minute: int | None = Field(description="null: the server's default.")
    priority: int
    created_at: datetime
    updated_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    jobs_total: int
    jobs_this_month: int
    spend_this_month_usd: float = Field(description="Billed cost of jobs completed this month.")
    gpu_seconds_this_month: float
    over_budget: bool
    budget_resets_at: datetime


class KeysOut(_Out):
    data: list[KeyOut]


class KeyCreatedOut(KeyOut):
    key: str = Field(description="The API key itself: shown only in this response.")
    webhook_secret: str = Field(description="The key's webhook signing secret.")


# What aiprod.jobs.admin checks, stated in the OpenAPI: a name with a visible character,
# printable (no control characters), a budget and a rate limit within sane bounds.
def _name(default: Any = ...) -> Any:
    return Field(default, min_length=1, max_length=200, pattern=NAME_PATTERN)


def _budget() -> Any:
    return Field(None, ge=0, le=MAX_BUDGET_USD, strict=True, allow_inf_nan=False)


def _rate() -> Any:
    return Field(None, ge=1, le=MAX_RATE_LIMIT)


def _priority(default: int | None) -> Any:
    return Field(default, ge=-MAX_PRIORITY, le=MAX_PRIORITY)


class _KeyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("rate_limit_per_minute", "priority", mode="before", check_fields=False)
    @classmethod
    def _json_integer(cls, value: Any) -> Any:
        # A JSON integer, 5.0 included (as JSON Schema has it); not "5" or true.
        if isinstance(value, str | bool):
            raise ValueError("must be an integer")
        return value


class KeyCreate(_KeyBody):
    name: str = _name()
    admin: bool = Field(default=False, strict=True)
    monthly_budget_usd: float | None = _budget()
    rate_limit_per_minute: int | None = _rate()
    priority: int = _priority(0)


class KeyPatch(_KeyBody):
    """Only the fields sent change. `null` removes a budget or a per-key rate limit, and
    leaves the name, priority or active flag as they are."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"monthly_budget_usd": 200.0}]}
    )

    name: str | None = _name(None)
    rate_limit_per_minute: int | None = _rate()
    monthly_budget_usd: float | None = _budget()
    priority: int | None = _priority(None)
    active: bool | None = Field(default=None, strict=True, description="false revokes the key.")

    def changes(self) -> dict[str, Any]:
        sent = self.model_dump(exclude_unset=True)
        return {k: v for k, v in sent.items() if v is not None or k in _NULLABLE}


_NULLABLE = {"rate_limit_per_minute", "monthly_budget_usd"}


class RotatedSecretOut(_Out):
    key_id: str
    webhook_secret: str = Field(description="The new signing secret: shown only now.")
