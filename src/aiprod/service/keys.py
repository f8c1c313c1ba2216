"""Create API keys (plaintext returned once, only the keyed hash stored)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from aiprod.core.errors import InvalidRequest
from aiprod.db.models import ApiKey
from aiprod.db.repositories import ApiKeyRepository
from aiprod.jobs.admin import MAX_RATE_LIMIT, check_key_name, check_name_free
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
    name = check_key_name(name)
    if monthly_budget_usd is not None and monthly_budget_usd < 0:
        raise InvalidRequest("--budget must be >= 0 (US dollars per month)", field="budget")
    if rate_limit_per_minute is not None and not 1 <= rate_limit_per_minute <= MAX_RATE_LIMIT:
        raise InvalidRequest(
            f"--rate-limit must be 1..{MAX_RATE_LIMIT} requests per minute", field="rate_limit"
        )
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
