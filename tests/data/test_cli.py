"""`aiprod data ...` through typer's CliRunner."""

from __future__ import annotations

from typer.testing import CliRunner

from aiprod.cli.data import app
from aiprod.data.manifest import read_manifest

runner = CliRunner()


def test_synth_command_writes_a_manifest(tmp_path) -> None:
    res = runner.invoke(
        app, ["synth", str(tmp_path), "-n", "1", "--width", "16", "--height", "16", "-f", "3"]
    )
    assert res.exit_code == 0, res.output
    assert [r.phase for r in read_manifest(tmp_path)] == [1, 2, 3, 4, 5]


def test_synth_command_bad_size_is_one_line_error(tmp_path) -> None:
    res = runner.invoke(app, ["synth", str(tmp_path), "-n", "1", "--width", "33"])
    assert res.exit_code == 1
    assert "even width and height" in res.output
