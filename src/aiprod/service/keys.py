"""Create API keys (plaintext returned once, only the keyed hash stored)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from aiprod.core.errors import InvalidRequest
from aiprod.db.models import ApiKey
from aiprod.db.repositories import ApiKeyRepository
from aiprod.jobs.admin import check_name_free
from aiprod.service.security import display_prefix, generate_key, hash_key


def create_key(
    session: Session,
    *,
    secret: str,
    name: str,
    admin: bool = False,
    monthly_budget_usd: float | None = None,
    rate_limit_per_minute: int | None = None,
    priority: int = 0,
) -> tuple[ApiKey, str]:
    """Returns (row, plaintext key). The plaintext is never stored: show it once."""
    name = name.strip()
    if not name or len(name) > 200:
        raise InvalidRequest("--name must be 1..200 characters", field="name")
    if monthly_budget_usd is not None and monthly_budget_usd < 0:
        raise InvalidRequest("--budget must be >= 0 (US dollars per month)", field="budget")
    if rate_limit_per_minute is not None and rate_limit_per_minute < 1:
        raise InvalidRequest("--rate-limit must be >= 1 request per minute", field="rate_limit")
    check_name_free(session, name)  # 409 naming the active key that has it
    key = generate_key()
    row = ApiKeyRepository(session).create(
        key_hash=hash_key(key, secret),
        prefix=display_prefix(key),
        name=name,
        scope="admin" if admin else "client",
        monthly_budget_usd=monthly_budget_usd,
        rate_limit_per_minute=rate_limit_per_minute,
        priority=priority,
    )
    return row, key
