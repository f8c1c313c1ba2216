"""The built-in model's engine backend: its folder (or the tiny random model), the LTX-Video
engine in classic mode on the autoencoder's 8-px grid, and its prompt verifier as the draft
ranker.

The built-in model has the LTX-Video architecture, so the engine that runs it is the general
one (``aiprod.engine.ltxv_engine``); what only it has lives here: stage 1 at sizes the
diffusers pipelines would refuse (80x80 for 160x160), prompts padded to its tokenizer's
length, the classic pipeline (the trainer's coordinates and schedule) by default, and drafts
ranked by its verifier, which knows the caption grammar (the engine sees only a
``DraftRanker``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from aiprod.builtin.verifier import PromptVerifier, pick_best
from aiprod.core.model_files import component_path
from aiprod.core.registry import BuiltinEntry
from aiprod.engine.backends.ltxv import assemble, load_components
from aiprod.engine.loading import load_or_fail, modules_to
from aiprod.engine.ltx import SIZE_MULTIPLE
from aiprod.engine.ltxv_engine import LTXVideoEngine
from aiprod.engine.tiny import tiny_ltxv_components

log = logging.getLogger(__name__)


def load(entry: BuiltinEntry, device: torch.device, dtype: torch.dtype) -> LTXVideoEngine:
    """The entry's folder (or, with ``options.tiny_seed``, the tiny random model) -> engine."""
    if entry.options.tiny_seed is not None:
        comps = modules_to(tiny_ltxv_components(seed=entry.options.tiny_seed), dtype)
    else:
        comps = load_components(entry, dtype)
        verifier = load_verifier(entry)
        if verifier is not None:
            comps["verifier"] = verifier
    return build(entry, comps, device=device, dtype=dtype)


def build(
    entry: BuiltinEntry, comps: dict[str, Any], *, device: torch.device, dtype: torch.dtype
) -> LTXVideoEngine:
    """The engine around the built-in model's components (``verifier`` optional)."""
    comps = dict(comps)
    verifier = comps.pop("verifier", None)
    # The built-in model is trained with prompts padded to its tokenizer's length.
    tok_len = getattr(comps["tokenizer"], "model_max_length", 0)
    return assemble(
        entry,
        comps,
        device=device,
        dtype=dtype,
        auto_mode="classic",
        pipeline_class=on_vae_grid,
        max_sequence_length=int(tok_len) if 0 < tok_len <= 1024 else 128,
        ranker=VerifierRanker(verifier) if verifier is not None else None,
        candidates=entry.options.candidates,
    )


def load_verifier(entry: BuiltinEntry) -> PromptVerifier | None:
    """The prompt verifier (verifier/) when the entry asks for drafts; an optional part, like
    refiner/: without it, serve one draft."""
    if entry.options.candidates <= 1:
        return None
    ver = component_path(entry, "verifier", required=False)
    if ver is None:
        log.warning(
            "model '%s': options.candidates = %d, but %s has no prompt verifier "
            "(verifier/, trained by a verifier phase of `aiprod train`) to rank drafts: "
            "serving one stage-1 draft per clip (set candidates = 1 to silence this)",
            entry.id,
            entry.options.candidates,
            entry.path,
        )
        return None
    verifier: PromptVerifier = load_or_fail(
        entry, "prompt verifier", lambda: PromptVerifier.from_pretrained(ver)
    )
    return verifier


@dataclass
class VerifierRanker:
    """The prompt verifier as the engine's ``DraftRanker``."""

    verifier: PromptVerifier

    @property
    def stage(self) -> int:
        return int(self.verifier.config.stage)

    def judges(self, prompts: Sequence[str]) -> bool:
        return self.verifier.judges(list(prompts))

    def pick_best(
        self, latents: torch.Tensor, prompts: Sequence[str], k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return pick_best(self.verifier, latents, prompts, k)

    def to(self, device: torch.device) -> VerifierRanker:
        self.verifier.to(device).eval()
        return self


def on_vae_grid(cls: type) -> type:
    """``cls`` (an LTX pipeline class) checking sizes against its autoencoder's spatial ratio
    instead of the fixed 32 of diffusers' ``check_inputs``.

    LTX-Video's autoencoder compresses 32x, so there the two rules agree; the built-in model's
    compresses 8x, and its stage 1 is trained at sizes such as 80x80 (10x10 latents) that serve
    160x160. Every other check of the parent still runs."""

    def check_inputs(self: Any, *args: Any, height: int, width: int, **kwargs: Any) -> None:
        r = int(self.vae_spatial_compression_ratio)
        if height % r or width % r:
            raise ValueError(f"height and width must be multiples of {r}, got {height}x{width}")
        up = lambda n: math.ceil(n / SIZE_MULTIPLE) * SIZE_MULTIPLE  # noqa: E731
        super(grid_cls, self).check_inputs(*args, height=up(height), width=up(width), **kwargs)

    attrs = {"check_inputs": check_inputs, "on_vae_grid": True, "__doc__": cls.__doc__}
    grid_cls = type(cls.__name__, (cls,), attrs)
    return grid_cls
