"""FastAPI dependencies: the per-request session, the authenticated key, admin-only routes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from aiprod.core.errors import Forbidden, RateLimited, Unauthorized
from aiprod.db.repositories import ApiKeyRepository
from aiprod.db.session import session_scope
from aiprod.service.security import KEY_PREFIX, hash_key
from aiprod.service.state import AppState


def get_state(request: Request) -> AppState:
    return request.app.state.aiprod


StateDep = Annotated[AppState, Depends(get_state)]


def get_session(state: StateDep) -> Iterator[Session]:
    """One session per request, committed once after the handler returns."""
    with session_scope(state.sessions) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


@dataclass(frozen=True)
class AuthedKey:
    id: str
    name: str
    scope: str
    priority: int


def get_api_key(request: Request, state: StateDep) -> AuthedKey:
    """Bearer key -> its row (401 if missing/unknown/revoked); counts it against the rate limit
    and records last-used. Runs in its own short transaction, before the handler's."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized(
            f"missing API key: send the header 'Authorization: Bearer {KEY_PREFIX}...' "
            "(create one with `aiprod keys create --name NAME`)"
        )
    with session_scope(state.sessions) as session:
        repo = ApiKeyRepository(session)
        row = repo.by_hash(hash_key(token, state.secret))
        if row is None or not row.active:
            raise Unauthorized("invalid or revoked API key")
        limit = row.rate_limit_per_minute or state.settings.rate_limit_per_minute
        rate = state.limiter.hit(session, row.id, limit)
        request.state.api_key_id = row.id
        request.state.rate = rate
        repo.touch(row.id)
        authed = AuthedKey(id=row.id, name=row.name, scope=row.scope, priority=row.priority)
    if not rate.allowed:
        raise RateLimited(
            f"rate limit of {limit} requests per minute exceeded; "
            f"retry after {rate.reset_seconds} s"
        )
    return authed


ApiKeyDep = Annotated[AuthedKey, Depends(get_api_key)]


def require_admin(key: ApiKeyDep) -> AuthedKey:
    if key.scope != "admin":
        raise Forbidden("this route needs an admin key (`aiprod keys create --name NAME --admin`)")
    return key


AdminDep = Annotated[AuthedKey, Depends(require_admin)]
