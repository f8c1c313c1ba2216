"""Torch-free checks of a registry entry's files (folders, configs, family), run before loading.

``check_model_files(entry)`` finds every problem a load would hit on the file level (missing
folder, missing component, wrong family, missing LoRA) and raises one ``ConfigError`` line that
names the entry and the fix. The loader runs it first; ``aiprod models register`` and service
startup can run it without importing torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from aiprod.core.errors import ConfigError
from aiprod.core.registry import BuiltinEntry

if TYPE_CHECKING:
    from aiprod.core.registry import ModelEntry

# transformer class name (config.json "_class_name") -> family
TRANSFORMER_FAMILIES = {
    "LTXVideoTransformer3DModel": "ltxv",
    "LTX2VideoTransformer3DModel": "ltx2",
}
# Components a folder must hold (besides the transformer), per family.
REQUIRED = {
    "ltxv": ("vae", "text_encoder", "tokenizer"),
    "builtin": ("vae", "text_encoder", "tokenizer"),
    "ltx2": ("vae", "audio_vae", "text_encoder", "tokenizer", "connectors", "vocoder"),
}
# What an original single-file checkpoint does not carry.
NOT_IN_SINGLE_FILE = {
    "ltxv": ("text_encoder", "tokenizer"),
    "builtin": ("text_encoder", "tokenizer"),
    "ltx2": ("text_encoder", "tokenizer", "connectors", "vocoder"),
}


def component_path(entry: ModelEntry, name: str, *, required: bool = True) -> Path | None:
    """Where component ``name`` lives: ``components.<name>`` or ``<path>/<name>``."""
    override = getattr(entry.components, "upsampler" if name == "latent_upsampler" else name, None)
    if override is not None:
        if not override.exists():
            raise ConfigError(
                f"model '{entry.id}': components.{name} = {override} does not exist; "
                "fix the path in models.toml"
            )
        return override
    # A folder entry keeps its parts in subfolders; a single-file entry finds the parts its
    # checkpoint lacks (text encoder, tokenizer, ...) in its local config folder.
    for base in (entry.path, entry.components.config):
        if base is not None and base.is_dir() and (base / name).exists():
            return base / name
    if required:
        raise ConfigError(
            f"model '{entry.id}': no {name} found (looked for {entry.path}/{name}); put a "
            f"diffusers-format {name}/ folder there or set components.{name} in models.toml"
        )
    return None


def check_model_path(entry: ModelEntry) -> Path:
    """The entry's ``path`` must exist: a diffusers folder or a single checkpoint file."""
    # The built-in model's weights come from `aiprod train` + `aiprod models register`; the
    # tiny random model (tests, benchmarks) is asked for explicitly, never a silent fallback.
    builtin = entry.family == "builtin"
    tiny = " or set options.tiny_seed = 0 (and no path) for the tiny random test model"
    if entry.path is None:
        raise ConfigError(
            f"model '{entry.id}': no path set; set `path` to its diffusers folder or "
            "checkpoint file in models.toml" + (tiny if builtin else "")
        )
    if not entry.path.exists():
        fix = (
            "train and register it there (`aiprod train CONFIG`, `aiprod models register`), "
            "fix `path` in models.toml" + tiny
            if builtin
            else "download/copy the weights there or fix `path` in models.toml"
        )
        raise ConfigError(f"model '{entry.id}': path {entry.path} does not exist; {fix}")
    return entry.path


def single_file_config(entry: ModelEntry, root: Path, *, family: str, configs: str) -> Path:
    """The local config folder a single-file checkpoint needs (``components.config``), with
    its transformer config checked against ``family``; ``configs`` says what it must hold."""
    config = entry.components.config
    if config is None or not config.is_dir():
        raise ConfigError(
            f"model '{entry.id}': {root} is a single-file checkpoint; set components.config "
            f"to a local diffusers-format config folder ({configs})"
        )
    check_family(entry, config / "transformer", family)
    return config


def check_family(entry: ModelEntry, transformer_dir: Path, expected: str) -> None:
    """Refuse a folder whose transformer belongs to another family, naming the right one."""
    cfg = transformer_dir / "config.json"
    if not cfg.is_file():
        raise ConfigError(
            f"model '{entry.id}': {cfg} is missing; the transformer folder must be in the "
            "diffusers layout (config.json + *.safetensors)"
        )
    try:
        cls = json.loads(cfg.read_text()).get("_class_name", "")
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"model '{entry.id}': {cfg} is not valid JSON ({exc})") from exc
    family = TRANSFORMER_FAMILIES.get(cls)
    if family is None:
        raise ConfigError(
            f"model '{entry.id}': {transformer_dir} holds a '{cls}', which aiprod cannot run "
            f"(supported: {', '.join(TRANSFORMER_FAMILIES)})"
        )
    if family != expected and not (expected == "builtin" and family == "ltxv"):
        raise ConfigError(
            f"model '{entry.id}': {transformer_dir} holds an {family} model ({cls}) but the "
            f"entry says family = '{entry.family}'; set family = '{family}' in models.toml"
        )


def check_model_files(entry: ModelEntry) -> None:
    """Raise ``ConfigError`` on the first file-level problem ``load_pipeline`` would hit."""
    if isinstance(entry, BuiltinEntry) and entry.options.tiny_seed is not None:
        return  # the tiny random built-in model is built in memory: no files
    root = check_model_path(entry)
    if root.is_file():
        single_file_config(entry, root, family=entry.family, configs="transformer/, vae/ configs")
        needed = NOT_IN_SINGLE_FILE[entry.family]
    else:
        transformer = component_path(entry, "transformer")
        assert transformer is not None
        check_family(entry, transformer, entry.family)
        needed = REQUIRED[entry.family]
    for name in needed:
        component_path(entry, name)
    if entry.defaults.two_stage:
        if component_path(entry, "latent_upsampler", required=False) is None:
            raise ConfigError(
                f"model '{entry.id}': defaults.two_stage is true but there is no latent "
                "upsampler; add a latent_upsampler/ folder (or components.upsampler) or set "
                "two_stage = false"
            )
    lora = entry.components.distilled_lora
    if lora is not None and not lora.exists():
        raise ConfigError(
            f"model '{entry.id}': components.distilled_lora = {lora} does not exist; "
            "fix the path in models.toml or remove it"
        )
