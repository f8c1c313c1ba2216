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

from aiprod.core.errors import ConfigError, InvalidRequest, ModelUnavailable
from aiprod.core.model_options import (
    FAMILY_ONLY,
    BuiltinOptions,
    Components,
    Defaults,
    Limits,
    LTX2Options,
    LTXVOptions,
    Options,
)

# The entry's parts live in model_options; importable from here as before.
__all__ = [
    "AnyEntry",
    "BuiltinEntry",
    "BuiltinOptions",
    "Components",
    "Defaults",
    "LTX2Entry",
    "LTX2Options",
    "LTXVEntry",
    "LTXVOptions",
    "Limits",
    "ModelEntry",
    "Options",
    "Registry",
    "default_models_file",
    "load_registry",
]

Family = Literal["ltx2", "ltxv", "builtin"]
DType = Literal["float32", "bfloat16", "float16"]

MAX_PROMPT_CHARS = 2000


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
                families, why = FAMILY_ONLY.get(f"{group}.{key}", ((family,), ""))
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
    # Entries that are not the default and failed validation: {id: the problem, one line}.
    # Reported (models list, serve start, /readyz) and skipped; the others are served.
    skipped: dict[str, str] = Field(default_factory=dict)

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
        if model_id in self.skipped:
            raise ModelUnavailable(
                f"model '{model_id}' is unavailable on this server: {self.skipped[model_id]}"
            )
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
    raw, skipped = _skip_invalid_entries(raw, path)
    try:
        reg = Registry.model_validate({**raw, "skipped": skipped})
    except ValidationError as exc:
        raise ConfigError.from_validation(exc, str(path)) from exc
    base = path.resolve().parent
    return reg.model_copy(
        update={"models": [m.resolve_paths(base) for m in reg.models], "source": path}
    )


def _skip_invalid_entries(raw: dict[str, Any], path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Drop the entries (not the default) that fail validation: {id: the problem, one line}.
    An invalid default, or a file without a valid shape, fails as a whole (ConfigError)."""
    models = raw.get("models")
    if not isinstance(models, list):
        return raw, {}
    keep: list[Any] = []
    skipped: dict[str, str] = {}
    for i, item in enumerate(models):
        model_id = item.get("id") if isinstance(item, dict) else None
        try:
            ModelEntry.model_validate(item)
        except ValidationError as exc:
            if model_id == raw.get("default") or not isinstance(model_id, str) or not model_id:
                keep.append(item)  # the whole file fails below, naming this entry
                continue
            line = ConfigError.from_validation(exc, f"models.toml models[{i}] ({model_id})").message
            skipped[model_id] = line + "; fix or remove this entry in models.toml"
            continue
        keep.append(item)
    return {**raw, "models": keep}, skipped
