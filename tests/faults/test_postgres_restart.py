"""PostgreSQL restart mid-run (issue 32, fault suite), against a PostgreSQL this test starts
itself (initdb + pg_ctl into a temp dir on a free loopback port; as `postgres` when run as
root), so it never touches any other server. Jobs submitted before, during and after the
restart all finish; while the database is down the API answers 503 + Retry-After, never 500,
and never drops the connection."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.kit import OwnPostgres, Record, own_postgres, pg_bin, seconds, wait_terminal
from tests.service.harness import Stack, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture
def pg() -> Iterator[OwnPostgres]:
    bindir = pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found")
    with own_postgres(bindir) as server:
        yield server


def test_jobs_survive_a_postgres_restart_and_the_outage_is_503(
    pg: OwnPostgres, tmp_path: Path
) -> None:
    stack = Stack(tmp_path, pg.url, workers=1)
    rec = Record()
    try:
        key = stack.create_key("pg")
        with stack.client(key) as c:
            before = [
                c.post("/api/v1/generate", json={"prompt": f"before {i}", "num_inference_steps": s})
                for i, s in enumerate((2, 2, 60))
            ]
            assert all(r.status_code == 202 for r in before), [r.text for r in before]
            ids = [r.json()["id"] for r in before]
            # the long one is running when the database goes away
            wait_for(lambda: c.get(f"/api/v1/jobs/{ids[2]}").json()["status"] == "running", 120)

            pg.stop()
            outage_end = time.monotonic() + seconds(6, 40)
            during = 0
            while time.monotonic() < outage_end:
                for r in (
                    c.post("/api/v1/generate", json={"prompt": f"during {during}"}),
                    c.get(f"/api/v1/jobs/{ids[0]}"),
                    c.get("/api/v1/jobs"),
                ):
                    rec.saw(r, frozenset({503}))
                    if r.status_code == 202:  # cannot happen without a database; keep it
                        ids.append(r.json()["id"])
                # a readiness probe: not ready (503, no Retry-After needed), never a 500
                ready = c.get("/readyz")
                assert ready.status_code == 503, ready.text
                during += 1
                time.sleep(0.3)
            pg.start()

            assert not rec.bad, rec.bad
            assert rec.statuses[503] > 0 and rec.statuses[500] == 0, rec.statuses

            def submit_after() -> str | None:
                r = c.post("/api/v1/generate", json={"prompt": "after"})
                rec.saw(r, frozenset({503}))
                return r.json()["id"] if r.status_code == 202 else None

            for _ in range(3):  # the pool reconnects by itself: no restart of aiprod
                ids.append(wait_for(submit_after, 120, 0.5, "a submit after the restart"))
            assert not rec.bad, rec.bad
            jobs = wait_terminal(c, ids, timeout=seconds(300, 600))
        print(f"\nPostgreSQL restart: {len(ids)} jobs, statuses during/after {dict(rec.statuses)}")
        assert all(j["status"] == "succeeded" for j in jobs.values()), jobs
    finally:
        stack.stop()
