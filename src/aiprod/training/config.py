"""Training configuration: YAML -> pydantic models with ``extra="forbid"``.

A run is a list of phases executed in order. Each phase trains one *target*, and its config
is the model of that target (a union keyed on ``target``; ``transformer`` when unset), so a
field of another kind of phase is refused with the fix:

- ``vae``: the video autoencoder (reconstruction + KL), only for the built-in architecture;
- ``transformer``: the denoiser, with the flow-matching objective (the curriculum phases);
- ``refiner``: a copy of the denoiser for the two-stage refinement only;
- ``upsampler``: the x2 latent upsampler used by the two-stage path;
- ``verifier``: the built-in model's prompt verifier, a classifier of noisy latents that picks
  the best of several drafts of a clip (``aiprod.builtin.verifier``).

Example (see ``configs/builtin-step1-scratch.yaml`` for a full one)::

    name: tiny
    output_dir: runs/tiny
    model: {source: builtin}
    phases:
      - name: p1
        data: {synth: {phase: 1, count: 64}}
        steps: 100
        batch_size: 8
        buckets: [[64, 64, 25]]
        lr: {peak: 1.0e-3, warmup_steps: 10, schedule: cosine}
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from aiprod.core.errors import ConfigError
from aiprod.training.arch_config import (  # noqa: F401  (re-exported: config's public names)
    BuiltinArch,
    TextEncoderArch,
    TransformerArch,
    UpsamplerArch,
    VaeArch,
    VerifierArch,
)
from aiprod.training.yaml_doc import apply_overrides, pick_document


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SynthData(_Strict):
    """Procedural clips of ``aiprod.builtin.grammar``, rendered at each bucket's size."""

    phase: int = Field(ge=1, le=5)
    count: int = Field(ge=1, description="number of clips")
    seed: int = 0
    fps: int = 24
    # phase 5 only: relative weights of phases 1-4 in the mix (default: even)
    mix: dict[int, float] | None = None
    # keep subjects this far apart over the whole clip, as a fraction of the short side
    # (0: the renderer's default layout, where three subjects often touch)
    min_gap: float = 0.0

    @model_validator(mode="after")
    def _check_synth(self) -> SynthData:
        from aiprod.builtin.grammar import check_mix
        from aiprod.builtin.render import check_min_gap

        if self.mix is not None:
            check_mix(self.mix, self.phase)
        check_min_gap(self.min_gap)
        return self


class DataConfig(_Strict):
    """Where a phase's clips come from: a manifest, or the synthetic generator."""

    manifest: Path | None = None
    filter_phase: int | None = Field(default=None, ge=1, le=5, description="manifest rows of phase")
    synth: SynthData | None = None
    limit: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.manifest is None) == (self.synth is None):
            raise ValueError("give exactly one of data.manifest or data.synth")
        return self


class LRConfig(_Strict):
    peak: float = Field(default=1e-3, gt=0)
    warmup_steps: int = Field(default=0, ge=0)
    schedule: Literal["constant", "cosine", "linear"] = "cosine"
    min_ratio: float = Field(default=0.1, ge=0, le=1, description="final lr = peak * min_ratio")


class FlowConfig(_Strict):
    """Rectified flow: x_t = (1 - s) x0 + s eps, target v = eps - x0."""

    sampler: Literal["logit_normal", "uniform", "shifted"] = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = Field(default=1.0, gt=0, description="s' = shift s / (1 + (shift-1) s)")
    # scale the drawn noise levels into (0, max_sigma]: a phase that trains only the
    # two-stage refinement range (stage 2 starts at refine strength 0.4) sets it near that
    max_sigma: float = Field(default=1.0, gt=0, le=1)
    num_sigma_buckets: int = Field(default=4, ge=1)


# ---------------------------------------------------------------- phases: one model per target


