"""Procedural captioned clips for the five curriculum phases.

Every clip is drawn from a :class:`SynthParams` (shape, color, count, direction, speed,
camera pan, lighting, weather, noise, camera tilt); its caption is derived from the
parameters, and :func:`parse_caption` reads those facts back from a caption or a user
prompt, so prompt adherence can be scored exactly.

Phases (the product plan's curriculum):

1. one subject, static camera;
2. two or three subjects, gentle camera pan;
3. fast action, complex composition (varied sizes and speeds, optional pan);
4. edge cases: extreme or changing lighting, rain/snow, heavy noise, tilted camera;
5. a mix of all of the above.

Motion is measured per clip: ``speed`` is the fraction of the frame a subject travels over
the whole clip (so short clips still show clear motion), and a camera pan moves the view by
:data:`PAN_AMOUNT` of the frame over the clip. Directions are relative to the scene (the
textured background); with a pan, on-screen motion is the subject's motion minus the pan.

Subjects move in lanes across the frame; ``min_gap`` (a fraction of the short side) makes
the layout keep every two subjects that far apart for the whole clip, so that a caption's
count is never shown as touching or overlapping subjects (by default two of three subjects
touch in about a fifth of the three-subject clips).

Rendering is numpy (signed-distance shapes, anti-aliased) with OpenCV for rain/snow
streaks; it is deterministic for a given ``(params, width, height, num_frames, fps, seed,
min_gap)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aiprod.data.frames import motion_score
from aiprod.data.manifest import ACCEPTED, ClipRecord, write_manifest

log = logging.getLogger(__name__)

SYNTH_VERSION = 1
PHASES = (1, 2, 3, 4, 5)

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 50),
    "blue": (40, 80, 255),
    "yellow": (245, 220, 30),
    "white": (245, 245, 245),
    "magenta": (225, 40, 225),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (0, 0, 0), "gray": (96, 96, 96)}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
SPEEDS: dict[str, float] = {"slow": 0.18, "medium": 0.35, "fast": 0.6}
PANS = ("none", "left", "right", "up", "down")
LIGHTING = ("normal", "dim", "bright", "flicker", "fade_in", "fade_out")
WEATHER = ("clear", "rain", "snow")
NOISE_LEVEL = 0.1  # std of the "heavy noise" edge case, as a fraction of full scale
PAN_AMOUNT = 0.2  # fraction of the frame a gentle pan moves over the clip
MAX_COUNT = 3

_COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
_WORD_COUNTS = {"a": 1, "an": 1, "one": 1, "single": 1, "two": 2, "three": 3, "four": 4}
_LIGHTING_PHRASES = {
    "dim": "in dim light",
    "bright": "in harsh bright light",
    "flicker": "under flickering light",
    "fade_in": "fading in from darkness",
    "fade_out": "fading out to darkness",
}
_WEATHER_PHRASES = {"rain": "in the rain", "snow": "in the snow"}
_SPEED_WORDS = {"slow": "slowly", "medium": "", "fast": "quickly"}
# Radius of the circle around each shape, in units of its size r (see _sdf).
_EXTENT = {"circle": 1.0, "square": 0.85 * math.sqrt(2.0), "triangle": 1.2}
MAX_MIN_GAP = 0.25
_LAYOUT_TRIES = 64
_OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
_UNIT = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}


@dataclass(frozen=True)
class SynthParams:
    """Everything that decides what a synthetic clip shows (the layout comes from the seed)."""

    phase: int
    shape: str
    color: str
    count: int
    direction: str
    speed: str = "medium"
    background: str = "black"
    camera_pan: str = "none"
    lighting: str = "normal"
    weather: str = "clear"
    noise: float = 0.0
    tilt_deg: float = 0.0
    size: float = 0.14  # subject radius as a fraction of the frame's short side
    variety: float = 0.0  # per-subject size/speed spread (phase 3's complex composition)

    def __post_init__(self) -> None:
        checks: list[tuple[str, object, tuple[object, ...]]] = [
            ("phase", self.phase, PHASES),
            ("shape", self.shape, SHAPES),
            ("color", self.color, tuple(COLORS)),
            ("direction", self.direction, DIRECTIONS),
            ("speed", self.speed, tuple(SPEEDS)),
            ("background", self.background, tuple(BACKGROUNDS)),
            ("camera_pan", self.camera_pan, PANS),
            ("lighting", self.lighting, LIGHTING),
            ("weather", self.weather, WEATHER),
        ]
        for name, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"SynthParams.{name}={value!r}: choose one of {list(allowed)}")
        if not 1 <= self.count <= MAX_COUNT:
            raise ValueError(f"SynthParams.count={self.count}: must be 1..{MAX_COUNT}")
        if self.camera_pan == _OPPOSITE[self.direction]:
            raise ValueError(
                f"camera_pan={self.camera_pan!r} against direction={self.direction!r} would "
                "carry subjects out of frame: use a pan along or across the motion"
            )
        if not 0.0 <= self.noise <= 0.5:
            raise ValueError(f"SynthParams.noise={self.noise}: must be in [0, 0.5]")
        if not 0.02 <= self.size <= 0.3:
            raise ValueError(f"SynthParams.size={self.size}: must be in [0.02, 0.3]")
        if not 0.0 <= self.variety <= 0.5:
            raise ValueError(f"SynthParams.variety={self.variety}: must be in [0, 0.5]")
        if abs(self.tilt_deg) > 45:
            raise ValueError(f"SynthParams.tilt_deg={self.tilt_deg}: must be within +-45")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SynthParams:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @property
    def edge_cases(self) -> tuple[str, ...]:
        """The phase-4 style conditions present in this clip."""
        out = []
        if self.lighting != "normal":
            out.append("lighting")
        if self.weather != "clear":
            out.append("weather")
        if self.noise >= NOISE_LEVEL / 2:
            out.append("noise")
        if self.tilt_deg != 0.0:
            out.append("angle")
        return tuple(out)


@dataclass(frozen=True)
class CaptionFacts:
    """What a caption (or a user prompt) says; ``None`` where it says nothing."""

    color: str | None = None
    shape: str | None = None
    count: int | None = None
    direction: str | None = None
    speed: str | None = None
    background: str | None = None
    camera_pan: str | None = None
    lighting: str | None = None
    weather: str | None = None
    noisy: bool | None = None
    tilted: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------
# sampling and captions


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def check_mix(mix: Mapping[int, float], phase: int) -> None:
    """Raise ValueError unless ``phase`` is 5 and ``mix`` weighs some of phases 1-4, none
    negatively."""
    if phase != 5:
        raise ValueError(f"mix={dict(mix)}: only phase 5 mixes phases (this is phase {phase})")
    bad = [k for k in mix if k not in (1, 2, 3, 4)]
    if bad or any(float(v) < 0 for v in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(
            f"mix={dict(mix)}: give weights >= 0 for phases 1-4, at least one above 0"
            " (e.g. {1: 1, 2: 2, 3: 2, 4: 1})"
        )


def check_min_gap(min_gap: float) -> None:
    """Refuse a subject spacing outside [0, MAX_MIN_GAP] with the fix in the message."""
    if not 0.0 <= min_gap <= MAX_MIN_GAP:
        raise ValueError(
            f"min_gap={min_gap}: the gap between subjects is a fraction of the frame's short "
            f"side, in [0, {MAX_MIN_GAP}] (0.0625 = 4 px at 64x64; 0 = the default layout)"
        )


def _choice(rng: np.random.Generator, options: tuple[Any, ...] | list[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def sample_params(
    phase: int,
    rng: np.random.Generator | int | None = None,
    *,
    mix: Mapping[int, float] | None = None,
) -> SynthParams:
    """Draw the parameters of one clip of curriculum ``phase`` (1..5).

    Phase 5 draws a clip of phases 1-4, evenly, or by the relative weights ``mix``
    ({phase: weight}; phases left out are never drawn).
    """
    if phase not in PHASES:
        raise ValueError(f"phase={phase!r}: curriculum phases are {list(PHASES)}")
    if mix is not None:
        check_mix(mix, phase)
    rng = _as_rng(rng)
    if phase == 5:
        if mix is None:
            sub = int(rng.integers(1, 5))
        else:
            keys = sorted(mix)
            w = np.asarray([float(mix[k]) for k in keys])
            sub = keys[int(rng.choice(len(keys), p=w / w.sum()))]
        base = sample_params(sub, rng)
        return dataclasses.replace(base, phase=5)
    shape = _choice(rng, SHAPES)
    color = _choice(rng, tuple(COLORS))
    direction = _choice(rng, DIRECTIONS)
    background = _choice(rng, tuple(BACKGROUNDS))
    kw: dict[str, Any] = {}
    if phase == 1:
        count = 1
        kw["speed"] = _choice(rng, ("slow", "medium"))
        kw["size"] = round(float(rng.uniform(0.12, 0.18)), 3)
    elif phase == 2:
        count = int(rng.integers(2, 4))
        kw["speed"] = _choice(rng, ("slow", "medium"))
        kw["camera_pan"] = _choice(rng, [p for p in PANS[1:] if p != _OPPOSITE[direction]])
        kw["size"] = round(float(rng.uniform(0.09, 0.12)), 3)
    elif phase == 3:
        count = int(rng.integers(2, 4))
        kw["speed"] = "fast"
        kw["camera_pan"] = _choice(rng, [p for p in PANS if p != _OPPOSITE[direction]])
        kw["size"] = round(float(rng.uniform(0.08, 0.11)), 3)
        kw["variety"] = 0.25
    else:  # phase 4: one or two edge cases on a simple scene
        count = int(rng.integers(1, 3))
        kw["speed"] = _choice(rng, ("slow", "medium"))
        kw["size"] = round(float(rng.uniform(0.1, 0.15)), 3)
        kinds = ["lighting", "weather", "noise", "angle"]
        picked = rng.choice(len(kinds), size=int(rng.integers(1, 3)), replace=False)
        for k in (kinds[int(i)] for i in picked):
            if k == "lighting":
                kw["lighting"] = _choice(rng, LIGHTING[1:])
            elif k == "weather":
                kw["weather"] = _choice(rng, WEATHER[1:])
            elif k == "noise":
                kw["noise"] = NOISE_LEVEL
            else:
                sign = 1.0 if rng.random() < 0.5 else -1.0
                kw["tilt_deg"] = round(sign * float(rng.uniform(15.0, 30.0)), 1)
    return SynthParams(
        phase=phase,
        shape=shape,
        color=color,
        count=count,
        direction=direction,
        background=background,
        **kw,
    )


def draws(
    phase: int, count: int, seed: int, *, mix: Mapping[int, float] | None = None
) -> Iterator[tuple[SynthParams, np.random.Generator]]:
    """(parameters, generator) of clips 0..count-1 of a synth source ``(phase, seed)``; the
    generator then draws the clip's render seed. Clip i depends only on (seed, phase, i)."""
    for i in range(count):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), phase, i]))
        yield sample_params(phase, rng, mix=mix), rng


