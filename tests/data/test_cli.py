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
    res = runner.invoke(app, ["synth", str(tmp_path / "p4"), "-n", "2", "-f", "2", "-p", "4"])
    assert res.exit_code == 0, res.output
    assert [r.phase for r in read_manifest(tmp_path / "p4")] == [4, 4]
    res = runner.invoke(app, ["synth", str(tmp_path / "p9"), "-n", "1", "-p", "9"])
    assert res.exit_code == 1 and "not a curriculum phase" in res.output


def test_synth_command_bad_size_is_one_line_error(tmp_path) -> None:
    res = runner.invoke(app, ["synth", str(tmp_path), "-n", "1", "--width", "33"])
    assert res.exit_code == 1
    assert "even width and height" in res.output


def test_full_chain_through_the_cli(videos, tmp_path) -> None:
    import shutil

    src = tmp_path / "src"
    src.mkdir()
    for name in ("good", "two_scenes", "fps15"):
        shutil.copy(videos[name], src / f"{name}.mp4")
    cfg = tmp_path / "data.yaml"
    cfg.write_text(
        "validate: {min_duration_s: 0.5}\n"
        "split: {min_clip_s: 0.5}\n"
        "normalize: {short_side: 64, preset: ultrafast}\n"
    )
    ds = tmp_path / "ds"
    steps = [
        ["ingest", str(src), "--out", str(ds), "--license", "CC0-1.0"],
        ["validate", str(ds), "-c", str(cfg), "-j", "1"],
        ["split", str(ds), "-c", str(cfg), "-j", "1"],
        ["normalize", str(ds), "-c", str(cfg), "-j", "1"],
        ["organize", str(ds), "-c", str(cfg)],
        ["report", str(ds), "-c", str(cfg)],
    ]
    for args in steps:
        res = runner.invoke(app, args)
        assert res.exit_code == 0, (args, res.output)
    rows = read_manifest(ds)
    ok = [r for r in rows if r.status == "accepted"]
    assert len(ok) == 3 and all(r.phase == 1 and r.height == 64 for r in ok)
    assert [r.reject_reason.split(":")[0] for r in rows if r.status == "rejected"] == [
        "fps_too_low"
    ]
    assert (ds / "report" / "phase1.png").exists()
    res = runner.invoke(app, ["probe", str(videos["good"]), str(videos["not_video"])])
    assert res.exit_code == 1 and "320x256" in res.output


def test_missing_dataset_is_a_one_line_error(tmp_path) -> None:
    res = runner.invoke(app, ["validate", str(tmp_path / "nope")])
    assert res.exit_code == 1
    assert "does not exist" in res.output
