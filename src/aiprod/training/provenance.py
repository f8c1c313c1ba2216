"""What a run was trained from: its base model, run folder, config file and code commit.

``aiprod train`` writes ``output_dir/run.json`` when it starts (:func:`write_run_file`); the
exported ``final/aiprod.json`` and the models.toml entry that ``aiprod models register``
writes (``trained_from``) carry the same facts, so a served model names what made it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from aiprod.training.config import TrainConfig

RUN_FILE = "run.json"


def code_commit() -> str | None:
    """The git commit of the aiprod code running now (None outside a git checkout)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None


def base_of(cfg: TrainConfig) -> dict[str, Any]:
    """The model a run starts from: a registry entry (id, models file) or a folder."""
    from aiprod.training.components import base_models_file

    m = cfg.model
    if m.source == "registry":
        models_file = base_models_file(m)
        return {
            "base_model": m.registry_id,
            "base_models_file": str(Path(models_file).resolve()) if models_file else "packaged",
        }
    if m.init_from is not None:
        return {"base_folder": str(Path(m.init_from).resolve())}
    return {"base_folder": "new (random init, built-in architecture)"}


def run_info(cfg: TrainConfig) -> dict[str, Any]:
    """The run's own facts plus what ``run.json`` recorded at its start (config file, commit)."""
    out = Path(cfg.output_dir).resolve()
    info: dict[str, Any] = {"run": str(out), **base_of(cfg)}
    recorded = out / RUN_FILE
    if recorded.is_file():
        info.update(json.loads(recorded.read_text()))
    info.setdefault("commit", code_commit())
    return {k: v for k, v in info.items() if v is not None}


def write_run_file(cfg: TrainConfig, config_file: Path, *, overrides: list[str]) -> Path:
    """Record the config file (and its command-line overrides) and the commit of a run."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "config": str(Path(config_file).resolve()),
        "commit": code_commit(),
    }
    if overrides:
        data["overrides"] = overrides
    path = out / RUN_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
    return path
