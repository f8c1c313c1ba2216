"""LoRA on the transformer through peft (diffusers' ``add_adapter``), and merging it back."""

from __future__ import annotations

import torch

from aiprod.training.config import LoraConfig


def add_lora(transformer: torch.nn.Module, cfg: LoraConfig) -> None:
    """Freeze the transformer and attach trainable LoRA adapters to ``cfg.target_modules``."""
    from peft import LoraConfig as PeftLoraConfig

    transformer.requires_grad_(False)
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
    """Fold every LoRA adapter into its base weight and drop the adapter layers (in place)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(transformer.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = transformer.get_submodule(parent_name) if parent_name else transformer
            setattr(parent, child, module.get_base_layer())
    if hasattr(transformer, "_hf_peft_config_loaded"):
        transformer._hf_peft_config_loaded = False
        transformer.peft_config = {}
    return transformer
