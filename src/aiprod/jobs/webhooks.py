"""Webhook delivery from the persisted outbox (``webhook_deliveries``), Standard Webhooks signed.

A ``WebhookDispatcher`` runs as a background thread (in every worker, and in the API process
unless disabled). It lists due rows (at most a few per API key, so one key's backlog cannot hide
another's), leases those its caps allow, posts them from a thread pool and records the outcome;
failures are retried with exponential backoff up to ``webhook_max_attempts``.

Isolation (per process): at most ``per_key`` deliveries of one API key and ``per_destination``
to one host:port run at once, each bounded by ``webhook_timeout`` per phase (connect, send,
first byte; the body is not read). A circuit breaker per destination opens after
``breaker_failures`` consecutive connection failures, timeouts or 5xx: while it is open, that
destination's due rows are moved to the end of the cool-down without counting an attempt; then
one probe is let through (a success closes it, a failure opens it again). So dead receivers of
one key never hold up another key's webhooks.

Safety: every delivery re-checks the destination (``jobs/destinations.py``): the name is
resolved, every address checked, and the request goes to the checked address with the original
Host header and TLS server name; redirects are not followed, proxies from the environment are
not used, connections are not reused. Any exception in a delivery (a malformed URL stored
before the submit check existed, a refused address, a resolver error) counts an attempt like a
failed POST, so such a row ends ``failed`` after the limit.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks.webhooks import Webhook

from aiprod.core.settings import Settings
from aiprod.db.models import WebhookDelivery, utcnow
from aiprod.db.repositories import ApiKeyRepository, WebhookRepository
from aiprod.db.session import session_scope
from aiprod.jobs.destinations import Resolver, parse_destination, system_resolver, vet

log = logging.getLogger("aiprod.webhooks")


def webhook_secret(api_key_id: str, secret: str, salt: str | None = None) -> str:
    """The Standard Webhooks signing secret (``whsec_...``) for one API key's deliveries.

    Derived from the server secret and the key's ``webhook_secret_salt`` (None until the
    first rotation), so it need not be stored and can be shown again
    (``aiprod keys webhook-secret``); a rotation stores a new salt."""
    label = f"webhook:{api_key_id}" if salt is None else f"webhook:{api_key_id}:{salt}"
    raw = hmac.new(secret.encode(), label.encode(), hashlib.sha256).digest()
    return "whsec_" + base64.b64encode(raw).decode()


def signed_headers(
    delivery: WebhookDelivery, secret: str, now: datetime, *, salt: str | None = None
) -> dict[str, str]:
    wh = Webhook(webhook_secret(delivery.api_key_id, secret, salt))
    return {
        "content-type": "application/json",
        "user-agent": "aiprod-webhooks/1",
        "webhook-id": delivery.id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": wh.sign(delivery.id, now, delivery.payload),
    }


@dataclass
class _Circuit:
    failures: int = 0  # consecutive
    open_until: float = 0.0  # monotonic seconds


class DeliveryGate:
    """In-process concurrency caps (per key, per destination) and a breaker per destination."""

    def __init__(
        self,
        *,
        per_key: int,
        per_destination: int,
        breaker_failures: int,
        breaker_cooldown: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_key = per_key
        self.per_destination = per_destination
        self.breaker_failures = breaker_failures
        self.breaker_cooldown = breaker_cooldown
        self.clock = clock
        self._lock = threading.Lock()
        self._keys: Counter[str] = Counter()
        self._dests: Counter[str] = Counter()
        self._circuits: dict[str, _Circuit] = {}

    def open_for(self, dest: str) -> float:
        """Seconds until ``dest``'s circuit lets a probe through (0: closed or half-open)."""
        with self._lock:
            c = self._circuits.get(dest)
            if c is None or c.failures < self.breaker_failures:
                return 0.0
            return max(0.0, c.open_until - self.clock())

    def acquire(self, key: str, dest: str) -> bool:
        with self._lock:
            c = self._circuits.get(dest)
            tripped = c is not None and c.failures >= self.breaker_failures
            if tripped and (self._dests[dest] > 0 or self.clock() < c.open_until):  # type: ignore[union-attr]
                return False  # open, or half-open with its one probe in flight
            if self._keys[key] >= self.per_key or self._dests[dest] >= self.per_destination:
                return False
            self._keys[key] += 1
            self._dests[dest] += 1
            return True

    def release(self, key: str, dest: str, reachable: bool | None) -> None:
        """``reachable``: True (it answered), False (dead: no connection, timeout, 5xx), None
        (no network outcome, e.g. a refused address: the breaker is left as it is)."""
        with self._lock:
            self._keys[key] -= 1
            self._dests[dest] -= 1
            if reachable is True:
                self._circuits.pop(dest, None)
            elif reachable is False:
                c = self._circuits.setdefault(dest, _Circuit())
                c.failures += 1
                if c.failures >= self.breaker_failures:
                    c.open_until = self.clock() + self.breaker_cooldown
                    if c.failures == self.breaker_failures:
                        log.warning(
                            "webhook destination %s: %d failures in a row; pausing it for %.0fs",
                            dest,
                            c.failures,
                            self.breaker_cooldown,
                        )

    def inflight(self) -> int:
        with self._lock:
            return sum(self._keys.values())


