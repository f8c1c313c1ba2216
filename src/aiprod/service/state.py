"""What one API process holds: settings, the database, the model registry, storage, limiter."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, configure_mappers, sessionmaker

from aiprod.core.errors import NotFound
from aiprod.core.registry import Registry
from aiprod.core.settings import Settings
from aiprod.db.repositories import ApiKeyRepository, JobRepository
from aiprod.db.session import session_scope
from aiprod.jobs.schema import GenerateBody
from aiprod.jobs.storage import LocalStorage, S3Storage
from aiprod.jobs.submit import (
    SubmitReads,
    Submitted,
    Submitter,
    prepare_submit,
    submit_in_two_transactions,
)
from aiprod.jobs.views import QueueView
from aiprod.service.ratelimit import RateLimiter

log = logging.getLogger("aiprod.api")


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    registry: Registry
    storage: LocalStorage | S3Storage
    limiter: RateLimiter
    secret: str
    # Read-only sessions (SQLite: deferred BEGIN, no write lock); None: use ``sessions``.
    read_sessions: sessionmaker[Session] | None = None
    # One-INSERT units of work (PostgreSQL: autocommit); None: use ``sessions``.
    insert_sessions: sessionmaker[Session] | None = None
    # Reads run on the event loop itself (SQLite files; see db.session.make_inline_read_engine
    # and deps.read_inline); None: every read takes a thread.
    inline_engine: Engine | None = None
    inline_reads: sessionmaker[Session] | None = None
    # key id -> time.monotonic() of its last ``last_used_at`` write (written at most once a minute)
    key_touched: dict[str, float] = field(default_factory=dict)
    # key hash -> (key, its rate limit, time.monotonic() when read); see api_key_cache_seconds
    key_cache: dict[str, tuple[Any, int, float]] = field(default_factory=dict)
    queue_view: QueueView = field(default_factory=QueueView)  # status calls' queue positions
    submit_reads: SubmitReads = field(default_factory=SubmitReads)  # availability, timings

    def submit(
        self, submitter: Submitter, body: GenerateBody, idempotency_key: str | None
    ) -> Submitted:
        """A submit from a route (/api/v1/generate, /v1/videos): the checks in a read-only
        unit of work, the INSERT in one of its own (``jobs.submit.submit_in_two_transactions``),
        with this process's shared reads. Blocking: call it from a worker thread."""
        return submit_in_two_transactions(
            self.read_sessions or self.sessions,
            self.insert_sessions or self.sessions,
            submitter=submitter,
            body=body,
            registry=self.registry,
            storage=self.storage,
            settings=self.settings,
            idempotency_key=idempotency_key,
            reads=self.submit_reads,
        )

    def warm_up(self) -> None:
        """Do once, before the process takes requests, what its first requests would each pay
        for: configure the ORM mappers, open a database connection, compile the hot routes'
        queries (key lookup, job read, the submit's checks) and fill the shared reads. A cold
        process's first submit took 40 ms instead of 6 (its first status call 8 instead of 4),
        and when 200 clients connect at once, every thread that arrives cold compiles the same
        statements while holding the GIL. Only reads; best effort: a database that is down
        now is the requests' 503 later, not a failed start."""
        try:
            configure_mappers()

            def read_a_job(session: Session) -> None:
                try:
                    JobRepository(session).get_owned("", "")
                except NotFound:
                    pass

            with session_scope(self.read_sessions or self.sessions) as session:
                ApiKeyRepository(session).by_hash("")
                read_a_job(session)
                self.queue_view.get(session, self.settings)
                if self.inline_reads is not None:  # its own connection and compiled cache
                    with session_scope(self.inline_reads) as inline:
                        read_a_job(inline)
                prepare_submit(
                    session,
                    submitter=Submitter("", 0, None),
                    body=GenerateBody(prompt="warm-up"),
                    registry=self.registry,
                    settings=self.settings,
                    reads=self.submit_reads,
                    replay_first=False,
                )
        except Exception as exc:  # e.g. the database is down, the default model unavailable
            first_line = (str(exc).splitlines() or [""])[0]
            log.info(
                "warm-up incomplete (%s: %s); requests will do the rest",
                type(exc).__name__,
                first_line,
            )
