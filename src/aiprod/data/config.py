"""Data pipeline configuration (``configs/data.yaml``): thresholds and curriculum rules.

Config is data: YAML -> pydantic models with ``extra="forbid"``, so a typo in a key is an
error naming the key, not a silently ignored setting. Every field has the default that
``configs/data.yaml`` spells out.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aiprod.core.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ValidateConfig(_Strict):
    """What a clip must be to be accepted."""

    min_fps: float = Field(24.0, gt=0)
    min_short_side: int = Field(256, ge=1)
    min_duration_s: float = Field(1.0, ge=0)
    max_duration_s: float = Field(600.0, gt=0)
    #: 99.9th-percentile luma (0..255) at or under which a clip counts as black: anything
    #: lit in the frame, even a small subject, passes; black or near-black noise does not
    black_max_luma: float = Field(24.0, ge=0)
    #: fraction of pixels changing between frames ~1/8 s apart at or under which a clip counts
    #: as frozen (a still image, duplicated frames)
    frozen_max_changed: float = Field(0.0002, ge=0, le=1)
    #: a clip that decodes fewer than this fraction of the frames its header promises is
    #: truncated
    min_decoded_fraction: float = Field(0.9, gt=0, le=1)
    #: decode at most this many seconds for the black/frozen/motion checks (0 = all)
    analyze_max_s: float = Field(30.0, ge=0)
    allowed_codecs: list[str] = Field(default_factory=list)  # empty: any codec FFmpeg decodes


class SplitConfig(_Strict):
    """Scene/shot detection (PySceneDetect ContentDetector) and clip length window."""

    threshold: float = Field(27.0, gt=0)
    min_clip_s: float = Field(1.0, ge=0)
    max_clip_s: float = Field(10.0, gt=0)


class NormalizeConfig(_Strict):
    fps: float = Field(24.0, gt=0)
    short_side: int = Field(256, ge=16)
    crf: int = Field(18, ge=0, le=51)
    preset: str = "veryfast"
    #: x264 tune; "fastdecode" makes clips ~1/3 cheaper to decode (they are decoded every
    #: epoch) for a slightly larger file; "" for none
    tune: str = "fastdecode"


class Condition(_Strict):
    """All fields given must hold (AND). Unset fields are not checked."""

    tags_any: list[str] = Field(default_factory=list)
    keywords_any: list[str] = Field(default_factory=list)
    min_motion: float | None = None
    max_motion: float | None = None
    min_subjects: int | None = None
    #: underexposed: even the brightest 2% of pixels (98th-percentile luma) are this dark
    max_p98_luma: float | None = None
    #: overexposed: the mean luma is at least this
    min_mean_luma: float | None = None


class PhaseRule(_Strict):
    """A clip belongs to ``phase`` when any of the conditions holds."""

    phase: int = Field(ge=1, le=5)
    any_of: list[Condition]


def _default_rules() -> list[PhaseRule]:
    return [
        PhaseRule(
            phase=4,
            any_of=[
                Condition(tags_any=["edge:lighting", "edge:weather", "edge:noise", "edge:angle"]),
                Condition(
                    keywords_any=[
                        "night",
                        "dark",
                        "dim",
                        "rain",
                        "snow",
                        "fog",
                        "storm",
                        "flicker",
                        "flickering",
                        "tilted",
                        "noise",
                        "grainy",
                        "overexposed",
                        "underexposed",
                    ]
                ),
                Condition(max_p98_luma=40.0),
                Condition(min_mean_luma=215.0),
            ],
        ),
        PhaseRule(
            phase=3,
            any_of=[
                Condition(tags_any=["speed:fast"]),
                Condition(keywords_any=["fast", "quickly", "running", "chase", "crowd", "race"]),
                Condition(min_motion=12.0),
            ],
        ),
        PhaseRule(
            phase=2,
            any_of=[
                Condition(min_subjects=2),
                Condition(tags_any=["camera:pan"]),
                Condition(keywords_any=["pan", "panning", "group", "couple"]),
            ],
        ),
        PhaseRule(phase=1, any_of=[Condition()]),
    ]


class OrganizeConfig(_Strict):
    """Rules are tried in order; the first phase whose rule holds wins.

    A clip that matches the rules of ``mix_min_phases`` or more of phases 2-4 goes to phase 5
    (the mix). ``overrides_file`` (CSV ``clip_id,phase``) wins over every rule.
    """

    rules: list[PhaseRule] = Field(default_factory=_default_rules)
    mix_min_phases: int = Field(2, ge=2)
    overrides_file: Path | None = None
    keep_existing: bool = True  # clips that already have a phase (e.g. synth) keep it


class ReportConfig(_Strict):
    contact_sheet_clips: int = Field(12, ge=1)
    contact_sheet_frames: int = Field(4, ge=1)
    thumb_height: int = Field(96, ge=16)


class DataConfig(_Strict):
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    split: SplitConfig = Field(default_factory=SplitConfig)
    normalize: NormalizeConfig = Field(default_factory=NormalizeConfig)
    organize: OrganizeConfig = Field(default_factory=OrganizeConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.split.min_clip_s > self.split.max_clip_s:
            raise ValueError("split.min_clip_s must be <= split.max_clip_s")
        if self.validate_.min_duration_s > self.validate_.max_duration_s:
            raise ValueError("validate.min_duration_s must be <= validate.max_duration_s")
        return self


def load_config(path: str | Path | None = None) -> DataConfig:
    """Load ``path`` (YAML); with no path, ``configs/data.yaml`` if present, else the defaults."""
    import yaml

    if path is None:
        default = Path("configs/data.yaml")
        if not default.exists():
            return DataConfig()
        path = default
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"data config {p} does not exist (see configs/data.yaml for one)")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"data config {p} is not valid YAML: {exc}") from exc
    try:
        cfg = DataConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError.from_validation(exc, f"data config {p}") from exc
    if cfg.organize.overrides_file is not None and not cfg.organize.overrides_file.is_absolute():
        cfg = cfg.model_copy(
            update={
                "organize": cfg.organize.model_copy(
                    update={"overrides_file": p.parent / cfg.organize.overrides_file}
                )
            }
        )
    return cfg
