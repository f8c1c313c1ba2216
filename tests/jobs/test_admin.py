"""The operator's query layer (aiprod.jobs.admin, reports, budget) on real SQLite and
PostgreSQL databases: jobs of several keys driven through the real transitions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from aiprod.core.errors import AiprodError, Conflict, InvalidRequest, NotFound
from aiprod.core.settings import Settings
from aiprod.db.models import Job, JobStatus, WebhookDelivery, new_id
from aiprod.db.repositories import ApiKeyRepository, WorkerRepository
from aiprod.db.session import make_engine, make_sessionmaker, session_scope
from aiprod.jobs import admin, budget, reports, transitions
from aiprod.jobs.gpu import GpuStat, publish_gpu_stats
from aiprod.jobs.schema import GenerateBody
from aiprod.jobs.storage import LocalStorage
from aiprod.jobs.submit import Submitter, submit_job
from aiprod.jobs.webhooks import signed_headers, webhook_secret
from tests.service.harness import write_models_toml

SECRET = "s" * 40


@pytest.fixture
def env(db_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    from aiprod.core.registry import load_registry

    engine = make_engine(db_url)
    settings = Settings(data_dir=tmp_path, max_attempts=1, gpu_cost_per_hour=36.0)
    registry = load_registry(write_models_toml(tmp_path))
    yield make_sessionmaker(engine), settings, registry, LocalStorage(tmp_path / "out")
    engine.dispose()


def _key(s, name: str, **kw) -> str:  # type: ignore[no-untyped-def]
    return ApiKeyRepository(s).create(key_hash=new_id(), prefix="p", name=name, **kw).id


def _submit(env, key: str, prompt: str, **body) -> str:  # type: ignore[no-untyped-def]
    sessions, settings, registry, storage = env
    with session_scope(sessions) as s:
        job = submit_job(
            s,
            submitter=Submitter(key, 0),
            body=GenerateBody(prompt=prompt, **body),
            registry=registry,
            storage=storage,
            settings=settings,
        ).job
        return job.id


def _finish(env, job_id: str, *, gpu: float, ok: bool = True) -> None:  # type: ignore[no-untyped-def]
    """Claim the queue's next job (the one just submitted) and end it."""
    sessions, settings, _, storage = env
    with session_scope(sessions) as s:
        job = transitions.claim(s, worker_id="w1", lease_seconds=60)
        assert job is not None and job.id == job_id
        s.expunge(job)
    with session_scope(sessions) as s:
        if ok:
            storage.write_bytes(f"outputs/{job_id}.mp4", b"mp4")
            transitions.succeed(
                s,
                job_id=job_id,
                worker_id="w1",
                settings=settings,
                output_path=f"outputs/{job_id}.mp4",
                output_bytes=3,
                output_sha256="0" * 64,
                gpu_seconds=gpu,
                cost_usd=round(gpu * 0.01, 6),
            )
        else:
            transitions.fail_attempt(
                s,
                job=job,
                worker_id="w1",
                settings=settings,
                code="boom",
                message="x",
                permanent=True,
            )


