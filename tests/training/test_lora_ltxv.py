"""LoRA on a registry ``ltxv`` model (tiny, saved by diffusers, its tokenizer without a length
limit), its export, and ``aiprod models register`` of the run (tomlkit, base entry, provenance,
untrained folders refused, an upsampler run attached to an entry)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from aiprod.core.errors import ConfigError
from aiprod.core.model_files import DEFAULT_TEXT_LENGTH
from aiprod.core.registry import load_registry
from aiprod.training.components import text_length
from aiprod.training.config import TrainConfig
from aiprod.training.register import register, register_upsampler
from aiprod.training.trainer import Trainer

from .test_walkthrough import tiny_ltxv_folder

MODELS = """# my models (a comment the registration keeps)
default = "my-ltxv"

[[models]]
id = "my-ltxv"   # the base
family = "ltxv"
path = "my-ltxv"
dtype = "float32"
price_per_gpu_second = 0.002

[models.defaults]
width = 64
height = 32
num_frames = 9
fps = 12
num_inference_steps = 2
two_stage = false

[[models]]
id = "unrelated"
family = "builtin"
options = {tiny_seed = 0}

[models.defaults]
width = 160
height = 160
num_frames = 25
"""


def lora_cfg(root: Path, out: str, **over: Any) -> TrainConfig:
    raw: dict[str, Any] = {
        "name": "lora-t",
        "output_dir": str(root / out),
        "device": "cpu",
        "mode": "lora",
        "lora": {"rank": 4, "alpha": 8.0},
        "model": {
            "source": "registry",
            "registry_id": "my-ltxv",
            "models_file": str(root / "models.toml"),
        },
        "monitor": {"heldout": False, "tensorboard": False},
        "checkpoint": {"every": 2},
        "phases": [
            {
                "name": "p1",
                "data": {"synth": {"phase": 1, "count": 2}},
                "steps": 3,
                "batch_size": 2,
                "buckets": [[64, 32, 9]],
                "lr": {"peak": 0.02, "schedule": "constant"},
            }
        ],
    }
    raw.update(over)
    return TrainConfig.model_validate(raw)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lora-ltxv")
    tiny_ltxv_folder(root / "my-ltxv")
    (root / "models.toml").write_text(MODELS)
    return root


@pytest.fixture(scope="module")
def run(root: Path) -> Path:
    events: list[tuple[str, dict]] = []
    Trainer(lora_cfg(root, "run"), on_event=lambda k, d: events.append((k, d))).train()
    assert not [e for e in events if e[0] == "heldout"]  # monitor.heldout: false
    return root / "run"


def test_text_length_order() -> None:
    class Tok:
        model_max_length = int(1e30)  # transformers' "no limit"

    assert text_length(77, Tok()) == 77
    assert text_length(None, Tok()) == DEFAULT_TEXT_LENGTH["ltxv"]
    Tok.model_max_length = 64
    assert text_length(None, Tok()) == 64


def test_trains_with_a_tokenizer_without_length_and_exports_adapter_and_merge(
    root: Path, run: Path
) -> None:
    from diffusers import LTXPipeline

    final = run / "final"
    info = json.loads((final / "aiprod.json").read_text())
    assert info["base_model"] == "my-ltxv" and info["trained_by"] == "aiprod train"
    merged = LTXPipeline.from_pretrained(final)  # the merged model is a diffusers folder
    base = LTXPipeline.from_pretrained(root / "my-ltxv")
    before = copy.deepcopy(base.transformer.state_dict())
    base.load_lora_weights(final / "lora")  # the adapter alone, diffusers' LoRA format
    base.fuse_lora()
    base.unload_lora_weights()
    fused, want = base.transformer.state_dict(), merged.transformer.state_dict()
    assert fused.keys() == want.keys()
    assert all(torch.allclose(fused[k], want[k], atol=1e-6) for k in want)
    assert any(not torch.equal(before[k], want[k]) for k in want)


def test_resume_continues_a_stopped_lora_run(root: Path, run: Path) -> None:
    cfg = lora_cfg(root, "resumed")
    assert Trainer(cfg).train(stop_after=2)["stopped"]
    done = Trainer(cfg).train(resume=True)
    assert done["steps"] == 3
    a = json.loads((run / "checkpoints" / "step-00000003" / "meta.json").read_text())
    b = json.loads((root / "resumed" / "checkpoints" / "step-00000003" / "meta.json").read_text())
    assert a["fingerprint"] == b["fingerprint"]
    from safetensors.torch import load_file

    x = load_file(run / "checkpoints" / "step-00000003" / "transformer_lora.safetensors")
    y = load_file(
        root / "resumed" / "checkpoints" / "step-00000003" / "transformer_lora.safetensors"
    )
    assert all(torch.equal(x[k], y[k]) for k in x)  # exactly as the unbroken run


def test_adapter_only_export(root: Path) -> None:
    cfg = lora_cfg(root, "adapter", lora={"rank": 4, "alpha": 4.0, "export": "adapter"})
    cfg.phases[0].steps = 1
    Trainer(cfg).train()
    final = root / "adapter" / "final"
    assert (final / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert not (final / "transformer").exists()


def test_register_keeps_family_base_settings_comments_and_records_provenance(
    root: Path, run: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models.toml"
    models.write_text(MODELS.replace('path = "my-ltxv"', f'path = "{root / "my-ltxv"}"'))
    out = register(run, model_id="mine", models_file=models)
    text = models.read_text()
    assert text.startswith("# my models (a comment the registration keeps)")
    assert 'id = "my-ltxv"   # the base' in text
    entry = load_registry(models).get("mine")
    assert entry.family == "ltxv" and out["family"] == "ltxv"
    assert (entry.defaults.width, entry.defaults.num_frames) == (64, 9)  # the base's, not 160/25
    assert entry.dtype == "float32" and entry.price_per_gpu_second == 0.002
    assert entry.options.max_sequence_length == DEFAULT_TEXT_LENGTH["ltxv"]  # as trained
    assert entry.trained_from["base_model"] == "my-ltxv"
    assert entry.trained_from["run"] == str(run.resolve())
    assert entry.trained_from["step"] == "3" and entry.trained_from["commit"]
    assert "LoRA fine-tune of 'my-ltxv'" in entry.description
    # registering again updates the entry in place: still two models + mine, comments kept
    register(run, model_id="mine", models_file=models, version="mine-2")
    reg = load_registry(models)
    assert [m.id for m in reg.models] == ["my-ltxv", "unrelated", "mine"]
    assert reg.get("mine").version == "mine-2" and "# the base" in models.read_text()


def test_register_refuses_a_folder_no_run_wrote(root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not trained by aiprod train"):
        register(root / "my-ltxv", model_id="x", models_file=tmp_path / "models.toml")
    assert not (tmp_path / "models.toml").exists()


def test_upsampler_run_attaches_to_an_entry(root: Path, run: Path, tmp_path: Path) -> None:
    # ``run`` (the LoRA run, which trained no upsampler) is a fixture: under xdist this test
    # can run in a worker where no other test has made root / "run"
    models = tmp_path / "models.toml"
    models.write_text(MODELS.replace('path = "my-ltxv"', f'path = "{root / "my-ltxv"}"'))
    up_phase = {
        "name": "up",
        "target": "upsampler",
        "data": {"synth": {"phase": 1, "count": 2}},
        "steps": 1,
        "batch_size": 2,
        "buckets": [[64, 64, 9]],
    }
    cfg = lora_cfg(
        root,
        "up",
        mode="full",
        model={
            "source": "registry",
            "registry_id": "my-ltxv",
            "models_file": str(models),
            "architecture": {"upsampler": {"mid_channels": 32, "num_blocks_per_stage": 1}},
        },
        phases=[up_phase],
    )
    Trainer(cfg).train()
    with pytest.raises(ConfigError, match="trained no latent upsampler"):
        register_upsampler(run, entry_id="my-ltxv", models_file=models)
    out = register_upsampler(root / "up", entry_id="my-ltxv", models_file=models)
    entry = load_registry(models).get("my-ltxv")
    assert entry.components.upsampler == Path(out["upsampler"]).resolve()
    assert (entry.components.upsampler / "config.json").is_file()
    assert "# the base" in models.read_text()
    # two-stage serving with it: the engine loads the entry and runs stage 1 + x2 + refine
    from aiprod.engine import build_request, load_pipeline

    pipe = load_pipeline(entry, "cpu")
    video = pipe(
        build_request(
            entry,
            {"prompt": "a red circle", "width": 64, "height": 64, "num_frames": 9,
             "num_inference_steps": 2, "two_stage": True, "seed": 1},
        )
    )  # fmt: skip
    assert video.frames.shape == (9, 64, 64, 3)
