"""The model registry (``models.toml``): which models this server can run, and their limits.

Pure pydantic, no torch: the API process validates requests against it, the worker and the
engine load models from it. Relative paths in an entry are resolved against the file's folder.

```toml
default = "builtin"

[[models]]
id = "builtin"
family = "builtin"            # ltx2 | ltxv | builtin
path = "builtin"              # folder (diffusers layout) or single file, relative to this file
version = "builtin-0.1"
price_per_gpu_second = 0.0005

[models.limits]
max_width = 256
...
[models.defaults]
width = 128
...
```
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from aiprod.core.errors import ConfigError, InvalidRequest

Family = Literal["ltx2", "ltxv", "builtin"]
DType = Literal["float32", "bfloat16", "float16"]

MAX_PROMPT_CHARS = 2000


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_width: int = 32
    max_width: int = 1280
    min_height: int = 32
    max_height: int = 1280
    size_multiple: int = 32
    min_frames: int = 9
    max_frames: int = 257
    frames_multiple: int = 8  # num_frames must be frames_multiple * k + 1
    min_fps: int = 1
    max_fps: int = 60
    max_steps: int = 100
    max_guidance_scale: float = 20.0


class Defaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    width: int = 768
    height: int = 512
    num_frames: int = 121
    fps: int = 24
    num_inference_steps: int = 40
    guidance_scale: float = 4.0
    two_stage: bool = True
    negative_prompt: str | None = None


class Components(BaseModel):
    """Optional per-component paths, for checkpoints not laid out as one diffusers folder."""

    model_config = ConfigDict(extra="forbid")

    transformer: Path | None = None
    vae: Path | None = None
    text_encoder: Path | None = None
    tokenizer: Path | None = None
    upsampler: Path | None = None
    distilled_lora: Path | None = None
    # ltxv/builtin: a second transformer that runs the two-stage refinement (default <path>/refiner)
    refiner: Path | None = None
    # builtin: the prompt verifier that ranks the drafts of a clip (default <path>/verifier)
    verifier: Path | None = None
    config: Path | None = None  # local config for an original single-file checkpoint
    # LTX-2 only
    audio_vae: Path | None = None
    connectors: Path | None = None
    vocoder: Path | None = None


class Options(BaseModel):
    """Memory and speed options every family takes (see docs/performance.md)."""

    model_config = ConfigDict(extra="forbid")

    vae_tiling: bool = False
    cpu_offload: bool = False
    compile: bool = False
    attention_backend: str | None = None
    refine_steps: int = Field(default=3, ge=1, le=50)
    # Two-stage refinement: share of the noise schedule re-run at full size, and its guidance.
    refine_strength: float = Field(default=0.4, gt=0.0, le=1.0)
    # None = family default: the request's guidance for the built-in model (as its trainer
    # samples), none (1.0) for LTX-Video / LTX-2, whose refinement is distilled-style.
    refine_guidance_scale: float | None = Field(default=None, ge=0.0)
    # AdaIN of the upsampled latents to stage 1's statistics; None = family default
    # (1.0 for LTX-Video as in diffusers' two-stage example, 0.0 for LTX-2 and the built-in
    # model, whose trainer samples without it).
    upsample_adain_factor: float | None = Field(default=None, ge=0.0, le=1.0)
    # VAE decode noise (LTX-Video 0.9.1+ VAEs are timestep-conditioned; ignored otherwise).
    decode_timestep: float = Field(default=0.05, ge=0.0, le=1.0)
    decode_noise_scale: float = Field(default=0.025, ge=0.0, le=1.0)
    max_sequence_length: int | None = Field(default=None, ge=8, le=1024)  # text tokens
    # Extra keyword arguments for stage 1's diffusers pipeline call when guidance is on, e.g.
    # LTX-2's stg_scale / modality_scale / audio_guidance_scale (checked against its signature).
    call_kwargs: dict[str, Any] = Field(default_factory=dict)


class LTX2Options(Options):
    """Options of an ``ltx2`` entry."""

    # A distilled checkpoint: stage 1 uses the 8-step distilled schedule when asked for 8 steps.
    distilled: bool = False


class LTXVOptions(Options):
    """Options of an ``ltxv`` entry (and, with more, of the built-in model)."""

    # Stage 1's classifier-free guidance only at noise levels at or above this (the first
    # steps, where layout and motion are decided); the later steps run one unguided pass each
    # instead of two. 0 guides every step (docs/models.md).
    guidance_min_sigma: float = Field(default=0.0, ge=0.0, le=1.0)
    # "condition" (LTXConditionPipeline, for 0.9.5+ checkpoints), "classic" (LTXPipeline /
    # LTXImageToVideoPipeline, as aiprod's trainer samples), "auto" = classic for the builtin
    # family, condition for ltxv.
    ltxv_pipeline: Literal["auto", "condition", "classic"] = "auto"


class BuiltinOptions(LTXVOptions):
    """Options of a ``builtin`` entry: the LTX-Video ones and the built-in model's own."""

    # Two-stage text-to-video: stage-1 drafts per clip; the model's prompt verifier
    # (verifier/) keeps the one that best shows what the prompt states: a stage-1 verifier
    # before the refinement (each extra draft costs one more stage-1 pass), a stage-2 one
    # after it (every draft refined; one more stage-1 and stage-2 pass each; docs/performance.md).
    candidates: int = Field(default=1, ge=1, le=8)
    # Serve the tiny random built-in model built with this seed (aiprod.engine.tiny) instead
    # of weights from ``path``: for tests and benchmarks; it draws deterministic noise.
    tiny_seed: int | None = Field(default=None, ge=0)


