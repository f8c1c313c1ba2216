"""The operator's CLI: `aiprod jobs list/show/cancel/retry/delete`, `aiprod keys update` and
duplicate names, and `aiprod billing statement` (its CSV and HTML parsed back and checked
against the jobs made here), on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from aiprod.cli.main import app
from aiprod.core.registry import load_registry
from aiprod.core.settings import Settings
from aiprod.db.models import Job
from aiprod.db.session import make_engine, make_sessionmaker, session_scope
from aiprod.jobs import transitions
from aiprod.jobs.budget import month_start
from aiprod.jobs.schema import GenerateBody
from aiprod.jobs.storage import LocalStorage
from aiprod.jobs.submit import Submitter, submit_job
from tests.service.harness import write_models_toml

runner = CliRunner()
RATE = 36.0  # AIPROD_GPU_COST_PER_HOUR: $0.01 per GPU-second, as the test model's price


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        "AIPROD_DATA_DIR": str(tmp_path / "data"),
        "AIPROD_DATABASE_URL": db_url,
        "AIPROD_MODELS_FILE": str(write_models_toml(tmp_path)),
        "AIPROD_GPU_COST_PER_HOUR": str(RATE),
        "AIPROD_SECRET_KEY": "",
    }


def run(env: dict[str, str], *args: str, code: int = 0):  # type: ignore[no-untyped-def]
    res = runner.invoke(app, list(args), env=env, terminal_width=250)
    assert res.exit_code == code, (args, res.output)
    return res


class Jobs:
    """Jobs made and finished through the real transitions (what the API and a worker do)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.settings = Settings(
            data_dir=env["AIPROD_DATA_DIR"],
            database_url=env["AIPROD_DATABASE_URL"],
            gpu_cost_per_hour=RATE,
            max_attempts=1,
        )
        self.engine = make_engine(env["AIPROD_DATABASE_URL"])
        self.sessions = make_sessionmaker(self.engine)
        self.registry = load_registry(Path(env["AIPROD_MODELS_FILE"]))
        self.storage = LocalStorage(Path(env["AIPROD_DATA_DIR"]) / "outputs")

    def submit(self, key_id: str, prompt: str) -> str:
        with session_scope(self.sessions) as s:
            job = submit_job(
                s,
                submitter=Submitter(key_id, 0),
                body=GenerateBody(prompt=prompt),
                registry=self.registry,
                storage=self.storage,
                settings=self.settings,
            ).job
            return job.id

    def run(self, job_id: str, *, gpu: float, ok: bool = True) -> None:
        with session_scope(self.sessions) as s:
            job = transitions.claim(s, worker_id="w", lease_seconds=60)
            assert job is not None and job.id == job_id
            s.expunge(job)
        with session_scope(self.sessions) as s:
            if ok:
                transitions.succeed(
                    s, job_id=job_id, worker_id="w", settings=self.settings,
                    output_path=f"outputs/{job_id}.mp4", output_bytes=1, output_sha256="0" * 64,
                    gpu_seconds=gpu, cost_usd=round(gpu * 0.01, 6),
                )  # fmt: skip
            else:
                transitions.fail_attempt(
                    s, job=job, worker_id="w", settings=self.settings, code="oom",
                    message="CUDA out of memory", permanent=True,
                )  # fmt: skip


def _key_id(env: dict[str, str], name: str) -> str:
    listing = run(env, "keys", "list").stdout
    return next(line.split()[1] for line in listing.splitlines() if f" {name} " in line)


