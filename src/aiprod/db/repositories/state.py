"""Shared state: the key/value table, worker registrations and rate-limit windows."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aiprod.db.models import RateLimitWindow, ServiceState, Worker, utcnow


class StateRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def get_int(self, key: str, default: int = 0) -> int:
        row = self.s.get(ServiceState, key)
        return int(row.value) if row is not None else default

    def put_worker_value(self, prefix: str, worker_id: str, value: dict[str, Any]) -> None:
        """Store a worker's JSON ``value`` (with ``worker`` = its id) under ``prefix``; the
        caller commits. ``service_state.key`` holds 64 characters: long ids are hashed."""
        key = prefix + worker_id
        if len(key) > 64:
            key = prefix + hashlib.sha256(worker_id.encode()).hexdigest()[:40]
        text = json.dumps({"worker": worker_id, **value})
        row = self.s.get(ServiceState, key)
        if row is None:
            self.s.add(ServiceState(key=key, value=text, updated_at=utcnow()))
        else:
            row.value = text
            row.updated_at = utcnow()

    def worker_values(self, prefix: str, *, since: datetime) -> Iterator[tuple[str, Any]]:
        """(key, parsed JSON or None when malformed) of the values stored under ``prefix``
        since ``since``."""
        rows = self.s.scalars(
            select(ServiceState).where(
                ServiceState.key.startswith(prefix), ServiceState.updated_at >= since
            )
        )
        for row in rows:
            try:
                yield row.key, json.loads(row.value)
            except ValueError:
                yield row.key, None

    def increment(self, key: str) -> int:
        row = self.s.execute(
            select(ServiceState).where(ServiceState.key == key).with_for_update()
        ).scalar_one_or_none()
        if row is None:
            try:
                with self.s.begin_nested():
                    self.s.add(ServiceState(key=key, value="1", updated_at=utcnow()))
                return 1
            except IntegrityError:
                row = self.s.execute(
                    select(ServiceState).where(ServiceState.key == key).with_for_update()
                ).scalar_one()
        row.value = str(int(row.value) + 1)
        row.updated_at = utcnow()
        return int(row.value)


class WorkerRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def register(self, *, worker_id: str, hostname: str, pid: int, device: str | None) -> Worker:
        now = utcnow()
        row = self.s.get(Worker, worker_id)
        if row is None:
            row = Worker(id=worker_id, started_at=now)
            self.s.add(row)
        row.hostname, row.pid, row.device = hostname, pid, device
        row.status, row.current_job_id, row.last_seen_at = "starting", None, now
        self.s.flush()
        return row

    def seen(self, worker_id: str, **values: Any) -> None:
        self.s.execute(
            update(Worker).where(Worker.id == worker_id).values(last_seen_at=utcnow(), **values)
        )

    def alive(self, within_seconds: float) -> Sequence[Worker]:
        since = utcnow() - timedelta(seconds=within_seconds)
        q = select(Worker).where(Worker.last_seen_at >= since, Worker.status != "stopped")
        return self.s.execute(q).scalars().all()

    def all(self) -> Sequence[Worker]:
        return self.s.execute(select(Worker).order_by(Worker.started_at)).scalars().all()


class RateLimitRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def hit(
        self, api_key_id: str, window_start: int, *, count: int = 1, forget_older: bool = False
    ) -> int:
        """Add ``count`` requests to the key's window (atomic upsert); returns the window's count.

        The first count of a window (or ``forget_older``) deletes the key's older windows.
        """
        dialect = self.s.get_bind().dialect.name
        table = RateLimitWindow.__table__
        ins = (postgresql if dialect == "postgresql" else sqlite).insert(table)
        stmt = (
            ins.values(api_key_id=api_key_id, window_start=window_start, hits=count)
            .on_conflict_do_update(
                index_elements=["api_key_id", "window_start"], set_={"hits": table.c.hits + count}
            )
            .returning(table.c.hits)
        )
        hits = int(self.s.execute(stmt).scalar_one())
        if hits == count or forget_older:  # a new window: forget the key's older windows
            self.s.execute(
                delete(RateLimitWindow).where(
                    RateLimitWindow.api_key_id == api_key_id,
                    RateLimitWindow.window_start < window_start,
                )
            )
        return hits