def _dest_key(url: str) -> str:
    try:
        return parse_destination(url).key
    except ValueError:
        return "invalid"


class WebhookDispatcher:
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        settings: Settings,
        secret: str,
        owner: str,
        pool_size: int = 16,
        per_key: int = 4,
        per_destination: int = 2,
        breaker_failures: int = 5,
        breaker_cooldown: float = 30.0,
        resolver: Resolver = system_resolver,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.secret = secret
        self.owner = owner
        self.pool = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="webhook")
        self.pool_size = pool_size
        self.gate = DeliveryGate(
            per_key=per_key,
            per_destination=per_destination,
            breaker_failures=breaker_failures,
            breaker_cooldown=breaker_cooldown,
        )
        self.resolver = resolver
        self.allow = settings.webhook_allowed_networks
        self._busy = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.client = httpx.Client(
            timeout=httpx.Timeout(settings.webhook_timeout),
            follow_redirects=False,
            trust_env=False,  # no proxy from the environment: it would resolve the name again
            limits=httpx.Limits(max_keepalive_connections=0),
            transport=transport,
        )

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="webhook-dispatcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.dispatch_due()
            except Exception:  # keep delivering after a transient DB error
                log.exception("webhook dispatcher pass failed")
            self._wake.wait(self.settings.webhook_poll_interval)

    def dispatch_due(self) -> int:
        """Lease and submit as many due deliveries as free pool threads and the caps allow."""
        with self._lock:
            free = self.pool_size - self._busy
        if free <= 0:
            return 0
        lease = 4 * self.settings.webhook_timeout + 10
        with session_scope(self.sessions) as s:
            due = WebhookRepository(s).due(per_key=2 * self.gate.per_key, limit=8 * self.pool_size)
        chosen: dict[str, tuple[str, str]] = {}
        paused: dict[str, float] = {}
        for delivery_id, key, url in due:
            if len(chosen) >= free:
                break
            dest = _dest_key(url)
            wait = self.gate.open_for(dest)
            if wait > 0:
                paused[delivery_id] = wait
            elif self.gate.acquire(key, dest):
                chosen[delivery_id] = (key, dest)
        with session_scope(self.sessions) as s:
            repo = WebhookRepository(s)
            claimed = repo.claim(list(chosen), owner=self.owner, lease_seconds=lease)
            for delivery_id, wait in paused.items():
                repo.defer([delivery_id], utcnow() + timedelta(seconds=wait))
        for delivery_id in set(chosen) - set(claimed):  # leased by another dispatcher meanwhile
            self.gate.release(*chosen[delivery_id], reachable=None)
        for delivery_id in claimed:
            with self._lock:
                self._busy += 1
            self.pool.submit(self._deliver, delivery_id, *chosen[delivery_id])
        return len(claimed)

    def _deliver(self, delivery_id: str, key: str, dest: str) -> None:
        reachable: bool | None = None
        try:
            with session_scope(self.sessions) as s:
                d = WebhookRepository(s).get(delivery_id)
                if d is None or d.status != "pending" or d.locked_by != self.owner:
                    return
                key_row = ApiKeyRepository(s).get(d.api_key_id)
                salt = key_row.webhook_secret_salt if key_row is not None else None
                s.expunge(d)
            code: int | None = None
            error: str | None = None
            try:
                code, reachable = self._post(d, salt)
                if not 200 <= code < 300:
                    error = f"receiver answered HTTP {code}"
            except httpx.TransportError as exc:
                reachable = False
                error = f"{type(exc).__name__}: {exc}"[:500]
            except Exception as exc:  # a bad URL, a refused address: an attempt like any other
                error = f"{type(exc).__name__}: {exc}"[:500]
            self._record(delivery_id, code, error)
        except Exception:  # the database: the lease runs out and the row is tried again
            log.exception("webhook delivery %s could not be recorded", delivery_id)
        finally:
            self.gate.release(key, dest, reachable)
            with self._lock:
                self._busy -= 1
            self._wake.set()

    def _post(self, d: WebhookDelivery, salt: str | None = None) -> tuple[int, bool]:
        """POST to the vetted address; (status code, whether the receiver counts as alive)."""
        dest = parse_destination(d.url)
        ip = vet(dest, self.resolver, self.allow)
        headers = signed_headers(d, self.secret, datetime.now(UTC), salt=salt)
        headers["host"] = dest.host_header
        tls = {"sni_hostname": dest.host} if dest.scheme == "https" and dest.ip is None else {}
        request = self.client.build_request(
            "POST",
            httpx.URL(d.url).copy_with(host=str(ip)),
            content=d.payload,
            headers=headers,
            extensions=tls,
        )
        response = self.client.send(request, stream=True)
        response.close()  # the status is all we need; a slow body cannot hold the thread
        return response.status_code, response.status_code < 500

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
