"""Monthly budgets: a key past its budget cannot submit (402 ``budget_exceeded``).

The spend is the billed cost (``jobs.cost_usd``) of the key's jobs completed this UTC
calendar month; the budget resets at 00:00 UTC on the first of next month. A submit is refused
once the spend has reached the budget (the job in flight when it was crossed still finishes
and is billed); ``/estimate-cost`` also says whether spend + the estimate would pass it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

from sqlalchemy.orm import Session

from aiprod.core.errors import AiprodError, NotFound
from aiprod.db.repositories import AdminRepository, ApiKeyRepository
from aiprod.jobs.estimate import estimate
from aiprod.jobs.schema import Validated
from aiprod.jobs.views import iso


def month_start(now: datetime | None = None) -> datetime:
    """00:00 UTC on the first of ``now``'s month (budgets and statements use UTC months)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month_start(now: datetime | None = None) -> datetime:
    """00:00 UTC on the first of the month after ``now``'s: when a monthly budget resets."""
    start = month_start(now)
    return (start + timedelta(days=32)).replace(day=1)


class BudgetExceeded(AiprodError):
    status_code = 402
    code = "budget_exceeded"


@dataclass(frozen=True)
class BudgetState:
    budget_usd: float | None  # None: no budget
    spent_usd: float  # this month
    resets_at: datetime  # 00:00 UTC on the first of next month
    estimated_cost_usd: float

    @property
    def exceeded(self) -> bool:
        """The budget is used up: a submit now is refused."""
        return self.budget_usd is not None and self.spent_usd >= self.budget_usd

    @property
    def would_exceed(self) -> bool:
        """This job's estimated cost would take the spend past the budget."""
        return self.budget_usd is not None and (
            self.spent_usd + self.estimated_cost_usd > self.budget_usd
        )

    @property
    def remaining_usd(self) -> float | None:
        if self.budget_usd is None:
            return None
        return round(max(0.0, self.budget_usd - self.spent_usd), 6)


class Unread(Enum):
    """The key's budget was not read yet: ``budget_state`` reads the key's row."""

    UNREAD = "unread"


UNREAD = Unread.UNREAD


def budget_state(
    session: Session,
    key_id: str,
    estimated_cost: float = 0.0,
    *,
    now: datetime | None = None,
    budget_usd: float | None | Unread = UNREAD,
) -> BudgetState:
    """The key's budget, this month's spend and whether ``estimated_cost`` would pass it.
    ``budget_usd``: the key's monthly budget when the caller has it (the API's key cache),
    so a key without a budget costs no query."""
    if budget_usd is UNREAD:
        row = ApiKeyRepository(session).get(key_id)
        if row is None:
            raise NotFound(f"API key {key_id} not found")
        budget_usd = row.monthly_budget_usd
    now = now or datetime.now(UTC)
    spent = 0.0
    if budget_usd is not None:
        spent = AdminRepository(session).spend_since(key_id, month_start(now))
    return BudgetState(
        budget_usd=budget_usd,
        spent_usd=round(spent, 6),
        resets_at=next_month_start(now),
        estimated_cost_usd=round(float(estimated_cost), 6),
    )


def check_budget(
    session: Session,
    key_id: str,
    estimated_cost: float = 0.0,
    *,
    now: datetime | None = None,
    budget_usd: float | None | Unread = UNREAD,
) -> BudgetState:
    """Raise ``BudgetExceeded`` (402) when the key's spend this month has reached its monthly
    budget; the message states the budget, the spend and when it resets."""
    state = budget_state(session, key_id, estimated_cost, now=now, budget_usd=budget_usd)
    if state.exceeded:
        raise BudgetExceeded(
            f"monthly budget of ${state.budget_usd:.2f} reached: ${state.spent_usd:.2f} spent "
            f"this month; it resets on {state.resets_at:%Y-%m-%d} 00:00 UTC. "
            "Ask the operator to raise the budget (PATCH /api/v1/admin/keys/{id})",
            status_code=402,
        )
    return state


def budget_fields(state: BudgetState) -> dict[str, Any]:
    """The budget part of /estimate-cost's answer."""
    return {
        "would_exceed_budget": state.would_exceed,
        "budget_exceeded": state.exceeded,
        "monthly_budget_usd": state.budget_usd,
        "month_spend_usd": state.spent_usd,
        "budget_resets_at": iso(state.resets_at),
    }


def estimate_for_key(
    session: Session, v: Validated, key_id: str, *, seed_given: bool
) -> dict[str, Any]:
    """The body of /estimate-cost: the estimate, and whether it would pass the key's budget."""
    out = estimate(session, v, seed_given=seed_given)
    out.update(budget_fields(budget_state(session, key_id, out["estimated_cost_usd"])))
    return out
