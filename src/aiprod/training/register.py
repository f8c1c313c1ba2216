"""``aiprod models register``: install a training run as a model (or an upsampler of one) and
list it in a models.toml, editing the file with tomlkit so its comments and layout stay.

- The entry keeps the run's family (a fine-tuned ``ltxv`` model stays ``ltxv``) and takes its
  limits, defaults, options and dtype from the entry the run started from (``model.registry_id``
  for registry runs; for the built-in architecture the entry whose path is ``init_from``, else
  the packaged built-in entry), and records what it was trained from in ``trained_from``.
- A folder that no ``aiprod train`` run wrote is refused: a checkpoint of your own is listed by
  hand (docs/models.md, "Bring your own checkpoint").
- ``upsampler_of``: an upsampler run's x2 latent upsampler is installed as the
  ``components.upsampler`` of an existing entry, for two-stage serving.
"""

from __future__ import annotations

import copy
import json
import os
import tomllib
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import AoT, Table

from aiprod.core.errors import ConfigError
from aiprod.training.components import Components, base_models_file, save_folder
from aiprod.training.config import TrainConfig
from aiprod.training.deploy import load_any
from aiprod.training.provenance import code_commit, run_info

# The entry keys a registered model takes from its base entry as they are written there.
_FROM_BASE = ("dtype", "price_per_gpu_second", "limits", "defaults", "options")


def _read_doc(models_file: Path) -> tomlkit.TOMLDocument:
    if not models_file.is_file():
        doc = tomlkit.document()
        doc.add(tomlkit.comment("aiprod model registry (docs/models.md)"))
        return doc
    try:
        return tomlkit.parse(models_file.read_text())
    except Exception as exc:  # tomlkit's parse errors share no public base class
        raise ConfigError(f"{models_file}: not valid TOML ({exc})") from exc


def _raw_entry(models_file: Path | None, model_id: str) -> dict[str, Any] | None:
    """An entry's table as written in a models.toml (None: the packaged file)."""
    from aiprod.core.registry import default_models_file

    path = Path(models_file) if models_file else default_models_file()
    doc = tomllib.loads(path.read_text())
    return next((m for m in doc.get("models", []) if m.get("id") == model_id), None)


def _base_entry(cfg: TrainConfig | None, info: dict[str, Any], models_file: Path) -> dict:
    """The base entry's table (as written) and its family, for a run's config or a model
    folder's ``aiprod.json``."""
    from aiprod.core.registry import default_models_file, load_registry

    base_id = cfg.model.registry_id if cfg and cfg.model.source == "registry" else None
    base_id = base_id or info.get("base_model")
    if base_id:
        base_file = base_models_file(cfg.model) if cfg else info.get("base_models_file")
        base_file = None if base_file in (None, "packaged") else Path(base_file)
        raw = _raw_entry(base_file, base_id)
        if raw is None:
            raise ConfigError(
                f"the run was trained from model '{base_id}', which is no longer in "
                f"{base_file or default_models_file()}: put its entry back, or register with "
                "a models file that has it (AIPROD_MODELS_FILE)"
            )
        return raw
    folder = info.get("base_folder")
    if folder and models_file.is_file():  # the entry serving the folder the run started from
        for entry in load_registry(models_file).models:
            if entry.path is not None and str(entry.path) == str(Path(folder).resolve()):
                found = _raw_entry(models_file, entry.id)
                if found is not None:
                    return found
    packaged = _raw_entry(None, "builtin")
    assert packaged is not None
    return packaged


def _load_run(path: Path) -> tuple[Components, TrainConfig | None, dict[str, Any]]:
    """A run folder, checkpoint or exported model folder -> (model, config, facts)."""
    from aiprod.training.deploy import load_checkpoint

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} does not exist: give a run folder (output_dir) or checkpoint")
    if (path / "model_index.json").is_file() or (path / "transformer").is_dir():
        info = {}
        if (path / "aiprod.json").is_file():
            info = json.loads((path / "aiprod.json").read_text())
        if info.get("trained_by") != "aiprod train":
            raise ConfigError(
                f"{path} was not trained by aiprod train (no aiprod.json of a run): register "
                "takes a run's output_dir, a checkpoint or a run's final/; to serve a checkpoint "
                "of your own, add an entry for it to models.toml (docs/models.md, 'Bring your "
                "own checkpoint')"
            )
        comp, info = load_any(path)
        return comp, None, info
    comp, cfg, meta = load_checkpoint(path)
    info = {**run_info(cfg), **meta, "config_name": cfg.name}
    return comp, cfg, info


