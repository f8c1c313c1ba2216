"""The parts of a registry entry (``models.toml``): limits, defaults, components and the
per-family options, and which knobs only some families take. Pure pydantic, no torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


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
FAMILY_ONLY: dict[str, tuple[tuple[str, ...], str]] = {
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