# Knobs only some families take -> (those families, why, the fix), for a refusal that names
# the fix instead of pydantic's "extra inputs are not permitted".
_FAMILY_ONLY: dict[str, tuple[tuple[str, ...], str]] = {
    "options.candidates": (
        ("builtin",),
        "ranks stage-1 drafts with the built-in model's prompt verifier; "
        "family '{family}' has none: remove it",
    ),
    "options.tiny_seed": (
        ("builtin",),
        "serves the tiny random built-in model; family '{family}' loads its weights "
        "from path: remove it",
    ),
    "options.guidance_min_sigma": (
        ("builtin", "ltxv"),
        "applies to the LTX-Video pipelines (families builtin and ltxv); LTX-2's guidance "
        "terms are set through options.call_kwargs: remove it",
    ),
    "options.ltxv_pipeline": (
        ("builtin", "ltxv"),
        "picks the LTX-Video pipeline (families builtin and ltxv); family '{family}' has "
        "one pipeline: remove it",
    ),
    "options.distilled": (
        ("ltx2",),
        "selects LTX-2's distilled schedule; family '{family}' has none: remove it",
    ),
    "components.verifier": (
        ("builtin",),
        "is the built-in model's prompt verifier; family '{family}' has none: remove it",
    ),
    "components.refiner": (
        ("builtin", "ltxv"),
        "is a stage-2 LTX-Video transformer (families builtin and ltxv); family "
        "'{family}' refines with its own (or components.distilled_lora): remove it",
    ),
    **{
        f"components.{name}": (
            ("ltx2",),
            "is a part of LTX-2 models; family '{family}' has none: remove it",
        )
        for name in ("distilled_lora", "audio_vae", "connectors", "vocoder")
    },
}


def _own_family(cls: type[BaseModel]) -> str | None:
    """The family a per-family entry class is for (None on the base)."""
    values = get_args(cls.model_fields["family"].annotation)
    return values[0] if len(values) == 1 else None


