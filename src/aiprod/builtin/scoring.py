"""Exact prompt-adherence scoring of generated frames, for prompts in the synthetic grammar.

The prompt's facts come from ``aiprod.builtin.grammar.parse_caption``; the video's facts are
measured from pixels: foreground = pixels far from each frame's median colour, subjects =
connected components, colour = nearest palette colour after brightness normalisation, shape =
nearest prototype of (area / min-area rectangle, area / enclosing circle), rotation
invariant,
count = the most common per-frame component count, direction = the candidate whose expected
on-screen motion (subject motion minus the stated camera pan) best matches the measured
centroid track. Temporal flicker and motion magnitude are reported alongside.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

FG_MIN = 30.0  # least max-channel distance (0..255) from the frame's median colour
FG_FRACTION = 0.5  # of the frame's 99.5th-percentile distance


@dataclass
class VideoFacts:
    color: str | None
    shape: str | None
    count: int
    direction: str | None
    displacement: tuple[float, float]  # (dx, dy) as fractions of width/height
    flicker: float
    motion: float


def _luma(frames: np.ndarray) -> np.ndarray:
    f = frames.astype(np.float32)
    return 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]


def temporal_flicker(frames: np.ndarray) -> float:
    """Mean |change| of a frame's mean brightness between consecutive frames (0..255)."""
    m = _luma(frames).mean(axis=(1, 2))
    return float(np.abs(np.diff(m)).mean()) if len(m) > 1 else 0.0


def motion_magnitude(frames: np.ndarray) -> float:
    """Mean absolute brightness change per pixel between consecutive frames (0..255)."""
    y = _luma(frames)
    return float(np.abs(np.diff(y, axis=0)).mean()) if len(y) > 1 else 0.0


def foreground_masks(frames: np.ndarray) -> np.ndarray:
    """(F, H, W) bool: pixels far from their frame's median colour, lightly cleaned."""
    import cv2

    f = frames.astype(np.float32)
    med = np.median(f.reshape(len(f), -1, 3), axis=1)[:, None, None, :]
    dist = np.abs(f - med).max(axis=-1)  # (F, H, W)
    # Dim or washed-out frames shrink the subject/background contrast: scale the threshold
    # with the frame's strongest contrast, never below a floor that rejects texture/noise.
    peak = np.percentile(dist.reshape(len(f), -1), 99.5, axis=1)[:, None, None]
    mask = (dist > np.maximum(FG_MIN, FG_FRACTION * peak)).astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    return np.stack([cv2.morphologyEx(m, cv2.MORPH_OPEN, kernel) for m in mask]).astype(bool)


def _nearest_color(rgb: np.ndarray) -> str:
    from aiprod.builtin.grammar import COLORS

    v = rgb / max(float(rgb.max()), 1.0)
    best, bd = "", 1e9
    for name, c in COLORS.items():
        p = np.asarray(c, np.float32)
        d = float(np.linalg.norm(v - p / p.max()))
        if d < bd:
            best, bd = name, d
    return best


# (pixel area / min-area-rectangle, pixel area / min-enclosing-circle) of each clean shape,
# measured on synth renders (contours run through pixel centres, hence square > 1).
_SHAPE_PROTOTYPES = {"circle": (0.86, 1.0), "square": (1.09, 0.70), "triangle": (0.66, 0.55)}


