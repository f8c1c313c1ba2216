"""Turn a training checkpoint into a servable model folder and a models.toml entry.

``aiprod models register CHECKPOINT --id ID`` calls :func:`register`: it rebuilds the model
from the checkpoint (LoRA merged into the transformer), writes the diffusers-layout folder
next to the models file (atomically), then adds or replaces the entry ``ID`` in the
models.toml (temp file + rename), so the API serves it and jobs name it by ``version``.
"""

from __future__ import annotations

import copy
import json
import os
import tomllib
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
        elif name == "upsampler" and comp.upsampler is None:
            raise ConfigError(f"{path}: has upsampler weights but the model has no upsampler")
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


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dump_registry_toml(data: dict[str, Any]) -> str:
    """Serialise a models.toml document (top-level scalars + [[models]] with sub-tables)."""
    lines = ["# aiprod model registry (written by `aiprod models register`)"]
    for k, v in data.items():
        if k != "models" and v is not None:
            lines.append(f"{k} = {_toml_value(v)}")
    for m in data.get("models", []):
        lines += ["", "[[models]]"]
        subs = {k: v for k, v in m.items() if isinstance(v, dict)}
        for k, v in m.items():
            if not isinstance(v, dict) and v is not None:
                lines.append(f"{k} = {_toml_value(v)}")
        for name, table in subs.items():
            items = {k: v for k, v in table.items() if v is not None}
            if items:
                lines += ["", f"[models.{name}]"]
                lines += [f"{k} = {_toml_value(v)}" for k, v in items.items()]
    return "\n".join(lines) + "\n"


def _packaged_builtin_entry() -> dict[str, Any]:
    """The packaged models.toml's ``builtin`` entry, as written there."""
    from aiprod.core.registry import default_models_file

    doc = tomllib.loads(default_models_file().read_text())
    return next(m for m in doc["models"] if m.get("family") == "builtin")


def register(
    checkpoint: Path,
    *,
    model_id: str,
    models_file: Path,
    version: str | None = None,
    description: str | None = None,
    dest: Path | None = None,
    make_default: bool = False,
    price_per_gpu_second: float | None = None,
) -> dict[str, Any]:
    """Install ``checkpoint`` as model ``model_id`` and add/replace its models.toml entry."""
    from aiprod.core.registry import BuiltinEntry, ModelEntry, Registry

    models_file = Path(models_file)
    doc: dict[str, Any] = {"models": []}
    if models_file.is_file():
        try:
            doc = tomllib.loads(models_file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{models_file}: not valid TOML ({exc})") from exc
    models: list[dict[str, Any]] = list(doc.get("models", []))
    old = next((m for m in models if m.get("id") == model_id), None)
    template = old or next((m for m in models if m.get("family") == "builtin"), None)

    try:
        BuiltinEntry(id=model_id)
    except ValueError as exc:
        raise ConfigError(
            f"model id {model_id!r} is not valid: use letters, digits, '.', '_' or '-'"
        ) from exc
    comp, info = load_any(Path(checkpoint))
    folder = Path(dest) if dest else models_file.parent / "models" / model_id
    try:
        rel = folder.resolve().relative_to(models_file.parent.resolve()).as_posix()
    except ValueError:
        rel = str(folder.resolve())
    step = info.get("step") or info.get("steps")
    # Without an entry to copy limits/defaults/options from, take the packaged built-in one:
    # the size and settings that aiprod's own small architecture is trained and served at
    # (the ModelEntry defaults are LTX-sized).
    if template is None:
        template = {k: v for k, v in _packaged_builtin_entry().items() if k != "description"}
    entry: dict[str, Any] = copy.deepcopy(template)
    entry.update(
        {
            "id": model_id,
            "family": "builtin",
            "path": rel,
            "version": version or (f"{model_id}-step{step}" if step else model_id),
            "description": description
            or entry.get("description")
            or f"trained by aiprod train ({info.get('config_name', 'checkpoint')})",
            "dtype": "float32",
        }
    )
    entry.pop("components", None)
    if price_per_gpu_second is not None:
        entry["price_per_gpu_second"] = price_per_gpu_second
    if comp.upsampler is None:
        entry.setdefault("defaults", {})["two_stage"] = False
    if comp.verifier is None and "options" in entry:  # no verifier: one stage-1 draft
        entry["options"].pop("candidates", None)
    ModelEntry.model_validate(entry)  # fail before writing anything
    save_folder(
        comp,
        folder,
        info={k: v for k, v in info.items() if isinstance(v, str | int | float | list | dict)},
    )
    models = [m for m in models if m.get("id") != model_id] + [entry]
    doc["models"] = models
    if make_default or not doc.get("default"):
        doc["default"] = model_id
    Registry.model_validate({k: v for k, v in doc.items() if k in ("default", "models")})
    text = dump_registry_toml({"default": doc["default"], "models": models})
    tmp = models_file.with_name(f".{models_file.name}.{os.getpid()}.tmp")
    models_file.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(text)
    os.replace(tmp, models_file)
    return {
        "id": model_id,
        "path": str(folder),
        "version": entry["version"],
        "models_file": str(models_file),
        "default": doc["default"],
    }
