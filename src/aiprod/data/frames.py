"""Frame-level measurements shared by synth, validate and the benchmarks (numpy only)."""

from __future__ import annotations

import numpy as np

# Luma weights (BT.601), the ones every consumer codec path uses for SD material.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def luma(frames: np.ndarray, *, max_side: int = 64) -> np.ndarray:
    """(F, H, W, 3) uint8 RGB -> (F, h, w) float32 luma in 0..255, strided down to ~max_side."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (F, H, W, 3), got shape {frames.shape}")
    step = max(1, int(np.ceil(max(frames.shape[1], frames.shape[2]) / max_side)))
    small = frames[:, ::step, ::step, :].astype(np.float32)
    return small @ _LUMA


def motion_score(frames: np.ndarray) -> float:
    """Mean absolute luma change between consecutive frames (0..255; 0 = frozen).

    Frame differencing, no pretrained weights: cheap, and good enough to tell a frozen or
    near-static clip from one where something moves.
    """
    y = luma(frames)
    if y.shape[0] < 2:
        return 0.0
    return float(np.abs(np.diff(y, axis=0)).mean())


def mean_brightness(frames: np.ndarray) -> float:
    """Mean luma over all frames (0..255)."""
    return float(luma(frames).mean())