def caption(params: SynthParams) -> str:
    """The caption of a clip, derived only from its parameters."""
    noun = params.shape if params.count == 1 else params.shape + "s"
    motion = f"moving {params.direction}"
    if _SPEED_WORDS[params.speed]:
        motion += " " + _SPEED_WORDS[params.speed]
    parts = [
        f"{_COUNT_WORDS[params.count]} {params.color} {noun} {motion} "
        f"on a {params.background} background"
    ]
    if params.camera_pan != "none":
        parts.append(f"camera panning {params.camera_pan}")
    if params.lighting != "normal":
        parts.append(_LIGHTING_PHRASES[params.lighting])
    if params.weather != "clear":
        parts.append(_WEATHER_PHRASES[params.weather])
    if params.noise >= NOISE_LEVEL / 2:
        parts.append("with heavy grainy noise")
    if params.tilt_deg != 0.0:
        parts.append("seen from a tilted camera")
    return ", ".join(parts)


def facts(params: SynthParams) -> CaptionFacts:
    """The facts a caption of ``params`` states (what :func:`parse_caption` should recover)."""
    return CaptionFacts(
        color=params.color,
        shape=params.shape,
        count=params.count,
        direction=params.direction,
        speed=params.speed,
        background=params.background,
        camera_pan=params.camera_pan,
        lighting=params.lighting,
        weather=params.weather,
        noisy=params.noise >= NOISE_LEVEL / 2,
        tilted=params.tilt_deg != 0.0,
    )


