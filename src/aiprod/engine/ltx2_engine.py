"""The LTX-2 engine (family ``ltx2``): video + audio, on diffusers' LTX-2 pipelines; assembled by
``aiprod.engine.backends.ltx2``.

``LTX2Pipeline`` (text-to-video) / ``LTX2ImageToVideoPipeline`` (first-frame conditioning)
share one set of modules; ``LTX2LatentUpsamplePipeline`` does the x2 latent upsampling. The
ti2vid two-stage path:

1. stage 1 at half resolution with guidance (CFG, and diffusers' default STG / modality
   guidance for LTX-2) -> video + audio latents;
2. x2 latent upsampler on the video latents;
3. refinement at full resolution from the re-noised latents: the distilled schedule with the
   distilled LoRA when the entry has one (``components.distilled_lora``), otherwise a short
   partial-denoise schedule; no guidance -> decode video, vocoder -> audio.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from aiprod.core.registry import LTX2Entry
from aiprod.engine.common import StepTracker, free_memory, video_to_uint8
from aiprod.engine.ltx import check_ltx_request, half_size, ltx_oom_guard
from aiprod.engine.types import CancelFn, GenerationRequest, ProgressFn, Video

LORA_ADAPTER = "distilled"
# Every guidance term off: one transformer pass per step (distilled / refinement steps).
NO_GUIDANCE: dict[str, Any] = {
    "guidance_scale": 1.0,
    "audio_guidance_scale": 1.0,
    "stg_scale": 0.0,
    "audio_stg_scale": 0.0,
    "modality_scale": 1.0,
    "audio_modality_scale": 1.0,
    "guidance_rescale": 0.0,
    "audio_guidance_rescale": 0.0,
}


@dataclass
class LTX2Stage:
    width: int
    height: int
    sigmas: list[float]
    kwargs: dict[str, Any] = field(default_factory=dict)
    use_lora: bool = False
    shifted: bool = True  # use the entry's (dynamically shifted) scheduler

    @property
    def steps(self) -> int:
        return len(self.sigmas)

    @property
    def passes(self) -> int:
        """Transformer passes per step (batch rows): CFG x2, + STG, + modality isolation."""
        kw = self.kwargs
        cfg = kw.get("guidance_scale", 3.0) > 1.0 or (kw.get("audio_guidance_scale") or 0) > 1.0
        stg = kw.get("stg_scale", 1.0) > 0.0 or (kw.get("audio_stg_scale") or 0) > 0.0
        mod = kw.get("modality_scale", 3.0) > 1.0 or (kw.get("audio_modality_scale") or 0) > 1.0
        return (2 if cfg else 1) + int(stg) + int(mod)


class LTX2Engine:
    """A loaded LTX-2 model; call it with a ``GenerationRequest``."""

    def __init__(
        self,
        entry: LTX2Entry,
        *,
        pipe: Any,
        i2v_pipe: Any,
        upsample_pipe: Any | None,
        has_lora: bool,
        device: torch.device,
        max_sequence_length: int,
    ) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler

        self.entry = entry
        self.pipe = pipe
        self.i2v_pipe = i2v_pipe
        self.upsample_pipe = upsample_pipe
        self.has_lora = has_lora
        self.device = device
        self.max_sequence_length = max_sequence_length
        self.spatial_ratio = int(pipe.vae_spatial_compression_ratio)
        self.temporal_ratio = int(pipe.vae_temporal_compression_ratio)
        # Explicit (distilled / refinement) sigma schedules must not be shifted again.
        self.base_scheduler = pipe.scheduler
        self.plain_scheduler = FlowMatchEulerDiscreteScheduler.from_config(
            pipe.scheduler.config, use_dynamic_shifting=False, shift_terminal=None
        )
        for p in (pipe, i2v_pipe, upsample_pipe):
            if p is not None:
                p.set_progress_bar_config(disable=True)

    # -- planning ---------------------------------------------------------------------------
    def plan(self, request: GenerationRequest) -> list[LTX2Stage]:
        from diffusers.pipelines.ltx2.utils import (
            DISTILLED_SIGMA_VALUES,
            STAGE_2_DISTILLED_SIGMA_VALUES,
        )

        opts = self.entry.options
        n = request.num_inference_steps
        if opts.distilled and n == len(DISTILLED_SIGMA_VALUES):
            sigmas1, shifted1 = list(DISTILLED_SIGMA_VALUES), False
        else:
            sigmas1, shifted1 = np.linspace(1.0, 1.0 / n, n).tolist(), True
        if request.guidance_scale <= 1.0:
            kw1 = dict(NO_GUIDANCE)
        else:
            kw1 = {"guidance_scale": request.guidance_scale, **opts.call_kwargs}
        if not request.two_stage:
            return [LTX2Stage(request.width, request.height, sigmas1, kw1, shifted=shifted1)]
        w1, h1 = half_size(request.width), half_size(request.height)
        if self.has_lora or opts.distilled:
            sigmas2 = list(STAGE_2_DISTILLED_SIGMA_VALUES)
        else:
            s, k = opts.refine_strength, opts.refine_steps
            sigmas2 = np.linspace(s, s / k, k).tolist()
        kw2 = dict(NO_GUIDANCE)
        if opts.refine_guidance_scale is not None and opts.refine_guidance_scale > 1.0:
            kw2["guidance_scale"] = opts.refine_guidance_scale
        return [
            LTX2Stage(w1, h1, sigmas1, kw1, shifted=shifted1),
            LTX2Stage(2 * w1, 2 * h1, sigmas2, kw2, use_lora=self.has_lora, shifted=False),
        ]

    def _cost(self, st: LTX2Stage, num_frames: int) -> float:
        f = (num_frames - 1) // self.temporal_ratio + 1
        tokens = f * (st.height // self.spatial_ratio) * (st.width // self.spatial_ratio)
        return float(tokens * st.passes)

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
        tracker = StepTracker(
            [(s.steps, self._cost(s, request.num_frames)) for s in stages],
            on_progress=on_progress,
            should_cancel=should_cancel,
        )
        tracker.check_cancel()
        with torch.inference_mode(), ltx_oom_guard(self.entry.id, request):
            try:
                return self._run(request, stages, image, tracker)
            finally:
                self.pipe.scheduler = self.base_scheduler
                self.i2v_pipe.scheduler = self.base_scheduler

    def _set_lora(self, on: bool) -> None:
        if not self.has_lora:
            return
        if on:
            self.pipe.enable_lora()
            self.pipe.set_adapters([LORA_ADAPTER], [1.0])
        else:
            self.pipe.disable_lora()

    def _run(
        self,
        request: GenerationRequest,
        stages: list[LTX2Stage],
        image: Any,
        tracker: StepTracker,
    ) -> Video:
        pipe = self.i2v_pipe if image is not None else self.pipe
        generator = torch.Generator("cpu").manual_seed(request.seed)
        t0 = time.perf_counter()
        cfg = stages[0].passes > 1 and (
            stages[0].kwargs.get("guidance_scale", 3.0) > 1.0
            or (stages[0].kwargs.get("audio_guidance_scale") or 0) > 1.0
        )
        pe, pm, ne, nm = pipe.encode_prompt(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt or "",
            do_classifier_free_guidance=cfg,
            max_sequence_length=self.max_sequence_length,
            device=pipe._execution_device,
        )
        info: dict[str, object] = {"text_encode_s": time.perf_counter() - t0}
        opts = self.entry.options
        common: dict[str, Any] = {
            "num_frames": request.num_frames,
            "frame_rate": float(request.fps),
            "generator": generator,
            "callback_on_step_end": tracker.diffusers_callback,
            "max_sequence_length": self.max_sequence_length,
            "decode_timestep": opts.decode_timestep,
            "decode_noise_scale": opts.decode_noise_scale,
            "prompt_embeds": pe,
            "prompt_attention_mask": pm,
        }
        if image is not None:
            common["image"] = image

        def run_stage(index: int, st: LTX2Stage, **kw: Any) -> tuple[Any, Any]:
            tracker.start_stage(index)
            self._set_lora(st.use_lora)
            pipe.scheduler = self.base_scheduler if st.shifted else self.plain_scheduler
            neg = {}
            if ne is not None and st.passes > 1:
                neg = {"negative_prompt_embeds": ne, "negative_prompt_attention_mask": nm}
            video, audio = pipe(
                width=st.width,
                height=st.height,
                sigmas=st.sigmas,
                num_inference_steps=st.steps,
                return_dict=False,
                **common,
                **neg,
                **st.kwargs,
                **kw,
            )
            return video, audio

        t1 = time.perf_counter()
        if len(stages) == 1:
            video, audio = run_stage(0, stages[0], output_type="pt")
            info["stage1_s"] = tracker.step_end_times[-1] - t1
        else:
            latents, audio_latents = run_stage(0, stages[0], output_type="latent")
            t2 = time.perf_counter()
            info["stage1_s"] = t2 - t1
            tracker.check_cancel()
            latents = self.upsample_pipe(
                latents=latents,
                width=stages[0].width,
                height=stages[0].height,
                num_frames=request.num_frames,
                adain_factor=opts.upsample_adain_factor or 0.0,
                output_type="latent",
                return_dict=False,
            )[0]
            t3 = time.perf_counter()
            info["upsample_s"] = t3 - t2
            s2 = stages[1]
            video, audio = run_stage(
                1,
                s2,
                latents=latents,
                audio_latents=audio_latents,
                noise_scale=s2.sigmas[0],
                output_type="pt",
            )
            info["stage2_s"] = tracker.step_end_times[-1] - t3
        info["decode_s"] = time.perf_counter() - tracker.step_end_times[-1]
        frames = video_to_uint8(video, height=request.height, width=request.width)
        rate = int(pipe.vocoder.config.output_sampling_rate)
        # The vocoder may overshoot the video by a few hops; the MP4 should end with the video.
        samples = math.ceil(request.num_frames / request.fps * rate)
        wav = audio[0, :, :samples].float().clamp(-1, 1).cpu().numpy()  # (channels, samples)
        info.update(
            total_s=time.perf_counter() - t0,
            steps=tracker.steps_done,
            stages=[(s.width, s.height, s.steps) for s in stages],
            seed=request.seed,
            distilled_lora=self.has_lora and len(stages) > 1,
        )
        return Video(frames=frames, fps=request.fps, audio=wav, audio_sample_rate=rate, info=info)

    def clear_cache(self) -> None:
        free_memory()
