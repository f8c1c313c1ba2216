"""docs/OPERATIONS.md is runnable as written: its `bash` blocks, in order, as one script
(`set -euo pipefail`) against a real `aiprod serve` on loopback, with the real `aiprod`
command. The server runs no worker, so the page's job stays queued until the page cancels it
(then retries it): every step has one outcome."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.service.harness import Stack

DOC = Path(__file__).resolve().parents[2] / "docs" / "OPERATIONS.md"


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M)


@pytest.mark.integration
def test_operations_md_runs_as_written(tmp_path: Path) -> None:
    blocks = bash_blocks(DOC.read_text())
    assert len(blocks) >= 8
    script = "set -euo pipefail\n" + "\n".join(blocks)
    stack = Stack(
        tmp_path, f"sqlite:///{tmp_path / 'aiprod.db'}", workers=0, AIPROD_READY_REQUIRES_WORKER="0"
    )
    try:
        env = dict(
            stack.env,
            AIPROD_URL=stack.url,
            AIPROD_ADMIN_KEY=stack.admin_key,
            AIPROD_GPU_COST_PER_HOUR="3.6",
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        )
        res = subprocess.run(
            ["bash", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True
        )
        assert res.returncode == 0, f"{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    finally:
        stack.stop()
    out = res.stdout
    assert "refused: an active key is already named acme" in out
    assert '"code":"budget_exceeded"' in out.replace(" ", "")
    assert '"retry_of"' in out and "whsec_" in out  # the retried job; the rotated secrets
    month = datetime.now(UTC).strftime("%Y-%m")
    folder = tmp_path / "statements"
    names = sorted(p.name for p in folder.iterdir())
    assert f"operator-{month}.csv" in names and f"operator-{month}.html" in names
    (acme,) = folder.glob(f"statement-{month}-acme-*.csv")
    rows = list(csv.DictReader(acme.open()))
    assert rows[-1]["job_id"] == "TOTAL"
    assert {r["status"] for r in rows[:-1]} == {"canceled"}  # the page's job, canceled
    assert any(n.startswith("statement-2026-11-acme-") for n in names)
