"""Monthly statements a client can be invoiced from, and the operator's margin summary.

A statement lists one key's jobs that ended in a UTC calendar month (``completed_at``; the
same rule as budgets and the cost log): their GPU-seconds and the price charged
(``jobs.cost_usd``), with totals. Written as CSV (one row per job, then a ``TOTAL`` row) and as
a printable HTML page (Jinja2, autoescaped: prompts are client text). The operator's summary
sets revenue against GPU cost per key (``reports.money_per_key``) and, for the month as a
whole, the cost log's figures.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy.orm import Session

from aiprod.core.errors import InvalidRequest, NotFound
from aiprod.db.models import JobStatus
from aiprod.db.repositories import AdminRepository, ApiKeyRepository
from aiprod.jobs.budget import next_month_start
from aiprod.jobs.reports import MoneyRow, money_per_key, money_totals

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


def month_range(month: str) -> tuple[datetime, datetime]:
    """``YYYY-MM`` -> [first day 00:00 UTC, first of next month 00:00 UTC)."""
    m = _MONTH.match(month.strip())
    if m is None or not 1 <= int(m.group(2)) <= 12 or int(m.group(1)) < 1970:
        raise InvalidRequest(f"month '{month}' is not YYYY-MM, e.g. 2026-12", field="month")
    start = datetime(int(m.group(1)), int(m.group(2)), 1, tzinfo=UTC)
    return start, next_month_start(start)


@dataclass(frozen=True)
class StatementLine:
    job_id: str
    created_at: datetime
    completed_at: datetime
    status: str
    model: str
    prompt: str
    gpu_seconds: float
    price_usd: float


@dataclass(frozen=True)
class Statement:
    month: str  # YYYY-MM
    key_id: str
    key_name: str
    period_start: datetime
    period_end: datetime  # exclusive
    lines: list[StatementLine]

    @property
    def jobs(self) -> int:
        return len(self.lines)

    @property
    def succeeded(self) -> int:
        ok = (JobStatus.SUCCEEDED, JobStatus.EXPIRED)
        return sum(1 for line in self.lines if line.status in ok)

    @property
    def gpu_seconds(self) -> float:
        return round(sum(line.gpu_seconds for line in self.lines), 4)

    @property
    def total_usd(self) -> float:
        return round(sum(line.price_usd for line in self.lines), 6)


def statements(session: Session, *, month: str, key_id: str | None = None) -> list[Statement]:
    """One statement per key with jobs that ended in ``month`` (by key name); with ``key_id``,
    that key's statement only (empty if it had no jobs)."""
    start, end = month_range(month)
    keys = {k.id: k for k in ApiKeyRepository(session).list()}
    if key_id is not None and key_id not in keys:
        raise NotFound(f"API key {key_id} not found: see `aiprod keys list`")
    lines: dict[str, list[StatementLine]] = {key_id: []} if key_id else {}
    for r in AdminRepository(session).completed_between(start, end, key_id=key_id):
        lines.setdefault(r.api_key_id, []).append(
            StatementLine(
                job_id=r.id,
                created_at=r.created_at,
                completed_at=r.completed_at,
                status=r.status,
                model=r.model,
                prompt=r.prompt,
                gpu_seconds=round(float(r.gpu_seconds or 0.0), 4),
                price_usd=round(float(r.cost_usd or 0.0), 6),
            )
        )
    out = [
        Statement(
            month=month.strip(),
            key_id=k,
            key_name=keys[k].name,
            period_start=start,
            period_end=end,
            lines=ls,
        )
        for k, ls in lines.items()
    ]
    return sorted(out, key=lambda s: (s.key_name.lower(), s.key_id))


@dataclass(frozen=True)
class OperatorSummary:
    month: str
    per_key: list[MoneyRow]  # revenue against GPU cost per key (jobs x AIPROD_GPU_COST_PER_HOUR)
    total: MoneyRow  # the cost log's month: revenue, GPU cost recorded, margin
    gpu_cost_per_hour: float


