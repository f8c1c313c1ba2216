"""What the sync and async clients share: errors, the job object, settings from the
environment, error decoding and the retry rule. No I/O here."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
API_PREFIX = "/api/v1"
TERMINAL = frozenset({"succeeded", "failed", "canceled", "expired"})
#: The longest one held ``GET /jobs/{id}`` asks the server to wait (``Prefer: wait=N``).
WAIT_CHUNK_SECONDS = 60
#: A 429 / 503 is retried after its ``Retry-After``, at most this long each time.
MAX_RETRY_AFTER_SECONDS = 60.0
#: Connecting to the server gives up after this long (a wrong URL fails fast).
CONNECT_TIMEOUT_SECONDS = 5.0


# --- errors ---------------------------------------------------------------------------------


class ClientError(Exception):
    """Every error this client raises."""


class ConnectionFailed(ClientError):
    """The server could not be reached (nothing listens at the URL, DNS, TLS, a timeout)."""

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class ApiError(ClientError):
    """The server answered with an error: ``status`` (HTTP), ``code`` and ``message``."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str = "error",
        field: str | None = None,
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.message = message
        self.status = status
        self.code = code
        self.field = field
        self.response = response


class BadRequest(ApiError):
    """400."""


class AuthenticationError(ApiError):
    """401: the API key is missing, wrong or revoked."""


class PermissionDenied(ApiError):
    """403: the key's scope does not allow this (e.g. a client key on an admin route)."""


class NotFoundError(ApiError):
    """404: no such job for this key (or no such route)."""


class ConflictError(ApiError):
    """409: e.g. downloading a job that has not succeeded."""


class GoneError(ApiError):
    """410: the job's output was deleted or has expired."""


class PayloadTooLarge(ApiError):
    """413."""


class ValidationError(ApiError):
    """422: a request field is outside what the model accepts; ``field`` names it."""