def test_jobs_across_keys_filters_and_cursor(env) -> None:  # type: ignore[no-untyped-def]
    sessions = env[0]
    with session_scope(sessions) as s:
        a, b = _key(s, "acme"), _key(s, "globex")
    ids_a = [_submit(env, a, f"a red fox {i}") for i in range(3)]
    id_b = _submit(env, b, "50% off_sale banner")
    with session_scope(sessions) as s:
        names = admin.key_names(s)
        page = admin.list_jobs(s, limit=2)
        assert len(page.items) == 2 and page.next_cursor
        rest = admin.list_jobs(s, limit=2, cursor=page.next_cursor)
        assert rest.next_cursor is None
        seen = [j.id for j in page.items + rest.items]
        assert sorted(seen) == sorted([*ids_a, id_b]) and len(set(seen)) == 4
        assert {names[j.api_key_id] for j in page.items + rest.items} == {"acme", "globex"}
        by_key = admin.list_jobs(s, filters=admin.JobFilter(key_id=b)).items
        assert [j.id for j in by_key] == [id_b]
        # LIKE wildcards in the text are literal; case does not matter
        assert [j.id for j in admin.list_jobs(s, filters=admin.JobFilter(text="% OFF_")).items] == [
            id_b
        ]
        assert admin.list_jobs(s, filters=admin.JobFilter(text="%x%")).items == []
        assert len(admin.list_jobs(s, filters=admin.JobFilter(text="FOX")).items) == 3
        assert len(admin.list_jobs(s, filters=admin.JobFilter(model="builtin")).items) == 4
        assert admin.list_jobs(s, filters=admin.JobFilter(model="other")).items == []
        future = datetime.now(UTC) + timedelta(hours=1)
        assert admin.list_jobs(s, filters=admin.JobFilter(created_after=future)).items == []
        assert len(admin.list_jobs(s, filters=admin.JobFilter(created_before=future)).items) == 4
        st = admin.JobFilter(statuses=("queued",))
        assert len(admin.list_jobs(s, filters=st).items) == 4
        with pytest.raises(InvalidRequest, match="status 'done'"):
            admin.list_jobs(s, filters=admin.JobFilter(statuses=("done",)))
        with pytest.raises(InvalidRequest, match="cursor"):
            admin.list_jobs(s, cursor="!!")
        assert admin.get_job(s, id_b).api_key_id == b
        with pytest.raises(NotFound):
            admin.get_job(s, new_id())


def test_cancel_delete_and_retry_any_job(env) -> None:  # type: ignore[no-untyped-def]
    sessions, settings, registry, storage = env
    with session_scope(sessions) as s:
        a = _key(s, "acme", priority=3)
    done = _submit(env, a, "a fox", webhook_url="https://example.com/h", metadata={"o": 1})
    _finish(env, done, gpu=2.0)
    failed = _submit(env, a, "a cat", seed=7)
    _finish(env, failed, gpu=0.0, ok=False)
    queued = _submit(env, a, "a dog")
    queued_too = _submit(env, a, "a hen")
    with session_scope(sessions) as s:
        # one rule with the client's DELETE: a queued job is canceled, then deleted
        gone = admin.delete_job_output(s, queued_too, storage=storage, settings=settings)
        assert gone.status == JobStatus.CANCELED and gone.deleted_at is not None
        assert admin.cancel_job(s, queued, settings=settings).status == JobStatus.CANCELED
        with pytest.raises(Conflict, match="only failed or canceled"):
            admin.retry_job(s, done, registry=registry, storage=storage, settings=settings)
        new = admin.retry_job(s, failed, registry=registry, storage=storage, settings=settings)
        new_id_ = new.id
    with session_scope(sessions) as s:
        old, new = s.get(Job, failed), s.get(Job, new_id_)
        assert old.status == JobStatus.FAILED  # the old row stands
        assert (new.status, new.retry_of, new.api_key_id, new.priority) == ("queued", failed, a, 3)
        assert new.params == old.params and new.params["seed"] == 7
        out = Path(storage.root) / "outputs" / f"{done}.mp4"
        assert out.exists()
        job = admin.delete_job_output(s, done, storage=storage, settings=settings)
        assert (job.status, job.output_path) == (JobStatus.SUCCEEDED, None)
        first_deleted_at = job.deleted_at
        assert first_deleted_at is not None
    assert not out.exists()
    with session_scope(sessions) as s:  # the row stays, with its cost
        assert s.get(Job, done).cost_usd == pytest.approx(0.02)
        again = admin.delete_job_output(s, done, storage=storage, settings=settings)
        assert (again.status, again.deleted_at) == (JobStatus.SUCCEEDED, first_deleted_at)
        deliveries = admin.job_deliveries(s, done)
        assert [d.event_type for d in deliveries] == ["job.succeeded"]