def _shape_of(component: np.ndarray) -> str:
    import cv2

    cnts, _ = cv2.findContours(component.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    c = max(cnts, key=cv2.contourArea)
    (_, _), (w, h), _ = cv2.minAreaRect(c)
    (_, _), r = cv2.minEnclosingCircle(c)
    area = float(component.sum())
    feat = np.array([area / max(w * h, 1.0), area / max(np.pi * r * r, 1.0)])
    return min(
        _SHAPE_PROTOTYPES,
        key=lambda k: float(np.linalg.norm(feat - np.asarray(_SHAPE_PROTOTYPES[k]))),
    )


def _expected_screen(direction: str, speed: str | None, pan: str | None) -> np.ndarray:
    from aiprod.builtin import grammar

    u = np.asarray(grammar.UNIT[direction]) * grammar.SPEEDS.get(speed or "medium", 0.35)
    if pan and pan != "none":
        u = u - np.asarray(grammar.UNIT[pan]) * grammar.PAN_AMOUNT
    return u


def measure(
    frames: np.ndarray,
    *,
    speed: str | None = None,
    pan: str | None = None,
    want_dir: str | None = None,
) -> VideoFacts:
    """Read colour, shape, count and direction of motion off a clip (F, H, W, 3) uint8."""
    import cv2

    from aiprod.builtin.grammar import DIRECTIONS

    f, h, w, _ = frames.shape
    masks = foreground_masks(frames)
    short = min(h, w)
    min_area = np.pi * (0.03 * short) ** 2
    counts, shapes, pixels, centroids = [], [], [], []
    for i in range(f):
        n, labels, stats, cents = cv2.connectedComponentsWithStats(masks[i].astype(np.uint8))
        keep = [j for j in range(1, n) if stats[j, cv2.CC_STAT_AREA] >= min_area]
        counts.append(len(keep))
        for j in keep:
            comp = labels == j
            shapes.append(_shape_of(comp))
            core = cv2.erode(comp.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            pixels.append(frames[i][core if core.any() else comp])
        if keep:
            sel = np.isin(labels, keep)
            ys, xs = np.nonzero(sel)
            centroids.append((i, xs.mean() / w, ys.mean() / h))
    count = int(np.bincount(counts).argmax()) if counts else 0
    color = (
        _nearest_color(np.concatenate(pixels).astype(np.float32).mean(axis=0)) if pixels else None
    )
    # most votes; a tie goes to the shape seen first (not to set order, which follows the
    # per-process string hash seed and made evals of the same clips differ between runs)
    shape = Counter(shapes).most_common(1)[0][0] if shapes else None
    direction, disp = None, (0.0, 0.0)
    if len(centroids) >= 2:
        c = np.asarray(centroids)
        q = max(1, len(c) // 4)
        disp_v = c[-q:, 1:].mean(axis=0) - c[:q, 1:].mean(axis=0)
        disp = (float(disp_v[0]), float(disp_v[1]))
        # Slow subjects under a pan along their motion barely move on screen: the "is it
        # moving" floor follows the motion the prompt implies (within 0.005..0.02 of frame).
        floor = (
            float(
                np.clip(0.3 * np.linalg.norm(_expected_screen(want_dir, speed, pan)), 0.005, 0.02)
            )
            if want_dir
            else 0.02
        )
        if np.linalg.norm(disp_v) > floor:
            cands = {
                d: _expected_screen(d, speed, pan)
                for d in DIRECTIONS
                if not (pan and pan != "none" and _opposite(d) == pan)
            }
            direction = max(
                cands,
                key=lambda d: float(
                    disp_v @ cands[d] / (np.linalg.norm(cands[d]) * np.linalg.norm(disp_v) + 1e-9)
                ),
            )
    return VideoFacts(
        color=color,
        shape=shape,
        count=count,
        direction=direction,
        displacement=disp,
        flicker=temporal_flicker(frames),
        motion=motion_magnitude(frames),
    )


def _opposite(d: str) -> str:
    return {"left": "right", "right": "left", "up": "down", "down": "up"}[d]


def score(prompt: str, frames: np.ndarray) -> dict[str, Any]:
    """Per-attribute correctness of one clip against what its prompt states."""
    from aiprod.builtin.grammar import parse_caption

    want = parse_caption(prompt)
    got = measure(frames, speed=want.speed, pan=want.camera_pan, want_dir=want.direction)
    out: dict[str, Any] = {"prompt": prompt}
    for attr in ("color", "shape", "count", "direction"):
        expected = getattr(want, attr)
        out[f"want_{attr}"] = expected
        out[f"pred_{attr}"] = getattr(got, attr)
        out[f"{attr}_ok"] = None if expected is None else bool(getattr(got, attr) == expected)
    out["flicker"] = got.flicker
    out["motion"] = got.motion
    out["displacement"] = got.displacement
    return out


def aggregate(rows: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for attr in ("color", "shape", "count", "direction"):
        vals = [r[f"{attr}_ok"] for r in rows if r[f"{attr}_ok"] is not None]
        out[f"{attr}_accuracy"] = float(np.mean(vals)) if vals else float("nan")
    out["all_four_accuracy"] = float(
        np.mean([all(r[f"{a}_ok"] for a in ("color", "shape", "count", "direction")) for r in rows])
    )
    out["flicker_mean"] = float(np.mean([r["flicker"] for r in rows]))
    out["motion_mean"] = float(np.mean([r["motion"] for r in rows]))
    return out


__all__ = ["VideoFacts", "aggregate", "asdict", "measure", "score"]
