"""Backup then restore gives back the same jobs and keys (SQLite and PostgreSQL); retention."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, select

from aiprod.db.backup import BackupError, backup, restore
from aiprod.db.migrate import upgrade
from aiprod.db.models import ApiKey, Job
from aiprod.db.session import make_engine, make_sessionmaker
from aiprod.jobs.retention import apply_retention, delete_local_output


def _seed(url: str) -> None:
    engine = make_engine(url)
    with make_sessionmaker(engine).begin() as s:
        for i in range(3):
            s.add(ApiKey(id=f"key-{i}", key_hash=f"hash-{i}", prefix="aiprod_sk_x", name=f"c{i}"))
        s.flush()
        for i in range(5):
            s.add(
                Job(
                    id=f"00000000-0000-0000-0000-00000000000{i}",
                    api_key_id=f"key-{i % 3}",
                    prompt=f"a red fox {i}",
                    model="builtin",
                    model_version="builtin-0.1",
                    params={"width": 32, "seed": i},
                    status="succeeded" if i % 2 else "queued",
                    cost_usd=0.01 * i,
                    metadata_={"n": i},
                )
            )
    engine.dispose()


def _snapshot(url: str) -> tuple[list[tuple], list[tuple]]:
    engine = make_engine(url)
    factory = make_sessionmaker(engine)
    with factory() as s:
        keys = [
            (k.id, k.key_hash, k.name, k.scope, k.active)
            for k in s.scalars(select(ApiKey).order_by(ApiKey.id))
        ]
        jobs = [
            (
                j.id,
                j.api_key_id,
                j.prompt,
                j.status,
                j.params,
                j.cost_usd,
                j.metadata_,
                j.created_at,
            )
            for j in s.scalars(select(Job).order_by(Job.id))
        ]
    engine.dispose()
    return keys, jobs


def _wipe(url: str) -> None:
    engine = make_engine(url)
    with make_sessionmaker(engine).begin() as s:
        s.execute(delete(Job))
        s.execute(delete(ApiKey))
    engine.dispose()


def _roundtrip(url: str, dest: Path) -> None:
    upgrade(url)
    _seed(url)
    before = _snapshot(url)
    assert len(before[0]) == 3 and len(before[1]) == 5
    result = backup(url, dest)
    assert result.path == dest and dest.stat().st_size == result.bytes > 0
    assert not list(dest.parent.glob(".*.tmp"))  # the temp file was renamed away
    _wipe(url)
    assert _snapshot(url) == ([], [])
    restore(url, dest)
    assert _snapshot(url) == before


def test_sqlite_backup_restore_roundtrip(tmp_path):
    url = f"sqlite:///{tmp_path / 'aiprod.db'}"
    dest = tmp_path / "backups" / "aiprod.sqlite"
    _roundtrip(url, dest)
    with dest.open("rb") as fh:
        assert fh.read(16) == b"SQLite format 3\x00"


@pytest.mark.postgres
def test_postgres_backup_restore_roundtrip(tmp_path, pg_url):
    dest = tmp_path / "aiprod.dump"
    _roundtrip(pg_url, dest)
    with dest.open("rb") as fh:
        assert fh.read(5) == b"PGDMP"


def test_restore_refuses_wrong_files(tmp_path):
    url = f"sqlite:///{tmp_path / 'aiprod.db'}"
    upgrade(url)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"PGDMP" + b"\0" * 100)
    with pytest.raises(BackupError, match="PostgreSQL dump"):
        restore(url, junk)
    with pytest.raises(BackupError, match="does not exist"):
        restore(url, tmp_path / "missing.sqlite")
    with pytest.raises(BackupError, match="does not exist"):
        backup(f"sqlite:///{tmp_path / 'nope.db'}", tmp_path / "b.sqlite")
    assert not (tmp_path / "b.sqlite").exists()


def test_retention_deletes_old_outputs_and_expires_jobs(tmp_path):
    url = f"sqlite:///{tmp_path / 'aiprod.db'}"
    upgrade(url)
    storage = tmp_path / "outputs"
    storage.mkdir()
    now = datetime.now(UTC)
    factory = make_sessionmaker(make_engine(url))
    with factory.begin() as s:
        s.add(ApiKey(id="k", key_hash="h", prefix="p", name="c"))
        s.flush()
        for name, age_days, status in [
            ("old", 40, "succeeded"),
            ("new", 1, "succeeded"),
            ("oldfail", 40, "failed"),
        ]:
            (storage / f"{name}.mp4").write_bytes(b"x" * 1000)
            s.add(
                Job(
                    id=name,
                    api_key_id="k",
                    prompt="p",
                    model="builtin",
                    model_version="v",
                    params={},
                    status=status,
                    completed_at=now - timedelta(days=age_days),
                    output_path=f"{name}.mp4",
                )
            )
    result = apply_retention(factory, days=30, delete_output=delete_local_output(storage))
    assert (result.expired_jobs, result.deleted_files, result.freed_bytes) == (1, 1, 1000)
    assert not (storage / "old.mp4").exists()
    assert (storage / "new.mp4").exists() and (storage / "oldfail.mp4").exists()
    with factory() as s:
        status = {j.id: (j.status, j.output_path) for j in s.scalars(select(Job))}
    assert status == {
        "old": ("expired", None),
        "new": ("succeeded", "new.mp4"),
        "oldfail": ("failed", "oldfail.mp4"),
    }
    # A second pass finds nothing; a path escaping the storage root is refused.
    assert apply_retention(factory, days=30, delete_output=delete_local_output(storage)) == (
        type(result)(0, 0, 0)
    )
    with pytest.raises(BackupError, match="outside the storage root"):
        delete_local_output(storage)("../aiprod.db")


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiprod.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_backup_restore_retention(tmp_path):
    """`aiprod db backup|restore|retention` as a user runs them (real subprocesses)."""
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIPROD_")}
    env["AIPROD_DATA_DIR"] = str(data)
    url = f"sqlite:///{data / 'aiprod.db'}"
    upgrade(url)
    _seed(url)
    before = _snapshot(url)

    out = _cli(env, "db", "backup")  # default name under <data dir>/backups
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.strip().splitlines()[-1])
    assert path.parent == data / "backups" and path.suffix == ".sqlite" and path.is_file()

    _wipe(url)
    out = _cli(env, "db", "restore", str(path))  # no terminal to confirm on: refuses
    assert out.returncode != 0 and _snapshot(url) == ([], [])
    out = _cli(env, "db", "restore", str(path), "--yes")
    assert out.returncode == 0, out.stderr
    assert _snapshot(url) == before

    out = _cli(env, "db", "restore", str(tmp_path / "missing.sqlite"), "--yes")
    assert out.returncode == 1 and "does not exist" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1  # one line, no traceback

    out = _cli(env, "db", "retention")
    assert out.returncode == 1 and "AIPROD_RETENTION_DAYS" in out.stderr
    out = _cli(env, "db", "retention", "--days", "30")
    assert out.returncode == 0, out.stderr
    assert "expired 0 jobs" in out.stdout


def test_api_applies_retention_in_the_background(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from aiprod.core.settings import Settings
    from aiprod.service.app import create_app

    monkeypatch.setenv("AIPROD_RETENTION_DAYS", "2")  # read with the app's settings
    settings = Settings(data_dir=tmp_path / "data")
    upgrade(settings.resolved_database_url)
    outputs = Path(settings.resolved_storage_url)
    outputs.mkdir(parents=True)
    (outputs / "old.mp4").write_bytes(b"x" * 10)
    factory = make_sessionmaker(make_engine(settings.resolved_database_url))
    with factory.begin() as s:
        s.add(ApiKey(id="k", key_hash="h", prefix="p", name="c"))
        s.flush()
        s.add(
            Job(
                id="old",
                api_key_id="k",
                prompt="p",
                model="builtin",
                model_version="v",
                params={},
                status="succeeded",
                completed_at=datetime.now(UTC) - timedelta(days=3),
                output_path="old.mp4",
            )
        )
    app = create_app(settings)
    with TestClient(app):  # runs the lifespan, which starts the retention task

        def expired() -> bool:
            with factory() as s:
                return s.get(Job, "old").status == "expired"

        deadline = time.monotonic() + 20
        while not expired():
            assert time.monotonic() < deadline, "retention did not run"
            time.sleep(0.05)
    assert not (outputs / "old.mp4").exists()