class ModelEntry(BaseModel):
    """One model of the registry. The base of the per-family entries (``LTX2Entry``,
    ``LTXVEntry``, ``BuiltinEntry``); ``ModelEntry.model_validate(data)`` returns the one
    ``data["family"]`` names."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    family: Family
    path: Path | None = None
    components: Components = Field(default_factory=Components)
    version: str = ""
    description: str = ""
    dtype: DType = "bfloat16"
    price_per_gpu_second: float = Field(default=0.0, ge=0.0)
    limits: Limits = Field(default_factory=Limits)
    defaults: Defaults = Field(default_factory=Defaults)
    options: Options = Field(default_factory=Options)
    trained_from: dict[str, str] = Field(default_factory=dict)  # aiprod models register: run, base

    def __init__(self, /, **data: Any) -> None:
        if type(self) is ModelEntry:
            raise TypeError(
                "ModelEntry is the base of the family entries: use ModelEntry.model_validate"
                "(data) or LTX2Entry / LTXVEntry / BuiltinEntry"
            )
        super().__init__(**data)

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Any:
        """On ``ModelEntry`` itself: the family's entry (keyed on ``family``)."""
        if cls is ModelEntry:
            return _ENTRY.validate_python(obj, **kwargs)
        return super().model_validate(obj, **kwargs)

    @model_validator(mode="before")
    @classmethod
    def _refuse_other_families_knobs(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        family = data.get("family") or _own_family(cls)
        for group in ("options", "components"):
            given = data.get(group)
            if not isinstance(given, dict):
                continue
            for key in given:
                families, why = _FAMILY_ONLY.get(f"{group}.{key}", ((family,), ""))
                if family not in families:
                    raise ValueError(
                        f"model '{data.get('id')}': {group}.{key} " + why.format(family=family)
                    )
        return data

    @model_validator(mode="after")
    def _version_defaults_to_id(self) -> ModelEntry:
        if not self.version:
            self.version = self.id
        return self

    def resolve_paths(self, base: Path) -> ModelEntry:
        """Return a copy whose relative paths are made absolute against ``base``."""

        def fix(p: Path | None) -> Path | None:
            if p is None or p.is_absolute():
                return p
            return (base / p).resolve()

        comps = self.components.model_copy(
            update={k: fix(v) for k, v in self.components.model_dump().items()}
        )
        return self.model_copy(update={"path": fix(self.path), "components": comps})

    def public_dict(self) -> dict[str, Any]:
        """What GET /models shows: no local paths."""
        return {
            "id": self.id,
            "family": self.family,
            "version": self.version,
            "description": self.description,
            "price_per_gpu_second": self.price_per_gpu_second,
            "limits": self.limits.model_dump(),
            "defaults": self.defaults.model_dump(),
        }

    def resolve_request(self, params: dict[str, Any]) -> dict[str, Any]:
        """Fill defaults and check every field against this entry's limits.

        ``params`` holds the generate-request fields (None = use the default). Returns the
        resolved generation parameters; raises ``InvalidRequest`` naming the field and the
        allowed range on the first problem.
        """
        lim, d = self.limits, self.defaults

        def pick(name: str) -> Any:
            value = params.get(name)
            return getattr(d, name) if value is None else value

        prompt = params.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidRequest("prompt is required: give a non-empty text prompt", field="prompt")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidRequest(
                f"prompt is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}",
                field="prompt",
            )
        out: dict[str, Any] = {"prompt": prompt}
        neg = pick("negative_prompt")
        if neg is not None and len(neg) > MAX_PROMPT_CHARS:
            raise InvalidRequest(
                f"negative_prompt is longer than {MAX_PROMPT_CHARS} characters",
                field="negative_prompt",
            )
        out["negative_prompt"] = neg

        for name, lo, hi in (
            ("width", lim.min_width, lim.max_width),
            ("height", lim.min_height, lim.max_height),
        ):
            v = pick(name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise InvalidRequest(f"{name} must be an integer", field=name)
            if not lo <= v <= hi:
                raise InvalidRequest(
                    f"{name}={v} is outside {lo}..{hi} for model '{self.id}'", field=name
                )
            if v % lim.size_multiple:
                near = max(lo, round(v / lim.size_multiple) * lim.size_multiple)
                raise InvalidRequest(
                    f"{name}={v} must be a multiple of {lim.size_multiple} for model "
                    f"'{self.id}' (try {near})",
                    field=name,
                )
            out[name] = v

        frames = pick("num_frames")
        if not isinstance(frames, int) or isinstance(frames, bool):
            raise InvalidRequest("num_frames must be an integer", field="num_frames")
        if not lim.min_frames <= frames <= lim.max_frames:
            raise InvalidRequest(
                f"num_frames={frames} is outside {lim.min_frames}..{lim.max_frames} "
                f"for model '{self.id}'",
                field="num_frames",
            )
        if (frames - 1) % lim.frames_multiple:
            k = max(1, round((frames - 1) / lim.frames_multiple))
            raise InvalidRequest(
                f"num_frames={frames} must be {lim.frames_multiple}*k+1 "
                f"(e.g. {lim.frames_multiple * k + 1})",
                field="num_frames",
            )
        out["num_frames"] = frames

        fps = pick("fps")
        if (
            not isinstance(fps, int)
            or isinstance(fps, bool)
            or not lim.min_fps <= fps <= lim.max_fps
        ):
            raise InvalidRequest(
                f"fps must be an integer in {lim.min_fps}..{lim.max_fps}", field="fps"
            )
        out["fps"] = fps

        steps = pick("num_inference_steps")
        if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= lim.max_steps:
            raise InvalidRequest(
                f"num_inference_steps must be an integer in 1..{lim.max_steps}",
                field="num_inference_steps",
            )
        out["num_inference_steps"] = steps

        cfg = pick("guidance_scale")
        if (
            not isinstance(cfg, int | float)
            or isinstance(cfg, bool)
            or not 0.0 <= float(cfg) <= lim.max_guidance_scale
        ):
            raise InvalidRequest(
                f"guidance_scale must be a number in 0..{lim.max_guidance_scale}",
                field="guidance_scale",
            )
        out["guidance_scale"] = float(cfg)

        two_stage = pick("two_stage")
        if not isinstance(two_stage, bool):
            raise InvalidRequest("two_stage must be true or false", field="two_stage")
        out["two_stage"] = two_stage

        seed = params.get("seed")
        if seed is not None and (
            not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63
        ):
            raise InvalidRequest("seed must be an integer in 0..2^63-1", field="seed")
        out["seed"] = seed
        return out


class LTX2Entry(ModelEntry):
    """An LTX-2 model (video + audio), on diffusers' LTX-2 pipelines."""

    family: Literal["ltx2"] = "ltx2"
    options: LTX2Options = Field(default_factory=LTX2Options)


class LTXVEntry(ModelEntry):
    """An LTX-Video model, on diffusers' LTX-Video pipelines."""

    family: Literal["ltxv"] = "ltxv"
    options: LTXVOptions = Field(default_factory=LTXVOptions)


class BuiltinEntry(ModelEntry):
    """aiprod's built-in model (the LTX-Video architecture, trained by ``aiprod train``)."""

    family: Literal["builtin"] = "builtin"
    options: BuiltinOptions = Field(default_factory=BuiltinOptions)

    @model_validator(mode="after")
    def _path_or_tiny(self) -> BuiltinEntry:
        if self.path is not None and self.options.tiny_seed is not None:
            raise ValueError(
                f"model '{self.id}': set either path (trained weights) or options.tiny_seed "
                "(the tiny random test model), not both"
            )
        return self


AnyEntry = Annotated[LTX2Entry | LTXVEntry | BuiltinEntry, Field(discriminator="family")]
_ENTRY: TypeAdapter[LTX2Entry | LTXVEntry | BuiltinEntry] = TypeAdapter(AnyEntry)


class Registry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default: str
    models: list[AnyEntry]
    source: Path | None = None

    @model_validator(mode="after")
    def _check(self) -> Registry:
        ids = [m.id for m in self.models]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate model ids: {', '.join(dupes)}")
        if self.default not in ids:
            raise ValueError(f"default model '{self.default}' is not one of: {', '.join(ids)}")
        return self

    def get(self, model_id: str | None) -> ModelEntry:
        if model_id is None:
            model_id = self.default
        for m in self.models:
            if m.id == model_id:
                return m
        known = ", ".join(m.id for m in self.models)
        raise InvalidRequest(f"unknown model '{model_id}'; this server has: {known}", field="model")

    @property
    def default_entry(self) -> ModelEntry:
        return self.get(self.default)


def default_models_file() -> Path:
    """The models.toml that ships inside the package."""
    return Path(__file__).resolve().parent.parent / "models.toml"


def load_registry(path: Path | None = None) -> Registry:
    """Read and validate a models.toml; relative paths resolve against its folder."""
    path = Path(path) if path is not None else default_models_file()
    if not path.is_file():
        raise ConfigError(
            f"models file {path} does not exist: set AIPROD_MODELS_FILE to a models.toml "
            "(see docs/models.md)"
        )
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    try:
        reg = Registry.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError.from_validation(exc, str(path)) from exc
    base = path.resolve().parent
    return reg.model_copy(
        update={"models": [m.resolve_paths(base) for m in reg.models], "source": path}
    )
