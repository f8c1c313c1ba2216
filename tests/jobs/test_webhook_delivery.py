"""The webhook dispatcher (issue 32): the destination is checked again at delivery after DNS
and the request goes to the checked address; any exception in a delivery counts an attempt
and ends `failed`; a circuit breaker per destination; dead receivers of one key do not delay
another key's webhook. Stub resolvers and httpx.MockTransport stand in for the network; the
only real connections go to loopback."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks.webhooks import Webhook

from aiprod.core.settings import Settings
from aiprod.db.models import Job, WebhookDelivery, new_id, utcnow
from aiprod.db.repositories import ApiKeyRepository
from aiprod.db.session import make_engine, make_sessionmaker, session_scope
from aiprod.jobs.webhooks import DeliveryGate, WebhookDispatcher, webhook_secret

SECRET = "s" * 32


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def add_key(sessions: sessionmaker[Session]) -> tuple[str, str]:
    """An API key and one job of it: (key id, job id)."""
    with session_scope(sessions) as s:
        key = ApiKeyRepository(s).create(key_hash=new_id(), prefix="p", name="k").id
        job = Job(
            api_key_id=key, prompt="p", model="m", model_version="1", params={}, status="succeeded"
        )
        s.add(job)
        s.flush()
        return key, job.id


def add_delivery(sessions: sessionmaker[Session], key: tuple[str, str], url: str) -> str:
    """An outbox row written directly (as a row stored before the submit check would be)."""
    with session_scope(sessions) as s:
        row = WebhookDelivery(
            job_id=key[1],
            api_key_id=key[0],
            url=url,
            event_type="job.succeeded",
            payload='{"type":"job.succeeded"}',
            status="pending",
            next_attempt_at=utcnow(),
            created_at=utcnow(),
        )
        s.add(row)
        s.flush()
        return row.id


def rows(sessions: sessionmaker[Session], ids: list[str]) -> list[WebhookDelivery]:
    with session_scope(sessions) as s:
        found = [s.get(WebhookDelivery, i) for i in ids]
        for r in found:
            s.expunge(r)
        return found  # type: ignore[return-value]


def wait_for(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def dispatcher(
    sessions: sessionmaker[Session], tmp_path: Path, *, allow: str = "", **kw: Any
) -> WebhookDispatcher:
    settings = Settings(
        data_dir=tmp_path,
        webhook_backoff_seconds=0,
        webhook_max_attempts=3,
        webhook_timeout=2,
        webhook_poll_interval=0.05,
        webhook_allow_networks=allow,
    )
    return WebhookDispatcher(sessions=sessions, settings=settings, secret=SECRET, owner="t", **kw)


def test_a_name_resolving_to_a_private_address_is_refused_and_never_connected(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    lookups: list[tuple[str, int]] = []
    sent: list[httpx.Request] = []

    def resolver(host: str, port: int) -> list[str]:
        lookups.append((host, port))
        return {"hooks.example.com": ["10.0.0.7"], "meta.example.com": ["169.254.169.254"]}[host]

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200)

    key = add_key(sessions)
    ids = [
        add_delivery(sessions, key, "https://hooks.example.com/h"),
        add_delivery(sessions, key, "http://meta.example.com/latest"),
    ]
    d = dispatcher(sessions, tmp_path, resolver=resolver, transport=httpx.MockTransport(handler))
    d.start()
    try:
        done = wait_for(
            lambda: all(r.status == "failed" for r in rows(sessions, ids)), 30, "failed"
        )
        assert done
    finally:
        d.stop()
    first, second = rows(sessions, ids)
    assert first.attempts == 3 and "resolves to 10.0.0.7, a private address" in first.last_error
    assert second.attempts == 3 and "169.254.169.254, a link-local address" in second.last_error
    assert sent == []  # never connected
    assert sorted(set(lookups)) == [("hooks.example.com", 443), ("meta.example.com", 80)]


def test_the_request_goes_to_the_checked_address_with_the_original_host(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    # https: the address the resolver gave, with the name in Host and as the TLS server name
    # (MockTransport: nothing leaves the process).
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(204)

    answers = iter([["93.184.215.14"], ["10.0.0.1"]])  # a rebinding DNS: second answer private
    key = add_key(sessions)
    hook = add_delivery(sessions, key, "https://hooks.example.com/h?x=1")
    d = dispatcher(
        sessions,
        tmp_path,
        resolver=lambda host, port: next(answers),
        transport=httpx.MockTransport(handler),
    )
    d.start()
    try:
        wait_for(lambda: rows(sessions, [hook])[0].status == "delivered", 30, "delivery")
    finally:
        d.stop()
    (req,) = sent
    assert str(req.url) == "https://93.184.215.14/h?x=1"
    assert req.headers["host"] == "hooks.example.com"
    assert req.extensions["sni_hostname"] == "hooks.example.com"
    assert next(answers) == ["10.0.0.1"]  # resolved once per delivery, never again to connect
    secret = webhook_secret(key[0], SECRET)
    assert Webhook(secret).verify(req.content, dict(req.headers)) == {"type": "job.succeeded"}


class _Receiver(ThreadingHTTPServer):
    received: list[dict[str, str]]


def _receiver() -> _Receiver:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["content-length"]))
            headers = {k.lower(): v for k, v in self.headers.items()}
            self.server.received.append({"path": self.path, **headers})  # type: ignore[attr-defined]
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    srv = _Receiver(("127.0.0.1", 0), Handler)
    srv.received = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_a_real_connection_to_an_allowed_loopback_address(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    live = _receiver()
    port = live.server_address[1]
    key = add_key(sessions)
    hook = add_delivery(sessions, key, f"http://hooks.example.invalid:{port}/h")
    allowed = add_delivery(sessions, key, f"http://127.0.0.1:{port}/allowed")
    d = dispatcher(
        sessions,
        tmp_path,
        allow="127.0.0.1/32",
        resolver=lambda host, port: {"hooks.example.invalid": ["127.0.0.1"]}[host],
    )
    d.start()
    try:
        wait_for(
            lambda: {r.status for r in rows(sessions, [hook, allowed])} == {"delivered"}, 30, "both"
        )
    finally:
        d.stop()
        live.shutdown()
    hosts = {h["path"]: h["host"] for h in live.received}
    assert hosts == {"/h": f"hooks.example.invalid:{port}", "/allowed": f"127.0.0.1:{port}"}

    d = dispatcher(sessions, tmp_path, resolver=lambda host, port: [])  # nothing allowed
    late = add_delivery(sessions, key, f"http://127.0.0.1:{port}/h")
    d.start()
    try:
        wait_for(lambda: rows(sessions, [late])[0].status == "failed", 30, "refusal")
    finally:
        d.stop()
    assert "host 127.0.0.1 is a loopback address" in (rows(sessions, [late])[0].last_error or "")


def test_poison_rows_count_attempts_and_end_failed(
    sessions: sessionmaker[Session], tmp_path: Path, db_url: str
) -> None:
    poison = [
        "http://[not-an-ip]/h",
        "http://example.com:99999/",
        "ht!tp://x/",
        "http://dns-fails.example/h",
        "http://bad-answer.example/h",
    ]
    if db_url.startswith("sqlite"):  # PostgreSQL text cannot hold NUL
        poison += ["http://example.com/h\x00", "http://exa\x00mple.com/"]

    def resolver(host: str, port: int) -> list[str]:
        if host == "dns-fails.example":
            raise socket.gaierror(-2, "Name or service not known")
        if host == "bad-answer.example":
            raise RuntimeError("resolver bug")
        return ["93.184.215.14"]

    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200)

    key = add_key(sessions)
    ids = [add_delivery(sessions, key, url) for url in poison]
    d = dispatcher(sessions, tmp_path, resolver=resolver, transport=httpx.MockTransport(handler))
    d.start()
    try:
        wait_for(lambda: all(r.status == "failed" for r in rows(sessions, ids)), 60, "failed")
        assert d._thread is not None and d._thread.is_alive()  # the dispatcher kept running
        good = add_delivery(sessions, key, "https://hooks.example.com/ok")
        wait_for(lambda: rows(sessions, [good])[0].status == "delivered", 30, "a good delivery")
    finally:
        d.stop()
    for r in rows(sessions, ids):
        assert r.attempts == 3 and r.last_error and r.locked_by is None, (r.url, r.last_error)
    assert len(sent) == 1


def test_circuit_breaker_gate() -> None:
    now = [100.0]
    g = DeliveryGate(
        per_key=3, per_destination=2, breaker_failures=3, breaker_cooldown=30, clock=lambda: now[0]
    )
    assert g.acquire("a", "d:80") and g.acquire("a", "d:80")
    assert not g.acquire("b", "d:80")  # two to one destination at most
    assert g.acquire("a", "e:80") and not g.acquire("a", "f:80")  # three per key at most
    assert g.acquire("b", "f:80")
    for dest in ("d:80", "d:80", "e:80"):
        g.release("a", dest, reachable=False)
    assert g.open_for("d:80") == 0  # two failures: still closed
    assert g.acquire("a", "d:80")
    g.release("a", "d:80", reachable=False)
    assert g.open_for("d:80") == 30 and not g.acquire("c", "d:80")  # open
    now[0] += 29
    assert g.open_for("d:80") == pytest.approx(1) and not g.acquire("c", "d:80")
    now[0] += 1
    assert g.open_for("d:80") == 0
    assert g.acquire("c", "d:80") and not g.acquire("c", "d:80")  # half-open: one probe
    g.release("c", "d:80", reachable=False)
    assert g.open_for("d:80") == 30  # the probe failed: open again
    now[0] += 30
    assert g.acquire("c", "d:80")
    g.release("c", "d:80", reachable=True)  # the probe answered: closed
    assert g.acquire("c", "d:80") and g.acquire("c", "d:80")
    g.release("c", "d:80", reachable=None)
    g.release("c", "d:80", reachable=None)
    g.release("b", "f:80", reachable=None)
    assert g.inflight() == 0


def test_an_open_circuit_defers_rows_without_counting_attempts(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead = closed.getsockname()[1]
    closed.close()  # connections to it are refused
    key = add_key(sessions)
    ids = [add_delivery(sessions, key, f"http://127.0.0.1:{dead}/h{i}") for i in range(6)]
    d = dispatcher(
        sessions,
        tmp_path,
        allow="127.0.0.0/8",
        per_destination=1,
        breaker_failures=2,
        breaker_cooldown=120,
    )
    later = utcnow() + timedelta(seconds=60)
    d.start()
    try:
        wait_for(
            lambda: all(r.next_attempt_at > later for r in rows(sessions, ids)), 30, "deferral"
        )
    finally:
        d.stop()
    found = rows(sessions, ids)
    assert sum(r.attempts for r in found) == 2  # the two that opened the circuit, no more
    assert all(r.status == "pending" and r.locked_by is None for r in found)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_dead_receivers_of_one_key_do_not_delay_another_key(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    # 40 receivers of key A that accept connections and never answer, then key B's live one.
    hung = []
    for _ in range(40):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        hung.append(s)
    live = _receiver()
    a, b = add_key(sessions), add_key(sessions)
    for s in hung:
        add_delivery(sessions, a, f"http://127.0.0.1:{s.getsockname()[1]}/h")
    settings = Settings(
        data_dir=tmp_path, webhook_timeout=5, webhook_allow_networks="127.0.0.0/8"
    )  # the production timeout, backoff and poll interval
    d = WebhookDispatcher(sessions=sessions, settings=settings, secret=SECRET, owner="t")
    d.start()
    try:
        time.sleep(1.5)  # key A's deliveries are in flight, hanging
        assert d.gate.inflight() > 0
        t0 = time.monotonic()
        add_delivery(sessions, b, f"http://127.0.0.1:{live.server_address[1]}/b")
        wait_for(lambda: live.received, 60, "key B's webhook")
        delay = time.monotonic() - t0
    finally:
        d.stop()
        d.pool.shutdown(wait=True)  # the hung deliveries time out before the database goes
        live.shutdown()
        for s in hung:
            s.close()
    print(f"key B's webhook arrived {delay:.2f}s after it was due, behind 40 dead receivers")
    assert delay < 10  # it was ~50 s (40 x 5 s timeouts over 4 threads) before issue 32
