"""The LTX-Video engine (families ``ltxv`` and ``builtin``): a loaded model, called per request.

The backends (``aiprod.engine.backends.ltxv``, ``aiprod.builtin.backend``) assemble it.

Two ways to drive diffusers, picked by ``options.ltxv_pipeline``:

- ``condition`` (default for ``ltxv``): ``LTXConditionPipeline``, the diffusers pipeline for
  LTX-Video 0.9.5+ (text-to-video, first-frame conditioning, partial denoise for refinement);
- ``classic`` (the built-in model's): ``LTXPipeline`` / ``LTXImageToVideoPipeline``, whose
  positional coordinates and sigma schedule are the ones aiprod's trainer uses; refinement runs
  the same pipeline from re-noised latents with its schedule scaled into ``[0, strength]``.

Both share ``LTXLatentUpsamplePipeline`` (the x2 latent upsampler). The ti2vid two-stage path:

1. stage 1 at half resolution with classifier-free guidance -> latents;
2. x2 latent upsampler;
3. a few refinement steps at full resolution (partial denoise, no CFG) -> decode.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from aiprod.core.registry import BuiltinEntry, LTXVEntry
from aiprod.engine.common import StepTracker, free_memory, video_to_uint8
from aiprod.engine.drafts import DraftRanker, tile
from aiprod.engine.ltx import (
    SIZE_MULTIPLE,
    check_ltx_request,
    guidance_interval,
    half_size,
    ltx_oom_guard,
    partial_scheduler,
    refine_schedule,
)
from aiprod.engine.types import CancelFn, GenerationRequest, ProgressFn, Video

LTXVideoEntry = LTXVEntry | BuiltinEntry


@dataclass(frozen=True)
class StagePlan:
    width: int
    height: int
    steps: int  # denoising steps actually run
    scheduler_steps: int  # num_inference_steps passed to diffusers (>= steps when partial)
    guidance_scale: float
    denoise_strength: float = 1.0


class LTXVideoEngine:
    """A loaded LTX-Video model; call it with a ``GenerationRequest``."""

    def __init__(
        self,
        entry: LTXVideoEntry,
        *,
        pipe: Any,
        upsample_pipe: Any | None,
        device: torch.device,
        dtype: torch.dtype,
        max_sequence_length: int,
        mode: str = "condition",
        i2v_pipe: Any | None = None,
        refiner: Any | None = None,
        ranker: DraftRanker | None = None,
        candidates: int = 1,
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
        # ranks ``candidates`` drafts per clip (the built-in model's prompt verifier): stage-1
        # drafts before the refinement (ranker.stage 1) or the refined ones before decoding (2)
        self.ranker = ranker
        self.candidates = candidates
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
        """Stage-1 drafts for this request: ``candidates`` for two-stage text-to-video with a
        draft ranker and a prompt that states what it scores, else 1."""
        if self.ranker is None or image is not None or not request.two_stage:
            return 1
        if not self.ranker.judges([request.prompt]):
            return 1
        return self.candidates

    def _ranks_refined(self, drafts: int) -> bool:
        """Whether the drafts are all refined and ranked after stage 2 (a stage-2 ranker)."""
        return drafts > 1 and self.ranker is not None and self.ranker.stage == 2

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
                assert self.ranker is not None
                best, chosen, scores = self.ranker.pick_best(latents, [request.prompt], drafts)
                info.update(
                    candidates=drafts,
                    chosen_candidate=int(chosen[0]),
                    verifier_scores=[round(float(v), 4) for v in scores[:, 0]],
                )
                return best

            if drafts > 1 and not refined:  # keep the stage-1 draft the ranker prefers
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
                if refined:  # refine every draft, keep the one the ranker prefers, decode it
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
