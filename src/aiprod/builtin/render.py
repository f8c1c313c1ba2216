"""Rendering of the built-in model's synthetic clips (:class:`~aiprod.builtin.grammar.SynthParams`
-> frames).

Subjects move in lanes across the frame; ``min_gap`` (a fraction of the short side) makes
the layout keep every two subjects that far apart for the whole clip, so that a caption's
count is never shown as touching or overlapping subjects (by default two of three subjects
touch in about a fifth of the three-subject clips).

Rendering is numpy (signed-distance shapes, anti-aliased) with OpenCV for rain/snow
streaks; it is deterministic for a given ``(params, width, height, num_frames, fps, seed,
min_gap)``.
"""

from __future__ import annotations

import math

import numpy as np

from aiprod.builtin.grammar import (
    BACKGROUNDS,
    COLORS,
    PAN_AMOUNT,
    SPEEDS,
    UNIT,
    SynthParams,
)

# Part of every clip's render seed and content address: bump it when the same parameters and
# seed should draw other pixels.
SYNTH_VERSION = 1

# Radius of the circle around each shape, in units of its size r (see _sdf).
_EXTENT = {"circle": 1.0, "square": 0.85 * math.sqrt(2.0), "triangle": 1.2}
MAX_MIN_GAP = 0.25
_LAYOUT_TRIES = 64


def check_min_gap(min_gap: float) -> None:
    """Refuse a subject spacing outside [0, MAX_MIN_GAP] with the fix in the message."""
    if not 0.0 <= min_gap <= MAX_MIN_GAP:
        raise ValueError(
            f"min_gap={min_gap}: the gap between subjects is a fraction of the frame's short "
            f"side, in [0, {MAX_MIN_GAP}] (0.0625 = 4 px at 64x64; 0 = the default layout)"
        )


def check_size(*, width: int, height: int, num_frames: int, fps: float) -> None:
    if width < 8 or height < 8:
        raise ValueError(f"width/height must be >= 8, got {width}x{height}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")


def _sdf(shape: str, qx: np.ndarray, qy: np.ndarray, r: float) -> np.ndarray:
    """Signed distance (pixels, negative inside) of a shape of 'radius' r centred at 0."""
    if shape == "circle":
        return np.sqrt(qx * qx + qy * qy) - r
    if shape == "square":
        return np.maximum(np.abs(qx), np.abs(qy)) - r * 0.85
    # Equilateral triangle pointing up (image y grows downwards); circumradius 1.2 r.
    big_r = 1.2 * r
    c, s = math.cos(math.radians(30.0)), 0.5
    d = np.maximum(qy, np.maximum(c * qx - s * qy, -c * qx - s * qy))
    return d - big_r / 2


Layout = list[tuple[float, float, float, float, float]]


def _clearance(subjects: Layout, shape: str) -> float:
    """Smallest distance (pixels) between two subjects' bounding circles over the clip."""
    best = math.inf
    for i, (x0, y0, r0, dx0, dy0) in enumerate(subjects):
        for x1, y1, r1, dx1, dy1 in subjects[i + 1 :]:
            # Relative position p + v t, t in [0, 1]: closest at t = -p.v / v.v, clamped.
            px, py, vx, vy = x1 - x0, y1 - y0, dx1 - dx0, dy1 - dy0
            vv = vx * vx + vy * vy
            t = min(1.0, max(0.0, -(px * vx + py * vy) / vv)) if vv > 0 else 0.0
            d = math.hypot(px + vx * t, py + vy * t) - (r0 + r1) * _EXTENT[shape]
            best = min(best, d)
    return best


def _layout(
    params: SynthParams,
    rng: np.random.Generator,
    *,
    width: int,
    height: int,
    min_gap: float = 0.0,
) -> Layout:
    """Per subject: world start (x, y), radius, and per-clip displacement (dx, dy).

    With ``min_gap`` > 0 the layout is redrawn until every two subjects stay at least
    ``min_gap * min(width, height)`` pixels apart (edge to edge) for the whole clip; where
    no draw manages that (large subjects in narrow lanes) the most spread-out draw is kept.
    """
    if min_gap <= 0.0 or params.count < 2:
        return _draw_layout(params, rng, width=width, height=height)
    need = min_gap * min(width, height)
    best: Layout = []
    best_d = -math.inf
    for _ in range(_LAYOUT_TRIES):
        subjects = _draw_layout(params, rng, width=width, height=height)
        d = _clearance(subjects, params.shape)
        if d >= need:
            return subjects
        if d > best_d:
            best, best_d = subjects, d
    return best


def _draw_layout(
    params: SynthParams, rng: np.random.Generator, *, width: int, height: int
) -> Layout:
    short = min(width, height)
    ux, uy = UNIT[params.direction]
    horizontal = ux != 0.0
    along, across = (width, height) if horizontal else (height, width)
    pan_x, pan_y = UNIT[params.camera_pan] if params.camera_pan != "none" else (0.0, 0.0)
    cam_dx, cam_dy = pan_x * PAN_AMOUNT * width, pan_y * PAN_AMOUNT * height
    lane = across / params.count
    out = []
    for i in range(params.count):
        spread = 1.0 + params.variety * float(rng.uniform(-1.0, 1.0))
        r = params.size * short * (1.0 + params.variety * float(rng.uniform(-1.0, 1.0)))
        r = max(1.5, min(r, 0.42 * lane, 0.3 * short))
        travel = SPEEDS[params.speed] * spread * along
        dx, dy = ux * travel, uy * travel
        # On-screen displacement is world motion minus camera motion; keep it in frame.
        sdx, sdy = dx - cam_dx, dy - cam_dy

        def start(extent: float, disp: float, r: float = r) -> float:
            lo = r + max(0.0, -disp)
            hi = extent - r - max(0.0, disp)
            return float(rng.uniform(lo, hi)) if hi > lo else (extent - disp) / 2

        c_across = (i + 0.5) * lane + float(rng.uniform(-0.15, 0.15)) * lane
        if horizontal:
            x0, y0 = start(width, sdx), c_across
        else:
            x0, y0 = c_across, start(height, sdy)
        # Pan-perpendicular drift must also stay on screen: shift the lane if needed.
        if horizontal and sdy:
            y0 = min(max(y0, r + max(0.0, -sdy)), height - r - max(0.0, sdy))
        if not horizontal and sdx:
            x0 = min(max(x0, r + max(0.0, -sdx)), width - r - max(0.0, sdx))
        out.append((x0, y0, r, dx, dy))
    return out


