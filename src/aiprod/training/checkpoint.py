"""Checkpoints: one folder per step, written atomically, keeping the last N plus the best.

``checkpoints/step-00001234/`` holds ``<part>.safetensors`` for every saved model part (LoRA
runs save only the adapter), ``tokenizer/``, ``config.yaml`` (the run's config),
``state.pt`` (step, phase, optimizer, lr schedule, data position, every RNG state, config
fingerprint) and ``meta.json`` (step, phase, held-out loss, for people and for "best").
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from aiprod.core.errors import ConfigError

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step-(\d{8})$")


def capture_rng(noise: torch.Generator) -> dict[str, Any]:
    out: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "noise": noise.get_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(state: dict[str, Any], noise: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    noise.set_state(state["noise"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(root: Path) -> list[Path]:
    """Step folders under ``root``, oldest first."""
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(dirs, key=lambda p: p.name)


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def best_checkpoint(root: Path) -> Path | None:
    f = root / "best.json"
    if not f.is_file():
        return None
    p = root / json.loads(f.read_text())["dir"]
    return p if p.is_dir() else None


def save_checkpoint(
    root: Path,
    *,
    step: int,
    parts: dict[str, dict[str, torch.Tensor]],
    tokenizer: Any,
    config: dict[str, Any],
    state: dict[str, Any],
    meta: dict[str, Any],
    keep_last: int,
    keep_best: bool,
) -> Path:
    """Write ``step-N/`` atomically, update best.json, prune old ones; returns the folder."""
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        for name, sd in parts.items():
            save_file(
                {k: v.detach().cpu().clone().contiguous() for k, v in sd.items()},
                tmp / f"{name}.safetensors",
            )
        tokenizer.save_pretrained(tmp / "tokenizer")
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        torch.save(state, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    loss = meta.get("heldout_loss")
    best_file = root / "best.json"
    if loss is not None:
        best = json.loads(best_file.read_text()) if best_file.is_file() else None
        if best is None or loss < best["heldout_loss"] or not (root / best["dir"]).is_dir():
            _write_json(best_file, {"dir": final.name, "step": step, "heldout_loss": loss})
    _prune(root, keep_last=keep_last, keep_best=keep_best)
    return final


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _prune(root: Path, *, keep_last: int, keep_best: bool) -> None:
    found = list_checkpoints(root)
    best = best_checkpoint(root) if keep_best else None
    for p in found[:-keep_last]:
        if best is not None and p.resolve() == best.resolve():
            continue
        shutil.rmtree(p, ignore_errors=True)


def load_parts(ckpt: Path) -> dict[str, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    return {p.stem: load_file(p) for p in sorted(ckpt.glob("*.safetensors"))}


def load_state(ckpt: Path) -> dict[str, Any]:
    f = ckpt / "state.pt"
    if not f.is_file():
        raise ConfigError(f"{ckpt} is not a training checkpoint (no state.pt)")
    return torch.load(f, weights_only=False)


def resolve_checkpoint(path: Path) -> Path:
    """A step folder, or a run/checkpoints folder (-> its best, else its latest)."""
    path = Path(path)
    if (path / "state.pt").is_file():
        return path
    for root in (path, path / "checkpoints"):
        found = best_checkpoint(root) or latest_checkpoint(root)
        if found is not None:
            return found
    raise ConfigError(
        f"{path}: no checkpoint here (give a checkpoints/step-N folder or a run's output_dir)"
    )
