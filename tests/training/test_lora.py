"""LoRA through peft on a tiny random LTX transformer built locally, saved and reloaded."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import LTXVideoTransformer3DModel
from safetensors.torch import load_file

from aiprod.training.config import TrainConfig
from aiprod.training.trainer import Trainer

from .conftest import finetune_config, tiny_base_folder


def test_lora_trains_adapters_only_and_merges(tmp_path: Path) -> None:
    base, base_dir = tiny_base_folder(tmp_path / "base")
    before = {k: v.clone() for k, v in base.transformer.state_dict().items()}
    cfg = TrainConfig.model_validate(
        finetune_config(
            base_dir, tmp_path / "run", name="lora", mode="lora", lora={"rank": 4, "alpha": 4}
        )
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
