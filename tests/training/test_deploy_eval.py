"""Checkpoint -> eval report, and checkpoint -> registered model in a models.toml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aiprod.core.errors import ConfigError
from aiprod.core.registry import load_registry
from aiprod.training.config import TrainConfig
from aiprod.training.deploy import load_checkpoint
from aiprod.training.evaluate import evaluate, heldout_prompts
from aiprod.training.register import register
from aiprod.training.trainer import Trainer

from .conftest import tiny_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    cfg = tiny_config(out)
    cfg["phases"] = [cfg["phases"][0], cfg["phases"][1], cfg["phases"][-1]]  # vae, p1, up
    Trainer(TrainConfig.model_validate(cfg)).train()
    return out


def test_eval_writes_json_html_png(run_dir: Path, tmp_path: Path) -> None:
    res = evaluate(
        run_dir,
        out_dir=tmp_path / "ev",
        num_prompts=3,
        width=64,
        height=64,
        num_frames=9,
        steps=2,
        batch_size=3,
        two_stage=True,
        refine_steps=1,
    )
    data = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert data["metrics"]["fvd_extractor"] == "pixel-stats-v1"
    assert set(data["metrics"]["autoencoder_ceiling"]) >= {"color_accuracy", "count_accuracy"}
    assert data["metrics"]["reference_scorer_ceiling"]["color_accuracy"] == 1.0
    # what the model's stage 2 makes of a perfect stage 1 (two-stage evals only)
    st2 = data["metrics"]["two_stage_ceiling"]
    assert set(st2) >= {"shape_accuracy", "count_accuracy"}
    assert all(0.0 <= v <= 1.0 for v in st2.values())
    one = evaluate(
        run_dir,
        out_dir=tmp_path / "ev1",
        num_prompts=2,
        width=64,
        height=64,
        num_frames=9,
        steps=2,
        batch_size=2,
        two_stage=False,
    )
    assert "two_stage_ceiling" not in one["metrics"]
    for k in (
        "color_accuracy",
        "shape_accuracy",
        "count_accuracy",
        "direction_accuracy",
        "flicker_mean",
        "motion_mean",
        "fvd",
        "seconds_per_clip",
    ):
        assert k in data["metrics"], k
    assert len(data["per_prompt"]) == 3 == len(res["per_prompt"])
    assert (tmp_path / "ev" / "samples.png").stat().st_size > 0
    assert "aiprod eval" in (tmp_path / "ev" / "report.html").read_text()
    assert data["settings"]["shift"] == 1.0  # the model's own schedule


def test_cli_eval_defaults_to_the_served_settings(run_dir: Path, tmp_path: Path) -> None:
    # Options left out come from the served built-in entry (AIPROD_MODELS_FILE), so a
    # checkpoint is scored as the API serves it; options given win.
    from typer.testing import CliRunner

    from aiprod.cli.train import app

    models = tmp_path / "models.toml"
    models.write_text(
        'default = "small"\n\n[[models]]\nid = "small"\nfamily = "builtin"\n'
        "[models.defaults]\nwidth = 64\nheight = 64\nnum_frames = 9\n"
        "num_inference_steps = 2\nguidance_scale = 2.0\n"
        "[models.options]\nrefine_steps = 1\nrefine_guidance_scale = 1.0\ncandidates = 2\n"
        "guidance_min_sigma = 0.5\n"
    )
    out = tmp_path / "ev"
    res = CliRunner().invoke(
        app,
        ["eval", str(run_dir / "final"), "--num-prompts", "1", "--out", str(out), "--steps", "1"],
        env={"AIPROD_MODELS_FILE": str(models)},
    )
    assert res.exit_code == 0, res.output
    got = json.loads((out / "eval.json").read_text())["settings"]
    assert (got["width"], got["height"], got["num_frames"]) == (64, 64, 9)
    assert (got["guidance"], got["refine_steps"], got["refine_guidance"]) == (2.0, 1, 1.0)
    assert got["two_stage"] is True and got["steps"] == 1  # --steps given
    assert got["guidance_min_sigma"] == 0.5
    # served with 2 drafts, but this model has no prompt verifier to rank them: one draft,
    # said so; asked for explicitly, refused
    assert got["candidates"] == 1 and "has no prompt verifier" in res.output
    res = CliRunner().invoke(
        app,
        ["eval", str(run_dir / "final"), "--num-prompts", "1", "--candidates", "2"],
        env={"AIPROD_MODELS_FILE": str(models)},
    )
    assert res.exit_code == 1 and "pass --candidates 1" in res.output


def test_eval_shift_is_checked_before_any_work(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from aiprod.cli.train import app

    res = CliRunner().invoke(app, ["eval", str(tmp_path / "nothing"), "--shift", "0"])
    assert res.exit_code == 1 and "--shift 0.0: give a number > 0" in res.output
    res = CliRunner().invoke(
        app, ["eval", str(tmp_path / "nothing"), "--shift", "2", "--backend", "engine"]
    )
    assert res.exit_code == 1 and "trainer's sampler only" in res.output
    res = CliRunner().invoke(app, ["eval", str(tmp_path / "nothing"), "--refine-strength", "0"])
    assert res.exit_code == 1 and "--refine-strength 0.0: give a noise level" in res.output
    res = CliRunner().invoke(app, ["eval", str(tmp_path / "nothing"), "--refine-guidance", "0.5"])
    assert res.exit_code == 1 and "--refine-guidance 0.5: give 1 (none) or more" in res.output


def test_eval_engine_backend_refines_as_asked(run_dir: Path, tmp_path: Path) -> None:
    # The served path (engine) with refine settings other than the defaults scores like the
    # trainer's sampler with the same settings: both got the settings.
    kw = dict(num_prompts=2, width=64, height=64, num_frames=9, steps=2, two_stage=True)
    # refine guidance None = the stage-1 guidance (3.0), 1 = an unguided refinement
    got = {}
    for backend, strength, g2 in (
        ("trainer", 0.7, None),
        ("engine", 0.7, None),
        ("engine", 0.4, None),
        ("trainer", 0.7, 1.0),
        ("engine", 0.7, 1.0),
    ):
        res = evaluate(
            run_dir / "final",
            out_dir=tmp_path / f"{backend}{strength}{g2}",
            refine_steps=2,
            refine_sigma=strength,
            refine_guidance=g2,
            backend=backend,
            batch_size=1,
            **kw,
        )
        got[backend, strength, g2] = [p["flicker"] for p in res["per_prompt"]]
        assert res["settings"]["refine_sigma"] == strength
        assert res["settings"]["refine_guidance"] == (3.0 if g2 is None else g2)
    same = pytest.approx(got["trainer", 0.7, None], rel=1e-3, abs=1e-3)
    assert got["engine", 0.7, None] == same
    assert got["engine", 0.4, None] != same
    unguided = pytest.approx(got["trainer", 0.7, 1.0], rel=1e-3, abs=1e-3)
    assert got["engine", 0.7, 1.0] == unguided and got["trainer", 0.7, None] != unguided


def test_heldout_prompts_are_deterministic_and_cycle_phases() -> None:
    a, b = heldout_prompts(10), heldout_prompts(10)
    assert [x[0] for x in a] == [x[0] for x in b]
    assert [x[1].phase for x in a[:5]] == [1, 2, 3, 4, 5]


def test_register_adds_then_replaces_entry(run_dir: Path, tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text(
        'default = "builtin"\n\n[[models]]\nid = "builtin"\nfamily = "builtin"\n'
        "price_per_gpu_second = 0.0005\n\n[models.defaults]\nwidth = 128\nheight = 128\n"
        "num_frames = 25\nfps = 24\nnum_inference_steps = 8\n"
    )
    info = register(run_dir, model_id="mine", models_file=models, version="mine-1")
    reg = load_registry(models)
    entry = reg.get("mine")
    assert entry.version == "mine-1" and entry.family == "builtin"
    assert entry.path is not None and (entry.path / "transformer").is_dir()
    # a new random built-in model: the settings of the packaged built-in entry (its base),
    # not of another entry that happens to be in the file
    assert entry.defaults == load_registry().get("builtin").defaults
    assert entry.trained_from["run"] == str(run_dir.resolve())
    assert reg.default == "builtin" and info["path"] == str(tmp_path / "models" / "mine")
    register(run_dir, model_id="mine", models_file=models, version="mine-2", make_default=True)
    reg = load_registry(models)
    assert [m.id for m in reg.models] == ["builtin", "mine"]
    assert reg.get("mine").version == "mine-2" and reg.default == "mine"


def test_register_rejects_bad_id(run_dir: Path, tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    with pytest.raises(ConfigError, match="not valid"):
        register(run_dir, model_id="bad id!", models_file=models)
    assert not models.exists() and not (tmp_path / "models").exists()


def test_load_checkpoint_roundtrip(run_dir: Path) -> None:
    comp, cfg, meta = load_checkpoint(run_dir)
    assert cfg.name == "tiny" and meta["step"] > 0
    assert comp.upsampler is not None


def test_register_into_new_models_file_uses_the_builtin_settings(
    run_dir: Path, tmp_path: Path
) -> None:
    # A new models.toml has no entry to copy from: the packaged built-in entry's limits,
    # defaults and options are used (the size and settings the small architecture is served
    # at), not the LTX-sized ModelEntry defaults.
    models = tmp_path / "new" / "models.toml"
    register(run_dir, model_id="fresh", models_file=models)
    entry = load_registry(models).get("fresh")
    shipped = load_registry().get("builtin")
    assert load_registry(models).default == "fresh"
    assert entry.defaults == shipped.defaults and entry.defaults.width < 512
    # ... but one stage-1 draft per clip: the tiny run has no prompt verifier to rank more
    assert entry.options == shipped.options.model_copy(update={"candidates": 1})
    assert entry.limits == shipped.limits
    assert entry.defaults.two_stage is True  # the tiny run trained an upsampler
    assert "by aiprod train" in entry.description


def test_cli_models_register_then_models_list(run_dir: Path, tmp_path: Path) -> None:
    """`aiprod models register` (the top-level CLI) installs the run; `models list` shows it."""
    from typer.testing import CliRunner

    from aiprod.cli.main import app

    models = tmp_path / "models.toml"
    env = {"AIPROD_MODELS_FILE": str(models), "AIPROD_DATA_DIR": str(tmp_path / "data")}
    runner = CliRunner()
    res = runner.invoke(app, ["models", "register", str(run_dir), "--id", "cli-model"], env=env)
    assert res.exit_code == 0, res.output
    assert load_registry(models).get("cli-model").family == "builtin"
    listing = runner.invoke(app, ["models", "list"], env=env, terminal_width=200)
    assert listing.exit_code == 0 and "cli-model" in listing.stdout
    bad = runner.invoke(app, ["models", "register", str(tmp_path / "nope"), "--id", "x"], env=env)
    assert bad.exit_code != 0 and len(bad.stderr.strip().splitlines()) == 1
