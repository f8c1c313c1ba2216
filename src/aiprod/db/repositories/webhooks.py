"""The webhook outbox rows: enqueue, list due deliveries fairly by key, lease, defer, look up."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from aiprod.db.models import Job, WebhookDelivery, utcnow


class WebhookRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def enqueue(self, *, job: Job, event_type: str, payload: dict[str, Any]) -> WebhookDelivery:
        assert job.webhook_url
        row = WebhookDelivery(
            job_id=job.id,
            api_key_id=job.api_key_id,
            url=job.webhook_url,
            event_type=event_type,
            payload=json.dumps(payload, separators=(",", ":"), default=str),
            status="pending",
            next_attempt_at=utcnow(),
            created_at=utcnow(),
        )
        self.s.add(row)
        self.s.flush()
        return row

    def due(
        self, *, per_key: int, limit: int, now: datetime | None = None
    ) -> list[tuple[str, str, str]]:
        """(id, api_key_id, url) of due deliveries, oldest first, at most ``per_key`` of each
        key, so a key with a long backlog cannot hide another key's rows. Nothing is locked."""
        now = now or utcnow()
        rank = (
            func.row_number()
            .over(partition_by=WebhookDelivery.api_key_id, order_by=WebhookDelivery.next_attempt_at)
            .label("rank")
        )
        inner = (
            select(
                WebhookDelivery.id,
                WebhookDelivery.api_key_id,
                WebhookDelivery.url,
                WebhookDelivery.next_attempt_at,
                rank,
            )
            .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
            .subquery()
        )
        q = (
            select(inner.c.id, inner.c.api_key_id, inner.c.url)
            .where(inner.c.rank <= per_key)
            .order_by(inner.c.rank, inner.c.next_attempt_at)
            .limit(limit)
        )
        return [(r[0], r[1], r[2]) for r in self.s.execute(q)]

    def _lock_due(self, ids: Sequence[str], now: datetime) -> list[WebhookDelivery]:
        """Those of ``ids`` still pending and due, locked (rows another transaction holds are
        skipped)."""
        q = (
            select(WebhookDelivery)
            .where(
                WebhookDelivery.id.in_(list(ids)),
                WebhookDelivery.status == "pending",
                WebhookDelivery.next_attempt_at <= now,
            )
            .with_for_update(skip_locked=True)
        )
        return list(self.s.execute(q).scalars())

    def claim(
        self, ids: Sequence[str], *, owner: str, lease_seconds: float, now: datetime | None = None
    ) -> list[str]:
        """Lease those of ``ids`` that are still due and not locked by another transaction."""
        if not ids:
            return []
        now = now or utcnow()
        rows = self._lock_due(ids, now)
        for r in rows:
            r.locked_by = owner
            r.next_attempt_at = now + timedelta(seconds=lease_seconds)
        self.s.flush()
        return [r.id for r in rows]

    def defer(self, ids: Sequence[str], until: datetime, now: datetime | None = None) -> int:
        """Move still-due rows to ``until`` without counting an attempt (open circuit)."""
        if not ids:
            return 0
        now = now or utcnow()
        rows = self._lock_due(ids, now)
        for r in rows:
            r.next_attempt_at = until
        self.s.flush()
        return len(rows)

    def get(self, delivery_id: str) -> WebhookDelivery | None:
        return self.s.get(WebhookDelivery, delivery_id)

    def for_job(self, job_id: str) -> Sequence[WebhookDelivery]:
        q = select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)
        return self.s.execute(q).scalars().all()
