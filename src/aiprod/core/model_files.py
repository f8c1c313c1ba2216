"""Torch-free checks of a registry entry's files, and what its configs say it can do.

``entry_problems(entry)`` lists every file-level problem a load would hit, one line each naming
the entry, the problem and the fix: the path exists; the family's components are there with their
configs; the transformer's class is the family's; an upsampler's channels fit the VAE's latents;
the text length resolves. Only JSON configs are read (no tensor, no torch), so the API process,
``aiprod models list`` and ``aiprod serve`` run them as well as the worker, before any load.

``model_facts(entry)`` is what the request checks need from those configs (is there an
upsampler, the VAE's compression ratios); ``fit_request`` refuses what the model cannot do.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiprod.core.errors import ConfigError, InvalidRequest

if TYPE_CHECKING:
    from aiprod.core.registry import ModelEntry, Registry

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
# Text tokens when neither models.toml (options.max_sequence_length) nor the tokenizer
# (a model_max_length of 8..1024; transformers writes 1e30 for "no limit") sets it.
DEFAULT_TEXT_LENGTH = {"ltxv": 128, "builtin": 128, "ltx2": 1024}
TOKENIZER_LENGTH_RANGE = (8, 1024)


def tokenizer_length(n: object) -> int | None:
    """A tokenizer's ``model_max_length`` when it is a real limit (8..1024), else None."""
    lo, hi = TOKENIZER_LENGTH_RANGE
    if isinstance(n, int | float) and not isinstance(n, bool) and lo <= n <= hi:
        return int(n)
    return None


# The LTX pipelines check sizes against 32, whatever the VAE's own ratio is.
PIPELINE_SIZE_MULTIPLE = 32
# The name a component has in models.toml ([models.components]) when it differs from its folder.
USER_KEY = {"latent_upsampler": "upsampler"}


def component_path(entry: ModelEntry, name: str, *, required: bool = True) -> Path | None:
    """Where component ``name`` lives: ``components.<key>`` or ``<path>/<name>``."""
    key = USER_KEY.get(name, name)
    override = getattr(entry.components, key, None)
    if override is not None:
        if not override.exists():
            raise ConfigError(
                f"model '{entry.id}': components.{key} = {override} does not exist; "
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
            f"diffusers-format {name}/ folder there or set components.{key} in models.toml"
        )
    return None


def upsampler_dir(entry: ModelEntry) -> Path | None:
    """The latent upsampler's folder (a run's export nests it one level deeper), if any."""
    up = component_path(entry, "latent_upsampler", required=False)
    if up is not None and (up / "latent_upsampler").is_dir():
        up = up / "latent_upsampler"
    return up


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


def read_config(entry: ModelEntry, file: Path, *, what: str) -> dict[str, Any]:
    """A component's JSON config; ``ConfigError`` naming the entry when missing or broken."""
    if not file.is_file():
        raise ConfigError(
            f"model '{entry.id}': {file} is missing; the {what} folder must be in the diffusers "
            "layout (save it with save_pretrained, or copy the whole folder)"
        )
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"model '{entry.id}': {file} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"model '{entry.id}': {file} is not a JSON object")
    return data


def check_family(entry: ModelEntry, transformer_dir: Path, expected: str) -> None:
    """Refuse a folder whose transformer belongs to another family, naming the right one."""
    cls = read_config(entry, transformer_dir / "config.json", what="transformer").get(
        "_class_name", ""
    )
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


def _component_config(entry: ModelEntry, name: str, folder: Path) -> dict[str, Any] | None:
    """Check ``folder`` holds ``name``'s config; return it when it is a JSON model config."""
    if folder.is_file():  # a single weights file named directly in components
        return None
    if name == "tokenizer":
        if not any((folder / f).is_file() for f in ("tokenizer_config.json", "tokenizer.json")):
            raise ConfigError(
                f"model '{entry.id}': {folder} has no tokenizer_config.json or tokenizer.json; "
                "save the tokenizer with save_pretrained into tokenizer/"
            )
        return None
    file = "scheduler_config.json" if name == "scheduler" else "config.json"
    return read_config(entry, folder / file, what=name)