class RateLimitError(ApiError):
    """429: slow down; ``retry_after`` says for how many seconds."""

    def __init__(self, message: str, *, retry_after: float | None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ServiceUnavailable(ApiError):
    """503: the server cannot take the request now (e.g. not ready)."""


class BudgetExceeded(ApiError):
    """402: the key's monthly budget is used up (the message says when it resets)."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: AuthenticationError,
    402: BudgetExceeded,
    403: PermissionDenied,
    404: NotFoundError,
    409: ConflictError,
    410: GoneError,
    413: PayloadTooLarge,
    422: ValidationError,
    503: ServiceUnavailable,
}


class JobError(ClientError):
    """A job did not end in ``succeeded``; ``job`` is its last state."""

    def __init__(self, message: str, job: Job) -> None:
        super().__init__(message)
        self.job = job


class JobFailed(JobError):
    """The job failed; ``job.error`` has the server's ``{code, message}``."""


class JobCanceled(JobError):
    """The job was canceled (or its output expired) before it could be downloaded."""


class WaitTimeout(JobError):
    """The job was still not finished when the wait ran out."""


# --- the job object -------------------------------------------------------------------------


@dataclass
class Job:
    """A job as the API returns it. Fields a newer server adds are kept in ``raw`` (and are
    ignored, not refused)."""

    id: str
    status: str
    progress: float = 0.0
    queue_position: int | None = None
    eta_seconds: float | None = None
    model: str | None = None
    model_version: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    cancel_requested: bool = False
    created_at: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    expires_at: str | None = None
    error: dict[str, Any] | None = None
    estimated_cost_usd: float | None = None
    cost_usd: float | None = None
    gpu_seconds: float | None = None
    download_url: str | None = None
    metadata: dict[str, Any] | None = None
    webhook_events: list[str] | None = None
    deleted_at: str | None = None
    warnings: list[str] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        known = {f for f in cls.__dataclass_fields__ if f != "raw"}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("params") is None:
            values["params"] = {}
        return cls(**values, raw=dict(data))

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


def finished(job: Job) -> Job:
    """The job if it succeeded; ``JobFailed`` / ``JobCanceled`` if it ended otherwise."""
    if job.status == "failed":
        err = job.error or {}
        raise JobFailed(
            f"job {job.id} failed: {err.get('code', 'error')}: {err.get('message', '')}", job
        )
    if job.status in TERMINAL and job.status != "succeeded":
        raise JobCanceled(f"job {job.id} ended as {job.status}", job)
    return job


def timed_out(job: Job, timeout: float) -> WaitTimeout:
    return WaitTimeout(
        f"job {job.id} still {job.status} (progress {job.progress:.0%}) after {timeout:.0f}s; "
        "wait again or cancel it",
        job,
    )


# --- settings and requests ------------------------------------------------------------------


def base_url(url: str | None) -> str:
    """``url``, else ``$AIPROD_URL``, else http://127.0.0.1:8000; with or without ``/api/v1``."""
    raw = (url or os.environ.get("AIPROD_URL") or DEFAULT_URL).strip().rstrip("/")
    if "://" not in raw:
        raw = f"http://{raw}"
    if raw.endswith(API_PREFIX):
        raw = raw[: -len(API_PREFIX)]
    return raw


def api_key(key: str | None) -> str:
    found = key if key is not None else os.environ.get("AIPROD_API_KEY")
    if not found:
        raise ClientError(
            "no API key: pass api_key=... or set AIPROD_API_KEY "
            "(create one with `aiprod keys create --name NAME`)"
        )
    return found


def timeout_config(seconds: float) -> httpx.Timeout:
    return httpx.Timeout(seconds, connect=min(seconds, CONNECT_TIMEOUT_SECONDS))


def connection_failed(url: str, exc: httpx.TransportError) -> ConnectionFailed:
    what = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
    return ConnectionFailed(
        f"request to the aiprod server at {url} {what}: {exc or type(exc).__name__}. Is the "
        "server running there (`aiprod serve`)? Set AIPROD_URL or pass base_url= to point the "
        "client elsewhere.",
        url=url,
    )


def raise_for(response: httpx.Response) -> None:
    """Raise the typed error for an error response (the server's ``{"error": {...}}``)."""
    if response.is_success:
        return
    code, message, field_name = "error", response.text[:500] or response.reason_phrase, None
    try:
        body = response.json()
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            code = str(err.get("code", code))
            message = str(err.get("message", message))
            field_name = err.get("field")
    except ValueError:
        pass
    status = response.status_code
    if status == 429:
        raise RateLimitError(
            message,
            retry_after=retry_after(response),
            status=status,
            code=code,
            field=field_name,
            response=response,
        )
    cls = _BY_STATUS.get(status, ApiError)
    raise cls(message, status=status, code=code, field=field_name, response=response)


def retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def retry_delay(response: httpx.Response, *, safe: bool, attempt: int, limit: int) -> float | None:
    """Seconds to wait before repeating a request, or None to give up: only a 429, or a 503 on
    a request that is safe to repeat, with a ``Retry-After`` header, ``limit`` times at most."""
    if attempt >= limit:
        return None
    status = response.status_code
    if status != 429 and not (status == 503 and safe):
        return None
    delay = retry_after(response)
    return None if delay is None else min(max(delay, 0.05), MAX_RETRY_AFTER_SECONDS)


def _query_value(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_query_value(v) for v in value]
    return value


def list_query(**filters: Any) -> dict[str, Any]:
    """GET /jobs's query: every filter given (``status`` may be a list), dates as ISO 8601."""
    return {k: _query_value(v) for k, v in filters.items() if v is not None}


def body(prompt: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": prompt, **{k: v for k, v in params.items() if v is not None}}


def download_path(dest: str | Path, job_id: str) -> Path:
    """A folder (an existing one, or a path ending in ``/``) -> ``folder/<job id>.mp4``."""
    text = os.fspath(dest)
    path = Path(text).expanduser()
    if text.endswith(("/", os.sep)) or path.is_dir():
        path = path / f"{job_id}.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def wait_applied(response: httpx.Response) -> bool:
    """Whether the server held the request (``Preference-Applied: wait=N``)."""
    return "wait" in response.headers.get("Preference-Applied", "").lower()
