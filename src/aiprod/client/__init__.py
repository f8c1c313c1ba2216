"""A small Python client for the aiprod REST API (v1), sync and async.

    from aiprod.client import Client

    with Client() as client:   # $AIPROD_URL (default http://127.0.0.1:8000), $AIPROD_API_KEY
        job = client.generate("a red fox running through snow", wait=True)
        client.download(job.id, "videos/")          # -> videos/<job id>.mp4

    async with AsyncClient() as client:              # the same methods, awaited
        job = await client.generate("a red fox", wait=True)

Every error the server returns becomes a typed exception (``AuthenticationError`` for 401,
``NotFoundError`` for 404, ``ValidationError`` for 422, ``RateLimitError`` for 429 with
``retry_after``...), all subclasses of ``ApiError`` carrying ``status``, ``code`` and the
server's ``message``; a server that cannot be reached raises ``ConnectionFailed`` naming the
URL. ``generate(..., wait=True)`` / ``wait()`` raise ``JobFailed`` / ``JobCanceled`` when the job
ends badly and ``WaitTimeout`` when it takes longer than ``timeout``. Every one of them is a
``ClientError``.

Only httpx is needed (``pip install aiprod`` installs the client alone): this package imports
nothing else from aiprod.
"""

from aiprod.client._async import AsyncClient
from aiprod.client._common import (
    ApiError,
    AuthenticationError,
    BadRequest,
    BudgetExceeded,
    ClientError,
    ConflictError,
    ConnectionFailed,
    GoneError,
    Job,
    JobCanceled,
    JobError,
    JobFailed,
    NotFoundError,
    PayloadTooLarge,
    PermissionDenied,
    RateLimitError,
    ServiceUnavailable,
    ValidationError,
    WaitTimeout,
)
from aiprod.client._sync import Client

__all__ = [
    "ApiError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequest",
    "BudgetExceeded",
    "Client",
    "ClientError",
    "ConflictError",
    "ConnectionFailed",
    "GoneError",
    "Job",
    "JobCanceled",
    "JobError",
    "JobFailed",
    "NotFoundError",
    "PayloadTooLarge",
    "PermissionDenied",
    "RateLimitError",
    "ServiceUnavailable",
    "ValidationError",
    "WaitTimeout",
]
