"""Tiny training configs for the CPU tests (diffusers-test sized: 1 layer, 4 heads x 8 dims)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

TINY_ARCH: dict[str, Any] = {
    "text_encoder": {"d_model": 32, "num_layers": 1, "num_heads": 4, "d_ff": 64, "max_length": 24},
    "transformer": {"num_layers": 1, "num_attention_heads": 4, "attention_head_dim": 8},
    "vae": {
        "latent_channels": 8,
        "block_out_channels": [8, 16],
        "spatio_temporal_scaling": [True, False],
        "layers_per_block": [0, 0, 1],
        "patch_size": 4,
    },
    "upsampler": {"mid_channels": 32, "num_blocks_per_stage": 1},
}


def tiny_config(out: Path, **over: Any) -> dict[str, Any]:
    """vae + the five curriculum phases + the latent upsampler, 1-2 steps each at 32x32x9."""
    b = [[32, 32, 9]]
    phases: list[dict[str, Any]] = [
        {
            "name": "vae",
            "target": "vae",
            "data": {"synth": {"phase": 1, "count": 4}},
            "steps": 2,
            "batch_size": 2,
            "buckets": b,
            "posterior_noise": 0.5,
            "fg_weight": 5.0,
        },
    ]
    for p in range(1, 6):
        phases.append(
            {
                "name": f"p{p}",
                "data": {"synth": {"phase": p, "count": 4, "seed": p}},
                "steps": 2,
                "batch_size": 2,
                "buckets": b if p != 3 else [[32, 32, 9], [64, 32, 9]],
            }
        )
    phases.append(
        {
            "name": "up",
            "target": "upsampler",
            "data": {"synth": {"phase": 1, "count": 2}},
            "steps": 1,
            "batch_size": 2,
            "buckets": [[64, 64, 9]],
        }
    )
    cfg: dict[str, Any] = {
        "name": "tiny",
        "output_dir": str(out),
        "seed": 0,
        "device": "cpu",
        "num_threads": 1,
        "model": {"architecture": TINY_ARCH},
        "monitor": {"log_every": 1, "heldout_every": 3, "heldout_clips": 2},
        "checkpoint": {"every": 3, "keep_last": 2},
        "phases": phases,
    }
    cfg.update(over)
    return cfg


def tiny_base_folder(dest: Path) -> tuple[Any, Path]:
    """A tiny random built-in model saved as a folder to fine-tune from (``init_from``)."""
    from aiprod.training.components import build_builtin, caption_words, save_folder
    from aiprod.training.config import BuiltinArch

    base = build_builtin(
        BuiltinArch.model_validate(TINY_ARCH),
        vocab=set(caption_words("a red circle moving left on a black background")),
        seed=3,
    )
    return base, save_folder(base, dest)


def finetune_config(
    base_dir: Path, out: Path, *, model: dict[str, Any] | None = None, **over: Any
) -> dict[str, Any]:
    """One 3-step phase-1 phase at 32x32x9 starting from ``base_dir``."""
    cfg: dict[str, Any] = {
        "name": "finetune",
        "output_dir": str(out),
        "device": "cpu",
        "model": {"source": "builtin", "init_from": str(base_dir), **(model or {})},
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
    cfg.update(over)
    return cfg


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
