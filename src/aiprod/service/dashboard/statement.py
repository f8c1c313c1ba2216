"""The console's statement download: a month's jobs per key as CSV, with per-key and grand
totals (built on the admin query layer's rows of completed jobs)."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import date
from typing import Any

from aiprod.db.repositories import AdminRepository
from aiprod.jobs import admin as ops
from aiprod.jobs.reports import day_bounds
from aiprod.service.dashboard.data import month_end
from aiprod.service.deps import read_session
from aiprod.service.state import AppState

COLUMNS = [
    "key_id",
    "key_name",
    "job_id",
    "model",
    "status",
    "created_at",
    "completed_at",
    "gpu_seconds",
    "price_per_gpu_second_usd",
    "cost_usd",
]


def _iso(value: Any) -> str:
    return value.isoformat().replace("+00:00", "Z") if value is not None else ""


def month_csv(state: AppState, first: date) -> str:
    """CSV text: one row per job completed in the UTC month, grouped by key, then a
    ``TOTAL`` row per key and one for the month."""
    start, end = day_bounds(first, month_end(first))
    prices = {m.id: m.price_per_gpu_second for m in state.registry.models}
    with read_session(state) as s:
        names = ops.key_names(s)
        rows = AdminRepository(s).completed_between(start, end)
    per_key: dict[str, list[Any]] = defaultdict(list)
    for r in rows:
        per_key[r.api_key_id].append(r)
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(COLUMNS)
    all_seconds = all_cost = 0.0
    for key_id in sorted(per_key, key=lambda k: (names.get(k, ""), k)):
        seconds = cost = 0.0
        for r in per_key[key_id]:
            gpu, billed = float(r.gpu_seconds or 0.0), float(r.cost_usd or 0.0)
            seconds, cost = seconds + gpu, cost + billed
            price = prices.get(r.model)
            w.writerow(
                [
                    key_id,
                    names.get(key_id, ""),
                    r.id,
                    r.model,
                    r.status,
                    _iso(r.created_at),
                    _iso(r.completed_at),
                    f"{gpu:.4f}",
                    "" if price is None else f"{price:.6f}",
                    f"{billed:.6f}",
                ]
            )
        w.writerow(
            [
                key_id,
                names.get(key_id, ""),
                "TOTAL",
                "",
                "",
                "",
                "",
                f"{seconds:.4f}",
                "",
                f"{cost:.6f}",
            ]
        )
        all_seconds, all_cost = all_seconds + seconds, all_cost + cost
    month = first.strftime("%Y-%m")
    w.writerow(
        [
            "",
            f"all keys, {month}",
            "TOTAL",
            "",
            "",
            "",
            "",
            f"{all_seconds:.4f}",
            "",
            f"{all_cost:.6f}",
        ]
    )
    return out.getvalue()
