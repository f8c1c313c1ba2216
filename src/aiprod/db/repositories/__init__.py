"""Repositories: the only place that runs queries (besides the queue in ``db/queue.py``).

Each takes a ``Session``; the caller owns the transaction (one unit of work, committed once).
One module per concern; everything is importable from here.
"""

from aiprod.db.repositories.admin import AdminRepository, DeliveryPage
from aiprod.db.repositories.billing import CostRepository, TimingRepository
from aiprod.db.repositories.jobs import JobRepository, Page
from aiprod.db.repositories.keys import ApiKeyRepository
from aiprod.db.repositories.state import RateLimitRepository, StateRepository, WorkerRepository
from aiprod.db.repositories.webhooks import WebhookRepository

__all__ = [
    "AdminRepository",
    "ApiKeyRepository",
    "CostRepository",
    "DeliveryPage",
    "JobRepository",
    "Page",
    "RateLimitRepository",
    "StateRepository",
    "TimingRepository",
    "WebhookRepository",
    "WorkerRepository",
]
