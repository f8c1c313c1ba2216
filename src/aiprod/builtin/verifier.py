"""Prompt verifier of the built-in model: picks the best of several drafts of a clip.

A small noise-aware 3D-conv classifier over latents that predicts what a clip of the
synthetic grammar shows (subject count, shape, colour, direction of motion). Sampling draws
``candidates`` stage-1 latents per prompt from different noise, scores each by the log
likelihood of what the prompt states (``attributes``; the count by default), and keeps
only the best: best-of-N with a learned verifier. A ``stage`` 1 verifier reads the stage-1
drafts (half size) and only the best is refined, for one stage-1 pass per extra candidate; a
``stage`` 2 verifier reads the refined full-size latents, where shapes are sharper, so every
draft is refined and only the best is decoded, for one stage-1 and one stage-2 pass per extra
candidate. It is trained by a ``target: verifier`` phase on encoded training clips (at the
size of the latents it reads) with the labels their captions state (``aiprod train``), never
on the evaluation's scorer, and it only knows the built-in model's caption grammar.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from aiprod.builtin.grammar import COLORS, DIRECTIONS, SHAPES, CaptionFacts, parse_caption
from aiprod.engine.drafts import tile

ATTRIBUTES = ("count", "shape", "color", "direction")
IGNORE = -100  # label of an attribute the caption does not state (cross-entropy ignore_index)


def _check_attributes(attributes: Sequence[str]) -> None:
    if not attributes:
        raise ValueError(f"attributes: give at least one of {list(ATTRIBUTES)}")
    if unknown := set(attributes) - set(ATTRIBUTES):
        raise ValueError(f"attributes {sorted(unknown)}: choose from {list(ATTRIBUTES)}")


class _Block(nn.Module):
    def __init__(self, channels: int, embed_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(8, channels)
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(8, channels)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1)
        self.film = nn.Linear(embed_dim, 2 * channels)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return x + self.conv2(F.silu(h))


class PromptVerifier(ModelMixin, ConfigMixin):
    """p(count, shape, colour, direction | noisy normalised latent x_t, noise level).

    ``stage``: which latents it ranks, 1 = the stage-1 drafts of the two-stage path, 2 = those
    drafts refined at full size (see the module docstring).
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 16,
        channels: int = 48,
        embed_dim: int = 64,
        counts: Sequence[int] = (1, 2, 3),
        shapes: Sequence[str] = SHAPES,
        colors: Sequence[str] = tuple(COLORS),
        directions: Sequence[str] = DIRECTIONS,
        attributes: Sequence[str] = ("count",),
        stage: int = 1,
    ) -> None:
        super().__init__()
        if stage not in (1, 2):
            raise ValueError(
                f"stage {stage}: give 1 (ranks stage-1 drafts) or 2 (ranks refined latents)"
            )
        _check_attributes(attributes)
        self.classes = {
            "count": list(counts),
            "shape": list(shapes),
            "color": list(colors),
            "direction": list(directions),
        }
        self.embed = nn.Sequential(
            nn.Linear(embed_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim)
        )
        self.conv_in = nn.Conv3d(in_channels, channels, 3, padding=1)
        self.block1 = _Block(channels, embed_dim)
        self.down = nn.Conv3d(channels, 2 * channels, 3, stride=2, padding=1)
        self.block2 = _Block(2 * channels, embed_dim)
        self.block3 = _Block(2 * channels, embed_dim)
        self.norm_out = nn.GroupNorm(8, 2 * channels)
        # mean and max pooled features: a count is about how many places light up
        self.head = nn.Linear(4 * channels, sum(len(v) for v in self.classes.values()))

    def _sigma_embedding(self, sigma: torch.Tensor) -> torch.Tensor:
        half = self.config.embed_dim // 2
        freqs = torch.exp(
            -math.log(1000.0) * torch.arange(half, device=sigma.device, dtype=torch.float32) / half
        )
        angles = (sigma.float() * 1000.0)[:, None] * freqs[None]
        return self.embed(torch.cat([angles.sin(), angles.cos()], dim=1).to(self.dtype))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (B, C, f, h, w) at noise level ``sigma`` (B,) -> logits per attribute."""
        emb = self._sigma_embedding(sigma)
        h = self.block1(self.conv_in(x), emb)
        h = self.block3(self.block2(self.down(h), emb), emb)
        h = F.silu(self.norm_out(h))
        h = torch.cat([h.mean(dim=(2, 3, 4)), h.amax(dim=(2, 3, 4))], dim=1)
        logits = self.head(h).split([len(v) for v in self.classes.values()], dim=1)
        return dict(zip(self.classes, logits, strict=True))

    def rank_by(self, attributes: Sequence[str]) -> None:
        """Rank drafts by these stated attributes from now on (saved with the config)."""
        _check_attributes(attributes)
        self.register_to_config(attributes=list(attributes))

    def labels(self, captions: Sequence[str | CaptionFacts]) -> torch.Tensor:
        """(B, 4) class indices of what each caption states, ``IGNORE`` where it is silent or
        states a value this verifier does not know."""
        rows = []
        for c in captions:
            facts = parse_caption(c) if isinstance(c, str) else c
            row = []
            for attr in ATTRIBUTES:
                v = getattr(facts, attr)
                row.append(self.classes[attr].index(v) if v in self.classes[attr] else IGNORE)
            rows.append(row)
        return torch.tensor(rows, dtype=torch.long)

    def judges(self, captions: Sequence[str]) -> bool:
        """Whether any caption states something this verifier scores (else drafts are equal
        to it, and one is enough)."""
        lab = self.labels(list(captions))
        cols = [ATTRIBUTES.index(a) for a in self.config.attributes]
        return bool((lab[:, cols] != IGNORE).any())

    @torch.no_grad()
    def score(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B,) log likelihood of the stated ``attributes`` for clean latents x (sigma 0)."""
        logits = self(x.to(self.dtype), torch.zeros(x.shape[0], device=x.device))
        out = torch.zeros(x.shape[0], device=x.device)
        for attr in self.config.attributes:
            k = ATTRIBUTES.index(attr)
            y = labels[:, k].to(x.device)
            logp = torch.log_softmax(logits[attr].float(), dim=1)
            picked = logp.gather(1, y.clamp(min=0)[:, None])[:, 0]
            out = out + torch.where(y != IGNORE, picked, torch.zeros_like(picked))
        return out


