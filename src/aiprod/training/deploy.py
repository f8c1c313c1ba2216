"""Turn a training checkpoint into a model: export a run's model folder (a LoRA run's adapter
and/or the merged model), rebuild a checkpoint's model (LoRA merged), load either.

``aiprod models register`` (``aiprod.training.register``) builds on these.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from aiprod.core.errors import ConfigError
from aiprod.training import checkpoint as ckpt
from aiprod.training.components import Components, build_components, save_folder
from aiprod.training.config import TrainConfig, drop_other_targets_fields, trains_text_encoder
from aiprod.training.lora import add_lora, merge_lora, save_adapter


def export_components(
    comp: Components,
    dest: Path,
    *,
    mode: str = "full",
    lora_export: str = "merged",
    info: dict[str, Any] | None = None,
) -> Path:
    """Save ``comp`` as a model folder. A LoRA run writes its adapter to ``dest/lora/`` (diffusers'
    format) and, with ``lora_export="merged"``, the model with the adapter fused in (on a copy)."""
    if mode != "lora":
        return save_folder(comp, dest, info=info)
    if lora_export == "merged":
        merged = merge_lora(copy.deepcopy(comp.transformer))
        save_folder(Components(**{**comp.__dict__, "transformer": merged}), dest, info=info)
    else:
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "aiprod.json").write_text(json.dumps({**comp.info, **(info or {})}, indent=2))
    save_adapter(comp.transformer, dest / "lora")
    return dest


def load_checkpoint(path: Path) -> tuple[Components, TrainConfig, dict[str, Any]]:
    """Rebuild the model of a checkpoint folder (or a run's best/latest one)."""
    from transformers import AutoTokenizer

    path = ckpt.resolve_checkpoint(Path(path))
    raw = yaml.safe_load((path / "config.yaml").read_text())
    cfg = TrainConfig.model_validate(drop_other_targets_fields(raw))
    meta = json.loads((path / "meta.json").read_text())
    tok = AutoTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
    comp = build_components(cfg.model, vocab=set(), seed=cfg.seed, tokenizer=tok)
    if cfg.mode == "lora":
        add_lora(comp.transformer, cfg.lora)
    parts = ckpt.load_parts(path)
    for name, sd in parts.items():
        if name == "transformer_lora":
            comp.transformer.load_state_dict(sd, strict=False)
        elif name == "upsampler":  # trained here for a model that had none: made like it was
            comp.ensure_upsampler(cfg.model.architecture.upsampler).load_state_dict(sd)
        elif name == "refiner":
            comp.ensure_refiner().load_state_dict(sd)
        elif name == "verifier":
            comp.ensure_verifier(cfg.model.architecture.verifier).load_state_dict(sd)
        else:
            comp.modules()[name].load_state_dict(sd)
    ema = ckpt.load_state(path).get("ema")
    if ema is not None:
        _use_ema(comp, cfg, meta, ema, path)
    if cfg.mode == "lora":
        merge_lora(comp.transformer)
    for m in comp.modules().values():
        m.eval().requires_grad_(False)
    meta["checkpoint"] = str(path)
    return comp, cfg, meta


def _use_ema(
    comp: Components, cfg: TrainConfig, meta: dict[str, Any], ema: dict[str, Any], path: Path
) -> None:
    """A checkpoint taken inside a phase with ``ema_decay`` holds the trained weights (to resume
    exactly) and their average (state.pt): the average is the model to evaluate and serve."""
    from diffusers.training_utils import EMAModel

    phase = cfg.phases[meta["phase_index"]]
    target = phase.target
    mods = comp.trained_by(target, text_encoder=trains_text_encoder(phase))
    params = [p for m in mods for p in m.parameters() if p.requires_grad or cfg.mode == "full"]
    if len(ema["shadow_params"]) != len(params):
        raise ConfigError(f"{path}: its EMA weights do not fit the {target} of its config")
    average = EMAModel(params)
    average.load_state_dict(ema)
    average.copy_to(params)


def load_any(path: Path) -> tuple[Components, dict[str, Any]]:
    """A model folder (model_index.json) or a training checkpoint -> (components, info)."""
    from aiprod.training.components import load_folder

    path = Path(path)
    if (path / "model_index.json").is_file():
        comp = load_folder(path)
        for m in comp.modules().values():
            m.eval().requires_grad_(False)
        return comp, {"model_folder": str(path), **comp.info}
    comp, cfg, meta = load_checkpoint(path)
    return comp, {**meta, "config_name": cfg.name}