def _relative(folder: Path, models_file: Path) -> str:
    try:
        return folder.resolve().relative_to(models_file.parent.resolve()).as_posix()
    except ValueError:
        return str(folder.resolve())


def _trained_from(info: dict[str, Any], source: Path) -> dict[str, str]:
    keys = ("base_model", "base_models_file", "base_folder", "run", "config", "commit")
    out = {k: str(info[k]) for k in keys if info.get(k) is not None}
    out["checkpoint"] = str(Path(info.get("checkpoint") or source).resolve())
    if info.get("step") or info.get("steps"):
        out["step"] = str(info.get("step") or info.get("steps"))
    out.setdefault("commit", code_commit() or "unknown")
    return out


def _models_aot(doc: tomlkit.TOMLDocument) -> AoT:
    models = doc.get("models")
    if models is None:
        doc.append("models", tomlkit.aot())
        models = doc["models"]
    if not isinstance(models, AoT):
        raise ConfigError("models.toml: 'models' must be an array of tables ([[models]])")
    return models


def _set_table(table: Table, key: str, value: Any) -> None:
    """Set ``key``, keeping the table's other keys (and their comments) where they are."""
    if isinstance(value, dict):
        sub = table.get(key)
        if not isinstance(sub, dict):
            sub = tomlkit.table()
            table[key] = sub
        for k, v in value.items():
            _set_table(sub, k, v)  # type: ignore[arg-type]
        return
    table[key] = value


def _write(doc: tomlkit.TOMLDocument, models_file: Path) -> None:
    """Replace the file atomically (temp file + rename)."""
    tmp = models_file.with_name(f".{models_file.name}.{os.getpid()}.tmp")
    models_file.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(tomlkit.dumps(doc))
    os.replace(tmp, models_file)


def _new_entry(
    base: dict[str, Any], comp: Components, info: dict[str, Any], *, family: str
) -> dict[str, Any]:
    """The settings a registered model takes from its base entry, fitted to what it has."""
    entry = {k: copy.deepcopy(base[k]) for k in _FROM_BASE if k in base}
    options = entry.setdefault("options", {})
    if family == "builtin":
        entry["dtype"] = "float32"  # the built-in model is trained and served in fp32
        if comp.verifier is None:  # no verifier: one stage-1 draft
            options.pop("candidates", None)
        options.pop("tiny_seed", None)
    if family == "ltxv" and "max_sequence_length" not in options:
        options["max_sequence_length"] = comp.max_length  # served as it was trained
    if not options:
        entry.pop("options")
    if comp.upsampler is None:
        entry.setdefault("defaults", {})["two_stage"] = False
    return entry


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
    """Install a run as model ``model_id`` and add (or update) its models.toml entry."""
    from aiprod.core.registry import BuiltinEntry, ModelEntry

    try:
        BuiltinEntry(id=model_id)
    except ValueError as exc:
        raise ConfigError(
            f"model id {model_id!r} is not valid: use letters, digits, '.', '_' or '-'"
        ) from exc
    models_file = Path(models_file)
    doc = _read_doc(models_file)
    comp, cfg, info = _load_run(Path(checkpoint))
    base = _base_entry(cfg, info, models_file)
    family = base.get("family", "builtin")
    folder = Path(dest) if dest else models_file.parent / "models" / model_id
    step = info.get("step") or info.get("steps")
    what = "LoRA fine-tune" if (cfg and cfg.mode == "lora") else "fine-tune"
    if not info.get("base_model") and family == "builtin":
        what = "training"
    of = f" of '{info['base_model']}'" if info.get("base_model") else ""
    fields: dict[str, Any] = {
        "family": family,
        "path": _relative(folder, models_file),
        "version": version or (f"{model_id}-step{step}" if step else model_id),
        "description": description
        or f"{what}{of} by aiprod train ({info.get('config_name', 'run')}, step {step})",
        **_new_entry(base, comp, info, family=family),
        "trained_from": _trained_from(info, Path(checkpoint)),
    }
    if price_per_gpu_second is not None:
        fields["price_per_gpu_second"] = price_per_gpu_second
    if family not in ("ltxv", "builtin"):
        raise ConfigError(f"a run of family '{family}' cannot be registered (ltxv/builtin only)")
    ModelEntry.model_validate({"id": model_id, **fields})  # fail before writing anything
    if "default" not in doc:  # a new file: its first model is the default
        doc["default"] = model_id
    models = _models_aot(doc)
    table = next((t for t in models if t.get("id") == model_id), None)
    if table is None:
        table = tomlkit.table()
        table.trivia.indent = "\n"  # a blank line before it, as a person writes one
        table["id"] = model_id
        models.append(table)
    else:  # the old entry's settings go: a stale key of another family would not validate
        for key in ("components", "options", "limits", "defaults", "trained_from"):
            if key in table:
                del table[key]
    for key, value in fields.items():
        _set_table(table, key, value)
    if make_default:
        doc["default"] = model_id
    saved = {k: v for k, v in info.items() if isinstance(v, str | int | float | list | dict)}
    _check_registry(doc, models_file)
    save_folder(comp, folder, info=saved)
    _write(doc, models_file)
    return {
        "id": model_id,
        "family": family,
        "path": str(folder),
        "version": fields["version"],
        "models_file": str(models_file),
        "default": str(doc["default"]),
        "trained_from": fields["trained_from"],
    }


