"""benchmarks/engine_gpu.py: importable, refuses clearly without CUDA (its --tiny mode is the
CPU smoke run, kept out of the test budget)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.engine.conftest import load_benchmark


def _load():  # noqa: ANN202
    return load_benchmark("engine_gpu")


def test_refuses_without_cuda(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    mod = _load()
    assert mod.main(["--json", str(tmp_path / "x.json")]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_defaults_are_the_published_sizes() -> None:
    args = _load().parse_args([])
    assert args.family == ["ltx2", "ltxv"] and args.size == ["768x512"] and args.frames == 121
    assert args.preset == "distilled"
