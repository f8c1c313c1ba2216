"""Storage problems are 503 with Retry-After, never 500, and /readyz probes leave nothing
behind and say what is wrong (issue 32): a full disk (a stub raising ENOSPC), a storage folder
that cannot be written (a file where the folder should be; chmod where it stops writes), and
SQLite's "database or disk is full"."""

from __future__ import annotations

import base64
import errno
import io
import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from aiprod.db.migrate import upgrade
from aiprod.db.session import make_engine, make_read_sessionmaker, make_sessionmaker, session_scope
from aiprod.jobs.storage import LocalStorage, StorageError
from aiprod.service.app import create_app
from aiprod.service.health import check_readiness
from aiprod.service.keys import create_key
from tests.service.harness import sqlite_settings


def _png(side: int = 32) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), (1, 2, 3)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[TestClient, dict, Path]]:
    """A fresh app per test (its storage check remembers failures for a few seconds)."""
    settings = sqlite_settings(tmp_path)
    engine = make_engine(settings.resolved_database_url)
    with session_scope(make_sessionmaker(engine)) as s:
        _, key = create_key(s, secret=settings.resolved_secret_key(), name="t")
    engine.dispose()
    application = create_app(settings)
    root = application.state.aiprod.storage.root
    with TestClient(application, raise_server_exceptions=False) as c:
        yield c, {"Authorization": f"Bearer {key}"}, root


def _full_disk(monkeypatch: pytest.MonkeyPatch, under: Path) -> None:
    """Files under ``under`` open, but writing them fails with ENOSPC (as on a full disk:
    the file is created, its data has no room)."""
    real_open = Path.open

    class _Full(io.RawIOBase):
        def __init__(self, f: Any) -> None:
            self.f = f

        def writable(self) -> bool:
            return True

        def write(self, b: Any) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def fileno(self) -> int:
            return int(self.f.fileno())

        def close(self) -> None:
            self.f.close()
            super().close()

    def fake_open(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = real_open(self, mode, *args, **kwargs)
        if "w" in mode and under in self.parents:
            return _Full(f)
        return f

    monkeypatch.setattr(Path, "open", fake_open)


def _assert_503(r: Any, words: str) -> None:
    assert r.status_code == 503, r.text
    assert int(r.headers["retry-after"]) > 0
    err = r.json()["error"]
    assert err["code"] == "storage_unavailable" and words in err["message"], err
    assert "/" not in err["message"]  # no server path in what the client sees


def _jobs(c: TestClient, headers: dict) -> list:
    return c.get("/api/v1/jobs", headers=headers).json()["data"]


def test_submit_refused_while_the_disk_is_full(
    app: tuple[TestClient, dict, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    c, headers, root = app
    _full_disk(monkeypatch, root)
    for body in ({"prompt": "a fox"}, {"prompt": "a fox", "image": _png()}):
        _assert_503(c.post("/api/v1/generate", json=body, headers=headers), "full")
    assert _jobs(c, headers) == []  # nothing accepted to fail later
    assert sorted(p.name for p in root.rglob("*")) == []  # and no probe or temp file left
    # Still 401 without a key, not 503.
    assert c.post("/api/v1/generate", json={"prompt": "x"}).status_code == 401


def test_image_upload_on_a_full_disk_is_a_503_not_a_500(
    app: tuple[TestClient, dict, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    c, headers, root = app
    assert c.post("/api/v1/generate", json={"prompt": "ok"}, headers=headers).status_code == 202
    # The disk fills up between the (remembered) writability check and the image's write.
    check = getattr(c.app.state.aiprod.storage, "writable_check", None)
    if check is not None:
        monkeypatch.setattr(check, "ensure", lambda *a, **k: None)
    _full_disk(monkeypatch, root)
    r = c.post("/api/v1/generate", json={"prompt": "a fox", "image": _png()}, headers=headers)
    _assert_503(r, "full")
    assert len(_jobs(c, headers)) == 1  # only the first job
    assert [p.name for p in root.rglob("*") if p.is_file()] == []  # no temp file left


def test_submit_refused_while_the_storage_folder_cannot_be_written(
    app: tuple[TestClient, dict, Path],
) -> None:
    c, headers, root = app
    shutil.rmtree(root)
    root.write_text("a file where the storage folder should be")  # mkdir fails, also as root
    _assert_503(c.post("/api/v1/generate", json={"prompt": "a fox"}, headers=headers), "storage")
    assert _jobs(c, headers) == []


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="running as root: a read-only mode (chmod) does not stop root's writes",
)
def test_submit_refused_while_the_storage_folder_is_read_only(
    app: tuple[TestClient, dict, Path],
) -> None:
    c, headers, root = app
    root.chmod(0o555)
    try:
        r = c.post("/api/v1/generate", json={"prompt": "a fox"}, headers=headers)
        _assert_503(r, "not writable")
    finally:
        root.chmod(0o755)


def test_storage_check_is_remembered_for_a_few_seconds(tmp_path: Path) -> None:
    st = LocalStorage(tmp_path / "out")
    calls = []
    real = st.check_writable
    st._writable._probe = lambda: (calls.append(1), real())[1]  # count the probes
    for _ in range(20):
        st.ensure_writable()
    assert len(calls) == 1
    st._writable._checked_at -= 10  # older than WRITABLE_CHECK_SECONDS: probed again
    st.ensure_writable()
    assert len(calls) == 2


def _readiness(sessions: Any, root: Path) -> Any:
    return check_readiness(
        sessions=sessions,
        storage_root=root,
        worker_live_seconds=60,
        min_free_bytes=0,
        require_worker=False,
    )


@pytest.fixture
def migrated(tmp_path: Path) -> Iterator[Any]:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


def test_readyz_on_a_full_disk_says_so_and_leaves_nothing(
    migrated: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "out"
    root.mkdir()
    _full_disk(monkeypatch, root)
    reads = make_read_sessionmaker(migrated)
    reports = [_readiness(reads, root) for _ in range(5)]
    assert list(root.iterdir()) == []  # no temp file per probe
    for report in reports:
        assert not report.ready and report.checks["storage"] == "disk full"
        assert any("full" in r for r in report.reasons)
    monkeypatch.undo()
    assert _readiness(reads, root).ready
    assert list(root.iterdir()) == []


def test_readyz_storage_not_writable(migrated: Any, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    report = _readiness(make_read_sessionmaker(migrated), tmp_path / "f" / "out")
    assert not report.ready and report.checks["storage"] == "not writable"


def test_readyz_with_sqlite_disk_full_says_disk_full_not_migrations(migrated: Any) -> None:
    @event.listens_for(migrated, "before_cursor_execute")
    def _full(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "alembic_version" in statement:
            raise sqlite3.OperationalError("database or disk is full")

    report = _readiness(make_read_sessionmaker(migrated), migrated_root(migrated))
    assert not report.ready
    assert report.checks["database"] == "disk full"
    assert report.checks.get("migrations") != "not applied"
    assert any("disk is full" in r for r in report.reasons)


def migrated_root(engine: Any) -> Path:
    return Path(engine.url.database).parent / "out"


def test_storage_error_messages_name_no_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = LocalStorage(tmp_path / "out")
    _full_disk(monkeypatch, st.root)
    with pytest.raises(StorageError) as info:
        st.write_bytes("inputs/x.img", b"data")
    assert "full" in info.value.message and str(tmp_path) not in info.value.message
    assert json.dumps(info.value.to_dict())
