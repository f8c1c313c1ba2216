"""A small Python client for the aiprod REST API (v1).

    from aiprod.client import Client

    with Client("http://127.0.0.1:8000", api_key="aiprod_sk_...") as client:
        job = client.generate("a red fox running through snow", num_frames=25, wait=True)
        client.download(job.id, "fox.mp4")

Every error the server returns becomes a typed exception (``AuthenticationError`` for 401,
``NotFoundError`` for 404, ``ValidationError`` for 422, ``RateLimitError`` for 429 with
``retry_after``...), all subclasses of ``ApiError`` carrying ``status``, ``code`` and the
server's ``message``. ``generate(..., wait=True)`` raises ``JobFailed`` / ``JobCanceled`` when
the job ends badly and ``WaitTimeout`` when it takes longer than ``timeout``.

Only httpx is needed: this module imports nothing else from aiprod, so it can be copied into
a project that does not install the server.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

__all__ = [
    "ApiError",
    "AuthenticationError",
    "BudgetExceeded",
    "Client",
    "ConflictError",
    "Job",
    "JobCanceled",
    "JobFailed",
    "NotFoundError",
    "PayloadTooLarge",
    "PermissionDenied",
    "RateLimitError",
    "ServiceUnavailable",
    "ValidationError",
    "WaitTimeout",
]

TERMINAL = frozenset({"succeeded", "failed", "canceled", "expired"})


# --- errors ---------------------------------------------------------------------------------


class ApiError(Exception):
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
    413: PayloadTooLarge,
    422: ValidationError,
    503: ServiceUnavailable,
}


class JobError(Exception):
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
    """A job as the API returns it; ``raw`` keeps every field, including ones added later."""

    id: str
    status: str
    progress: float = 0.0
    model: str | None = None
    model_version: str | None = None
    queue_position: int | None = None
    eta_seconds: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    created_at: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    error: dict[str, Any] | None = None
    estimated_cost_usd: float | None = None
    cost_usd: float | None = None
    gpu_seconds: float | None = None
    download_url: str | None = None
    metadata: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Job:
        known = {f for f in cls.__dataclass_fields__ if f != "raw"}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("params") is None:
            values["params"] = {}
        return cls(**values, raw=dict(data))

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


# --- the client -----------------------------------------------------------------------------


def _raise_for(response: httpx.Response) -> None:
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
        elif isinstance(body, dict) and "detail" in body:
            message = str(body["detail"])
    except ValueError:
        pass
    status = response.status_code
    if status == 429:
        retry = response.headers.get("Retry-After")
        raise RateLimitError(
            message,
            retry_after=float(retry) if retry and retry.replace(".", "", 1).isdigit() else None,
            status=status,
            code=code,
            field=field_name,
            response=response,
        )
    cls = _BY_STATUS.get(status, ApiError)
    raise cls(message, status=status, code=code, field=field_name, response=response)


class Client:
    """Synchronous client. ``api_key`` defaults to ``$AIPROD_API_KEY``.

    ``max_retries`` covers 429 answers (waiting ``Retry-After``) and, for GETs and idempotent
    POSTs, 503 answers and connection errors; a POST that may have reached the server is never
    repeated unless it carries an ``Idempotency-Key`` (``generate`` sends one unless told not
    to).
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        # Read here, not through aiprod.core.settings: this module imports nothing from aiprod.
        key = api_key if api_key is not None else os.environ.get("AIPROD_API_KEY")
        if not key:
            raise ValueError("no API key: pass api_key=... or set AIPROD_API_KEY")
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {key}", "User-Agent": "aiprod-client/1"},
            timeout=timeout,
            transport=transport,
        )

    # -- plumbing ----------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(
        self, method: str, path: str, *, retry_safe: bool | None = None, **kw: Any
    ) -> httpx.Response:
        safe = method == "GET" if retry_safe is None else retry_safe
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, **kw)
            except httpx.TransportError:
                if not safe or attempt >= self.max_retries:
                    raise
                attempt += 1
                time.sleep(min(0.5 * 2**attempt, 5.0))
                continue
            retryable = response.status_code == 429 or (response.status_code == 503 and safe)
            if retryable and attempt < self.max_retries:
                attempt += 1
                retry = response.headers.get("Retry-After", "1")
                try:
                    delay = float(retry)
                except ValueError:
                    delay = 1.0
                time.sleep(min(max(delay, 0.05), 60.0))
                continue
            _raise_for(response)
            return response

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        return self._request(method, path, **kw).json()

    # -- API ---------------------------------------------------------------------------------

    def generate(
        self,
        prompt: str,
        *,
        wait: bool = False,
        timeout: float = 3600.0,
        poll_interval: float = 1.0,
        idempotency_key: str | None = None,
        **params: Any,
    ) -> Job:
        """Create a job (``params``: model, width, height, num_frames, fps, seed, ...).

        With ``wait=True`` poll until the job ends and return it succeeded, or raise
        ``JobFailed`` / ``JobCanceled`` / ``WaitTimeout``.
        """
        body = {"prompt": prompt, **{k: v for k, v in params.items() if v is not None}}
        key = idempotency_key if idempotency_key is not None else os.urandom(16).hex()
        headers = {"Idempotency-Key": key} if key else {}
        job = Job.from_dict(
            self._json("POST", "/api/v1/generate", json=body, headers=headers, retry_safe=bool(key))
        )
        if wait:
            return self.wait(job.id, timeout=timeout, poll_interval=poll_interval)
        return job

    def get_job(self, job_id: str) -> Job:
        return Job.from_dict(self._json("GET", f"/api/v1/jobs/{job_id}"))

    def list_jobs(
        self,
        *,
        status: str | list[str] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        **filters: Any,
    ) -> tuple[list[Job], str | None]:
        """One page of the caller's jobs, newest first, and the cursor of the next page."""
        query = {"status": status, "limit": limit, "cursor": cursor, **filters}
        body = self._json(
            "GET", "/api/v1/jobs", params={k: v for k, v in query.items() if v is not None}
        )
        items = body.get("data", []) if isinstance(body, dict) else body
        nxt = body.get("next_cursor") if isinstance(body, dict) else None
        return [Job.from_dict(j) for j in items], nxt

    def iter_jobs(self, *, status: str | None = None, page_size: int = 100) -> Iterator[Job]:
        """Every job of the caller, following the cursor."""
        cursor: str | None = None
        while True:
            jobs, cursor = self.list_jobs(status=status, limit=page_size, cursor=cursor)
            yield from jobs
            if not cursor:
                return

    def cancel(self, job_id: str) -> Job:
        return Job.from_dict(self._json("POST", f"/api/v1/jobs/{job_id}/cancel", retry_safe=True))

    def wait(self, job_id: str, *, timeout: float = 3600.0, poll_interval: float = 1.0) -> Job:
        """Poll until the job ends; return it if it succeeded, raise otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if job.status == "succeeded":
                return job
            if job.status == "failed":
                err = job.error or {}
                raise JobFailed(
                    f"job {job.id} failed: {err.get('code', 'error')}: {err.get('message', '')}",
                    job,
                )
            if job.status in TERMINAL:
                raise JobCanceled(f"job {job.id} ended as {job.status}", job)
            if time.monotonic() >= deadline:
                raise WaitTimeout(
                    f"job {job.id} still {job.status} (progress {job.progress:.0%}) after "
                    f"{timeout:.0f}s; wait again or cancel it",
                    job,
                )
            time.sleep(poll_interval)

    def download(self, job_id: str, dest: str | Path, *, chunk_size: int = 1 << 20) -> Path:
        """Save the job's MP4 to ``dest`` (a file, or a folder for ``<job id>.mp4``), atomically."""
        path = Path(dest).expanduser()
        if path.is_dir():
            path = path / f"{job_id}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
        try:
            with self._http.stream("GET", f"/api/v1/jobs/{job_id}/download") as response:
                if not response.is_success:
                    response.read()
                    _raise_for(response)
                with tmp.open("wb") as fh:
                    for chunk in response.iter_bytes(chunk_size):
                        fh.write(chunk)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def models(self) -> list[dict[str, Any]]:
        """The models this server runs (each with limits, defaults, price, ``default`` flag)."""
        body = self._json("GET", "/api/v1/models")
        return body.get("data", []) if isinstance(body, dict) else body

    def estimate_cost(self, prompt: str, **params: Any) -> dict[str, Any]:
        body = {"prompt": prompt, **{k: v for k, v in params.items() if v is not None}}
        return self._json("POST", "/api/v1/estimate-cost", json=body, retry_safe=True)

    def admin_stats(self, *, days: int = 30) -> dict[str, Any]:
        """Per-key and per-day jobs, GPU-seconds, cost and revenue (admin key)."""
        return self._json("GET", "/api/v1/admin/stats", params={"days": days})

    def workers(self) -> list[dict[str, Any]]:
        """Worker processes and what they are doing (admin key)."""
        return self._json("GET", "/api/v1/admin/workers").get("data", [])

    def admin_jobs(self, **filters: Any) -> dict[str, Any]:
        """One page of every key's jobs (admin key): status, key_id, model, created_after,
        created_before, q (prompt text), limit, cursor."""
        params = {k: v for k, v in filters.items() if v is not None}
        return self._json("GET", "/api/v1/admin/jobs", params=params)

    def admin_retry(self, job_id: str) -> dict[str, Any]:
        """Submit a failed or canceled job again as a new job (admin key); the new job."""
        return self._json("POST", f"/api/v1/admin/jobs/{job_id}/retry", retry_safe=False)

    def update_key(self, key_id: str, **changes: Any) -> dict[str, Any]:
        """Change name, rate_limit_per_minute, monthly_budget_usd, priority or active."""
        return self._json("PATCH", f"/api/v1/admin/keys/{key_id}", json=changes, retry_safe=True)

    def clear_cache(self) -> dict[str, Any]:
        return self._json("POST", "/api/v1/admin/clear-cache", retry_safe=True)

    def healthz(self) -> dict[str, Any]:
        return self._json("GET", "/healthz")

    def readyz(self) -> dict[str, Any]:
        """The readiness report; raises ``ServiceUnavailable`` (503) when not ready."""
        return self._json("GET", "/readyz", retry_safe=False)
