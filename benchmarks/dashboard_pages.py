"""Operator console: server time per page with a realistic database behind it.

Fills a fresh database with ``--jobs`` jobs (default 10,000) over ``--keys`` client keys
(default 12) and 90 days (statuses, GPU-seconds, costs, a webhook delivery for one job in ten,
the daily cost log, two workers), logs in with an admin key, then requests each console page
``--requests`` times through the app in process (the ASGI app called directly by FastAPI's
TestClient: no network, so the figure is the server's time) and reports the median and p95.

SQLite by default (a file in a temporary folder). ``--database-url postgresql+psycopg://...``
creates a fresh database on that server, named ``aiprod_bench_<random>``, and drops it at the
end.

    .venv/bin/python benchmarks/dashboard_pages.py
    .venv/bin/python benchmarks/dashboard_pages.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test

Prints a table and writes JSON (``--json``, default
benchmarks/results/dashboard_pages_<sqlite|postgresql>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODELS_TOML = """
default = "builtin"

[[models]]
id = "builtin"
family = "builtin"
version = "builtin-bench"
price_per_gpu_second = 0.01

[models.options]
tiny_seed = 0
"""
PROMPTS = ["a red ball bounces", "a blue cube slides", "a green cone spins", "waves at dusk"]


@contextmanager
def database(url: str | None, folder: Path) -> Iterator[str]:
    """The benchmark's database URL: a SQLite file, or a fresh PostgreSQL database."""
    if not url or url.startswith("sqlite"):
        yield url or f"sqlite:///{folder / 'bench.db'}"
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = make_url(url)
    name = f"aiprod_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def fill(app: Any, *, jobs: int, keys: int, seed: int = 0) -> dict[str, Any]:
    """Keys, jobs over 90 days, deliveries, the cost log and workers; returns ids to visit."""
    from sqlalchemy import insert

    from aiprod.db.models import CostLog, Job, WebhookDelivery, Worker
    from aiprod.db.session import session_scope
    from aiprod.service.keys import create_key

    rng = random.Random(seed)
    state = app.state.aiprod
    now = datetime.now(UTC)
    with session_scope(state.sessions) as s:
        _, admin_key = create_key(s, secret=state.secret, name="operator", admin=True)
        key_ids = [
            create_key(s, secret=state.secret, name=f"client-{i:02d}", monthly_budget_usd=500.0)[
                0
            ].id
            for i in range(keys)
        ]
    rows, deliveries = [], []
    days: dict[Any, list[float]] = defaultdict(lambda: [0, 0, 0.0, 0.0])
    for i in range(jobs):
        created = now - timedelta(seconds=rng.uniform(0, 90 * 86400))
        roll = rng.random()
        status = (
            "succeeded"
            if roll < 0.85
            else "failed"
            if roll < 0.93
            else "canceled"
            if roll < 0.97
            else "expired"
        )
        if i < 20:  # a live queue
            status = "queued" if i < 15 else "running"
            created = now - timedelta(seconds=rng.uniform(0, 120))
        seconds = rng.uniform(2, 60)
        done = status not in ("queued", "running")
        completed = created + timedelta(seconds=1 + seconds) if done else None
        cost = round(seconds * 0.01, 6) if status in ("succeeded", "expired") else None
        job_id = str(uuid.uuid4())
        prompt = f"{rng.choice(PROMPTS)} #{i}"
        rows.append(
            {
                "id": job_id,
                "api_key_id": key_ids[i % keys],
                "prompt": prompt,
                "model": "builtin",
                "model_version": "builtin-bench",
                "params": {"prompt": prompt, "width": 32, "height": 32, "num_frames": 9},
                "status": status,
                "priority": 0,
                "attempts": 1,
                "max_attempts": 3,
                "available_at": created,
                "progress": 1.0 if status == "succeeded" else 0.3,
                "cancel_requested": status == "canceled",
                "created_at": created,
                "started_at": created + timedelta(seconds=1) if status != "queued" else None,
                "completed_at": completed,
                "gpu_seconds": seconds if done else None,
                "cost_usd": cost,
                "error_code": "generation_failed" if status == "failed" else None,
                "error_message": "CUDA out of memory" if status == "failed" else None,
                "webhook_url": "https://hooks.example.com/aiprod" if i % 10 == 0 else None,
            }
        )
        if i % 10 == 0 and done:
            deliveries.append(
                {
                    "id": str(uuid.uuid4()),
                    "job_id": job_id,
                    "api_key_id": key_ids[i % keys],
                    "url": "https://hooks.example.com/aiprod",
                    "event_type": f"job.{status}",
                    "payload": "{}",
                    "status": "delivered",
                    "attempts": 1,
                    "next_attempt_at": completed,
                    "created_at": completed,
                    "delivered_at": completed,
                }
            )
        if completed is not None:
            d = days[completed.date()]
            d[0] += status in ("succeeded", "expired")
            d[1] += status == "failed"
            d[2] += seconds
            d[3] += cost or 0.0
    with session_scope(state.sessions) as s:
        for start in range(0, len(rows), 1000):
            s.execute(insert(Job), rows[start : start + 1000])
        if deliveries:
            s.execute(insert(WebhookDelivery), deliveries)
        s.execute(
            insert(CostLog),
            [
                {
                    "day": day,
                    "videos_generated": int(v[0]),
                    "jobs_failed": int(v[1]),
                    "gpu_seconds": v[2],
                    "total_cost_usd": v[2] * 2.0 / 3600,
                    "revenue_usd": v[3],
                    "margin_usd": v[3] - v[2] * 2.0 / 3600,
                }
                for day, v in days.items()
            ],
        )
        for w in range(2):
            s.add(
                Worker(
                    id=f"gpu-box:{w}",
                    hostname="gpu-box",
                    pid=1000 + w,
                    device=f"cuda:{w}",
                    status="busy",
                    current_job_id=rows[15 + w]["id"],
                    started_at=now - timedelta(hours=3),
                    last_seen_at=now,
                )
            )
    succeeded = next(r["id"] for r in rows if r["status"] == "succeeded" and r["webhook_url"])
    return {"admin_key": admin_key, "key_id": key_ids[0], "job_id": succeeded}


