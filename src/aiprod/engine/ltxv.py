"""LTX-Video backend (family ``ltxv``, and the built-in model, which has the same architecture).

Two ways to drive diffusers, picked by ``options.ltxv_pipeline``:

- ``condition`` (default for ``ltxv``): ``LTXConditionPipeline``, the diffusers pipeline for
  LTX-Video 0.9.5+ (text-to-video, first-frame conditioning, partial denoise for refinement);
- ``classic`` (default for ``builtin``): ``LTXPipeline`` / ``LTXImageToVideoPipeline``, whose
  positional coordinates and sigma schedule are the ones aiprod's trainer uses; refinement runs
  the same pipeline from re-noised latents with its schedule scaled into ``[0, strength]``.

Both share ``LTXLatentUpsamplePipeline`` (the x2 latent upsampler). The ti2vid two-stage path:

1. stage 1 at half resolution with classifier-free guidance -> latents;
2. x2 latent upsampler;
3. a few refinement steps at full resolution (partial denoise, no CFG) -> decode.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from aiprod.core.errors import InvalidRequest
from aiprod.core.registry import ModelEntry
from aiprod.engine.checks import check_geometry, check_request
from aiprod.engine.common import StepTracker, free_memory, oom_guard, video_to_uint8
from aiprod.engine.types import CancelFn, GenerationRequest, ProgressFn, Video

log = logging.getLogger(__name__)

# The LTX pipelines check sizes against 32 whatever the VAE's own ratio is.
SIZE_MULTIPLE = 32


@dataclass(frozen=True)
class StagePlan:
    width: int
    height: int
    steps: int  # denoising steps actually run
    scheduler_steps: int  # num_inference_steps passed to diffusers (>= steps when partial)
    guidance_scale: float
    denoise_strength: float = 1.0


def refine_schedule(steps: int, strength: float) -> int:
    """Smallest ``num_inference_steps`` for which diffusers runs ``steps`` steps at ``strength``."""
    n = max(steps, 1)
    while min(int(n * strength), n) < steps:
        n += 1
    return n


def half_size(size: int, multiple: int = SIZE_MULTIPLE) -> int:
    """Stage-1 size: half, rounded up to ``multiple`` (the pipelines' 32 unless the engine
    runs them on the autoencoder's own grid, as it does for the built-in model)."""
    return max(multiple, math.ceil(size / 2 / multiple) * multiple)


def on_vae_grid(cls: type) -> type:
    """``cls`` (an LTX pipeline class) checking sizes against its autoencoder's spatial ratio
    instead of the fixed 32 of diffusers' ``check_inputs``.

    LTX-Video's autoencoder compresses 32x, so there the two rules agree; the built-in model's
    compresses 8x, and its stage 1 is trained at sizes such as 80x80 (10x10 latents) that serve
    160x160. Every other check of the parent still runs."""

    def check_inputs(self: Any, *args: Any, height: int, width: int, **kwargs: Any) -> None:
        r = int(self.vae_spatial_compression_ratio)
        if height % r or width % r:
            raise ValueError(f"height and width must be multiples of {r}, got {height}x{width}")
        up = lambda n: math.ceil(n / SIZE_MULTIPLE) * SIZE_MULTIPLE  # noqa: E731
        super(grid_cls, self).check_inputs(*args, height=up(height), width=up(width), **kwargs)

    attrs = {"check_inputs": check_inputs, "on_vae_grid": True, "__doc__": cls.__doc__}
    grid_cls = type(cls.__name__, (cls,), attrs)
    return grid_cls


def check_ltx_request(
    entry: ModelEntry, request: GenerationRequest, *, temporal_ratio: int, has_upsampler: bool
) -> Any:
    """The checks every LTX engine runs before tensor work; returns the decoded image, if any."""
    image = check_request(entry, request)
    check_geometry(entry.id, request, size_multiple=SIZE_MULTIPLE, temporal_ratio=temporal_ratio)
    if request.two_stage and not has_upsampler:
        raise InvalidRequest(
            f"model '{entry.id}' has no latent upsampler, so it cannot run two-stage: "
            "send two_stage=false (or add components.upsampler to its models.toml entry)",
            field="two_stage",
        )
    return image


def ltx_oom_guard(model_id: str, request: GenerationRequest) -> AbstractContextManager[None]:
    """``oom_guard`` naming the request's size and the entry options that lower memory."""
    what = f"{request.width}x{request.height}x{request.num_frames} on '{model_id}'"
    hint = (
        "lower width/height/num_frames, or enable options.vae_tiling / options.cpu_offload "
        "for this model in models.toml"
    )
    return oom_guard(what, hint=hint)


def partial_scheduler(config: Any, strength: float) -> Any:
    """A FlowMatch Euler scheduler that maps the pipeline's ``[1 .. 1/n]`` sigmas to
    ``[strength .. strength/n]``: ``LTXPipeline`` then runs a partial denoise (refinement)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    class PartialFlowMatchScheduler(FlowMatchEulerDiscreteScheduler):
        def set_timesteps(
            self,
            num_inference_steps: int | None = None,
            device: Any = None,
            sigmas: Any = None,
            mu: float | None = None,
            timesteps: Any = None,
        ) -> None:
            if sigmas is not None:
                sigmas = [float(x) * strength for x in sigmas]
            super().set_timesteps(num_inference_steps, device, sigmas=sigmas, mu=mu)

    return PartialFlowMatchScheduler.from_config(
        config, use_dynamic_shifting=False, shift=1.0, shift_terminal=None
    )


# The transformer inputs with one row per batch entry, which a guided call stacks as
# (unconditional rows, conditional rows) in diffusers' LTX pipelines.
_BATCHED_INPUTS = (
    "hidden_states",
    "encoder_hidden_states",
    "timestep",
    "encoder_attention_mask",
    "video_coords",
)


@contextlib.contextmanager
def guidance_interval(
    transformer: torch.nn.Module, min_sigma: float, num_train_timesteps: float
) -> Iterator[None]:
    """Classifier-free guidance only at noise levels at or above ``min_sigma`` for the block.

    Every call of ``transformer`` is a guided one (the pipeline's unconditional and conditional
    rows stacked); below ``min_sigma`` (read from the call's timesteps) only the conditional
    rows run and their prediction is returned for both halves, so the pipeline's
    ``u + g * (c - u)`` is ``c``: an unguided step, at half the cost. The trainer's sampler
    does the same (``aiprod.builtin.sample``)."""
    skipped: list[bool] = []

    def before(module: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
        t = kwargs.get("timestep")
        low = not args and t is not None and float(t.max()) / num_train_timesteps < min_sigma
        skipped.append(low)
        if not low:
            return None
        half = {
            k: v.chunk(2)[1]
            for k, v in kwargs.items()
            if k in _BATCHED_INPUTS and isinstance(v, torch.Tensor)
        }
        return args, {**kwargs, **half}

    def after(module: Any, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        if not skipped.pop():
            return None
        first = output[0] if isinstance(output, tuple) else output.sample
        both = torch.cat([first, first])
        return (both, *output[1:]) if isinstance(output, tuple) else type(output)(sample=both)

    hooks = [
        transformer.register_forward_pre_hook(before, with_kwargs=True),
        transformer.register_forward_hook(after, with_kwargs=True),
    ]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


class LTXVideoEngine:
    """A loaded LTX-Video model; call it with a ``GenerationRequest``."""

    def __init__(
        self,
        entry: ModelEntry,
        *,
        pipe: Any,
        upsample_pipe: Any | None,
        device: torch.device,
        dtype: torch.dtype,
        max_sequence_length: int,
        mode: str = "condition",
        i2v_pipe: Any | None = None,
        refiner: Any | None = None,
        verifier: Any | None = None,
    ) -> None:
        self.entry = entry
        self.mode = mode
        self.pipe = pipe
        self.i2v_pipe = i2v_pipe if i2v_pipe is not None else pipe
        self.refine_scheduler = partial_scheduler(
            pipe.scheduler.config, entry.options.refine_strength
        )
        self.upsample_pipe = upsample_pipe
        self.refiner = refiner  # stage-2 transformer (None: the stage-1 transformer refines)
        # ranks drafts (options.candidates; builtin only): stage-1 drafts before the refinement
        # (config.stage 1) or the refined ones before decoding (stage 2)
        self.verifier = verifier
        self.device = device
        self.dtype = dtype
        self.max_sequence_length = max_sequence_length
        self.spatial_ratio = int(pipe.vae_spatial_compression_ratio)
        self.temporal_ratio = int(pipe.vae_temporal_compression_ratio)
        # Stage-1 sizes: the autoencoder's grid where the pipeline accepts it (``on_vae_grid``).
        on_grid = getattr(pipe, "on_vae_grid", False)
        self.stage1_multiple = self.spatial_ratio if on_grid else SIZE_MULTIPLE
        for p in (pipe, self.i2v_pipe, upsample_pipe):
            if p is not None:
                p.set_progress_bar_config(disable=True)

    # -- planning ---------------------------------------------------------------------------
    def plan(self, request: GenerationRequest) -> list[StagePlan]:
        opts = self.entry.options
        if not request.two_stage:
            return [
                StagePlan(
                    width=request.width,
                    height=request.height,
                    steps=request.num_inference_steps,
                    scheduler_steps=request.num_inference_steps,
                    guidance_scale=request.guidance_scale,
                )
            ]
        w1 = half_size(request.width, self.stage1_multiple)
        h1 = half_size(request.height, self.stage1_multiple)
        strength = opts.refine_strength
        return [
            StagePlan(
                width=w1,
                height=h1,
                steps=request.num_inference_steps,
                scheduler_steps=request.num_inference_steps,
                guidance_scale=request.guidance_scale,
            ),
            StagePlan(
                width=2 * w1,
                height=2 * h1,
                steps=opts.refine_steps,
                scheduler_steps=(
                    refine_schedule(opts.refine_steps, strength)
                    if self.mode == "condition"
                    else opts.refine_steps
                ),
                guidance_scale=self.refine_guidance(request),
                denoise_strength=strength,
            ),
        ]

    def refine_guidance(self, request: GenerationRequest) -> float:
        """Stage-2 guidance: the entry's, else the request's in classic mode, else none."""
        g = self.entry.options.refine_guidance_scale
        if g is not None:
            return g
        return request.guidance_scale if self.mode == "classic" else 1.0

    def adain_factor(self) -> float:
        a = self.entry.options.upsample_adain_factor
        if a is not None:
            return a
        return 0.0 if self.mode == "classic" else 1.0

    def drafts(self, request: GenerationRequest, image: Any) -> int:
        """Stage-1 drafts for this request: ``options.candidates`` for two-stage text-to-video
        with a prompt verifier loaded and a prompt that states what it scores, else 1."""
        if self.verifier is None or image is not None or not request.two_stage:
            return 1
        if not self.verifier.judges([request.prompt]):
            return 1
        return self.entry.options.candidates

    def _ranks_refined(self, drafts: int) -> bool:
        """Whether the drafts are all refined and ranked after stage 2 (a stage-2 verifier)."""
        return drafts > 1 and self.verifier is not None and self.verifier.config.stage == 2

    def _tokens(self, st: StagePlan, num_frames: int, drafts: int = 1) -> float:
        f = (num_frames - 1) // self.temporal_ratio + 1
        tokens = f * (st.height // self.spatial_ratio) * (st.width // self.spatial_ratio)
        return float(tokens * (2 if st.guidance_scale > 1.0 else 1) * drafts)

    # -- running ----------------------------------------------------------------------------
    def __call__(
        self,
        request: GenerationRequest,
        *,
        on_progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
    ) -> Video:
        image = check_ltx_request(
            self.entry,
            request,
            temporal_ratio=self.temporal_ratio,
            has_upsampler=self.upsample_pipe is not None,
        )
        stages = self.plan(request)
        drafts = self.drafts(request, image)
        refined = self._ranks_refined(drafts)
        tracker = StepTracker(
            [
                (s.steps, self._tokens(s, request.num_frames, drafts if i == 0 or refined else 1))
                for i, s in enumerate(stages)
            ],
            on_progress=on_progress,
            should_cancel=should_cancel,
        )
        tracker.check_cancel()
        with torch.inference_mode(), ltx_oom_guard(self.entry.id, request):
            frames, info = self._run(request, stages, image, tracker, drafts)
        return Video(frames=frames, fps=request.fps, info=info)

    def _run(
        self,
        request: GenerationRequest,
        stages: list[StagePlan],
        image: Any,
        tracker: StepTracker,
        drafts: int = 1,
    ) -> tuple[Any, dict[str, object]]:
        from aiprod.builtin.verifier import pick_best, tile

        pipe, opts = self.pipe, self.entry.options
        generator = torch.Generator("cpu").manual_seed(request.seed)
        t0 = time.perf_counter()
        cfg = stages[0].guidance_scale > 1.0
        pe, pm, ne, nm = pipe.encode_prompt(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt or "",
            do_classifier_free_guidance=cfg,
            max_sequence_length=self.max_sequence_length,
            device=pipe._execution_device,
        )
        info: dict[str, object] = {"text_encode_s": time.perf_counter() - t0}
        common = {
            "num_frames": request.num_frames,
            "frame_rate": request.fps,
            "generator": generator,
            "callback_on_step_end": tracker.diffusers_callback,
            "max_sequence_length": self.max_sequence_length,
            "decode_timestep": opts.decode_timestep,
            "decode_noise_scale": opts.decode_noise_scale,
        }
        if image is not None:
            common["image"] = image

        classic = self.mode == "classic"
        call = self.i2v_pipe if image is not None else pipe

        def run_stage(index: int, st: StagePlan, k: int = 1, **kw: Any) -> Any:
            tracker.start_stage(index)
            use_cfg = st.guidance_scale > 1.0
            if index == 0 and use_cfg:
                kw = {**opts.call_kwargs, **kw}
            if not classic:
                kw["denoise_strength"] = st.denoise_strength
            interval: AbstractContextManager[None] = contextlib.nullcontext()
            if index == 0 and use_cfg and opts.guidance_min_sigma > 0:
                interval = guidance_interval(
                    call.transformer,
                    opts.guidance_min_sigma,
                    call.scheduler.config.num_train_timesteps,
                )
            with interval:
                return call(  # k drafts: the prompt's embeddings k times
                    prompt_embeds=tile(pe, k),
                    prompt_attention_mask=tile(pm, k),
                    negative_prompt_embeds=tile(ne, k) if use_cfg else None,
                    negative_prompt_attention_mask=tile(nm, k) if use_cfg else None,
                    width=st.width,
                    height=st.height,
                    num_inference_steps=st.scheduler_steps,
                    guidance_scale=st.guidance_scale,
                    return_dict=False,
                    **common,
                    **kw,
                )[0]

        t1 = time.perf_counter()
        if len(stages) == 1:
            video = run_stage(0, stages[0], output_type="pt")
            info["stage1_s"] = tracker.step_end_times[-1] - t1
        else:
            s1, s2 = stages
            latents = run_stage(0, s1, k=drafts, output_type="latent")
            if classic:  # LTXPipeline returns packed tokens (B, S, C)
                latents = self._unpack(latents, request.num_frames, s1)
            refined = self._ranks_refined(drafts)

            def keep_best(latents: torch.Tensor) -> torch.Tensor:
                best, chosen, scores = pick_best(self.verifier, latents, [request.prompt], drafts)
                info.update(
                    candidates=drafts,
                    chosen_candidate=int(chosen[0]),
                    verifier_scores=[round(float(v), 4) for v in scores[:, 0]],
                )
                return best

            if drafts > 1 and not refined:  # keep the stage-1 draft the verifier prefers
                latents = keep_best(latents)
            t2 = time.perf_counter()
            info["stage1_s"] = t2 - t1
            tracker.check_cancel()
            latents = self.upsample_pipe(
                latents=latents,
                width=s1.width,
                height=s1.height,
                adain_factor=self.adain_factor(),
                output_type="latent",
                return_dict=False,
            )[0]  # (B, C, F, 2h, 2w), normalized
            t3 = time.perf_counter()
            info["upsample_s"] = t3 - t2
            if classic:
                latents = self._renoise(latents, s2.denoise_strength, generator, image is not None)
            with self._stage2(call, classic):
                if refined:  # refine every draft, keep the one the verifier prefers, decode it
                    latents = run_stage(1, s2, k=drafts, latents=latents, output_type="latent")
                    if classic:
                        latents = self._unpack(latents, request.num_frames, s2)
                    video = self._decode(keep_best(latents), generator)
                else:
                    video = run_stage(1, s2, latents=latents, output_type="pt")
            info["stage2_s"] = tracker.step_end_times[-1] - t3
        info["decode_s"] = time.perf_counter() - tracker.step_end_times[-1]
        frames = video_to_uint8(video, height=request.height, width=request.width)
        info.update(
            total_s=time.perf_counter() - t0,
            steps=tracker.steps_done,
            stages=[(s.width, s.height, s.steps) for s in stages],
            seed=request.seed,
        )
        return frames, info

    @contextlib.contextmanager
    def _stage2(self, call: Any, classic: bool) -> Iterator[None]:
        """The refinement's parts in ``call`` for the block: the partial schedule (classic
        mode) and the refiner transformer (when the model has one)."""
        transformer, scheduler = call.transformer, call.scheduler
        if classic:
            call.scheduler = self.refine_scheduler
        if self.refiner is not None:
            call.transformer = self.refiner
        try:
            yield
        finally:
            call.transformer, call.scheduler = transformer, scheduler

    def _decode(self, latents: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Normalised latents (B, C, f, h, w) -> video as the pipelines' ``output_type="pt"``
        decodes them (denormalised; decode noise when the autoencoder is timestep-conditioned)."""
        from diffusers.utils.torch_utils import randn_tensor

        p, opts = self.pipe, self.entry.options
        vae = p.vae
        z = p._denormalize_latents(
            latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor
        ).to(self.dtype)
        timestep = None
        if vae.config.timestep_conditioning:
            noise = randn_tensor(z.shape, generator=generator, device=z.device, dtype=z.dtype)
            timestep = torch.full((z.shape[0],), opts.decode_timestep, device=z.device).to(z)
            z = (1 - opts.decode_noise_scale) * z + opts.decode_noise_scale * noise
        video = vae.decode(z.to(vae.dtype), timestep, return_dict=False)[0]
        return p.video_processor.postprocess_video(video, output_type="pt")

    def _unpack(self, latents: torch.Tensor, num_frames: int, st: StagePlan) -> torch.Tensor:
        p = self.pipe
        return p._unpack_latents(
            latents,
            (num_frames - 1) // self.temporal_ratio + 1,
            st.height // self.spatial_ratio,
            st.width // self.spatial_ratio,
            p.transformer_spatial_patch_size,
            p.transformer_temporal_patch_size,
        )

    def _renoise(
        self, x0: torch.Tensor, strength: float, generator: torch.Generator, keep_first: bool
    ) -> torch.Tensor:
        """Flow-matching state at sigma=strength, packed for LTXPipeline (first frame kept for
        image-to-video, which LTXImageToVideoPipeline treats as clean conditioning)."""
        from diffusers.utils.torch_utils import randn_tensor

        noise = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x = strength * noise + (1.0 - strength) * x0
        if keep_first:
            x[:, :, :1] = x0[:, :, :1]
        p = self.pipe
        return p._pack_latents(
            x, p.transformer_spatial_patch_size, p.transformer_temporal_patch_size
        )

    def clear_cache(self) -> None:
        free_memory()
