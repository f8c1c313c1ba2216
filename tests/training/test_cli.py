"""The `train` sub-app: --dry-run prints the per-phase table; bad configs fail in one line."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from aiprod.cli.train import app

from .conftest import tiny_config


def test_dry_run_table(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "o")
    cfg["phases"] = cfg["phases"][:2]
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["train", str(p), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "vae" in res.output and "p1" in res.output and "RSS" in res.output


def test_bad_config_one_line_error(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("phases: []\nbogus: 1\n")
    res = CliRunner().invoke(app, ["train", str(p)])
    assert res.exit_code == 1
    assert "error:" in res.output and "phases" in res.output
