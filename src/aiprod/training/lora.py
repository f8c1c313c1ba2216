"""LoRA on the transformer through peft (diffusers' ``add_adapter``), and its export.

The adapter is saved in diffusers' LoRA format (``pytorch_lora_weights.safetensors``, what
``LTXPipeline.load_lora_weights`` loads) and merged with diffusers' own ``fuse_lora`` +
``unload_lora``: no merge arithmetic of our own.
"""

from __future__ import annotations

from pathlib import Path

import torch

from aiprod.training.config import LoraConfig

ADAPTER_FILE = "pytorch_lora_weights.safetensors"


def add_lora(transformer: torch.nn.Module, cfg: LoraConfig, *, seed: int = 0) -> None:
    """Freeze the transformer and attach trainable LoRA adapters to ``cfg.target_modules``,
    initialised from ``seed`` (so a run, and a resumed one, start from the same adapters)."""
    from peft import LoraConfig as PeftLoraConfig

    transformer.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer.add_adapter(  # type: ignore[operator]
            PeftLoraConfig(
                r=cfg.rank,
                lora_alpha=cfg.alpha,
                lora_dropout=cfg.dropout,
                target_modules=list(cfg.target_modules),
                init_lora_weights="gaussian",
            )
        )


def lora_state_dict(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter weights (what a LoRA checkpoint stores)."""
    return {k: v for k, v in transformer.state_dict().items() if "lora_" in k}


def merge_lora(transformer: torch.nn.Module) -> torch.nn.Module:
    """Fuse the adapters into the base weights and remove the adapter layers (in place),
    with diffusers' ``fuse_lora`` and ``unload_lora``."""
    transformer.fuse_lora(lora_scale=1.0)  # type: ignore[operator]
    transformer.unload_lora()  # type: ignore[operator]
    return transformer


def save_adapter(transformer: torch.nn.Module, dest: Path) -> Path:
    """Write the transformer's adapter in diffusers' LoRA format: ``dest`` is then a folder
    ``LTXPipeline.load_lora_weights(dest)`` loads (``pytorch_lora_weights.safetensors``)."""
    from diffusers import LTXPipeline
    from peft import get_peft_model_state_dict

    LTXPipeline.save_lora_weights(
        dest,
        transformer_lora_layers=get_peft_model_state_dict(transformer),
        # rank, alpha and targets travel with the weights (else a loader assumes alpha = rank)
        transformer_lora_adapter_metadata=transformer.peft_config["default"].to_dict(),  # type: ignore[index]
        weight_name=ADAPTER_FILE,
    )
    return dest / ADAPTER_FILE
