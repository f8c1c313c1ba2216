"""The console's login session and CSRF tokens.

A session is a cookie signed with itsdangerous (HMAC-SHA1 over a key derived from the server's
``AIPROD_SECRET_KEY``, which is generated into the data dir on first start when unset), so every
API process of a deployment accepts every other's sessions and nothing is stored server-side.
It holds the admin key's id (never the key itself) and a CSRF token. Every POST form carries
that token in a hidden field, and the handler compares it with the session's
(``check_csrf``); the cookie is also ``SameSite=Strict`` and ``HttpOnly``, scoped to
``/dashboard``. Each request reads the key's row again: a revoked or demoted key loses the
console at its next click.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, replace
from typing import Any

from fastapi import Request, Response
from fastapi.concurrency import run_in_threadpool
from itsdangerous import BadSignature, URLSafeTimedSerializer

from aiprod.db.repositories import ApiKeyRepository
from aiprod.service.deps import read_session
from aiprod.service.state import AppState

COOKIE = "aiprod_dashboard"
COOKIE_PATH = "/dashboard"
#: A login lasts this long (the cookie's Max-Age and the signature's maximum age).
SESSION_SECONDS = 12 * 3600
CSRF_FIELD = "csrf_token"


class LoginRequired(Exception):
    """No valid session: pages redirect to the login form, JSON endpoints answer 401."""


class CsrfFailed(Exception):
    """A POST whose form lacks the session's CSRF token (answered 403)."""


@dataclass(frozen=True)
class Session:
    csrf: str
    key_id: str | None = None
    key_name: str | None = None
    # A message for the next page after a POST-redirect: ("ok" | "error", text)
    flash: tuple[str, str] | None = None


@dataclass(frozen=True)
class Admin:
    """The logged-in operator: the admin key's id and name, and the session's CSRF token."""

    key_id: str
    name: str
    csrf: str


def _serializer(state: AppState) -> URLSafeTimedSerializer:
    # A key of its own, so a session signature can never be replayed as another HMAC of the
    # server secret (API key hashes, webhook secrets).
    derived = hmac.new(state.secret.encode(), b"aiprod-dashboard-session", hashlib.sha256)
    return URLSafeTimedSerializer(derived.hexdigest(), salt="aiprod.dashboard")


def _state(request: Request) -> AppState:
    return request.app.state.aiprod


def read(request: Request) -> Session | None:
    """The request's session (signature and age checked), or None."""
    raw = request.cookies.get(COOKIE)
    if not raw:
        return None
    try:
        data: Any = _serializer(_state(request)).loads(raw, max_age=SESSION_SECONDS)
    except BadSignature:  # also SignatureExpired
        return None
    if not isinstance(data, dict) or not isinstance(data.get("csrf"), str):
        return None
    flash = data.get("flash")
    return Session(
        csrf=data["csrf"],
        key_id=data.get("key_id"),
        key_name=data.get("name"),
        flash=(str(flash[0]), str(flash[1]))
        if isinstance(flash, list) and len(flash) == 2
        else None,
    )


def write(request: Request, response: Response, session: Session) -> None:
    data = {
        "csrf": session.csrf,
        "key_id": session.key_id,
        "name": session.key_name,
        "flash": list(session.flash) if session.flash else None,
    }
    response.set_cookie(
        COOKIE,
        _serializer(_state(request)).dumps(data),
        max_age=SESSION_SECONDS,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear(response: Response) -> None:
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")


def take_flash(request: Request) -> tuple[str, str] | None:
    current = read(request)
    return current.flash if current is not None else None


def set_flash(request: Request, response: Response, flash: tuple[str, str]) -> None:
    current = read(request)
    if current is not None:
        write(request, response, replace(current, flash=flash))


def clear_flash(request: Request, response: Response) -> None:
    current = read(request)
    if current is not None:
        write(request, response, replace(current, flash=None))


def new_session(key_id: str | None = None, key_name: str | None = None) -> Session:
    """A fresh session with a new CSRF token (a login gets a new one: no token fixation)."""
    return Session(csrf=secrets.token_urlsafe(32), key_id=key_id, key_name=key_name)


def _admin_row(state: AppState, key_id: str) -> tuple[str, str] | None:
    with read_session(state) as session:
        row = ApiKeyRepository(session).get(key_id)
        if row is None or not row.active or row.scope != "admin":
            return None
        return row.id, row.name


async def current_admin(request: Request) -> Admin:
    """Dependency of every console route but the login form: the logged-in admin key, whose
    row is read again (a revoked key's session ends at once)."""
    session = read(request)
    if session is None or not session.key_id:
        raise LoginRequired()
    row = await run_in_threadpool(_admin_row, _state(request), session.key_id)
    if row is None:
        raise LoginRequired()
    return Admin(key_id=row[0], name=row[1], csrf=session.csrf)


async def check_csrf(request: Request, admin: Admin | None = None) -> dict[str, str]:
    """The POSTed form's fields, once its CSRF token matched the session's (else CsrfFailed)."""
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    expected = admin.csrf if admin is not None else _session_csrf(request)
    sent = fields.get(CSRF_FIELD, "")
    if not expected or not sent or not hmac.compare_digest(sent, expected):
        raise CsrfFailed()
    return fields


def _session_csrf(request: Request) -> str | None:
    session = read(request)
    return session.csrf if session else None
