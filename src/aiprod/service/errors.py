"""One error shape for every failure: ``{"error": {"code", "message", "field"?}}``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from aiprod.core.errors import AiprodError
from aiprod.core.logging import is_outage_error

log = logging.getLogger("aiprod.service")

#: Retry-After of a 503 (database or storage temporarily unavailable).
RETRY_AFTER_SECONDS = 5


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, object] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return JSONResponse({"error": body}, status_code=status, headers=headers)


# OpenAI-compatible routes answer errors in OpenAI's shape, and a bad field with 400 (OpenAI's
# status for it, which its SDK raises as BadRequestError).
OPENAI_PREFIX = "/v1/"
_OPENAI_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def openai_error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    status = 400 if status == 422 else status
    kind = _OPENAI_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    body = {"message": message, "type": kind, "param": field, "code": code}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _render(request: Request) -> Callable[..., JSONResponse]:
    """The error shape of the route: OpenAI's under /v1/, aiprod's everywhere else."""
    return openai_error_response if request.url.path.startswith(OPENAI_PREFIX) else error_response


def _field(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AiprodError)
    async def _aiprod(request: Request, exc: AiprodError) -> JSONResponse:
        headers = {}
        rate = getattr(request.state, "rate", None)
        if exc.status_code == 429 and rate is not None:
            headers["Retry-After"] = str(rate.reset_seconds)
        if exc.status_code == 503:  # temporary (storage full or not writable...): say when
            headers["Retry-After"] = str(getattr(exc, "retry_after", None) or RETRY_AFTER_SECONDS)
        if exc.status_code >= 500:
            log.error("server error on %s %s: %s", request.method, request.url.path, exc.message)
        return _render(request)(exc.status_code, exc.code, exc.message, exc.field, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            return _render(request)(
                400, "invalid_json", "the request body is not valid JSON", field="body"
            )
        field = _field(first.get("loc", ()))
        typ = first.get("type", "")
        if typ == "missing":
            msg = f"{field} is required"
        elif typ == "extra_forbidden":
            msg = f"unknown field '{field}': see /docs for the accepted fields"
        elif field == "body" and typ in {"model_attributes_type", "dict_type"}:
            msg = "the request body must be a JSON object"
        else:
            msg = f"{field}: {first.get('msg', 'invalid value')}"
        return _render(request)(422, "invalid_request", msg, field=field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}
        return _render(request)(
            exc.status_code,
            codes.get(exc.status_code, "http_error"),
            str(exc.detail),
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(OperationalError)
    async def _db_down(request: Request, exc: OperationalError) -> JSONResponse:
        # The database is unreachable or overloaded (e.g. SQLite busy past its timeout):
        # a temporary condition, not a bug in the request.
        # An outage is logged once per state change by aiprod.db.session.OutageLog, not per request.
        level = logging.DEBUG if is_outage_error(exc) else logging.ERROR
        log.log(
            level, "database unavailable on %s %s: %s", request.method, request.url.path, exc.orig
        )
        return _render(request)(
            503,
            "unavailable",
            "the database is temporarily unavailable; retry in a few seconds",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _render(request)(500, "internal_error", "internal server error (this is a bug)")
