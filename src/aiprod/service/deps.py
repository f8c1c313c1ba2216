"""FastAPI dependencies: the per-request session, the authenticated key, admin-only routes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Annotated, TypeVar
from weakref import WeakKeyDictionary

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from aiprod.core.errors import Forbidden, InvalidRequest, RateLimited, Unauthorized
from aiprod.core.recent import WouldBlock
from aiprod.db.repositories import ApiKeyRepository
from aiprod.db.session import session_scope
from aiprod.jobs.submit import Submitter
from aiprod.service.security import KEY_PREFIX, hash_key
from aiprod.service.state import AppState


async def get_state(request: Request) -> AppState:
    # async: FastAPI runs a plain-def dependency on the thread pool, a hop per request for this
    return request.app.state.aiprod


StateDep = Annotated[AppState, Depends(get_state)]


# A request's session holds its pool connection from the handler's first query until the
# dependency's exit commits it. Sync exits run on anyio's shared thread pool (40 threads), where
# requests blocked on an exhausted connection pool can hold every thread: then no exit runs, no
# connection comes back, and all of them time out after 30 s (seen at 200 clients in
# benchmarks/load_test.py). So the commit / rollback / close run on threads of their own.
_END_POOL = ThreadPoolExecutor(max_workers=16, thread_name_prefix="aiprod-session-end")


def _finish(session: Session, *, ok: bool) -> None:
    try:
        if ok:
            session.commit()
        else:
            session.rollback()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@asynccontextmanager
async def _session(factory: sessionmaker[Session]) -> AsyncIterator[Session]:
    session = factory()  # connects lazily, on the handler's thread
    loop = asyncio.get_running_loop()
    try:
        yield session
    except BaseException:
        await loop.run_in_executor(_END_POOL, partial(_finish, session, ok=False))
        raise
    await loop.run_in_executor(_END_POOL, partial(_finish, session, ok=True))


async def get_session(state: StateDep) -> AsyncIterator[Session]:
    """One session per request, committed once after the handler returns."""
    async with _session(state.sessions) as session:
        yield session


# scope="function": commit before the response is sent, so a client that got its 202 finds the
# job (with the default scope FastAPI commits after sending, and a quick GET could 404).
SessionDep = Annotated[Session, Depends(get_session, scope="function")]

# Writes on SQLite take turns on one lock. A burst of submits (200 clients starting at once)
# had 39 of the 40 request threads waiting on it, and status calls, which take no lock, waited
# for a thread. Routes that write wait for one of these slots on the event loop, not a thread.
WRITE_REQUESTS = 8
_write_slots: WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = WeakKeyDictionary()


async def write_slot() -> AsyncIterator[None]:
    """Hold one of WRITE_REQUESTS slots for the request (a route dependency of writing routes)."""
    loop = asyncio.get_running_loop()
    slots = _write_slots.get(loop)
    if slots is None:
        slots = _write_slots[loop] = asyncio.Semaphore(WRITE_REQUESTS)
    async with slots:
        yield


def read_session(state: AppState) -> AbstractContextManager[Session]:
    """A unit of work that only reads (on SQLite: no write lock), for a handler to open and end
    itself: a session from SessionDep keeps its connection until the dependency's exit, across
    the thread-pool hop that validates the response, and with 200 clients polling, requests
    holding every connection while waiting for a thread, and threads waiting for a connection,
    deadlocked until the pool's 30 s timeout. Ended inside the handler, a read holds its
    connection only while it runs."""
    return session_scope(state.read_sessions or state.sessions)


T = TypeVar("T")


async def read_inline(state: AppState, read: Callable[[Session, bool], T]) -> T:
    """``read(session, wait)``, a short unit of work that only reads, run on the event loop
    when it cannot wait there, else on a thread: the hot polling routes (a job's status).

    On SQLite (``state.inline_reads``) it runs here first with ``wait=False``, in a session on
    the loop's own connection, which never waits for a lock (``db.session.
    make_inline_read_engine``). Where it would wait (``WouldBlock`` from a shared read that
    must be read again, or any database error: a lock, a full disk, a missing file) it runs
    again on a thread with ``wait=True``, as every read does on PostgreSQL, and errors come
    from there as from any route. Errors of the read itself (404) are raised as they are.
    The hop it saves is two threads taking turns on the GIL per request: at 200 clients on
    SQLite (``benchmarks/load_test.py``) status p50 went from 11-14 to 6-9 ms and p95 from
    56-73 to 31-54 ms (docs/performance.md)."""
    if state.inline_reads is not None:
        try:
            with session_scope(state.inline_reads) as session:
                return read(session, False)
        except (WouldBlock, DBAPIError):
            pass

    def on_thread() -> T:
        with read_session(state) as session:
            return read(session, True)

    return await run_in_threadpool(on_thread)


# ``last_used_at`` is for people ("is this key still used?"): a minute's precision is plenty,
# and writing it on every request made every request a write transaction.
TOUCH_EVERY_SECONDS = 60.0
# Keys an API process keeps in its cache at most (beyond that it starts over).
KEY_CACHE_SIZE = 10_000


@dataclass(frozen=True)
class AuthedKey:
    id: str
    name: str
    scope: str
    priority: int
    monthly_budget_usd: float | None

    @property
    def submitter(self) -> Submitter:
        return Submitter(self.id, self.priority, self.monthly_budget_usd)


def _load_key(state: AppState, key_hash: str) -> tuple[AuthedKey, int]:
    """The key's row (read-only transaction) -> (key, its rate limit); 401 if unknown/revoked."""
    with session_scope(state.read_sessions or state.sessions) as session:
        row = ApiKeyRepository(session).by_hash(key_hash)
        if row is None or not row.active:
            raise Unauthorized("invalid or revoked API key")
        limit = row.rate_limit_per_minute or state.settings.rate_limit_per_minute
        authed = AuthedKey(
            id=row.id,
            name=row.name,
            scope=row.scope,
            priority=row.priority,
            monthly_budget_usd=row.monthly_budget_usd,
        )
        return authed, limit


