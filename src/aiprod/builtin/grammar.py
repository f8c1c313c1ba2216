"""The built-in model's world and its caption grammar: what a synthetic clip shows, its caption,
and the parser that reads those facts back.

Every clip is drawn from a :class:`SynthParams` (shape, color, count, direction, speed,
camera pan, lighting, weather, noise, camera tilt) for one of the five curriculum phases
(:func:`sample_params`); its caption is derived from the parameters (:func:`caption`), and
:func:`parse_caption` reads those facts back from a caption or a user prompt, so prompt
adherence can be scored exactly (``aiprod.builtin.scoring``) and drafts ranked by what the
prompt states (``aiprod.builtin.verifier``). ``aiprod.builtin.render`` draws the clips,
``aiprod.builtin.synth`` writes them as a dataset.

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
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

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
_OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
# Unit vector of each direction in image coordinates (y grows downwards).
UNIT = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}


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


_VOCAB_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")  # the built-in tokenizer's split
VOCAB_DRAWS = 300  # captions drawn per phase; every word of the grammar appears well before


@functools.cache
def vocabulary() -> tuple[str, ...]:
    """Every word (and punctuation mark) a caption of this grammar can contain, sorted: the
    built-in model's vocabulary (its tokenizer is built from its training captions; other
    words reach it as <unk>). docs/model_card.md#vocabulary lists it (a test keeps it equal)."""
    words: set[str] = set()
    for phase in PHASES:
        for params, _ in draws(phase, VOCAB_DRAWS, 0):
            words.update(_VOCAB_WORD.findall(caption(params).lower()))
    return tuple(sorted(words))