class _PhaseBase(_Strict):
    """What every phase has, whatever it trains."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    data: DataConfig
    steps: int | None = Field(default=None, ge=1)
    epochs: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=4, ge=1)
    # (width, height, frames); frames must be 8k+1 for the LTX autoencoder
    buckets: list[tuple[int, int, int]] = Field(min_length=1)
    lr: LRConfig = Field(default_factory=LRConfig)
    weight_decay: float = Field(default=0.0, ge=0)
    grad_clip: float | None = Field(default=1.0, gt=0)
    # exponential moving average of the trained weights (diffusers' EMAModel, warm-up
    # min(decay, (1 + n) / (10 + n))): held-out loss and validation videos use the average,
    # and the phase ends with it (so later phases and the export start from it)
    ema_decay: float | None = Field(default=None, gt=0, lt=1)

    @model_validator(mode="before")
    @classmethod
    def _refuse_other_targets_fields(cls, raw: Any) -> Any:
        """A field of another kind of phase gets the fix, not pydantic's bare "extra input"."""
        if not isinstance(raw, dict):
            return raw
        own = cls.model_fields
        for key in raw:
            if key in own or key not in _FIELD_TARGETS:
                continue
            where = _FIELD_TARGETS[key]
            kinds = ", ".join(where[:-1]) + " and " + where[-1] if len(where) > 1 else where[0]
            target = raw.get("target", "transformer")
            raise ValueError(
                f"phase '{raw.get('name', '?')}': {key} applies to {kinds} phases only; "
                f"remove it from this {target} phase"
            )
        return raw

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError(f"phase '{self.name}': give exactly one of steps or epochs")
        for w, h, f in self.buckets:
            if w % 16 or h % 16 or w <= 0 or h <= 0:
                raise ValueError(f"phase '{self.name}': bucket {w}x{h} must be multiples of 16")
            if f < 1 or (f - 1) % 8:
                raise ValueError(f"phase '{self.name}': bucket frames={f} must be 8k+1 (9, 17, 25)")
        return self


class _DenoiserPhase(_PhaseBase):
    """Flow-matching phases (stage 1's denoiser, or the stage-2 refiner)."""

    caption_dropout: float = Field(default=0.1, ge=0, le=1, description="for guidance")
    # this phase's noise-level sampler instead of the run's ``flow``
    flow: FlowConfig | None = None
    # extra loss weight on the subjects, so small objects are not drowned by the background;
    # 0 = plain mean. Each latent cell is weighted by its share of subject pixels
    # (data.latent_foreground), the per-clip mean weight kept at 1 so the loss scale (and the
    # lr) means what it did
    fg_weight: float = Field(default=0.0, ge=0)


class TransformerPhase(_DenoiserPhase):
    """Stage 1's denoiser with the flow-matching objective (the curriculum phases)."""

    target: Literal["transformer"] = "transformer"
    # also train the text encoder, at this peak lr (same warm-up and decay as ``lr``). A
    # frozen encoder may not tell word order apart: the built-in one gave "moving left ...
    # panning up" and "moving up ... panning left" token sets 0.9994 alike.
    text_encoder_lr: float | None = Field(default=None, gt=0)


class RefinerPhase(_DenoiserPhase):
    """A copy of the denoiser used only for the two-stage refinement (stage 2), so training
    it at full size and low noise cannot make stage 1 forget (see components.py)."""

    target: Literal["refiner"]
    # train the refinement the way the two-stage path runs it. Each clip's half-size latent
    # goes through the model's latent upsampler and is noised to this level (the served
    # refine strength, models.toml ``refine_strength``); the refiner learns the straight path
    # from there to the full-size clip, v = (x_start - x0) / refine_from, so it corrects what
    # the upsampler blurs (rounded corners) instead of keeping it. Noise levels are drawn in
    # (0, refine_from]. Without it the refiner learns to denoise clean clips.
    refine_from: float | None = Field(default=None, gt=0, le=1)

    @model_validator(mode="after")
    def _check_refine_from(self) -> Self:
        s0 = self.refine_from
        if s0 is not None and self.flow is not None and self.flow.max_sigma not in (1.0, s0):
            raise ValueError(
                f"phase '{self.name}': refine_from={s0} sets the noise range; "
                f"remove flow.max_sigma={self.flow.max_sigma} (or make them equal)"
            )
        return self


class VaePhase(_PhaseBase):
    """The video autoencoder (reconstruction + KL), only for the built-in architecture."""

    target: Literal["vae"]
    kl_weight: float = Field(default=1e-6, ge=0)
    # scale of the posterior sample's noise (1 = a standard VAE, 0 = a deterministic
    # autoencoder, which learns far faster on a small compute budget)
    posterior_noise: float = Field(default=1.0, ge=0, le=1)
    # extra loss weight on pixels far from their frame's median colour (the subjects)
    fg_weight: float = Field(default=0.0, ge=0)
    l1_weight: float = Field(default=0.5, ge=0, description="loss = mse + this * L1")


