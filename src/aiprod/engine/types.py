"""The engine's contract with the worker (see shared/DESIGN.md, "Engine").

A backend loads one model entry once: ``load(entry, device) -> Pipeline``. A ``Pipeline`` turns
one ``GenerationRequest`` into a ``Video``, calling ``on_progress(fraction)`` after each
denoising step (0..1 over both stages) and checking ``should_cancel()`` between steps; it raises
``aiprod.core.errors.GenerationCanceled`` when asked to stop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

ProgressFn = Callable[[float], None]
CancelFn = Callable[[], bool]


@dataclass(frozen=True, kw_only=True)
class GenerationRequest:
    """A fully resolved request: the registry has filled defaults and checked limits."""

    prompt: str
    negative_prompt: str | None = None
    width: int
    height: int
    num_frames: int
    fps: int
    seed: int
    num_inference_steps: int
    guidance_scale: float
    two_stage: bool = True
    image: bytes | None = None  # encoded PNG/JPEG/WebP bytes for image-to-video


@dataclass(kw_only=True)
class Video:
    frames: np.ndarray  # (F, H, W, 3) uint8 RGB
    fps: int
    audio: np.ndarray | None = None  # (channels, samples) float32 in [-1, 1]
    audio_sample_rate: int | None = None
    info: dict[str, object] = field(default_factory=dict)  # timings per stage, steps, etc.


class Pipeline(Protocol):
    def __call__(
        self,
        request: GenerationRequest,
        *,
        on_progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
    ) -> Video: ...

    def clear_cache(self) -> None:
        """Free cached accelerator memory (called on /admin/clear-cache)."""
        ...
