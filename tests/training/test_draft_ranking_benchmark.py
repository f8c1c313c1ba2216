"""benchmarks/draft_ranking.py: every draft of a tiny model generated, scored and ranked; the
analysis picks what each rule says; the evaluation's seed is refused for validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.engine.conftest import TINY, load_benchmark, write_models_toml


def _row(prompt: int, draft: int, *, count_ok: bool, logp_count: float) -> dict:
    return {
        "prompt": prompt,
        "draft": draft,
        "ok_color": True,
        "ok_shape": True,
        "ok_count": count_ok,
        "ok_direction": True,
        "logp_color": -1.0,
        "logp_shape": -1.0,
        "logp_count": logp_count,
        "logp_direction": -1.0,
    }


def test_analysis_follows_each_rule_and_the_oracle() -> None:
    mod = load_benchmark("draft_ranking")
    rows = [  # prompt 0: draft 1 right and preferred; prompt 1: draft 0 right, draft 1 preferred
        _row(0, 0, count_ok=False, logp_count=-2.0),
        _row(0, 1, count_ok=True, logp_count=-0.1),
        _row(1, 0, count_ok=True, logp_count=-3.0),
        _row(1, 1, count_ok=False, logp_count=-0.2),
    ]
    acc = mod.analyze(rows)["accuracy_percent"]
    assert acc["one draft"]["count"] == 50.0
    assert acc["best of 2, rank by count"]["count"] == 50.0  # right once, wrong once
    assert acc["best of 2, oracle (count and shape)"]["count"] == 100.0
    assert acc["best of 2, oracle (count and shape)"]["all four"] == 100.0


def test_generates_every_draft_of_a_tiny_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiprod.builtin.verifier import PromptVerifier
    from aiprod.training import components
    from aiprod.training.config import BuiltinArch

    torch.set_num_threads(1)
    comp = components.build_builtin(
        BuiltinArch(), vocab=set("a two red green circles square moving left right".split()), seed=0
    )
    comp.verifier = PromptVerifier(in_channels=comp.vae.config.latent_channels, channels=16)
    folder = components.save_folder(comp, tmp_path / "m")
    models = tmp_path / "models.toml"
    write_models_toml(models, TINY, "tiny")
    monkeypatch.setenv("AIPROD_MODELS_FILE", str(models))
    out = tmp_path / "out"
    mod = load_benchmark("draft_ranking")
    argv = ["--model-dir", str(folder), "--num-prompts", "3", "--drafts", "2"]
    mod.main([*argv, "--batch-size", "2", "--out", str(out)])
    rows = json.loads((out / "rows.json").read_text())["rows"]
    assert sorted((r["prompt"], r["draft"]) for r in rows) == [
        (p, d) for p in range(3) for d in (0, 1)
    ]
    assert all(r["logp_count"] is not None and r["logp_count"] <= 0 for r in rows)
    result = json.loads((out / "draft_ranking.json").read_text())
    assert result["prompts"] == 3 and result["settings"]["seed"] == mod.VALIDATION_SEED
    acc = result["accuracy_percent"]
    best = acc["best of 2, oracle (count and shape)"]
    for name, a in acc.items():  # nothing ranks better than the exact scorer on those two
        assert a["count"] + a["shape"] <= best["count"] + best["shape"] + 1e-9, name
    mod.main(["--analyze", str(out)])  # the table again from the stored drafts
    assert json.loads((out / "draft_ranking.json").read_text())["accuracy_percent"] == acc


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--drafts", "1"], "give 2 or more"), (["--seed", "20261121"], "is the evaluation's")],
)
def test_bad_arguments_are_refused(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        load_benchmark("draft_ranking").parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err