def _check_registry(doc: tomlkit.TOMLDocument, models_file: Path) -> None:
    from aiprod.core.registry import Registry

    data = doc.unwrap()
    try:
        Registry.model_validate({k: v for k, v in data.items() if k in ("default", "models")})
    except ValueError as exc:
        raise ConfigError(f"{models_file}: the result would not be valid ({exc})") from exc


def register_upsampler(
    checkpoint: Path, *, entry_id: str, models_file: Path, dest: Path | None = None
) -> dict[str, Any]:
    """Install an upsampler run's latent upsampler as ``components.upsampler`` of ``entry_id``."""
    from aiprod.core.registry import load_registry

    models_file = Path(models_file)
    entry = load_registry(models_file).get(entry_id)
    comp, cfg, info = _load_run(Path(checkpoint))
    trained = cfg is not None and any(p.target == "upsampler" for p in cfg.phases)
    if comp.upsampler is None or (cfg is not None and not trained):
        raise ConfigError(
            f"{checkpoint} trained no latent upsampler: --upsampler-of takes a run with a "
            "`target: upsampler` phase (configs/examples/lora-ltxv.yaml, second document)"
        )
    if entry.family not in ("ltxv", "builtin"):
        raise ConfigError(
            f"model '{entry_id}' is {entry.family}: aiprod trains LTX-Video upsamplers"
        )
    vae_cfg = (entry.components.vae or (entry.path or Path()) / "vae") / "config.json"
    if vae_cfg.is_file():
        channels = json.loads(vae_cfg.read_text()).get("latent_channels")
        have = comp.upsampler.config.in_channels
        if channels is not None and channels != have:
            raise ConfigError(
                f"the run's upsampler takes {have} latent channels but model '{entry_id}''s VAE "
                f"makes {channels}: train the upsampler on that model (model.registry_id: "
                f"{entry_id})"
            )
    folder = Path(dest) if dest else models_file.parent / "models" / f"{entry_id}-upsampler"
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}")
    comp.upsampler.save_pretrained(tmp)
    (tmp / "aiprod.json").write_text(
        json.dumps(
            {"trained_by": "aiprod train", **_trained_from(info, Path(checkpoint))}, indent=2
        )
    )
    doc = _read_doc(models_file)
    table = next((t for t in _models_aot(doc) if t.get("id") == entry_id), None)
    assert table is not None  # load_registry found it
    _set_table(table, "components", {"upsampler": _relative(folder, models_file)})
    _check_registry(doc, models_file)
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    os.replace(tmp, folder)
    _write(doc, models_file)
    return {"id": entry_id, "upsampler": str(folder), "models_file": str(models_file)}
