"""Webhook delivery from the persisted outbox (``webhook_deliveries``), Standard Webhooks signed.

A ``WebhookDispatcher`` runs as a background thread (in every worker, and in the API process
unless disabled). It leases due rows, posts them from a small thread pool with a short timeout,
and records the outcome; failures are retried with exponential backoff up to
``webhook_max_attempts``. A slow or dead receiver only ever occupies one pool thread for at most
``webhook_timeout`` seconds, so it cannot block jobs or other deliveries.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks.webhooks import Webhook

from aiprod.core.settings import Settings
from aiprod.db.models import WebhookDelivery, utcnow
from aiprod.db.repositories import WebhookRepository
from aiprod.db.session import session_scope

log = logging.getLogger("aiprod.webhooks")


def webhook_secret(api_key_id: str, secret: str) -> str:
    """The Standard Webhooks signing secret (``whsec_...``) for one API key's deliveries.

    Derived from the server secret, so it need not be stored and can be shown again
    (``aiprod keys webhook-secret``)."""
    raw = hmac.new(secret.encode(), f"webhook:{api_key_id}".encode(), hashlib.sha256).digest()
    return "whsec_" + base64.b64encode(raw).decode()


def signed_headers(delivery: WebhookDelivery, secret: str, now: datetime) -> dict[str, str]:
    wh = Webhook(webhook_secret(delivery.api_key_id, secret))
    return {
        "content-type": "application/json",
        "user-agent": "aiprod-webhooks/1",
        "webhook-id": delivery.id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": wh.sign(delivery.id, now, delivery.payload),
    }


class WebhookDispatcher:
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        settings: Settings,
        secret: str,
        owner: str,
        pool_size: int = 4,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.secret = secret
        self.owner = owner
        self.pool = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="webhook")
        self.pool_size = pool_size
        self._busy = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.client = httpx.Client(
            timeout=httpx.Timeout(settings.webhook_timeout), follow_redirects=False
        )

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="webhook-dispatcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.dispatch_due()
            except Exception:  # keep delivering after a transient DB error
                log.exception("webhook dispatcher pass failed")
            self._stop.wait(self.settings.webhook_poll_interval)

    def dispatch_due(self) -> int:
        """Lease and submit as many due deliveries as there are free pool threads."""
        with self._lock:
            free = self.pool_size - self._busy
        if free <= 0:
            return 0
        lease = self.settings.webhook_timeout + 10
        with session_scope(self.sessions) as s:
            rows = WebhookRepository(s).claim_due(owner=self.owner, lease_seconds=lease, limit=free)
            ids = [r.id for r in rows]
        for delivery_id in ids:
            with self._lock:
                self._busy += 1
            self.pool.submit(self._deliver, delivery_id)
        return len(ids)

    def _deliver(self, delivery_id: str) -> None:
        try:
            with session_scope(self.sessions) as s:
                d = WebhookRepository(s).get(delivery_id)
                if d is None or d.status != "pending" or d.locked_by != self.owner:
                    return
                s.expunge(d)
            code: int | None = None
            error: str | None = None
            try:
                resp = self.client.post(
                    d.url,
                    content=d.payload,
                    headers=signed_headers(d, self.secret, datetime.now(UTC)),
                )
                code = resp.status_code
                if not 200 <= code < 300:
                    error = f"receiver answered HTTP {code}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"[:500]
            self._record(delivery_id, code, error)
        except Exception:
            log.exception("webhook delivery %s crashed", delivery_id)
        finally:
            with self._lock:
                self._busy -= 1

    def _record(self, delivery_id: str, code: int | None, error: str | None) -> None:
        with session_scope(self.sessions) as s:
            d = s.get(WebhookDelivery, delivery_id, with_for_update=True)
            if d is None or d.status != "pending":
                return
            d.attempts += 1
            d.last_status_code = code
            d.last_error = error
            d.locked_by = None
            if error is None:
                d.status = "delivered"
                d.delivered_at = utcnow()
                log.info("webhook %s delivered to %s", d.id, d.url)
            elif d.attempts >= self.settings.webhook_max_attempts:
                d.status = "failed"
                log.warning("webhook %s gave up after %d attempts: %s", d.id, d.attempts, error)
            else:
                delay = min(3600.0, self.settings.webhook_backoff_seconds * 2 ** (d.attempts - 1))
                d.next_attempt_at = utcnow() + timedelta(seconds=delay)
                log.info("webhook %s failed (%s); retry in %.1fs", d.id, error, delay)