def test_keys_usage_update_and_secret_rotation(env) -> None:  # type: ignore[no-untyped-def]
    sessions = env[0]
    with session_scope(sessions) as s:
        a = _key(s, "Acme", monthly_budget_usd=1.0)
        b = _key(s, "globex")
    j = _submit(env, a, "a fox")
    _finish(env, j, gpu=5.0)
    with session_scope(sessions) as s:
        keys = {k.name: k for k in admin.list_keys(s)}
        acme = keys["Acme"]
        assert (acme.jobs_total, acme.jobs_this_month) == (1, 1)
        assert acme.spend_this_month_usd == pytest.approx(0.05)
        assert acme.gpu_seconds_this_month == pytest.approx(5.0)
        assert not acme.over_budget and keys["globex"].jobs_total == 0
        with pytest.raises(Conflict, match=f"named 'Acme' \\(id {a}\\)") as exc:
            admin.update_key(s, b, {"name": " acme "})
        assert exc.value.code == "duplicate_name"
        k = admin.update_key(
            s,
            a,
            {
                "rate_limit_per_minute": 5,
                "priority": 2,
                "monthly_budget_usd": None,
                "name": "Acme2",
            },
        )
        assert (k.rate_limit_per_minute, k.priority, k.monthly_budget_usd, k.name) == (
            5,
            2,
            None,
            "Acme2",
        )
        assert k.updated_at is not None
        for bad in (
            {"priority": "x"},
            {"monthly_budget_usd": -1},
            {"scope": "admin"},
            {"name": ""},
        ):
            with pytest.raises(InvalidRequest):
                admin.update_key(s, a, bad)
        assert not admin.update_key(s, b, {"active": False}).active
        assert admin.update_key(s, b, {"active": True}).revoked_at is None
        with pytest.raises(NotFound):
            admin.update_key(s, new_id(), {"priority": 1})
        before = admin.key_webhook_secret(s, a, server_secret=SECRET)
        assert before == webhook_secret(a, SECRET)  # unrotated: the derivation as before
        new = admin.rotate_webhook_secret(s, a, server_secret=SECRET)
        assert new.startswith("whsec_") and new != before
        assert admin.key_webhook_secret(s, a, server_secret=SECRET) == new
        salt = ApiKeyRepository(s).get(a).webhook_secret_salt
    d = WebhookDelivery(id="msg_1", api_key_id=a, payload='{"x":1}')
    now = datetime.now(UTC)
    headers = signed_headers(d, SECRET, now, salt=salt)
    assert Webhook(new).verify('{"x":1}', headers) == {"x": 1}


def test_deliveries_list_and_replay(env) -> None:  # type: ignore[no-untyped-def]
    sessions = env[0]
    with session_scope(sessions) as s:
        a = _key(s, "acme")
    j = _submit(env, a, "a fox", webhook_url="https://example.com/h")
    _finish(env, j, gpu=1.0)
    with session_scope(sessions) as s:
        (d,) = admin.list_deliveries(s).items
        d.status, d.attempts, d.last_error = "failed", 5, "HTTP 500"
    with session_scope(sessions) as s:
        assert [x.id for x in admin.list_deliveries(s, status="failed", key_id=a).items] == [d.id]
        assert admin.list_deliveries(s, status="delivered").items == []
        with pytest.raises(InvalidRequest):
            admin.list_deliveries(s, status="nope")
        r = admin.replay_delivery(s, d.id)
        assert (r.status, r.attempts) == ("pending", 0)
        r.locked_by = "someone"
    with session_scope(sessions) as s:
        with pytest.raises(Conflict, match="being sent"):
            admin.replay_delivery(s, d.id)
        with pytest.raises(NotFound):
            admin.replay_delivery(s, "nope")


def test_workers_with_gpu_stats(env) -> None:  # type: ignore[no-untyped-def]
    sessions = env[0]
    with session_scope(sessions) as s:
        a = _key(s, "acme")
    j = _submit(env, a, "a fox")
    with session_scope(sessions) as s:
        WorkerRepository(s).register(worker_id="w1", hostname="h", pid=1, device="cuda:0")
        WorkerRepository(s).register(worker_id="w2", hostname="h", pid=2, device="cpu")
        WorkerRepository(s).seen("w1", status="busy", current_job_id=j)
        gpu = GpuStat(0, "H100", 10, 80, 55.0, 61.0)
        publish_gpu_stats(s, "w1", [gpu])
    with session_scope(sessions) as s:
        ws = {w.id: w for w in admin.list_workers(s, live_seconds=60)}
        assert ws["w1"].status == "busy" and ws["w1"].current_job_id == j
        assert ws["w1"].current_job_model == "builtin" and ws["w1"].gpus == [gpu]
        assert ws["w2"].gpus == [] and ws["w2"].current_job_id is None


