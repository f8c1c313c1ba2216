"""The asynchronous client (httpx.AsyncClient): the same surface as ``Client``, awaited."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from aiprod.client import _common as c
from aiprod.client._common import Job


class AsyncClient:
    """Asynchronous client (``async with AsyncClient() as client: await client.generate(...)``).

    ``base_url`` defaults to ``$AIPROD_URL`` (else http://127.0.0.1:8000) and may end in
    ``/api/v1``; ``api_key`` defaults to ``$AIPROD_API_KEY``. A server that cannot be reached
    raises ``ConnectionFailed`` naming the URL at once (connecting gives up after 5 s). Only a
    429, or a 503 on a request that is safe to repeat, is retried: after its ``Retry-After``,
    ``max_retries`` times at most. A POST is safe to repeat when it carries an
    ``Idempotency-Key`` (``generate`` sends one unless told not to).
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = c.base_url(base_url)
        self.timeout = timeout
        self.max_retries = max_retries
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={
                "Authorization": f"Bearer {c.api_key(api_key)}",
                "User-Agent": "aiprod-client/2",
            },
            timeout=c.timeout_config(timeout),
            transport=transport,
        )

    # -- plumbing ----------------------------------------------------------------------------

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _request(
        self, method: str, path: str, *, retry_safe: bool | None = None, **kw: Any
    ) -> httpx.Response:
        safe = method == "GET" if retry_safe is None else retry_safe
        attempt = 0
        while True:
            try:
                response = await self._http.request(method, path, **kw)
            except httpx.TransportError as exc:
                raise c.connection_failed(self.base_url, exc) from exc
            delay = c.retry_delay(response, safe=safe, attempt=attempt, limit=self.max_retries)
            if delay is None:
                c.raise_for(response)
                return response
            attempt += 1
            await asyncio.sleep(delay)

    async def _json(self, method: str, path: str, **kw: Any) -> Any:
        return (await self._request(method, path, **kw)).json()

    # -- jobs --------------------------------------------------------------------------------

    async def generate(
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

        With ``wait=True`` wait until the job ends and return it succeeded, or raise
        ``JobFailed`` / ``JobCanceled`` / ``WaitTimeout``.
        """
        key = idempotency_key if idempotency_key is not None else os.urandom(16).hex()
        headers = {"Idempotency-Key": key} if key else {}
        data = await self._json(
            "POST",
            "/api/v1/generate",
            json=c.body(prompt, params),
            headers=headers,
            retry_safe=bool(key),
        )
        job = Job.from_dict(data)
        if wait:
            return await self.wait(job.id, timeout=timeout, poll_interval=poll_interval)
        return job

    async def get_job(self, job_id: str) -> Job:
        return Job.from_dict(await self._json("GET", f"/api/v1/jobs/{job_id}"))

    async def list_jobs(
        self,
        *,
        status: str | list[str] | None = None,
        created_after: str | Any | None = None,
        created_before: str | Any | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        **filters: Any,
    ) -> tuple[list[Job], str | None]:
        """One page of the caller's jobs, newest first, and the cursor of the next page.
        Dates may be ``datetime`` / ``date`` or ISO 8601 text; ``filters`` passes any other
        query parameter the server takes."""
        query = c.list_query(
            status=status,
            created_after=created_after,
            created_before=created_before,
            limit=limit,
            cursor=cursor,
            **filters,
        )
        page = await self._json("GET", "/api/v1/jobs", params=query)
        return [Job.from_dict(j) for j in page["data"]], page.get("next_cursor")

    async def iter_jobs(
        self,
        *,
        status: str | list[str] | None = None,
        created_after: str | Any | None = None,
        created_before: str | Any | None = None,
        page_size: int = 100,
        **filters: Any,
    ) -> AsyncIterator[Job]:
        """Every job of the caller matching the filters, following the cursor."""
        cursor: str | None = None
        while True:
            jobs, cursor = await self.list_jobs(
                status=status,
                created_after=created_after,
                created_before=created_before,
                limit=page_size,
                cursor=cursor,
                **filters,
            )
            for job in jobs:
                yield job
            if not cursor:
                return

    async def cancel(self, job_id: str) -> Job:
        data = await self._json("POST", f"/api/v1/jobs/{job_id}/cancel", retry_safe=True)
        return Job.from_dict(data)

    async def delete(self, job_id: str) -> Job | None:
        """Delete the job's output (the job stays, for billing); the job as it is now."""
        response = await self._request("DELETE", f"/api/v1/jobs/{job_id}", retry_safe=True)
        return Job.from_dict(response.json()) if response.content else None

    async def wait(
        self, job_id: str, *, timeout: float = 3600.0, poll_interval: float = 1.0
    ) -> Job:
        """Wait until the job ends; return it if it succeeded, raise otherwise.

        Each request asks the server to hold the answer until the job ends
        (``Prefer: wait=N``, N up to 60 s), so a wait costs one request a minute; against a
        server that does not hold requests it polls every ``poll_interval`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            hold = int(min(max(left, 1.0), c.WAIT_CHUNK_SECONDS))
            response = await self._request(
                "GET",
                f"/api/v1/jobs/{job_id}",
                headers={"Prefer": f"wait={hold}"},
                timeout=c.timeout_config(self.timeout + hold),
            )
            job = Job.from_dict(response.json())
            if job.done:
                return c.finished(job)
            if time.monotonic() >= deadline:
                raise c.timed_out(job, timeout)
            if not c.wait_applied(response):
                await asyncio.sleep(min(poll_interval, max(deadline - time.monotonic(), 0.0)))

    async def download(self, job_id: str, dest: str | Path, *, chunk_size: int = 1 << 20) -> Path:
        """Save the job's MP4 to ``dest``: a file, or a folder (an existing one, or a path
        ending in ``/``, created if needed) for ``<job id>.mp4``. Written to a temp file, then
        renamed."""
        path = c.download_path(dest, job_id)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
        try:
            try:
                stream = self._http.stream("GET", f"/api/v1/jobs/{job_id}/download")
                async with stream as response:
                    if not response.is_success:
                        await response.aread()
                        c.raise_for(response)
                    with tmp.open("wb") as fh:  # local disk: small blocking writes
                        async for chunk in response.aiter_bytes(chunk_size):
                            fh.write(chunk)
            except httpx.TransportError as exc:
                raise c.connection_failed(self.base_url, exc) from exc
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    # -- models, cost ------------------------------------------------------------------------

    async def models(self) -> list[dict[str, Any]]:
        """The models this server runs (each with limits, defaults, price, ``default`` flag)."""
        data: list[dict[str, Any]] = (await self._json("GET", "/api/v1/models"))["data"]
        return data

    async def estimate_cost(self, prompt: str, **params: Any) -> dict[str, Any]:
        out: dict[str, Any] = await self._json(
            "POST", "/api/v1/estimate-cost", json=c.body(prompt, params), retry_safe=True
        )
        return out

    # -- admin, operations -------------------------------------------------------------------

    async def admin_stats(self, *, days: int = 30) -> dict[str, Any]:
        """Per-key and per-day jobs, GPU-seconds, cost and revenue (admin key)."""
        out: dict[str, Any] = await self._json("GET", "/api/v1/admin/stats", params={"days": days})
        return out

    async def workers(self) -> list[dict[str, Any]]:
        """Worker processes and what they are doing (admin key)."""
        data: list[dict[str, Any]] = (await self._json("GET", "/api/v1/admin/workers"))["data"]
        return data

    async def admin_jobs(self, **filters: Any) -> dict[str, Any]:
        """One page of every key's jobs (admin key): status, key_id, model, created_after,
        created_before, q (prompt text), limit, cursor."""
        params = {k: v for k, v in filters.items() if v is not None}
        out: dict[str, Any] = await self._json("GET", "/api/v1/admin/jobs", params=params)
        return out

    async def admin_retry(self, job_id: str) -> dict[str, Any]:
        """Submit a failed or canceled job again as a new job (admin key); the new job."""
        out: dict[str, Any] = await self._json(
            "POST", f"/api/v1/admin/jobs/{job_id}/retry", retry_safe=False
        )
        return out

    async def update_key(self, key_id: str, **changes: Any) -> dict[str, Any]:
        """Change name, rate_limit_per_minute, monthly_budget_usd, priority or active (admin)."""
        out: dict[str, Any] = await self._json(
            "PATCH", f"/api/v1/admin/keys/{key_id}", json=changes, retry_safe=True
        )
        return out

    async def clear_cache(self) -> dict[str, Any]:
        out: dict[str, Any] = await self._json("POST", "/api/v1/admin/clear-cache", retry_safe=True)
        return out

    async def healthz(self) -> dict[str, Any]:
        out: dict[str, Any] = await self._json("GET", "/healthz")
        return out

    async def readyz(self) -> dict[str, Any]:
        """The readiness report; raises ``ServiceUnavailable`` (503) when not ready."""
        out: dict[str, Any] = await self._json("GET", "/readyz", retry_safe=False)
        return out
