"""Output storage full (issue 32, fault suite): the outputs live on a small tmpfs (mounted
when running as root; skipped with the reason otherwise) that is filled up mid-run. Submits
are refused with 503 + Retry-After or the job fails with a clear error; nothing half-written
stays in the storage; once space returns, the service recovers by itself."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.kit import Record, seconds, wait_terminal
from tests.service.harness import Stack, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "outputs"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(folder: Path) -> Path:
    """Write a filler file until the file system is full."""
    filler = folder / "filler"
    with filler.open("wb") as f:
        chunk = b"\0" * 65536
        while True:
            try:
                f.write(chunk)
                f.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
    with contextlib.suppress(OSError):
        while True:  # the last few bytes, one at a time
            with filler.open("ab") as f:
                f.write(b"\0" * 512)
    return filler


def test_full_output_storage_refuses_or_fails_cleanly_and_recovers(
    small_fs: Path, tmp_path: Path
) -> None:
    stack = Stack(
        tmp_path,
        f"sqlite:///{tmp_path / 'aiprod.db'}",
        workers=1,
        AIPROD_STORAGE_URL=str(small_fs),
        AIPROD_MIN_FREE_DISK_MB="0",  # /readyz: a 4 MB tmpfs is below the default minimum
    )
    rec = Record()
    try:
        key = stack.create_key("disk")
        with stack.client(key) as c:
            first = c.post("/api/v1/generate", json={"prompt": "before"})
            assert first.status_code == 202, first.text
            assert wait_terminal(c, [first.json()["id"]], 180)[first.json()["id"]]["status"] == (
                "succeeded"
            )

            filler = fill(small_fs)
            # Submits while full: 503 + Retry-After once the storage check notices (it is
            # remembered for a few seconds); a job accepted before that fails with a code.
            accepted: list[str] = []

            def refused() -> bool:
                r = c.post("/api/v1/generate", json={"prompt": "while full"})
                rec.saw(r, frozenset({503}))
                if r.status_code == 202:
                    accepted.append(r.json()["id"])
                return r.status_code == 503

            wait_for(refused, 60, 0.5, "a 503 while the storage is full")
            assert not rec.bad, rec.bad
            assert set(rec.statuses) <= {202, 503}, rec.statuses
            jobs = wait_terminal(c, accepted, seconds(180, 300))
            for j in jobs.values():
                assert j["status"] == "failed", j
                assert j["error"] and str(small_fs) not in str(j["error"]), j
            # nothing half-written: only the filler and the first job's complete output
            left = sorted(str(p.relative_to(small_fs)) for p in small_fs.rglob("*") if p.is_file())
            assert set(left) == {"filler", f"{first.json()['id']}.mp4"}, left

            filler.unlink()

            def submit_ok() -> str | None:
                r = c.post("/api/v1/generate", json={"prompt": "after"})
                rec.saw(r, frozenset({503}))
                return r.json()["id"] if r.status_code == 202 else None

            after = wait_for(submit_ok, 60, 0.5, "a submit once space returned")
            job = wait_terminal(c, [after], 180)[after]
            assert job["status"] == "succeeded", job
            assert c.get(f"/api/v1/jobs/{after}/download").status_code == 200
            assert not rec.bad, rec.bad
        print(
            f"\nstorage full: {len(accepted)} accepted then failed; statuses {dict(rec.statuses)}"
        )
    finally:
        stack.stop()
