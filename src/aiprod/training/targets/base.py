"""The interface every training target implements, the items it trains on, and the helpers
several targets share (encoding clips to latents, embedding captions).

A target is stateless about its phase: every method takes the phase (or the phase's
:class:`PhaseRun`), so one instance serves every phase of its kind in a run. Its life in a
run: ``setup_model`` once before training (make the modules it trains), then per phase
``items`` (turned into cached :class:`PhaseData` by ``training.cache``), ``begin``, ``loss``
each step, ``end``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from aiprod.training.components import Components
from aiprod.training.config import FlowConfig, TrainConfig
from aiprod.training.data import Clip, frames_to_tensor, latent_foreground
from aiprod.training.distributed import Ranks
from aiprod.training.encode import embed_ids, normalize_latents, tokenize

if TYPE_CHECKING:
    from aiprod.training.config import PhaseConfig
    from aiprod.training.data import BucketBatcher
    from aiprod.training.schedule import PhaseLR

Loss = tuple[torch.Tensor, dict[str, Any]]


@dataclass
class PhaseData:
    """Cached training items of one phase (one entry per clip)."""

    bucket_of: list[int]
    fps: list[float]
    latents: list[torch.Tensor] = field(default_factory=list)  # transformer: (C, f, h, w)
    emb: list[torch.Tensor] = field(default_factory=list)  # (L, D)
    mask: list[torch.Tensor] = field(default_factory=list)  # (L,)
    ids: list[torch.Tensor] = field(default_factory=list)  # (L,) token ids of the caption
    pixels: list[np.ndarray] = field(default_factory=list)  # vae: (F, H, W, 3) uint8
    low: list[torch.Tensor] = field(default_factory=list)  # upsampler: raw latents (C,f,h,w)
    high: list[torch.Tensor] = field(default_factory=list)
    # refiner phases with refine_from: the upsampled half-size latent (normalised), where the
    # two-stage path starts the refinement from
    start: list[torch.Tensor] = field(default_factory=list)
    # denoiser phases with fg_weight: each latent cell's share of subject pixels (1, f, h, w)
    fg: list[torch.Tensor] = field(default_factory=list)
    # verifier phases: (4,) class indices of what the caption states (verifier.IGNORE: silent)
    labels: list[torch.Tensor] = field(default_factory=list)

    @classmethod
    def of(cls, clips: Sequence[Clip]) -> PhaseData:
        return cls(bucket_of=[c.bucket for c in clips], fps=[c.fps for c in clips])


@dataclass
class PhaseRun:
    """One phase being trained: its config, items, optimizer and data position."""

    index: int
    cfg: PhaseConfig
    target: Target
    data: PhaseData
    module: torch.nn.Module
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    schedule: PhaseLR
    batcher: BucketBatcher
    total_steps: int
    ema: Any | None = None  # diffusers EMAModel over ``params`` when the phase asks for one
    text_encoder: torch.nn.Module | None = None  # set when the phase trains it too


@dataclass
class TrainContext:
    """What targets share with the trainer: the run's config, model, device, the one
    generator every random draw of a step comes from (checkpointed, for exact resume) and
    this process's rank. ``loss`` gets the global batch: it draws the random numbers of all
    of it and computes the rows ``ranks.local`` names (``training.distributed``)."""

    cfg: TrainConfig
    comp: Components
    device: torch.device
    noise: torch.Generator
    ranks: Ranks = field(default_factory=Ranks)

    def flow(self, own: FlowConfig | None) -> FlowConfig:
        """A phase's own noise-level sampler (``own``), else the run's."""
        return own or self.cfg.flow


class Target(ABC):
    """One kind of phase: what it trains, on which items, with which loss."""

    name: ClassVar[str]
    cached: ClassVar[bool] = True  # items go through the latent cache (False: raw pixels)
    validates: ClassVar[bool] = False  # held-out loss and validation videos during its phases
    # whether a step's loss may leave a trained parameter out (DDP then looks for them)
    unused_parameters: ClassVar[bool] = False

    def __init__(self, ctx: TrainContext) -> None:
        self.ctx = ctx

    @property
    def comp(self) -> Components:
        return self.ctx.comp

    def setup_model(self, phases: list[Any]) -> None:  # noqa: B027 - most targets need nothing
        """Before training: make the modules ``phases`` (this target's) train if missing."""

    def module(self) -> torch.nn.Module:
        """The module a phase of this target trains."""
        return self.comp.modules()[self.name]

    def ddp_module(self) -> torch.nn.Module:
        """What DDP wraps under several processes: a module whose forward is the training
        pass (the trained module itself, unless ``loss`` calls it other than by forward)."""
        return self.module()

    def param_groups(self, phase: Any) -> list[tuple[torch.nn.Module, float]]:
        """(module, lr scale) for each module a phase trains, in the order of its optimizer's
        (and EMA's) params; the scale keeps a module at its own peak lr under the schedule."""
        return [(self.module(), 1.0)]

    def trained_parts(self, phase: Any) -> set[str]:
        """Names of the model parts a phase changes (what a registry run checkpoints)."""
        return {self.name}

    def key_parts(self, phase: Any, *, heldout: bool) -> dict[str, Any]:
        """What a phase's cache key needs beyond the common parts (``training.cache``)."""
        return {}

    @abstractmethod
    def items(self, phase: Any, clips: list[Clip], *, heldout: bool) -> PhaseData:
        """A phase's clips -> its training items."""

    def begin(self, index: int, *, phase_step: int) -> None:  # noqa: B027
        """Phase ``index`` starts, before its optimizer exists (``phase_step`` > 0: resumed
        inside it)."""

    @abstractmethod
    def loss(self, run: PhaseRun, idx: list[int]) -> Loss:
        """Mean loss of this rank's rows (``ctx.ranks.local``) of the global batch ``idx`` of
        ``run``'s items (not yet backpropagated), details."""

    def end(self, run: PhaseRun) -> None:  # noqa: B027
        """A phase ends (after its EMA average, if any, is in place)."""


# ---------------------------------------------------------------- shared helpers


@torch.no_grad()
def encode_video(comp: Components, frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> raw VAE latent mean (C, f, h, w)."""
    x = frames_to_tensor(frames).unsqueeze(0).to(device)
    return comp.vae.encode(x).latent_dist.mean[0].float().cpu()


def half(clip: Clip) -> np.ndarray:
    """The clip's frames at half width and height."""
    import cv2

    f, h, w, _ = clip.frames.shape
    return np.stack(
        [cv2.resize(x, (w // 2, h // 2), interpolation=cv2.INTER_AREA) for x in clip.frames]
    )


@torch.no_grad()
def upsampled(comp: Components, frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """Normalised latent the two-stage path refines: the clip encoded, then upsampled x2."""
    assert comp.upsampler is not None
    comp.upsampler.eval()
    z = encode_video(comp, frames, device).unsqueeze(0).to(device)
    up = comp.upsampler(z).float()
    return normalize_latents(comp.vae, up)[0].cpu()


@torch.no_grad()
def latent_items(
    comp: Components,
    clips: list[Clip],
    device: torch.device,
    *,
    foreground: bool = False,
    refine_start: bool = False,
) -> PhaseData:
    """Each clip's normalised latent, with its subject map (``foreground``) and the upsampled
    half-size latent the refinement starts from (``refine_start``)."""
    data = PhaseData.of(clips)
    for c in clips:
        z = encode_video(comp, c.frames, device).unsqueeze(0)
        data.latents.append(normalize_latents(comp.vae, z)[0])
        if foreground:
            data.fg.append(latent_foreground(c.frames, tuple(z.shape[-3:])))
        if refine_start:
            data.start.append(upsampled(comp, half(c), device))
    return data


@torch.no_grad()
def embed_captions(
    comp: Components, captions: list[str], device: torch.device
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """-> (embeddings, attention masks, token ids) of the captions, one entry each."""
    embs: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    ids: list[torch.Tensor] = []
    for s in range(0, len(captions), 64):
        t, m = tokenize(comp, captions[s : s + 64])
        embs += list(embed_ids(comp, t, device).cpu())
        masks += list(m)
        ids += list(t)
    return embs, masks, ids