def operator_summary(session: Session, *, month: str, gpu_cost_per_hour: float) -> OperatorSummary:
    start, end = month_range(month)
    until = (end - timedelta(days=1)).date()  # the month's last day (inclusive)
    per_key = money_per_key(
        session, since=start.date(), until=until, gpu_cost_per_hour=gpu_cost_per_hour
    )
    totals = money_totals(session, since=start.date(), until=until, period="month")
    total = totals[0] if totals else MoneyRow(month, None, None, 0, 0, 0, 0.0, 0.0, 0.0, 0.0)
    return OperatorSummary(
        month=month, per_key=per_key, total=total, gpu_cost_per_hour=gpu_cost_per_hour
    )


# --- files ----------------------------------------------------------------------------------

STATEMENT_COLUMNS = [
    "job_id",
    "created_at",
    "completed_at",
    "status",
    "model",
    "prompt",
    "gpu_seconds",
    "price_usd",
]
SUMMARY_COLUMNS = [
    "key_id",
    "key_name",
    "jobs",
    "succeeded",
    "failed",
    "gpu_seconds",
    "revenue_usd",
    "cost_usd",
    "margin_usd",
]


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def statement_csv(st: Statement) -> str:
    """One row per job, then ``TOTAL`` with the job count, GPU-seconds and price."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(STATEMENT_COLUMNS)
    for line in st.lines:
        w.writerow(
            [
                line.job_id,
                _iso(line.created_at),
                _iso(line.completed_at),
                line.status,
                line.model,
                line.prompt,
                f"{line.gpu_seconds:.4f}",
                f"{line.price_usd:.6f}",
            ]
        )
    w.writerow(
        ["TOTAL", "", "", f"{st.jobs} jobs", "", "", f"{st.gpu_seconds:.4f}", f"{st.total_usd:.6f}"]
    )
    return buf.getvalue()


def summary_csv(summary: OperatorSummary) -> str:
    """Per key, then ``TOTAL`` (the cost log's month: what the GPUs cost as recorded)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SUMMARY_COLUMNS)
    for r in [*summary.per_key, summary.total]:
        w.writerow(
            [
                r.key_id or "TOTAL",
                r.key_name or "",
                r.jobs,
                r.succeeded,
                r.failed,
                f"{r.gpu_seconds:.4f}",
                f"{r.revenue_usd:.6f}",
                f"{r.cost_usd:.6f}",
                f"{r.margin_usd:.6f}",
            ]
        )
    return buf.getvalue()


_ENV = Environment(
    loader=PackageLoader("aiprod.jobs", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def statement_html(st: Statement, *, operator: str = "aiprod") -> str:
    """A printable page (A4 print styles, no external assets)."""
    return _ENV.get_template("statement.html.j2").render(
        st=st, operator=operator, generated=_iso(datetime.now(UTC))
    )


def summary_html(summary: OperatorSummary) -> str:
    return _ENV.get_template("summary.html.j2").render(s=summary, generated=_iso(datetime.now(UTC)))


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "key"


def statement_basename(st: Statement) -> str:
    return f"statement-{st.month}-{_slug(st.key_name)}-{st.key_id[:8]}"


def write_statements(
    session: Session,
    *,
    month: str,
    out_dir: Path,
    gpu_cost_per_hour: float,
    key_id: str | None = None,
    operator: str = "aiprod",
) -> list[Path]:
    """Write each key's statement (CSV + HTML) and, without ``key_id``, the operator's
    summary (``operator-YYYY-MM.csv|html``) into ``out_dir``; returns the paths written.
    Each file is written to a temporary name and renamed, so none is ever half-written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[tuple[str, str]] = []
    for st in statements(session, month=month, key_id=key_id):
        base = statement_basename(st)
        files += [
            (f"{base}.csv", statement_csv(st)),
            (f"{base}.html", statement_html(st, operator=operator)),
        ]
    if key_id is None:
        summary = operator_summary(session, month=month, gpu_cost_per_hour=gpu_cost_per_hour)
        files += [
            (f"operator-{month}.csv", summary_csv(summary)),
            (f"operator-{month}.html", summary_html(summary)),
        ]
    written = []
    for name, text in files:
        path = out_dir / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        written.append(path)
    return written