def render(
    params: SynthParams,
    *,
    width: int = 64,
    height: int = 64,
    num_frames: int = 16,
    fps: float = 24.0,
    seed: int = 0,
    min_gap: float = 0.0,
) -> np.ndarray:
    """Render a clip: (num_frames, height, width, 3) uint8 RGB, deterministic per seed.

    ``min_gap``: keep subjects this far apart, as a fraction of the short side (see
    :func:`_layout`); 0 draws the layout as it always was.
    """
    import cv2

    check_size(width=width, height=height, num_frames=num_frames, fps=fps)
    check_min_gap(min_gap)
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, SYNTH_VERSION])
    layout_rng, fx_rng, noise_rng = (np.random.default_rng(s) for s in ss.spawn(3))
    subjects = _layout(params, layout_rng, width=width, height=height, min_gap=min_gap)

    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    cx, cy = width / 2.0, height / 2.0
    theta = math.radians(params.tilt_deg)
    ct, st = math.cos(theta), math.sin(theta)
    # View -> world rotation about the frame centre (a rolled camera).
    vx = ct * (xs - cx) - st * (ys - cy) + cx
    vy = st * (xs - cx) + ct * (ys - cy) + cy

    pan_x, pan_y = UNIT[params.camera_pan] if params.camera_pan != "none" else (0.0, 0.0)
    bg = np.array(BACKGROUNDS[params.background], dtype=np.float32)
    fg = np.array(COLORS[params.color], dtype=np.float32)
    short = min(width, height)
    k = 2 * math.pi / max(8.0, short / 3.0)
    ph1, ph2 = (float(v) for v in fx_rng.uniform(0, 2 * math.pi, size=2))

    # Weather particles live in screen space and are drawn with OpenCV (anti-aliased).
    n_particles = 0
    if params.weather != "clear":
        n_particles = max(6, int(width * height / (900 if params.weather == "rain" else 500)))
    px = fx_rng.uniform(0, width, size=n_particles)
    py = fx_rng.uniform(0, height, size=n_particles)
    pv = fx_rng.uniform(0.8, 1.2, size=n_particles)
    flicker = fx_rng.uniform(0.3, 1.15, size=num_frames)

    out = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    denom = max(1, num_frames - 1)
    for f in range(num_frames):
        t = f / denom
        wx = vx + pan_x * PAN_AMOUNT * width * t
        wy = vy + pan_y * PAN_AMOUNT * height * t
        # A faint world-fixed texture so that camera pans are visible.
        tex = 9.0 * (1.0 + np.sin(wx * k + ph1) * np.sin(wy * k + ph2))
        img = np.broadcast_to(bg, (height, width, 3)) + tex[..., None]
        for x0, y0, r, dx, dy in subjects:
            d = _sdf(params.shape, wx - (x0 + dx * t), wy - (y0 + dy * t), r)
            alpha = np.clip(0.5 - d, 0.0, 1.0)[..., None]
            img = img * (1.0 - alpha) + fg * alpha
        img = np.ascontiguousarray(img, dtype=np.float32)
        if n_particles:
            overlay = np.zeros((height, width), dtype=np.float32)
            if params.weather == "rain":
                fall = height * 2.5 * t
                ln = max(2.0, height / 14)
                for x, y, v in zip(px, py, pv, strict=True):
                    yy = (y + fall * v) % height
                    xx = (x - 0.2 * fall * v) % width
                    p1 = (int(xx * 16), int(yy * 16))
                    p2 = (int((xx - 0.25 * ln) * 16), int((yy - ln) * 16))
                    cv2.line(overlay, p1, p2, 0.7, 1, cv2.LINE_AA, shift=4)
            else:
                fall = height * 0.5 * t
                rad = max(1.0, short / 80)
                for i, (x, y, v) in enumerate(zip(px, py, pv, strict=True)):
                    yy = (y + fall * v) % height
                    xx = (x + 2.0 * rad * math.sin(6.0 * t + i)) % width
                    centre = (int(xx * 16), int(yy * 16))
                    cv2.circle(overlay, centre, int(rad * v * 16), 0.9, -1, cv2.LINE_AA, shift=4)
            a = np.clip(overlay, 0.0, 1.0)[..., None]
            img = img * (1.0 - a) + 235.0 * a
        if params.lighting == "dim":
            img = img * 0.3
        elif params.lighting == "bright":
            img = 255.0 - (255.0 - img) * 0.35
        elif params.lighting == "flicker":
            img = img * flicker[f]
        elif params.lighting == "fade_in":
            img = img * (0.05 + 0.95 * t)
        elif params.lighting == "fade_out":
            img = img * (1.0 - 0.95 * t)
        if params.noise > 0:
            img = img + noise_rng.normal(0.0, params.noise * 255.0, size=img.shape)
        out[f] = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return out
