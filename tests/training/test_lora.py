"""LoRA through peft on a tiny random LTX transformer built locally, saved and reloaded."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import LTXVideoTransformer3DModel
from safetensors.torch import load_file

from aiprod.training.components import build_builtin, caption_words, save_folder
from aiprod.training.config import BuiltinArch, TrainConfig
from aiprod.training.trainer import Trainer

from .conftest import TINY_ARCH


def test_lora_trains_adapters_only_and_merges(tmp_path: Path) -> None:
    base = build_builtin(
        BuiltinArch.model_validate(TINY_ARCH),
        vocab=set(caption_words("a red circle moving left on a black background")),
        seed=3,
    )
    base_dir = save_folder(base, tmp_path / "base")
    before = {k: v.clone() for k, v in base.transformer.state_dict().items()}
    cfg = TrainConfig.model_validate(
        {
            "name": "lora",
            "output_dir": str(tmp_path / "run"),
            "device": "cpu",
            "mode": "lora",
            "lora": {"rank": 4, "alpha": 4},
            "model": {"source": "builtin", "init_from": str(base_dir)},
            "monitor": {"heldout_every": 100, "tensorboard": False},
            "phases": [
                {
                    "name": "p1",
                    "data": {"synth": {"phase": 1, "count": 4}},
                    "steps": 3,
                    "batch_size": 2,
                    "buckets": [[32, 32, 9]],
                    "lr": {"peak": 0.01, "schedule": "constant"},
                }
            ],
        }
    )
    trainer = Trainer(cfg)
    trainable = [n for n, p in trainer.comp.transformer.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    trainer.train()

    ck = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))[-1]
    assert [f.name for f in ck.glob("*.safetensors")] == ["transformer_lora.safetensors"]
    lora = load_file(ck / "transformer_lora.safetensors")
    assert lora and any(
        k.endswith("lora_B.default.weight") and v.abs().sum() > 0 for k, v in lora.items()
    )
    # Base weights untouched by training.
    for name, p in trainer.comp.transformer.named_parameters():
        if "lora_" not in name:
            key = name.replace(".base_layer", "")
            assert torch.equal(p.detach(), before[key]), name
    # The exported model has the adapter merged in: plain keys, changed attention weights.
    merged = LTXVideoTransformer3DModel.from_pretrained(tmp_path / "run" / "final" / "transformer")
    sd = merged.state_dict()
    assert not any("lora" in k for k in sd)
    assert sd.keys() == before.keys()
    changed = [k for k in sd if not torch.equal(sd[k], before[k])]
    assert changed and all(k.split(".")[-2] in ("to_q", "to_k", "to_v", "0") for k in changed)