def classification_loss(logits: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy over the four attributes (each over the captions that state it)."""
    total = torch.zeros((), device=labels.device)
    for k, attr in enumerate(ATTRIBUTES):
        y = labels[:, k]
        if (y != IGNORE).any():
            total = total + F.cross_entropy(logits[attr].float(), y, ignore_index=IGNORE)
    return total


def pick_best(
    verifier: PromptVerifier, latents: torch.Tensor, captions: Sequence[str], candidates: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Of ``candidates`` latents per caption, laid out candidate-major ((K*B, ...): rows
    ``k*B + i`` are caption i's candidate k), keep the one the verifier scores highest.

    Returns (best latents (B, ...), chosen candidate per caption (B,), scores (K, B)).
    """
    b = len(captions)
    if latents.shape[0] != candidates * b:
        raise ValueError(f"{latents.shape[0]} latents for {candidates} x {b} candidates")
    scores = verifier.score(latents, verifier.labels(list(captions) * candidates))
    scores = scores.view(candidates, b)
    chosen = scores.argmax(dim=0)
    rows = chosen.to(latents.device) * b + torch.arange(b, device=latents.device)
    return latents[rows], chosen, scores


__all__ = ["ATTRIBUTES", "IGNORE", "PromptVerifier", "classification_loss", "pick_best", "tile"]
