"""Clips for a phase, the one-time cache of latents/embeddings, and a resumable batcher.

A phase's clips come from a manifest (MP4 files, decoded once) or from the procedural
generator (``aiprod.builtin.grammar``, rendered at each bucket's size by
``aiprod.builtin.render``). Each clip is assigned to one (width, height, frames) bucket; a
batch never mixes buckets.

:class:`BucketBatcher` is the data position: its whole state is ``(epoch, cursor)`` and the
batch order of an epoch is a pure function of ``(seed, epoch)``, so a resumed run reads
exactly the batches the unbroken run would have read.
"""

from __future__ import annotations

import hashlib
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aiprod.core.errors import ConfigError
from aiprod.training.config import DataConfig

log = logging.getLogger(__name__)

HELDOUT_SEED_OFFSET = 1_000_003


@dataclass
class Clip:
    caption: str
    frames: np.ndarray  # (F, H, W, 3) uint8
    bucket: int
    fps: float = 24.0


def _fit(frames: np.ndarray, *, width: int, height: int, num_frames: int) -> np.ndarray | None:
    """Resize (keeping aspect) + centre-crop to the bucket; None if the clip is too short."""
    import cv2

    if frames.shape[0] < num_frames:
        return None
    frames = frames[:num_frames]
    h, w = frames.shape[1:3]
    scale = max(width / w, height / h)
    nw, nh = max(width, round(w * scale)), max(height, round(h * scale))
    out = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    y0, x0 = (nh - height) // 2, (nw - width) // 2
    for i, f in enumerate(frames):
        r = cv2.resize(f, (nw, nh), interpolation=cv2.INTER_AREA)
        out[i] = r[y0 : y0 + height, x0 : x0 + width]
    return out


def _nearest_bucket(buckets: list[tuple[int, int, int]], w: int, h: int) -> int:
    aspect = w / h
    return min(range(len(buckets)), key=lambda i: abs(buckets[i][0] / buckets[i][1] - aspect))


def _is_heldout(clip_id: str) -> bool:
    return zlib.crc32(clip_id.encode()) % 20 == 0


def synth_clips(
    *,
    phase: int,
    count: int,
    seed: int,
    buckets: list[tuple[int, int, int]],
    fps: int = 24,
    mix: dict[int, float] | None = None,
    min_gap: float = 0.0,
) -> list[Clip]:
    """Render ``count`` captioned clips of curriculum ``phase``; clip i goes to bucket i % n.

    ``min_gap``: the subjects' spacing, passed to :func:`aiprod.builtin.render.render`."""
    from aiprod.builtin import grammar, render

    out = []
    for i, (params, rng) in enumerate(grammar.draws(phase, count, seed, mix=mix)):
        clip_seed = int(rng.integers(0, 2**31 - 1))
        b = i % len(buckets)
        w, h, f = buckets[b]
        frames = render.render(
            params, width=w, height=h, num_frames=f, fps=fps, seed=clip_seed, min_gap=min_gap
        )
        out.append(Clip(caption=grammar.caption(params), frames=frames, bucket=b, fps=fps))
    return out


def load_clips(
    data: DataConfig,
    buckets: list[tuple[int, int, int]],
    *,
    heldout: bool = False,
    split: bool = True,
) -> list[Clip]:
    """The clips of one phase (or its held-out split), fitted to the phase's buckets.

    ``split=False`` (``monitor.heldout: false``): a manifest's clips all train, none held out."""
    if data.synth is not None:
        s = data.synth
        seed = s.seed + (HELDOUT_SEED_OFFSET if heldout else 0)
        count = s.count if not heldout else min(s.count, 64)
        clips = synth_clips(
            phase=s.phase,
            count=count,
            seed=seed,
            buckets=buckets,
            fps=s.fps,
            mix=s.mix,
            min_gap=s.min_gap,
        )
        return clips[: data.limit] if data.limit else clips
    from aiprod.core.media import read_video
    from aiprod.data.manifest import accepted, read_manifest

    assert data.manifest is not None
    if not Path(data.manifest).exists():
        raise ConfigError(
            f"data.manifest {data.manifest} does not exist (aiprod data ... makes one)"
        )
    rows = accepted(read_manifest(data.manifest))
    if data.filter_phase is not None:
        rows = [r for r in rows if r.phase == data.filter_phase]
    rows = [r for r in rows if (not split or _is_heldout(r.clip_id) == heldout) and r.caption]
    clips: list[Clip] = []
    for r in rows:
        frames, fps = read_video(r.path)
        b = _nearest_bucket(buckets, frames.shape[2], frames.shape[1])
        w, h, f = buckets[b]
        fitted = _fit(frames, width=w, height=h, num_frames=f)
        if fitted is None:
            log.warning("skipping %s: %d frames < bucket's %d", r.path, frames.shape[0], f)
            continue
        clips.append(Clip(caption=r.caption, frames=fitted, bucket=b, fps=fps))
        if data.limit and len(clips) >= data.limit:
            break
    if not clips and not heldout:
        raise ConfigError(f"data.manifest {data.manifest}: no usable clips for this phase")
    return clips


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (3, F, H, W) float in [-1, 1]."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float().div(127.5).sub(1.0)