def resolve_text_length(entry: ModelEntry) -> tuple[int, str]:
    """The prompt's token length and where it came from: ``options.max_sequence_length``,
    else the tokenizer's ``model_max_length`` when a real limit (``tokenizer_length``), else the
    family's default
    (``DEFAULT_TEXT_LENGTH``; docs/models.md)."""
    if entry.options.max_sequence_length is not None:
        return entry.options.max_sequence_length, "options.max_sequence_length"
    tok = component_path(entry, "tokenizer", required=False)
    if tok is not None and (tok / "tokenizer_config.json").is_file():
        cfg = read_config(entry, tok / "tokenizer_config.json", what="tokenizer")
        n = tokenizer_length(cfg.get("model_max_length"))
        if n is not None:
            return n, "tokenizer model_max_length"
    return DEFAULT_TEXT_LENGTH[entry.family], f"default for family '{entry.family}'"


def _checks(entry: ModelEntry) -> list[Any]:
    """The entry's checks, in order; each raises ``ConfigError`` on its problem."""
    root = check_model_path(entry)  # nothing else can be checked without it
    checks: list[Any] = []
    if root.is_file():
        checks.append(
            lambda: single_file_config(
                entry, root, family=entry.family, configs="transformer/, vae/ configs"
            )
        )
        needed: tuple[str, ...] = NOT_IN_SINGLE_FILE[entry.family]
    else:

        def transformer() -> None:
            tdir = component_path(entry, "transformer")
            assert tdir is not None
            check_family(entry, tdir, entry.family)

        checks.append(transformer)
        needed = REQUIRED[entry.family]
    for name in needed:

        def component(name: str = name) -> None:
            folder = component_path(entry, name)
            assert folder is not None
            _component_config(entry, name, folder)

        checks.append(component)

    def scheduler() -> None:
        folder = component_path(entry, "scheduler", required=False)
        if folder is not None:
            _component_config(entry, "scheduler", folder)

    checks += [scheduler, lambda: _check_upsampler(entry), lambda: resolve_text_length(entry)]

    def lora() -> None:
        lora = entry.components.distilled_lora
        if lora is not None and not lora.exists():
            raise ConfigError(
                f"model '{entry.id}': components.distilled_lora = {lora} does not exist; "
                "fix the path in models.toml or remove it"
            )

    checks.append(lora)
    return checks


def _vae_config(entry: ModelEntry) -> dict[str, Any] | None:
    vae = component_path(entry, "vae", required=False)
    if vae is None or vae.is_file():
        return None
    return read_config(entry, vae / "config.json", what="vae")


def _check_upsampler(entry: ModelEntry) -> None:
    up = upsampler_dir(entry)
    where = (
        "components.upsampler" if entry.components.upsampler is not None else "latent_upsampler/"
    )
    if up is None:
        if entry.defaults.two_stage:
            raise ConfigError(
                f"model '{entry.id}': defaults.two_stage is true but there is no latent "
                "upsampler; add a latent_upsampler/ folder (or components.upsampler) or set "
                "defaults.two_stage = false"
            )
        return
    if up.is_file():
        return
    cfg = read_config(entry, up / "config.json", what="latent upsampler")
    vae = _vae_config(entry)
    if vae is None:
        return
    up_ch, vae_ch = cfg.get("in_channels", 128), vae.get("latent_channels", 128)
    if up_ch != vae_ch:
        raise ConfigError(
            f"model '{entry.id}': {where} ({up}) takes {up_ch}-channel latents but this "
            f"model's VAE makes {vae_ch}-channel ones; use an upsampler trained for this model "
            "(an upsampler phase of `aiprod train`, docs/training.md) or remove it and set "
            "defaults.two_stage = false"
        )


def entry_problems(entry: ModelEntry) -> list[str]:
    """Every file-level problem of ``entry``, one line each (empty: it can be loaded)."""
    from aiprod.core.registry import BuiltinEntry

    if isinstance(entry, BuiltinEntry) and entry.options.tiny_seed is not None:
        return []  # the tiny random built-in model is built in memory: no files
    try:
        checks = _checks(entry)
    except ConfigError as exc:
        return [exc.message]
    problems: list[str] = []
    for check in checks:
        try:
            check()
        except ConfigError as exc:
            if exc.message not in problems:
                problems.append(exc.message)
    return problems


