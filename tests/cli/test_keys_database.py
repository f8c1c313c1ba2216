"""`aiprod keys create` says which database it wrote to, and warns when it had to create it
(run from another folder than the server's, it would otherwise silently print a key the
running server rejects)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.service.harness import aiprod_cmd, fresh_pg_database

_made = [0]


def _create(cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AIPROD_")}
    _made[0] += 1  # active key names are unique
    return subprocess.run(
        aiprod_cmd("keys", "create", "--name", f"acme-{_made[0]}"),
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_keys_create_names_the_database_and_warns_when_it_created_it(tmp_path: Path) -> None:
    db = tmp_path / "aiprod-data" / "aiprod.db"
    first = _create(tmp_path)
    assert first.returncode == 0, first.stderr
    stderr = " ".join(first.stderr.split())  # rich wraps long lines
    assert f"warning: there was no aiprod database at {db}; created a new one" in stderr
    assert f"database: {db}" in stderr
    assert first.stdout.strip().splitlines()[-1].startswith("aiprod_sk_")

    second = _create(tmp_path)
    assert second.returncode == 0, second.stderr
    stderr = " ".join(second.stderr.split())
    assert "warning" not in stderr and f"database: {db}" in stderr

    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    third = _create(elsewhere, AIPROD_DATA_DIR=str(tmp_path / "aiprod-data"))
    assert "warning" not in third.stderr and str(db) in " ".join(third.stderr.split())


def test_keys_create_on_postgresql_hides_the_password_and_warns_once(tmp_path: Path) -> None:
    with fresh_pg_database("keys") as url:
        first = _create(tmp_path, AIPROD_DATABASE_URL=url)
        assert first.returncode == 0, first.stderr
        assert "warning: there was no aiprod database" in " ".join(first.stderr.split())
        second = _create(tmp_path, AIPROD_DATABASE_URL=url)
        assert "warning" not in second.stderr
        assert "database: postgresql+psycopg://" in second.stderr
