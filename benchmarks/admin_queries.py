"""The operator's queries (``aiprod.jobs.admin``, ``reports``, ``billing``) over a database of
N jobs (default 10,000) from 12 keys over the last 60 days: milliseconds per call, median of
``--repeat`` runs, on SQLite and on PostgreSQL (skipped when unreachable).

The rows are inserted directly (terminal jobs with GPU-seconds and prices, a cost-log row per
day, a webhook delivery per 10 jobs); each query then runs in its own read transaction, as a
request would.

    .venv/bin/python benchmarks/admin_queries.py
    .venv/bin/python benchmarks/admin_queries.py --json benchmarks/results/admin_queries.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url

from aiprod.db.migrate import upgrade
from aiprod.db.models import ApiKey, CostLog, Job, WebhookDelivery
from aiprod.db.session import make_engine, make_sessionmaker, session_scope
from aiprod.jobs import admin, billing, reports

PG = os.environ.get("AIPROD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
STATUSES = ["succeeded"] * 16 + ["failed"] * 2 + ["canceled", "queued", "running"]


def populate(url: str, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    keys = [
        dict(id=str(uuid.uuid4()), key_hash=uuid.uuid4().hex, prefix="p", name=f"client-{i}",
             scope="client", active=True, priority=0, created_at=now - timedelta(days=90),
             monthly_budget_usd=500.0)
        for i in range(12)
    ]  # fmt: skip
    jobs, deliveries = [], []
    costs: dict[Any, list[float]] = {}
    for i in range(n):
        created = now - timedelta(seconds=rng.uniform(0, 60 * 86400))
        status = rng.choice(STATUSES)
        done = status in ("succeeded", "failed", "canceled")
        gpu = rng.uniform(2, 40) if status in ("succeeded", "canceled") else 0.0
        completed = created + timedelta(seconds=gpu + rng.uniform(1, 30)) if done else None
        job = dict(
            id=str(uuid.uuid4()), api_key_id=rng.choice(keys)["id"],
            prompt=f"clip {i}: a {rng.choice(['red', 'blue', 'green'])} fox in the snow",
            model="builtin", model_version="v1", params={"seed": i}, status=status,
            priority=0, attempts=1, max_attempts=3, available_at=created,
            progress=1.0 if done else 0.0, cancel_requested=False, created_at=created,
            started_at=created + timedelta(seconds=1) if status != "queued" else None,
            completed_at=completed, gpu_seconds=gpu if done else None,
            cost_usd=round(gpu * 0.01, 6) if done else None,
            webhook_url="https://example.com/h" if i % 10 == 0 else None,
        )  # fmt: skip
        jobs.append(job)
        if done and completed is not None:
            c = costs.setdefault(completed.date(), [0, 0, 0.0, 0.0])
            c[0] += status == "succeeded"
            c[1] += status == "failed"
            c[2] += gpu
            c[3] += gpu * 0.01
        if job["webhook_url"] and done:
            deliveries.append(
                dict(id=str(uuid.uuid4()), job_id=job["id"], api_key_id=job["api_key_id"],
                     url=job["webhook_url"], event_type=f"job.{status}", payload="{}",
                     status=rng.choice(["delivered", "delivered", "failed"]), attempts=1,
                     next_attempt_at=completed, created_at=completed)
            )  # fmt: skip
    engine = make_engine(url)
    with session_scope(make_sessionmaker(engine)) as s:
        s.execute(insert(ApiKey), keys)
        for i in range(0, n, 2000):
            s.execute(insert(Job), jobs[i : i + 2000])
        s.execute(insert(WebhookDelivery), deliveries)
        s.execute(
            insert(CostLog),
            [
                dict(day=d, videos_generated=c[0], jobs_failed=c[1], gpu_seconds=c[2],
                     total_cost_usd=c[2] / 3600, revenue_usd=c[3], margin_usd=c[3] - c[2] / 3600)
                for d, c in costs.items()
            ],
        )  # fmt: skip
    engine.dispose()


def queries(key_id: str) -> dict[str, Callable[[Any], Any]]:
    today = datetime.now(UTC).date()
    month = today.strftime("%Y-%m")
    return {
        "jobs: first page (50)": lambda s: admin.list_jobs(s, limit=50),
        "jobs: status=failed": lambda s: admin.list_jobs(
            s, filters=admin.JobFilter(statuses=("failed",))
        ),
        "jobs: one key, text 'green'": lambda s: admin.list_jobs(
            s, filters=admin.JobFilter(key_id=key_id, text="green")
        ),
        "keys with usage": lambda s: admin.list_keys(s),
        "overview (24 h)": lambda s: reports.overview(s, hours=24),
        "money per day (30 d, cost log)": lambda s: reports.money_totals(
            s, since=today - timedelta(days=29), until=today
        ),
        "money per key per day (30 d)": lambda s: reports.money_per_key(
            s, since=today - timedelta(days=29), until=today, gpu_cost_per_hour=1.0, period="day"
        ),
        "webhook deliveries, failed": lambda s: admin.list_deliveries(s, status="failed"),
        "statements (month, all keys)": lambda s: billing.statements(s, month=month),
    }


def measure(url: str, repeat: int) -> dict[str, float]:
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    with session_scope(sessions) as s:
        key_id = admin.list_keys(s)[0].id
    out = {}
    for name, fn in queries(key_id).items():
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            with session_scope(sessions) as s:
                fn(s)
            times.append((time.perf_counter() - t) * 1000)
        out[name] = round(statistics.median(times), 2)
    engine.dispose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        upgrade(url)
        populate(url, args.jobs)
        results["sqlite"] = measure(url, args.repeat)
    name = f"aiprod_bench_{uuid.uuid4().hex[:8]}"
    server = create_engine(make_url(PG), isolation_level="AUTOCOMMIT")
    try:
        with server.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - report and go on with SQLite alone
        print(f"PostgreSQL skipped: {exc}")
    else:
        url = make_url(PG).set(database=name).render_as_string(hide_password=False)
        try:
            upgrade(url)
            populate(url, args.jobs)
            results["postgresql"] = measure(url, args.repeat)
        finally:
            with server.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    server.dispose()
    backends = list(results)
    print(f"\n{args.jobs} jobs, 12 keys, median of {args.repeat} runs (ms)\n")
    print(f"{'query':34}" + "".join(f"{b:>12}" for b in backends))
    for q in results["sqlite"]:
        print(f"{q:34}" + "".join(f"{results[b][q]:>12.2f}" for b in backends))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"jobs": args.jobs, "repeat": args.repeat, "machine": platform.platform(),
                "cpus": os.cpu_count(), "when": datetime.now(UTC).isoformat()}  # fmt: skip
        args.json.write_text(json.dumps({"meta": meta, "ms": results}, indent=2))


if __name__ == "__main__":
    main()
