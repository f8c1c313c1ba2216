"""The job domain, shared by the API (``service/``), the worker and the CLI.

- ``schema``: the generate request (``GenerateBody``) and the one resolved parameter type
  (``JobParams``), checked against the model entry.
- ``transitions``: every change of a job's status and what happens with it (cost row, webhook
  outbox entry, log line), over the queue's SQL in ``db/queue.py``.
- ``views``: the job object of the API and of webhook payloads, queue positions and ETAs.
- ``estimate``: predicted GPU-seconds and cost.
- ``storage``, ``webhooks``, ``retention``, ``gpu``: where outputs live, the outbox dispatcher,
  deleting old outputs, the GPU stats a worker publishes.

No FastAPI and no torch here; queries go through ``db/`` (which never imports this package).
"""

from aiprod.db.models import TERMINAL_STATUSES, JobStatus

__all__ = ["TERMINAL_STATUSES", "JobStatus"]