def latent_foreground(frames: np.ndarray, latent_shape: tuple[int, int, int]) -> torch.Tensor:
    """Share of each latent cell covered by subjects: (F, H, W, 3) uint8 -> (1, f, h, w) in [0, 1].

    A pixel is a subject's when, after a 3x3 box blur (which takes the "heavy noise" edge
    case's grain from 0.2 to about 0.07), one of its channels is more than 0.25 (on [-1, 1])
    from its frame's median colour, the background. Cells follow the LTX autoencoder's causal
    layout: latent frame 0 is frame 0, latent frame k >= 1 the next ``(F - 1) / (f - 1)``
    frames; spatially each cell is an ``H / h`` x ``W / w`` block.
    """
    f, h, w = latent_shape
    x = frames_to_tensor(frames)  # (3, F, H, W)
    n, height, width = x.shape[1:]
    if (n - 1) % max(f - 1, 1) or height % h or width % w:
        raise ValueError(f"clip {tuple(x.shape[1:])} does not tile latent {latent_shape}")
    x = torch.nn.functional.avg_pool2d(
        x.transpose(0, 1), 3, stride=1, padding=1, count_include_pad=False
    )  # (F, 3, H, W)
    med = x.flatten(2).median(dim=-1).values[..., None, None]
    fg = ((x - med).abs().amax(dim=1) > 0.25).float()  # (F, H, W)
    t = (n - 1) // (f - 1) if f > 1 else n
    fg = torch.cat([fg[:1].expand(t, -1, -1), fg[1:]]) if f > 1 else fg  # frame 0 fills cell 0
    fg = fg.reshape(f, t, h, height // h, w, width // w)
    return fg.mean(dim=(1, 3, 5)).unsqueeze(0)


def tensor_to_frames(video: torch.Tensor) -> np.ndarray:
    """(3, F, H, W) float in [-1, 1] -> (F, H, W, 3) uint8."""
    x = video.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """A short content hash of a state dict (to key caches on the VAE/text-encoder weights)."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class BucketBatcher:
    """Deterministic, resumable batches of indices that never mix buckets."""

    def __init__(self, buckets_of: list[int], *, batch_size: int, seed: int) -> None:
        self.buckets_of = list(buckets_of)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.cursor = 0
        self._order: list[list[int]] | None = None

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        by_bucket: dict[int, list[int]] = {}
        for i, b in enumerate(self.buckets_of):
            by_bucket.setdefault(b, []).append(i)
        batches: list[list[int]] = []
        for b in sorted(by_bucket):
            idx = by_bucket[b]
            perm = torch.randperm(len(idx), generator=g).tolist()
            items = [idx[p] for p in perm]
            if len(items) < self.batch_size:
                batches.append(items)
                continue
            for s in range(0, len(items) - self.batch_size + 1, self.batch_size):
                batches.append(items[s : s + self.batch_size])
        order = torch.randperm(len(batches), generator=g).tolist()
        return [batches[o] for o in order]

    @property
    def batches_per_epoch(self) -> int:
        return len(self._epoch_batches(0))

    def next(self) -> list[int]:
        if self._order is None:
            self._order = self._epoch_batches(self.epoch)
        if self.cursor >= len(self._order):
            self.epoch += 1
            self.cursor = 0
            self._order = self._epoch_batches(self.epoch)
        batch = self._order[self.cursor]
        self.cursor += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.cursor, self.seed = state["epoch"], state["cursor"], state["seed"]
        self._order = None