def _touch(state: AppState, key_id: str) -> None:
    with session_scope(state.sessions) as session:
        ApiKeyRepository(session).touch(key_id)


# Declares the Bearer scheme in the OpenAPI (Swagger UI's Authorize button) for every route that
# checks a key; the header itself is parsed below, with aiprod's own 401 messages.
BEARER = HTTPBearer(
    scheme_name="bearerAuth",
    description=f"An API key, `{KEY_PREFIX}...` (`aiprod keys create --name NAME`).",
    auto_error=False,
)


async def get_api_key(
    request: Request,
    state: StateDep,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)] = None,
) -> AuthedKey:
    """Bearer key -> its row (401 if missing/unknown/revoked); counts it against the rate limit
    and records last-used.

    Async, so a request whose key, rate limit and ``last_used_at`` need no database work this
    time costs no thread hop: an API process keeps a key's row for
    ``api_key_cache_seconds`` (1 s by default; a revoked key is refused within that time,
    unknown keys are never cached), counts the rate limit locally between its syncs (see
    RateLimiter) and writes ``last_used_at`` at most once a minute. Database work runs on the
    thread pool."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized(
            f"missing API key: send the header 'Authorization: Bearer {KEY_PREFIX}...' "
            "(create one with `aiprod keys create --name NAME`)"
        )
    key_hash = hash_key(token, state.secret)
    now = time.monotonic()
    cached = state.key_cache.get(key_hash)
    if cached is not None and now - cached[2] < state.settings.api_key_cache_seconds:
        authed, limit = cached[0], cached[1]
    else:
        authed, limit = await run_in_threadpool(_load_key, state, key_hash)
        if state.settings.api_key_cache_seconds > 0:
            if len(state.key_cache) >= KEY_CACHE_SIZE:
                state.key_cache.clear()
            state.key_cache[key_hash] = (authed, limit, now)
    rate = state.limiter.hit_local(authed.id, limit)
    if rate is None:
        rate = await run_in_threadpool(state.limiter.hit, state.sessions, authed.id, limit)
    request.state.api_key_id = authed.id
    request.state.rate = rate
    last = state.key_touched.get(authed.id)
    if last is None or now - last >= TOUCH_EVERY_SECONDS:
        state.key_touched[authed.id] = now
        await run_in_threadpool(_touch, state, authed.id)
    if not rate.allowed:
        raise RateLimited(
            f"rate limit of {limit} requests per minute exceeded; "
            f"retry after {rate.reset_seconds} s"
        )
    return authed


ApiKeyDep = Annotated[AuthedKey, Depends(get_api_key)]


async def storage_writable(state: StateDep, key: ApiKeyDep) -> None:
    """503 + Retry-After while the output storage cannot be written (a route dependency of
    /generate): a job accepted then would only burn its attempts. The probe's answer is kept
    for a few seconds (``WRITABLE_CHECK_SECONDS``), so most submits cost no I/O for it.
    After the key (``key``: FastAPI resolves it once per request), so a caller without a valid
    key still gets 401."""
    check = state.storage.writable_check
    if check.fresh():
        check.raise_remembered()
    else:
        await run_in_threadpool(check.ensure)


async def require_admin(key: ApiKeyDep) -> AuthedKey:
    if key.scope != "admin":
        raise Forbidden("this route needs an admin key (`aiprod keys create --name NAME --admin`)")
    return key


AdminDep = Annotated[AuthedKey, Depends(require_admin)]


_QUERY_NAMES: dict[int, frozenset[str]] = {}  # id(route) -> its query parameters (routes live on)


def _query_names(dependant: Dependant) -> set[str]:
    names = {f.alias for f in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def known_query_params(request: Request, key: ApiKeyDep) -> None:
    """422 naming an unknown query parameter and the route's own (a router dependency): a
    misspelled or foreign parameter (``?after=`` on a cursor route) is not silently ignored.
    After the key, so a caller without one still gets 401."""
    route = request.scope.get("route")
    if not request.query_params or not isinstance(route, APIRoute):
        return
    names = _QUERY_NAMES.get(id(route))
    if names is None:
        names = _QUERY_NAMES[id(route)] = frozenset(_query_names(route.dependant))
    for name in request.query_params:
        if name not in names:
            takes = ", ".join(sorted(names)) if names else "no query parameters"
            raise InvalidRequest(
                f"unknown query parameter '{name}': this route takes {takes}", field=name
            )