def check_model_files(entry: ModelEntry) -> None:
    """Raise ``ConfigError`` on the first file-level problem ``load_pipeline`` would hit."""
    problems = entry_problems(entry)
    if problems:
        more = f" (and {len(problems) - 1} more: `aiprod models list` lists them)"
        raise ConfigError(problems[0] + (more if len(problems) > 1 else ""))


def registry_problems(registry: Registry) -> dict[str, list[str]]:
    """{model id: its problems} for every entry that has some, including the entries
    ``load_registry`` skipped (an invalid entry that is not the default)."""
    out = {m: [line] for m, line in registry.skipped.items()}
    for entry in registry.models:
        problems = entry_problems(entry)
        if problems:
            out[entry.id] = problems
    return out


@dataclass(frozen=True)
class ModelFacts:
    """What the request checks need from an entry's configs."""

    has_upsampler: bool
    spatial_ratio: int | None  # the VAE's, None when its config is not readable here
    temporal_ratio: int | None


def _facts(entry: ModelEntry) -> ModelFacts | None:
    from aiprod.core.registry import BuiltinEntry

    if isinstance(entry, BuiltinEntry) and entry.options.tiny_seed is not None:
        return None  # built in memory; the engine checks its requests
    if entry_problems(entry):
        return None  # a broken entry: refused as unavailable (503), not here
    up = upsampler_dir(entry)
    vae = _vae_config(entry)
    spatial = temporal = None
    if vae is not None:
        scale = sum(bool(s) for s in vae.get("spatio_temporal_scaling", ()) or ())
        spatial = vae.get("spatial_compression_ratio") or int(vae.get("patch_size", 4)) * 2**scale
        temporal = (
            vae.get("temporal_compression_ratio") or int(vae.get("patch_size_t", 1)) * 2**scale
        )
    return ModelFacts(up is not None, spatial, temporal)


_FACTS: dict[tuple[str, str], tuple[float, ModelFacts | None]] = {}
FACTS_TTL_SECONDS = 10.0


def model_facts(entry: ModelEntry) -> ModelFacts | None:
    """``entry``'s facts, read again at most every ``FACTS_TTL_SECONDS`` (files can change)."""
    key = (entry.id, str(entry.path))
    now = time.monotonic()
    hit = _FACTS.get(key)
    if hit is not None and now - hit[0] < FACTS_TTL_SECONDS:
        return hit[1]
    facts = _facts(entry)
    _FACTS[key] = (now, facts)
    return facts


def fit_request(entry: ModelEntry, params: dict[str, Any]) -> None:
    """Refuse (``InvalidRequest`` naming the field and the fix) what the model itself cannot
    do, whatever its limits say; ``params`` are ``ModelEntry.resolve_request``'s."""
    facts = model_facts(entry)
    if facts is None:
        return
    if params["two_stage"] and not facts.has_upsampler:
        raise InvalidRequest(
            f"model '{entry.id}' has no latent upsampler, so it cannot run two-stage: send "
            "two_stage=false (or the operator adds components.upsampler to its models.toml "
            "entry)",
            field="two_stage",
        )
    multiple = math.lcm(PIPELINE_SIZE_MULTIPLE, entry.limits.size_multiple)
    for name in ("width", "height"):
        v = params[name]
        if v % multiple:
            near = max(multiple, round(v / multiple) * multiple)
            raise InvalidRequest(
                f"{name}={v} must be a multiple of {multiple} for model '{entry.id}' "
                f"(its pipelines work on a {PIPELINE_SIZE_MULTIPLE}-pixel grid; try {near})",
                field=name,
            )
    t = facts.temporal_ratio
    frames = params["num_frames"]
    if t and (frames - 1) % t:
        k = max(1, round((frames - 1) / t))
        raise InvalidRequest(
            f"num_frames={frames} must be {t}*k+1 for model '{entry.id}' (its VAE compresses "
            f"time {t}x; e.g. {t * k + 1})",
            field="num_frames",
        )