_COLOR_RE = "|".join(COLORS)
_SHAPE_RE = "|".join(SHAPES)
_DIR_RE = "|".join(DIRECTIONS)
_SUBJECT = re.compile(
    rf"\b(?:(?P<count>a|an|one|single|two|three|four|\d+)\s+)?(?:[a-z]+\s+)?"
    rf"(?P<color>{_COLOR_RE})\s+(?P<shape>{_SHAPE_RE})(?P<plural>s)?\b"
)
_SHAPE_ONLY = re.compile(rf"\b(?P<shape>{_SHAPE_RE})(?P<plural>s)?\b")
_COLOR_ONLY = re.compile(rf"\b(?P<color>{_COLOR_RE})\b(?!\s+background)")
_MOVING = re.compile(
    rf"\b(?:moving|going|travell?ing|heading|drifting|sliding)\s+(?P<dir>{_DIR_RE})"
)
_BACKGROUND = re.compile(r"\bon an?\s+(?P<bg>[a-z]+)\s+background\b")
_PAN = re.compile(rf"\bcamera\s+(?:is\s+)?pann?ing\s+(?P<dir>{_DIR_RE})")


def parse_caption(text: str) -> CaptionFacts:
    """Read the facts back from a caption or a free-form prompt (unknown facts stay None).

    Round-trips exactly for captions made by :func:`caption`:
    ``parse_caption(caption(p)) == facts(p)``.
    """
    t = " ".join(text.lower().replace(",", " , ").split())
    color = shape = direction = None
    count: int | None = None
    m = _SUBJECT.search(t)
    if m:
        color, shape = m.group("color"), m.group("shape")
        word = m.group("count")
        if word:
            count = int(word) if word.isdigit() else _WORD_COUNTS[word]
        else:
            count = None if m.group("plural") else 1
    else:
        ms = _SHAPE_ONLY.search(t)
        if ms:
            shape = ms.group("shape")
        mc = _COLOR_ONLY.search(t)
        if mc:
            color = mc.group("color")
    md = _MOVING.search(t)
    if md:
        direction = md.group("dir")
    ours = bool(m and md)  # a caption in our own grammar: absent phrases mean defaults
    speed: str | None = None
    if re.search(r"\b(?:slowly|slow)\b", t):
        speed = "slow"
    elif re.search(r"\b(?:quickly|fast|rapidly)\b", t):
        speed = "fast"
    elif ours:
        speed = "medium"
    mb = _BACKGROUND.search(t)
    background = mb.group("bg") if mb and mb.group("bg") in BACKGROUNDS else None
    mp = _PAN.search(t)
    camera_pan = mp.group("dir") if mp else ("none" if ours else None)
    lighting: str | None = "normal" if ours else None
    for key, phrase in _LIGHTING_PHRASES.items():
        if phrase in t:
            lighting = key
    if lighting in (None, "normal"):
        if re.search(r"\bflicker", t):
            lighting = "flicker"
        elif re.search(r"\b(?:dim|dark)\b", t):
            lighting = "dim"
    weather: str | None = "clear" if ours else None
    if re.search(r"\brain(?:y|ing)?\b", t):
        weather = "rain"
    elif re.search(r"\bsnow(?:y|ing)?\b", t):
        weather = "snow"
    noisy: bool | None = (
        True if re.search(r"\bnois[ey]\b|\bgrain", t) else (False if ours else None)
    )
    tilted: bool | None = True if re.search(r"\btilt", t) else (False if ours else None)
    return CaptionFacts(
        color=color,
        shape=shape,
        count=count,
        direction=direction,
        speed=speed,
        background=background,
        camera_pan=camera_pan,
        lighting=lighting,
        weather=weather,
        noisy=noisy,
        tilted=tilted,
    )


