"""API keys: create, look up by hash or reference, revoke."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from aiprod.core.errors import InvalidRequest, NotFound
from aiprod.db.models import ApiKey, utcnow


class ApiKeyRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def create(
        self,
        *,
        key_hash: str,
        prefix: str,
        name: str,
        scope: str = "client",
        monthly_budget_usd: float | None = None,
        rate_limit_per_minute: int | None = None,
        priority: int = 0,
    ) -> ApiKey:
        row = ApiKey(
            key_hash=key_hash,
            prefix=prefix,
            name=name,
            scope=scope,
            active=True,
            monthly_budget_usd=monthly_budget_usd,
            rate_limit_per_minute=rate_limit_per_minute,
            priority=priority,
            created_at=utcnow(),
        )
        self.s.add(row)
        self.s.flush()
        return row

    def by_hash(self, key_hash: str) -> ApiKey | None:
        return self.s.execute(
            select(ApiKey).where(ApiKey.key_hash == key_hash)
        ).scalar_one_or_none()

    def get(self, key_id: str) -> ApiKey | None:
        return self.s.get(ApiKey, key_id)

    def find(self, ref: str) -> ApiKey:
        """A key by id, id prefix (>= 6 chars) or display prefix; exactly one must match."""
        rows = list(
            self.s.execute(
                select(ApiKey).where(
                    or_(ApiKey.id == ref, ApiKey.prefix == ref, ApiKey.id.startswith(ref))
                )
            ).scalars()
        )
        if len(ref) < 6 or not rows:
            raise NotFound(f"no API key matches '{ref}': use an id from `aiprod keys list`")
        if len(rows) > 1:
            raise InvalidRequest(f"'{ref}' matches {len(rows)} keys: give the full id")
        return rows[0]

    def list(self) -> Sequence[ApiKey]:
        return self.s.execute(select(ApiKey).order_by(ApiKey.created_at)).scalars().all()

    def touch(self, key_id: str, now: datetime | None = None) -> None:
        self.s.execute(
            update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now or utcnow())
        )

    def revoke(self, key: ApiKey) -> None:
        key.active = False
        key.revoked_at = key.revoked_at or utcnow()

    def has_admin(self) -> bool:
        q = select(ApiKey.id).where(ApiKey.scope == "admin", ApiKey.active.is_(True)).limit(1)
        return self.s.execute(q).first() is not None
