"""ASGI middleware: request size limit, rate-limit headers on every response, access log.

Pure ASGI (no BaseHTTPMiddleware) so streaming downloads pass straight through. More
middleware (metrics, JSON logs) can be stacked with ``app.add_middleware``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("aiprod.access")


class ServiceMiddleware:
    def __init__(self, app: ASGIApp, *, max_request_bytes: int) -> None:
        self.app = app
        self.max_request_bytes = max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        state: dict[str, Any] = scope.setdefault("state", {})
        status = 500
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_request_bytes:
            await _reject_too_large(send, self.max_request_bytes)
            access_log.info("%s %s 413 %.1fms key=-", scope["method"], scope["path"], 0.0)
            return

        received = 0
        limit = self.max_request_bytes

        async def receive_limited() -> Message:
            # A chunked body has no Content-Length: count it as it arrives.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"request body is larger than {limit} bytes")
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                rate = state.get("rate")
                if rate is not None:
                    headers = list(message.get("headers", []))
                    headers += [
                        (b"x-ratelimit-limit", str(rate.limit).encode()),
                        (b"x-ratelimit-remaining", str(rate.remaining).encode()),
                        (b"x-ratelimit-reset", str(rate.reset_seconds).encode()),
                    ]
                    message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive_limited, send_wrapper)
        finally:
            access_log.info(
                "%s %s %d %.1fms key=%s",
                scope["method"],
                scope["path"],
                status,
                (time.perf_counter() - start) * 1000,
                state.get("api_key_id", "-"),
            )


async def _reject_too_large(send: Send, limit: int) -> None:
    body = json.dumps(
        {
            "error": {
                "code": "too_large",
                "message": f"request body is larger than {limit} bytes",
                "field": "body",
            }
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