def test_jobs_commands_and_keys_update(env: dict[str, str]) -> None:
    run(env, "keys", "create", "--name", "acme")
    run(env, "keys", "create", "--name", "globex")
    acme, globex = _key_id(env, "acme"), _key_id(env, "globex")
    dup = run(env, "keys", "create", "--name", " ACME", code=1)
    assert f"already named 'acme' (id {acme})" in dup.stderr
    assert len(dup.stderr.strip().splitlines()) == 1
    jobs = Jobs(env)
    try:
        done = jobs.submit(acme, "a red fox")
        jobs.run(done, gpu=2.0)
        failed = jobs.submit(acme, "a blue whale")
        jobs.run(failed, gpu=0.0, ok=False)
        queued = jobs.submit(globex, "a green frog")
    finally:
        jobs.engine.dispose()

    table = run(env, "jobs", "list").stdout
    assert all(j in table for j in (done, failed, queued)) and "globex" in table
    lines = run(env, "jobs", "list", "--status", "failed", "--json").stdout.splitlines()
    (row,) = [json.loads(line) for line in lines]
    assert row["id"] == failed and row["key_name"] == "acme"
    assert row["last_error"] == {"code": "oom", "message": "CUDA out of memory"}
    by_key = run(env, "jobs", "list", "--key", globex[:8], "--json").stdout.splitlines()
    assert [json.loads(line)["id"] for line in by_key] == [queued]
    found = run(env, "jobs", "list", "--search", "WHALE", "--json").stdout.splitlines()
    assert [json.loads(line)["id"] for line in found] == [failed]
    page = run(env, "jobs", "list", "--limit", "1", "--json")
    assert len(page.stdout.splitlines()) == 1 and "--cursor" in page.stderr
    run(env, "jobs", "list", "--status", "done", code=1)
    run(env, "jobs", "list", "--since", "yesterday", code=1)

    shown = json.loads(run(env, "jobs", "show", done, "--json").stdout)
    assert shown["status"] == "succeeded" and shown["gpu_seconds"] == 2.0
    assert "CUDA out of memory" in run(env, "jobs", "show", failed).stdout
    assert "not found" in run(env, "jobs", "show", "nope", code=1).stderr

    assert "canceled" in run(env, "jobs", "cancel", queued).stdout
    new_id = run(env, "jobs", "retry", failed).stdout.strip().splitlines()[-1]
    retried = json.loads(run(env, "jobs", "show", new_id, "--json").stdout)
    assert (retried["status"], retried["retry_of"], retried["key_name"]) == (
        "queued",
        failed,
        "acme",
    )
    assert "only failed or canceled" in run(env, "jobs", "retry", done, code=1).stderr
    assert "succeeded, output deleted" in run(env, "jobs", "delete", done).stdout

    upd = run(
        env, "keys", "update", acme[:8], "--budget", "5", "--rate-limit", "10", "--priority", "2"
    )
    assert "budget=$5/month" in upd.stdout and "rate limit=10/min" in upd.stdout
    row = next(line for line in run(env, "keys", "list").stdout.splitlines() if " acme " in line)
    assert " 5 " in row and " 10 " in row
    assert "budget=none" in run(env, "keys", "update", acme, "--no-budget").stdout
    assert "nothing to change" in run(env, "keys", "update", acme, code=1).stderr
    assert (
        "not both"
        in run(env, "keys", "update", acme, "--budget", "1", "--no-budget", code=1).stderr
    )
    clash = run(env, "keys", "update", acme, "--name", "Globex", code=1).stderr
    assert f"(id {globex})" in clash
    assert "active=False" in run(env, "keys", "update", globex, "--deactivate").stdout
    run(env, "keys", "create", "--name", "globex")  # the name is free once that key is revoked
    old = run(env, "keys", "webhook-secret", acme).stdout.strip()
    new = run(env, "keys", "rotate-webhook-secret", acme).stdout.strip().splitlines()[-1]
    assert new.startswith("whsec_") and new != old
    assert run(env, "keys", "webhook-secret", acme).stdout.strip() == new