# --------------------------------------------------------------------------------------
# rendering


def _check_size(*, width: int, height: int, num_frames: int, fps: float) -> None:
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
    ux, uy = _UNIT[params.direction]
    horizontal = ux != 0.0
    along, across = (width, height) if horizontal else (height, width)
    pan_x, pan_y = _UNIT[params.camera_pan] if params.camera_pan != "none" else (0.0, 0.0)
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

    _check_size(width=width, height=height, num_frames=num_frames, fps=fps)
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

    pan_x, pan_y = _UNIT[params.camera_pan] if params.camera_pan != "none" else (0.0, 0.0)
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


# --------------------------------------------------------------------------------------
# datasets


def clip_key(
    params: SynthParams,
    *,
    width: int,
    height: int,
    num_frames: int,
    fps: float,
    seed: int,
    min_gap: float = 0.0,
) -> str:
    """Content address of a synthetic clip: same key, same pixels."""
    content: dict[str, Any] = {
        "v": SYNTH_VERSION,
        "params": params.to_dict(),
        "size": [width, height, num_frames, float(fps)],
        "seed": int(seed),
    }
    if min_gap:  # left out at the default, so earlier datasets keep their keys
        content["min_gap"] = float(min_gap)
    blob = json.dumps(content, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_synth_dataset(
    out_dir: str | Path,
    *,
    n_per_phase: int,
    width: int = 64,
    height: int = 64,
    num_frames: int = 16,
    fps: float = 24.0,
    seed: int = 0,
    phases: tuple[int, ...] = PHASES,
    min_gap: float = 0.0,
    on_progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Render ``n_per_phase`` clips for each phase as H.264 MP4s plus a manifest.

    ``min_gap`` keeps the subjects apart (see :func:`render`).

    Layout: ``out_dir/clips/phase{p}/{clip_id}.mp4`` and ``out_dir/manifest.parquet`` (+ .csv).
    Each row carries the caption, the phase, the parameters (``params`` with the render
    ``seed``), and ``source="synth"``, ``license="CC0-1.0"``. Clips whose content address is
    already on disk are not rendered again, so an interrupted run resumes. Returns the
    Parquet manifest path.
    """
    from aiprod.core.media import write_mp4

    if n_per_phase < 1:
        raise ValueError(f"n_per_phase must be >= 1, got {n_per_phase}")
    for p in phases:
        if p not in PHASES:
            raise ValueError(f"phase {p!r} is not a curriculum phase {list(PHASES)}")
    _check_size(width=width, height=height, num_frames=num_frames, fps=fps)
    check_min_gap(min_gap)
    if width % 2 or height % 2:
        raise ValueError(f"H.264 needs even width and height, got {width}x{height}")
    root = Path(out_dir)
    records: list[ClipRecord] = []
    total = n_per_phase * len(phases)
    done = 0
    size = {"width": width, "height": height, "num_frames": num_frames, "fps": fps}
    for phase in phases:
        for i, (params, rng) in enumerate(draws(phase, n_per_phase, seed)):
            clip_seed = int(rng.integers(0, 2**31 - 1))
            key = clip_key(params, **size, seed=clip_seed, min_gap=min_gap)
            clip_id = f"synth-p{phase}-{i:05d}-{key[:10]}"
            path = root / "clips" / f"phase{phase}" / f"{clip_id}.mp4"
            # Rendering is cheap next to encoding; re-render for the motion score, and
            # encode only what an earlier (interrupted) run did not finish.
            frames = render(params, **size, seed=clip_seed, min_gap=min_gap)
            if not path.exists():
                write_mp4(path, frames, fps=fps)
            motion = motion_score(frames)
            tags = ["synth", f"subjects:{params.count}", f"speed:{params.speed}"]
            if params.camera_pan != "none":
                tags.append("camera:pan")
            tags += [f"edge:{e}" for e in params.edge_cases]
            records.append(
                ClipRecord(
                    clip_id=clip_id,
                    path=str(path),
                    caption=caption(params),
                    phase=phase,
                    status=ACCEPTED,
                    source="synth",
                    license="CC0-1.0",
                    attribution=f"aiprod procedural generator v{SYNTH_VERSION}",
                    sha256=_sha256_file(path),
                    fps=float(fps),
                    width=width,
                    height=height,
                    num_frames=num_frames,
                    duration_s=num_frames / float(fps),
                    codec="h264",
                    pix_fmt="yuv420p",
                    has_audio=False,
                    motion_score=motion,
                    tags=tags,
                    params={
                        **params.to_dict(),
                        "seed": clip_seed,
                        "content_key": key,
                        **({"min_gap": min_gap} if min_gap else {}),
                    },
                )
            )
            done += 1
            if on_progress is not None:
                on_progress(done, total)
    manifest = write_manifest(records, root)
    log.info("wrote %d synthetic clips to %s", len(records), root)
    return manifest
