"""core.recent.Recent: shared reads, renewed in the background while a stale value is served."""

from __future__ import annotations

import threading
import time

import pytest

from aiprod.core.recent import Recent


def test_a_fresh_value_is_shared_and_an_old_one_read_again() -> None:
    calls = []
    r: Recent[str, int] = Recent(ttl=0.2)
    assert r.get("k", lambda: calls.append(1) or len(calls)) == 1
    assert r.get("k", lambda: calls.append(1) or len(calls)) == 1  # within ttl: no read
    time.sleep(0.25)
    assert r.get("k", lambda: calls.append(1) or len(calls)) == 2  # no stale_for: read here
    assert len(calls) == 2


def test_a_stale_value_is_served_while_one_background_read_renews_it() -> None:
    r: Recent[str, str] = Recent(ttl=0.05, stale_for=30.0)
    assert r.get("k", lambda: "v1") == "v1"
    time.sleep(0.1)
    release = threading.Event()
    started = []

    def slow() -> str:
        started.append(threading.current_thread().name)
        release.wait(10)
        return "v2"

    t0 = time.monotonic()
    # Stale: answered at once with the old value, however slow the read; one read only.
    assert [r.get("k", slow) for _ in range(5)] == ["v1"] * 5
    assert time.monotonic() - t0 < 1.0
    deadline = time.monotonic() + 10
    while not started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(started) == 1 and started[0].startswith("aiprod-refresh")
    release.set()
    deadline = time.monotonic() + 10
    while r.get("k", lambda: "unused") != "v2":
        assert time.monotonic() < deadline, "the background read never landed"
        time.sleep(0.01)


def test_past_stale_for_the_request_reads_itself_and_sees_the_error() -> None:
    r: Recent[str, str] = Recent(ttl=0.01, stale_for=0.05)
    assert r.get("k", lambda: "v1") == "v1"
    time.sleep(0.03)

    def broken() -> str:
        raise RuntimeError("database down")

    assert r.get("k", broken) == "v1"  # stale: served; the background read fails quietly
    time.sleep(0.1)  # older than ttl + stale_for: no longer served
    with pytest.raises(RuntimeError, match="database down"):
        r.get("k", broken)
    assert r.get("k", lambda: "v3") == "v3"


def test_threads_that_miss_together_wait_for_one_read() -> None:
    r: Recent[str, int] = Recent(ttl=60.0)
    reads = []
    go = threading.Barrier(8)

    def read() -> int:
        reads.append(1)
        time.sleep(0.2)  # long enough for every thread to arrive meanwhile
        return 7

    out: list[int] = []

    def one() -> None:
        go.wait()
        out.append(r.get("k", read))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert out == [7] * 8 and len(reads) == 1


def test_a_caller_that_may_not_wait_gets_would_block_instead_of_a_read() -> None:
    """``wait=False`` (a route on the event loop): never reads nor waits for a read here; a
    stale value is served while the background read renews it, as for anyone."""
    from aiprod.core.recent import WouldBlock

    calls: list[str] = []

    def read(value: str) -> str:
        calls.append(threading.current_thread().name)
        return value

    r: Recent[str, str] = Recent(ttl=0.05, stale_for=30.0)
    with pytest.raises(WouldBlock):
        r.get("k", lambda: read("v1"), wait=False)  # nothing stored: it would read here
    assert calls == []
    assert r.get("k", lambda: read("v1")) == "v1"
    assert r.get("k", lambda: read("unused"), wait=False) == "v1"  # fresh
    time.sleep(0.1)
    assert r.get("k", lambda: read("v2"), wait=False) == "v1"  # stale: renewed behind it
    deadline = time.monotonic() + 10
    while r.get("k", lambda: read("unused"), wait=False) != "v2":
        assert time.monotonic() < deadline, "the background read never landed"
        time.sleep(0.01)
    assert calls[0] == "MainThread" and calls[1].startswith("aiprod-refresh")
