"""The webhook outbox rows: enqueue, lease due deliveries, look up."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
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

    def claim_due(
        self, *, owner: str, lease_seconds: float, limit: int = 8, now: datetime | None = None
    ) -> list[WebhookDelivery]:
        """Due deliveries, leased to ``owner`` by pushing next_attempt_at past the lease."""
        now = now or utcnow()
        q = (
            select(WebhookDelivery)
            .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        rows = list(self.s.execute(q).scalars())
        for r in rows:
            r.locked_by = owner
            r.next_attempt_at = now + timedelta(seconds=lease_seconds)
        self.s.flush()
        return rows

    def get(self, delivery_id: str) -> WebhookDelivery | None:
        return self.s.get(WebhookDelivery, delivery_id)

    def for_job(self, job_id: str) -> Sequence[WebhookDelivery]:
        q = select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)
        return self.s.execute(q).scalars().all()
