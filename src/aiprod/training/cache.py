"""The one-time cache of a phase's training items under ``output_dir/cache``.

A phase's clips are loaded (``training.data.load_clips``), turned into items by its target
(latents, embeddings, subject maps, ...) and saved once; the key hashes everything the items
depend on (the data config, buckets, target, the autoencoder's and text encoder's weights,
the vocabulary, and what the target adds), so a changed model never reads stale items.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from aiprod.training.components import Components
from aiprod.training.config import PhaseConfig
from aiprod.training.data import load_clips, tensors_digest
from aiprod.training.targets.base import PhaseData, Target

FORMAT = 2  # 2: items hold token ids


class LatentCache:
    """Items of a phase (or its held-out split), from disk when their key matches."""

    def __init__(
        self,
        root: Path,
        comp: Components,
        targets: dict[str, Target],
        *,
        on_event: Callable[[str, dict[str, Any]], None],
        split: bool = True,
    ) -> None:
        self.split = split  # False: no held-out split, every clip trains
        self.root = root
        self.comp = comp
        self.targets = targets
        self.on_event = on_event

    def key(self, phase: PhaseConfig, *, heldout: bool) -> str:
        parts: dict[str, Any] = {
            "data": phase.data.model_dump(mode="json"),
            "buckets": phase.buckets,
            "target": phase.target,
            "heldout": heldout,
            **({} if self.split else {"split": False}),
            "vae": tensors_digest(self.comp.vae.state_dict()),
            # held-out items (and phases that train the encoder) embed their token ids on use
            "te": None if heldout else tensors_digest(self.comp.text_encoder.state_dict()),
            "vocab": len(self.comp.tokenizer),
            "extra": "",
            "format": FORMAT,
        }
        parts.update(self.targets[phase.target].key_parts(phase, heldout=heldout))
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    @torch.no_grad()
    def prepare(
        self, phase: PhaseConfig, *, heldout: bool = False, limit: int | None = None
    ) -> PhaseData:
        """Load a phase's clips and turn them into (cached) training items."""
        target = self.targets[phase.target]
        data_cfg = phase.data
        if limit is not None:
            data_cfg = data_cfg.model_copy(update={"limit": limit})
        if not target.cached:
            clips = load_clips(data_cfg, phase.buckets, heldout=heldout, split=self.split)
            return target.items(phase, clips, heldout=heldout)
        key = self.key(phase.model_copy(update={"data": data_cfg}), heldout=heldout)
        path = self.root / f"{phase.name}{'-heldout' if heldout else ''}-{key}.pt"
        if path.is_file():
            return PhaseData(**torch.load(path, weights_only=False))
        clips = load_clips(data_cfg, phase.buckets, heldout=heldout, split=self.split)
        self.on_event("prepare", {"phase": phase.name, "clips": len(clips), "heldout": heldout})
        self.comp.vae.eval()
        data = target.items(phase, clips, heldout=heldout)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(data.__dict__, tmp)
        tmp.replace(path)
        return data