class UpsamplerPhase(_PhaseBase):
    """The x2 latent upsampler of the two-stage path."""

    target: Literal["upsampler"]


class VerifierPhase(_PhaseBase):
    """The built-in model's prompt verifier (``aiprod.builtin.verifier``): a classifier of
    noisy latents (count, shape, colour, direction as the captions state them) that ranks the
    drafts of a clip (models.toml ``candidates``); its stage and ranking rule are set by
    ``model.architecture.verifier``. Only for the built-in architecture."""

    target: Literal["verifier"]
    # the noise levels its latents are trained at (default: the run's ``flow``)
    flow: FlowConfig | None = None


def _phase_target(raw: Any) -> str:
    """The union's tag: a phase without ``target`` is a transformer phase (as it always was)."""
    if isinstance(raw, dict):
        return str(raw.get("target", "transformer"))
    return str(getattr(raw, "target", "transformer"))


PhaseConfig = Annotated[
    Annotated[TransformerPhase, Tag("transformer")]
    | Annotated[RefinerPhase, Tag("refiner")]
    | Annotated[VaePhase, Tag("vae")]
    | Annotated[UpsamplerPhase, Tag("upsampler")]
    | Annotated[VerifierPhase, Tag("verifier")],
    Discriminator(
        _phase_target,
        custom_error_type="phase_target",
        custom_error_message="target must be one of transformer, refiner, vae, upsampler, verifier",
    ),
]
"""One phase of a run: the model of its ``target``."""

PHASE_TYPES: dict[str, type[_PhaseBase]] = {
    "vae": VaePhase,
    "transformer": TransformerPhase,
    "refiner": RefinerPhase,
    "upsampler": UpsamplerPhase,
    "verifier": VerifierPhase,
}
# field -> the targets whose phases have it (for the message that names the fix)
_FIELD_TARGETS: dict[str, list[str]] = {}
for _target, _model in PHASE_TYPES.items():
    for _field in _model.model_fields:
        _FIELD_TARGETS.setdefault(_field, []).append(_target)


def trains_text_encoder(phase: _PhaseBase) -> bool:
    """Whether a phase trains the text encoder beside its target (``text_encoder_lr``)."""
    return isinstance(phase, TransformerPhase) and phase.text_encoder_lr is not None


class ModelConfig(_Strict):
    """``builtin``: build the small LTX-Video architecture here (random init, or ``init_from``
    a built-in folder); ``registry``: fine-tune an ``ltxv``/``builtin`` entry of a models.toml."""

    source: Literal["builtin", "registry"] = "builtin"
    architecture: BuiltinArch = Field(default_factory=BuiltinArch)
    init_from: Path | None = None
    registry_id: str | None = None
    models_file: Path | None = None
    scheduler_shift: float | None = Field(
        default=None,
        gt=0,
        description="the stage-1 schedule shift written into the trained model's scheduler "
        "config (what the engine and aiprod eval sample with); None keeps the model's own",
    )
    grow_layers: int | None = Field(
        default=None,
        ge=2,
        le=64,
        description="deepen the loaded stage-1 denoiser to this many blocks before training: "
        "copies of its own blocks with zeroed output projections are interleaved, so the "
        "grown model computes exactly what the loaded one did at step 0; None keeps its depth",
    )

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.source == "registry" and not self.registry_id:
            raise ValueError("model.source=registry needs model.registry_id")
        if self.grow_layers is not None and self.source == "builtin" and self.init_from is None:
            raise ValueError(
                "model.grow_layers deepens a loaded model, but model.init_from is not set; for a "
                "new model set model.architecture.transformer.num_layers instead"
            )
        return self


class LoraConfig(_Strict):
    rank: int = Field(default=8, ge=1)
    alpha: float = Field(default=8.0, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    # what final/ holds: "merged" = the model folder with the adapter fused into the
    # transformer (diffusers' fuse_lora), plus the adapter in final/lora/; "adapter" = only
    # final/lora/ (pytorch_lora_weights.safetensors, for diffusers' load_lora_weights)
    export: Literal["merged", "adapter"] = "merged"


class MonitorConfig(_Strict):
    log_every: int = Field(default=10, ge=1)
    tensorboard: bool = True
    # held-out evaluation; false: no clips are held out of training (a small dataset of your
    # own keeps all of them), no held-out loss, and the best checkpoint is the latest
    heldout: bool = True
    heldout_every: int = Field(default=100, ge=1)
    heldout_clips: int = Field(default=8, ge=1)
    heldout_quantiles: list[float] = Field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])
    video_every: int = Field(default=0, ge=0, description="0 = no validation videos")
    video_prompts: list[str] = Field(default_factory=list)
    video_steps: int = Field(default=8, ge=1)
    gpu_memory_warn_fraction: float = Field(default=0.9, gt=0, le=1)