def test_money_and_overview(env) -> None:  # type: ignore[no-untyped-def]
    sessions = env[0]
    with session_scope(sessions) as s:
        a, b = _key(s, "acme"), _key(s, "globex")
    for key, gpu in ((a, 2.0), (a, 4.0), (b, 10.0)):
        _finish(env, _submit(env, key, "a fox"), gpu=gpu)
    _finish(env, _submit(env, b, "a cat"), gpu=0.0, ok=False)
    today = datetime.now(UTC).date()
    with session_scope(sessions) as s:
        per_key = {
            r.key_name: r
            for r in reports.money_per_key(
                s, since=today, until=today, gpu_cost_per_hour=36.0, period="all"
            )
        }
        acme, globex = per_key["acme"], per_key["globex"]
        assert (acme.jobs, acme.succeeded, acme.gpu_seconds) == (2, 2, 6.0)
        assert acme.revenue_usd == pytest.approx(0.06) and acme.cost_usd == pytest.approx(0.06)
        assert (globex.jobs, globex.failed) == (2, 1) and globex.margin_usd == pytest.approx(0.0)
        (day,) = reports.money_totals(s, since=today, until=today, period="day")
        assert (day.period, day.succeeded, day.failed, day.gpu_seconds) == (
            today.isoformat(),
            3,
            1,
            16.0,
        )
        assert day.revenue_usd == pytest.approx(0.16) and day.cost_usd == pytest.approx(0.16)
        (month,) = reports.money_totals(s, since=today, until=today, period="month")
        assert month.period == today.strftime("%Y-%m") and month.revenue_usd == day.revenue_usd
        ov = reports.overview(s, hours=3)
        assert len(ov.hours) == 3 and (ov.jobs_last_hour, ov.failures_last_hour) == (4, 1)
        assert (ov.queued, ov.running) == (0, 0)
        (m,) = ov.models
        assert m.model == "builtin" and m.jobs == 3 and m.p95_run_seconds >= m.p50_run_seconds
        assert reports.as_dict(ov)["hours"][0]["start"].endswith("Z")
        with pytest.raises(InvalidRequest):
            reports.money_totals(s, since=today, until=today - timedelta(days=1))
    assert reports.percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 95) == 10
    assert reports.percentile([5.0], 95) == 5.0


def test_budget_check(env) -> None:  # type: ignore[no-untyped-def]
    sessions = env[0]
    with session_scope(sessions) as s:
        a = _key(s, "acme", monthly_budget_usd=0.05)
        free = _key(s, "free")
    _finish(env, _submit(env, a, "a fox"), gpu=3.0)  # $0.03 of $0.05
    with session_scope(sessions) as s:
        st = budget.check_budget(s, a, 0.03)
        assert not st.exceeded and st.would_exceed and st.remaining_usd == pytest.approx(0.02)
        assert not budget.check_budget(s, free, 100.0).would_exceed
    _finish(env, _submit(env, a, "a fox"), gpu=3.0)  # $0.06: past it
    with session_scope(sessions) as s:
        with pytest.raises(AiprodError) as exc:
            budget.check_budget(s, a, 0.0)
        e = exc.value
        reset = budget.next_month_start().strftime("%Y-%m-%d")
        assert (e.status_code, e.code) == (402, "budget_exceeded")
        assert "$0.05" in e.message and "$0.06" in e.message and reset in e.message
        admin.update_key(s, a, {"monthly_budget_usd": 1.0})
        assert not budget.check_budget(s, a).exceeded


def test_month_bounds() -> None:
    assert budget.month_start(datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == datetime(
        2026, 12, 1, tzinfo=UTC
    )
    assert budget.next_month_start(datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == datetime(
        2027, 1, 1, tzinfo=UTC
    )
    assert budget.next_month_start(datetime(2026, 1, 31, tzinfo=UTC)) == datetime(
        2026, 2, 1, tzinfo=UTC
    )
