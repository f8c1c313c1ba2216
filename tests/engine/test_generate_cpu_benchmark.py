"""benchmarks/generate_cpu.py on the tiny random built-in model: a real run, stage times that
add up, the CPU named in the JSON, and clear errors for bad arguments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.engine.conftest import TINY, load_benchmark, write_models_toml


def _load():  # noqa: ANN202
    return load_benchmark("generate_cpu")


def test_runs_the_default_entry_and_writes_stage_times(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    write_models_toml(models, TINY, "tiny")
    out = tmp_path / "r.json"
    mod = _load()
    assert mod.main(["--models-file", str(models), "--runs", "2", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["model"] == "tiny" and res["model_version"] == "tiny-1"
    assert res["request"]["width"] == 64 and res["request"]["two_stage"] is True
    assert len(res["runs"]) == 2
    for run in [*res["runs"], res["first_call"]]:
        assert run["stage1_s"] > 0 and run["stage2_s"] > 0 and run["decode_s"] > 0
        stages = sum(run[k] for k in ("text_encode_s", "stage1_s", "upsample_s", "stage2_s"))
        assert stages + run["decode_s"] <= run["pipeline_s"] * 1.05
        assert run["total_s"] == pytest.approx(run["pipeline_s"] + run["mp4_s"])
    machine = res["machine"]
    assert machine["cpus"] >= 1 and machine["torch_threads"] >= 1
    assert set(machine["isa"]) <= set(mod.ISA_FLAGS)
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("argv", [["--runs", "0"], ["--threads", "0"]])
def test_bad_arguments_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        _load().parse_args(argv)
    assert e.value.code == 2
    assert "give 1 or more" in capsys.readouterr().err