class CheckpointConfig(_Strict):
    every: int = Field(default=100, ge=1)
    keep_last: int = Field(default=3, ge=1)
    keep_best: bool = True


class DistributedConfig(_Strict):
    """How several processes train (``training.sharding``): ``ddp`` replicates the model on
    every rank; ``fsdp`` shards the denoisers' weights, gradients and Adam states across them
    (FSDP2); ``auto``: ``fsdp`` under ``accelerate launch --use_fsdp``, else ``ddp``."""

    strategy: Literal["auto", "ddp", "fsdp"] = "auto"


class TrainConfig(_Strict):
    name: str = Field(default="run", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    output_dir: Path = Path("runs/run")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mode: Literal["full", "lora"] = "full"
    lora: LoraConfig = Field(default_factory=LoraConfig)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    gradient_checkpointing: bool = False
    num_threads: int | None = Field(default=None, ge=1)
    model: ModelConfig = Field(default_factory=ModelConfig)
    flow: FlowConfig = Field(default_factory=FlowConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    phases: list[PhaseConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError("phase names must be unique")
        if self.mode == "lora" and not all(isinstance(p, TransformerPhase) for p in self.phases):
            raise ValueError(
                "mode=lora trains the transformer only: remove vae/upsampler/refiner phases"
            )
        if self.mode == "lora" and any(trains_text_encoder(p) for p in self.phases):
            raise ValueError("mode=lora trains the transformer only: remove text_encoder_lr")
        if self.model.source == "registry":
            for p in self.phases:
                if isinstance(p, VaePhase | VerifierPhase):
                    raise ValueError(f"a {p.target} phase is only for the built-in architecture")
        return self

    def fingerprint(self) -> str:
        """Hash of everything that changes the training trajectory (not logging/paths).

        Fields left at their defaults are omitted, so adding a new optional field to the
        schema does not invalidate the checkpoints of existing runs.
        """
        data = self.model_dump(
            mode="json",
            exclude={  # the sampling schedule changes no weight: not part of the trajectory
                "output_dir": True,
                "monitor": True,
                "checkpoint": True,
                "distributed": True,  # ddp and fsdp train the same weights: resume across them
                "model": {"scheduler_shift"},
                "lora": {"export"},
            },
            exclude_defaults=True,
        )
        if not self.monitor.heldout:  # every clip trains (none held out): another trajectory
            data["heldout"] = False
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def load_config(
    path: Path | str,
    *,
    base_dir: Path | None = None,
    overrides: list[str] | None = None,
    document: str | None = None,
) -> TrainConfig:
    """Read a YAML training config (its first document, or the one named ``document``, with
    ``--set KEY=VALUE`` overrides); raises ``ConfigError`` naming the bad field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"training config {path} does not exist (see configs/debug.yaml)")
    try:
        raw = pick_document(path, list(yaml.safe_load_all(path.read_text())), document)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    raw = apply_overrides(raw, overrides or [])
    try:
        cfg = TrainConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        # the phase union adds its tag to the path (phases.1.transformer.stepz): drop it, the
        # reader wrote phases.1.stepz
        loc = [
            str(part)
            for i, part in enumerate(first["loc"])
            if not (i == 2 and first["loc"][0] == "phases" and part in PHASE_TYPES)
        ]
        raise ConfigError(f"{path}: {'.'.join(loc)}: {first['msg']}") from exc
    return cfg


def drop_other_targets_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """A run config as checkpoints written before the phase union hold it (every phase with
    every field, those of other targets at their defaults or unused) -> one the union takes.

    Only for configs the trainer wrote itself: a field of another target never changed what
    its phase did, so dropping it changes nothing (nor the fingerprint, which omits defaults).
    """
    phases = []
    for p in raw.get("phases", []):
        model = PHASE_TYPES.get(str(p.get("target", "transformer")))
        phases.append({k: v for k, v in p.items() if model is None or k in model.model_fields})
    return {**raw, "phases": phases}
