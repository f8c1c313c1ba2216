"""API SIGKILL under load (issue 32, fault suite): client threads submit while the API
process is SIGKILLed and restarted. Every job answered 202 exists and finishes, no job runs
twice, and the clients see no 5xx: only connection errors while the API is down."""

from __future__ import annotations

import sqlite3
import threading
import time

import httpx
import pytest

from tests.faults.kit import (
    LONG,
    Record,
    completions,
    join,
    kill_api,
    restart_api,
    run_threads,
    seconds,
    wait_terminal,
)
from tests.service.harness import Stack, Workers, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_api_sigkill_under_load_loses_no_job_and_runs_none_twice(api: Stack) -> None:
    key = api.create_key("load")
    workers = Workers(api)
    rec = Record()
    stop = threading.Event()
    kills = 3 if LONG else 1

    def client(i: int) -> None:
        with httpx.Client(
            base_url=api.url, timeout=30, headers={"Authorization": f"Bearer {key}"}
        ) as c:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    r = c.post("/api/v1/generate", json={"prompt": f"c{i} n{n}"})
                except httpx.TransportError:
                    with rec.lock:
                        rec.transport_errors += 1
                    time.sleep(0.1)
                    continue
                rec.saw(r)
                if r.status_code == 202:
                    with rec.lock:
                        rec.accepted.append(r.json()["id"])
                time.sleep(seconds(0.4, 0.05))  # short form: a bounded number of jobs

    try:
        workers.start("w1")
        threads = run_threads(4, client)
        for _ in range(kills):
            time.sleep(seconds(3, 10))
            before = len(rec.accepted)
            kill_api(api)
            time.sleep(1)
            restart_api(api)
            # the clients go on submitting to the restarted API
            wait_for_more = time.monotonic() + 60
            while len(rec.accepted) < before + 5 and time.monotonic() < wait_for_more:
                time.sleep(0.2)
        time.sleep(seconds(2, 10))
        stop.set()
        join(threads)

        assert not rec.bad, rec.bad
        assert set(rec.statuses) <= {202}, rec.statuses
        assert len(rec.accepted) >= 10, rec.statuses
        with api.client(key) as c:
            jobs = wait_terminal(c, rec.accepted, timeout=seconds(300, 900))
        assert {j["status"] for j in jobs.values()} == {"succeeded"}, jobs
        # No job ran twice: one attempt each, one success line each in the worker's log.
        assert all(j["attempts"] == 1 for j in jobs.values())
        logs = workers.logs()
        assert all(completions(logs, i) == 1 for i in jobs)
        # A submit cut by the kill may have been stored without its 202 reaching the client;
        # such a job must finish too: nothing is left queued or running.
        total = _drain(api)
        print(
            f"\nAPI SIGKILL x{kills}: {len(rec.accepted)} accepted, {total} stored, "
            f"{rec.transport_errors} connection errors, statuses {dict(rec.statuses)}"
        )
        assert total >= len(rec.accepted)
    finally:
        stop.set()
        workers.stop()


def _drain(api: Stack) -> int:
    """Wait until every stored job is terminal; returns how many jobs are stored."""
    db_path = api.database_url.removeprefix("sqlite:///")

    def counts() -> tuple[int, int]:
        db = sqlite3.connect(db_path)
        try:
            left = db.execute(
                "SELECT count(*) FROM jobs WHERE status NOT IN ('succeeded','failed','canceled')"
            ).fetchone()[0]
            return left, db.execute("SELECT count(*) FROM jobs").fetchone()[0]
        finally:
            db.close()

    wait_for(lambda: counts()[0] == 0, seconds(300, 900), 0.5, "every stored job to finish")
    return counts()[1]
