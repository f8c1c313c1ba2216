"""Rendering for the console: the Jinja2 templates, security headers, and the answers to a
missing login (redirect, or 401 for the JSON endpoints), a bad CSRF token (403) and an
expected error on a page (the page, with the message)."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from aiprod.service.dashboard import session
from aiprod.service.dashboard.session import Admin, CsrfFailed, LoginRequired
from aiprod.service.errors import error_response

HERE = Path(__file__).parent
STATIC = HERE / "static"
PREFIX = "/dashboard"
API_PREFIX = "/dashboard/api/"

# Pages load only their own scripts and styles (no inline script, no third-party origin).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "media-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
        "base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@lru_cache(maxsize=64)
def _asset_version(name: str) -> str:
    return hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:12]


def static_url(name: str) -> str:
    """The asset's URL with its content hash, so browsers never run an old copy."""
    return f"{PREFIX}/static/{name}?v={_asset_version(name)}"


def money(value: float | None) -> str:
    if value is None:
        return "—"
    return f"${value:,.2f}" if abs(value) >= 0.01 or value == 0 else f"${value:.4f}"


templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.globals.update(static=static_url, money=money)


def render(
    request: Request,
    name: str,
    *,
    page: str,
    title: str,
    admin: Admin | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    """A page; a message left by the previous action (the session's flash) is shown once."""
    flash = session.take_flash(request)
    ctx = {"page": page, "title": title, "admin": admin, "notice": None, "error": None}
    if flash is not None:
        ctx["notice" if flash[0] == "ok" else "error"] = flash[1]
    ctx.update(context)
    response = templates.TemplateResponse(request, name, ctx, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    if flash is not None:
        session.clear_flash(request, response)
    return response


def back(
    request: Request, url: str, *, ok: str | None = None, error: str | None = None
) -> Response:
    """303 to ``url`` after a POST, leaving a message for the next page."""
    response = RedirectResponse(url, status_code=303)
    if ok or error:
        session.set_flash(request, response, ("ok", ok) if ok else ("error", error or ""))
    return response


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(LoginRequired)
    async def _login(request: Request, exc: LoginRequired) -> Response:
        if request.url.path.startswith(API_PREFIX) or request.method != "GET":
            return error_response(
                401, "unauthorized", "log in to the console first (/dashboard/login)"
            )
        return RedirectResponse(f"{PREFIX}/login", status_code=303)

    @app.exception_handler(CsrfFailed)
    async def _csrf(request: Request, exc: CsrfFailed) -> JSONResponse:
        return error_response(
            403,
            "csrf_failed",
            "the form's CSRF token is missing or does not match this session: "
            "reload the page and submit the form again",
        )