class _Cells(HTMLParser):
    """Rows of ``tr.job``/``tr.key`` (their cells' text) and elements' text by id."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.by_id: dict[str, str] = {}
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._id: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("class") in ("job", "key"):
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = []
        if a.get("id"):
            self._id = a["id"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._id is not None:
            self.by_id[self._id] = data.strip()
            self._id = None


def _html(path: Path) -> _Cells:
    p = _Cells()
    p.feed(path.read_text())
    return p


def test_billing_statement_csv_html_and_margin(env: dict[str, str], tmp_path: Path) -> None:
    run(env, "keys", "create", "--name", "Acme Corp")
    run(env, "keys", "create", "--name", "globex")
    acme, globex = _key_id(env, "Acme"), _key_id(env, "globex")
    jobs = Jobs(env)
    gpu = {"acme": [2.5, 4.0], "globex": [10.0]}
    try:
        ids = {"acme": [], "globex": []}
        for who, key in (("acme", acme), ("globex", globex)):
            for i, g in enumerate(gpu[who]):
                j = jobs.submit(key, f"<b>{who}</b> clip {i}")  # markup: escaped in the page
                jobs.run(j, gpu=g)
                ids[who].append(j)
        fail = jobs.submit(acme, "fails")
        jobs.run(fail, gpu=0.0, ok=False)
        ids["acme"].append(fail)
        last_month = jobs.submit(acme, "last month")
        with session_scope(jobs.sessions) as s:  # billed, but ended last month: not on it
            transitions.cancel_job(s, s.get(Job, last_month), settings=jobs.settings)
            s.execute(
                update(Job)
                .where(Job.id == last_month)
                .values(
                    completed_at=month_start() - timedelta(hours=1), gpu_seconds=99, cost_usd=0.99
                )
            )
    finally:
        jobs.engine.dispose()
    month = datetime.now(UTC).strftime("%Y-%m")
    out = tmp_path / "st"
    res = run(env, "billing", "statement", "--month", month, "--out", str(out))
    assert "Acme Corp" in res.stdout
    files = sorted(p.name for p in out.iterdir())
    assert f"operator-{month}.csv" in files and f"operator-{month}.html" in files
    acme_csv = next(out.glob(f"statement-{month}-acme-corp-{acme[:8]}.csv"))
    rows = list(csv.DictReader(acme_csv.open()))
    body, total = rows[:-1], rows[-1]
    assert sorted(r["job_id"] for r in body) == sorted(ids["acme"])
    assert sum(float(r["gpu_seconds"]) for r in body) == pytest.approx(6.5)
    assert sum(float(r["price_usd"]) for r in body) == pytest.approx(0.065)
    assert total["job_id"] == "TOTAL" and total["status"] == "3 jobs"
    assert float(total["gpu_seconds"]) == pytest.approx(6.5)
    assert float(total["price_usd"]) == pytest.approx(0.065)
    assert {r["status"] for r in body} == {"succeeded", "failed"}

    page = _html(acme_csv.with_suffix(".html"))
    assert len(page.rows) == 3 and page.by_id["total-jobs"] == "3"
    assert page.by_id["total-usd"] == "0.07" and page.by_id["total-gpu-seconds"] == "6.5000"
    assert "<b>acme</b> clip 0" in {r[4] for r in page.rows}  # shown as text, not markup
    assert "&lt;b&gt;acme" in acme_csv.with_suffix(".html").read_text()

    summary = list(csv.DictReader((out / f"operator-{month}.csv").open()))
    per_key = {r["key_name"]: r for r in summary if r["key_id"] != "TOTAL"}
    assert float(per_key["Acme Corp"]["revenue_usd"]) == pytest.approx(0.065)
    assert float(per_key["globex"]["revenue_usd"]) == pytest.approx(0.10)
    assert float(per_key["globex"]["cost_usd"]) == pytest.approx(10.0 * RATE / 3600)
    assert float(per_key["globex"]["margin_usd"]) == pytest.approx(0.0)
    (total,) = [r for r in summary if r["key_id"] == "TOTAL"]
    assert float(total["revenue_usd"]) == pytest.approx(0.165)  # the cost log's month
    assert float(total["cost_usd"]) == pytest.approx(16.5 * RATE / 3600)
    assert int(total["succeeded"]) == 3 and int(total["failed"]) == 1
    summary_page = _html(out / f"operator-{month}.html")
    assert len(summary_page.rows) == 2 and summary_page.by_id["total-revenue"] == "0.17"

    one = tmp_path / "one"
    run(env, "billing", "statement", "--month", month, "--key", globex[:8], "--out", str(one))
    assert [p.suffix for p in sorted(one.iterdir())] == [".csv", ".html"]
    bad = run(env, "billing", "statement", "--month", "2026-13", code=1)
    assert "YYYY-MM" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