def pages(ids: dict[str, Any]) -> list[tuple[str, str]]:
    month = datetime.now(UTC).strftime("%Y-%m")
    return [
        ("overview page", "/dashboard"),
        ("overview JSON (polled)", "/dashboard/api/overview"),
        ("jobs, first page", "/dashboard/jobs"),
        ("jobs, page 2 (cursor)", "CURSOR"),
        ("jobs, status=failed", "/dashboard/jobs?status=failed"),
        ("jobs, one key", f"/dashboard/jobs?key={ids['key_id']}"),
        ("jobs, prompt text", "/dashboard/jobs?q=green+cone"),
        ("job page", f"/dashboard/jobs/{ids['job_id']}"),
        ("job JSON (polled)", f"/dashboard/api/jobs/{ids['job_id']}"),
        ("keys", "/dashboard/keys"),
        ("costs", "/dashboard/costs"),
        (
            "statement CSV (key, month)",
            f"/dashboard/costs/statement.csv?month={month}&key={ids['key_id']}",
        ),
        ("operator summary CSV", f"/dashboard/costs/summary.csv?month={month}"),
    ]


def measure(client: Any, url: str, n: int) -> list[float]:
    client.get(url)  # warm-up (template compile, first query plans)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.get(url)
        times.append((time.perf_counter() - t0) * 1000)
        if r.status_code != 200:
            raise SystemExit(f"{url}: HTTP {r.status_code}: {r.text[:300]}")
    return times


def p95(values: list[float]) -> float:
    data = sorted(values)
    return data[max(0, -(-95 * len(data) // 100) - 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--database-url", default=None, help="default: SQLite in a temp folder")
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--keys", type=int, default=12)
    ap.add_argument("--requests", type=int, default=30, help="timed requests per page")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from fastapi.testclient import TestClient

    from aiprod.core.settings import Settings
    from aiprod.db.migrate import upgrade
    from aiprod.service.app import create_app

    with (
        tempfile.TemporaryDirectory() as tmp_dir,
        database(args.database_url, Path(tmp_dir)) as url,
    ):
        tmp = Path(tmp_dir)
        (tmp / "models.toml").write_text(MODELS_TOML)
        upgrade(url)
        settings = Settings(
            data_dir=tmp / "data",
            models_file=tmp / "models.toml",
            database_url=url,
            gpu_cost_per_hour=2.0,
            log_requests=False,
        )
        app = create_app(settings)
        t0 = time.perf_counter()
        ids = fill(app, jobs=args.jobs, keys=args.keys)
        fill_s = time.perf_counter() - t0
        backend = "postgresql" if url.startswith("postgresql") else "sqlite"
        load_before = round(os.getloadavg()[0], 2)
        results = []
        with TestClient(app) as c:
            token = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/dashboard/login").text)
            assert token is not None
            r = c.post(
                "/dashboard/login", data={"api_key": ids["admin_key"], "csrf_token": token[1]}
            )
            assert r.status_code == 200, r.text[:300]
            first = c.get("/dashboard/jobs").text
            nxt = re.search(r'id="next-page" href="([^"]+)"', first) or re.search(
                r'href="(/dashboard/jobs\?cursor=[^"]+)"', first
            )
            cursor_url = nxt[1].replace("&amp;", "&") if nxt else "/dashboard/jobs"
            for name, page_url in pages(ids):
                page_url = cursor_url if page_url == "CURSOR" else page_url
                times = measure(c, page_url, args.requests)
                results.append(
                    {
                        "page": name,
                        "url": page_url,
                        "median_ms": round(statistics.median(times), 2),
                        "p95_ms": round(p95(times), 2),
                        "requests": len(times),
                    }
                )
    print(
        f"\nconsole pages, {backend}, {args.jobs} jobs over {args.keys} keys "
        f"(filled in {fill_s:.1f} s), {args.requests} requests each, in process\n"
    )
    print(f"(1-minute load average {load_before} before, {os.getloadavg()[0]:.2f} after)\n")
    print(f"{'page':<26} {'median ms':>10} {'p95 ms':>10}")
    for r in results:
        print(f"{r['page']:<26} {r['median_ms']:>10.1f} {r['p95_ms']:>10.1f}")
    out = args.json or REPO / "benchmarks" / "results" / f"dashboard_pages_{backend}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "benchmark": "dashboard_pages",
                "backend": backend,
                "jobs": args.jobs,
                "keys": args.keys,
                "requests_per_page": args.requests,
                "machine": {
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    # other processes' load while it ran (the figures scale with it)
                    "load_average_1min_before_after": [load_before, round(os.getloadavg()[0], 2)],
                },
                "measured_at": datetime.now(UTC).isoformat(),
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")


if __name__ == "__main__":
    main()
