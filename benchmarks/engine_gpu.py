"""Engine benchmark: LTX-2 and LTX-Video at their published sizes, plain diffusers vs aiprod.

Random weights, real architectures: the compute (and memory) of a denoising step does not depend
on the weight values, so this measures what real checkpoints would cost without downloading them.
For each family and size it runs the ti2vid two-stage recipe twice, side by side:

- ``diffusers``: the plain pipeline calls (stage 1 at half size, latent upsampler x2, stage-2
  refinement, decode) with diffusers' defaults;
- ``aiprod``: the same work through ``aiprod.engine`` with its speed options (torch.compile,
  attention backend, prompt encoded once, inference mode).

It reports seconds per stage, denoising steps/s and peak GPU memory, prints a table and writes
JSON. It needs a CUDA GPU; ``--tiny`` runs the same code on tiny models (CPU is fine) as a smoke
test.

    python benchmarks/engine_gpu.py                         # both families, 768x512x121
    python benchmarks/engine_gpu.py --family ltx2 --size 768x512 --size 1216x704
    python benchmarks/engine_gpu.py --preset full           # CFG stage 1 (40 / 30 steps)
    python benchmarks/engine_gpu.py --tiny                  # CPU smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from aiprod.core.registry import ModelEntry
from aiprod.engine import GenerationRequest, pipeline_from_components

PROMPT = (
    "A red fox trots across a snowy meadow at sunrise, low camera following it, "
    "long shadows, breath visible in the cold air"
)


# -- random components at published sizes ------------------------------------------------------
@contextlib.contextmanager
def build_on(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Construct modules directly on ``device`` in ``dtype`` (no fp32 CPU copy of 19B params)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


# LTX-Video transformer sizes as published: 2B (0.9.x) and 13B (0.9.7 / 0.9.8).
LTXV_SIZES: dict[str, dict[str, int]] = {
    "2b": {},  # diffusers' defaults: 28 layers, 32 heads x 64
    "13b": {"num_layers": 48, "attention_head_dim": 128, "cross_attention_dim": 4096},
}


def ltxv_components(device: torch.device, dtype: torch.dtype, size: str = "2b") -> dict[str, Any]:
    """LTX-Video 2B or 13B (0.9.5+ architecture), T5-XXL encoder, x2 spatial upsampler."""
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXVideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel
    from transformers import T5Config, T5EncoderModel

    from aiprod.engine.tiny import BYTE_VOCAB, tiny_tokenizer

    with build_on(device, dtype):
        transformer = LTXVideoTransformer3DModel(**LTXV_SIZES[size])
        vae = AutoencoderKLLTXVideo(
            block_out_channels=(128, 256, 512, 1024, 2048),
            down_block_types=("LTXVideo095DownBlock3D",) * 4,
            decoder_block_out_channels=(256, 512, 1024),
            layers_per_block=(4, 6, 6, 2, 2),
            decoder_layers_per_block=(5, 5, 5, 5),
            spatio_temporal_scaling=(True, True, True, True),
            decoder_spatio_temporal_scaling=(True, True, True),
            decoder_inject_noise=(False, False, False, False),
            downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
            upsample_residual=(True, True, True),
            upsample_factor=(2, 2, 2),
            timestep_conditioning=True,
            patch_size=4,
            spatial_compression_ratio=32,
            temporal_compression_ratio=8,
        )
        text_encoder = T5EncoderModel(
            T5Config(
                vocab_size=max(32128, BYTE_VOCAB),
                d_model=4096,
                d_kv=64,
                d_ff=10240,
                num_layers=24,
                num_heads=64,
                feed_forward_proj="gated-gelu",
                dropout_rate=0.0,
            )
        )
        upsampler = LTXLatentUpsamplerModel()
    return {
        "transformer": transformer.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tiny_tokenizer(max_length=256),
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "latent_upsampler": upsampler.eval(),
    }


def ltx2_components(device: torch.device, dtype: torch.dtype, lora_rank: int) -> dict[str, Any]:
    """LTX-2 19B audio+video, Gemma-3 12B text encoder, x2 upsampler, a distilled-LoRA stand-in."""
    from diffusers import (
        AutoencoderKLLTX2Audio,
        AutoencoderKLLTX2Video,
        FlowMatchEulerDiscreteScheduler,
        LTX2VideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx2 import LTX2LatentUpsamplerModel, LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from aiprod.engine.tiny import tiny_tokenizer

    with build_on(device, dtype):
        text_encoder = Gemma3ForCausalLM(
            Gemma3TextConfig(
                vocab_size=262208,
                hidden_size=3840,
                intermediate_size=15360,
                num_hidden_layers=48,
                num_attention_heads=16,
                num_key_value_heads=8,
                head_dim=256,
                sliding_window=1024,
            )
        )
        transformer = LTX2VideoTransformer3DModel()  # 48 layers, 4096 wide, 18.9B params
        connectors = LTX2TextConnectors()
        vae = AutoencoderKLLTX2Video(spatial_compression_ratio=32, temporal_compression_ratio=8)
        audio_vae = AutoencoderKLLTX2Audio()
        vocoder = LTX2Vocoder()
        upsampler = LTX2LatentUpsamplerModel()
    comps = {
        "transformer": transformer.eval(),
        "vae": vae.eval(),
        "audio_vae": audio_vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tiny_tokenizer(max_length=1024),
        "connectors": connectors.eval(),
        "vocoder": vocoder.eval(),
        "scheduler": FlowMatchEulerDiscreteScheduler(
            use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, shift_terminal=0.1
        ),
        "latent_upsampler": upsampler.eval(),
    }
    if lora_rank:
        add_distilled_lora(transformer, lora_rank)
    return comps


def add_distilled_lora(transformer: torch.nn.Module, rank: int) -> None:
    from peft import LoraConfig

    from aiprod.engine.ltx2_engine import LORA_ADAPTER

    transformer.add_adapter(
        LoraConfig(
            r=rank,
            lora_alpha=rank,
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
            init_lora_weights=False,
        ),
        adapter_name=LORA_ADAPTER,
    )


def tiny_components(family: str, device: torch.device) -> dict[str, Any]:
    from aiprod.engine.tiny import tiny_ltx2_components, tiny_ltxv_components

    if family == "ltx2":
        comps = tiny_ltx2_components(seed=0)
        add_distilled_lora(comps["transformer"], 4)
    else:
        comps = tiny_ltxv_components(seed=0)
    return {k: (v.to(device) if isinstance(v, torch.nn.Module) else v) for k, v in comps.items()}


# -- measurement -----------------------------------------------------------------------------
@dataclass
class Result:
    family: str
    runner: str  # diffusers | aiprod
    width: int
    height: int
    num_frames: int
    preset: str
    steps: int = 0
    stage1_s: float = 0.0
    upsample_s: float = 0.0
    stage2_s: float = 0.0
    decode_s: float = 0.0
    total_s: float = 0.0
    steps_per_s: float = 0.0
    peak_gb: float | None = None
    error: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepClock:
    """callback_on_step_end that records a synchronized timestamp per step."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, pipe: Any, i: int, t: Any, kw: dict[str, Any]) -> dict[str, Any]:
        sync()
        self.times.append(time.perf_counter())
        return {}

    def breakdown(
        self, *, t0: float, t1: float, t2: float, t3: float, stage1_steps: int
    ) -> dict[str, float]:
        """Per-stage seconds of a two-stage run: start, stage-1 end, upsample end, decoded."""
        return {
            "stage1_s": t1 - t0,
            "upsample_s": t2 - t1,
            "stage2_s": self.times[-1] - t2,
            "decode_s": t3 - self.times[-1],
            "total_s": t3 - t0,
            "steps": len(self.times),
            "stage1_steps": stage1_steps,
        }


@dataclass
class Preset:
    name: str
    stage1_steps: int
    guidance_scale: float
    distilled: bool


def preset_for(family: str, name: str, tiny: bool) -> Preset:
    if tiny:
        return Preset(name, 2, 1.0 if name == "distilled" else 3.0, name == "distilled")
    if name == "distilled":
        return Preset(name, 8, 1.0, True)
    return Preset(name, 40 if family == "ltx2" else 30, 4.0 if family == "ltx2" else 3.0, False)


def half(size: int) -> int:
    from aiprod.engine.ltx import half_size

    return half_size(size)


def run_plain_ltxv(
    comps: dict[str, Any], req: GenerationRequest, preset: Preset, device: torch.device
) -> dict[str, float]:
    """The LTX-Video two-stage recipe as diffusers documents it (LTXConditionPipeline)."""
    from diffusers import LTXConditionPipeline, LTXLatentUpsamplePipeline

    from aiprod.engine.ltx import refine_schedule

    parts = {k: v for k, v in comps.items() if k != "latent_upsampler"}
    pipe = LTXConditionPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    up = LTXLatentUpsamplePipeline(vae=pipe.vae, latent_upsampler=comps["latent_upsampler"])
    g = torch.Generator("cpu").manual_seed(req.seed)
    w1, h1 = half(req.width), half(req.height)
    clock = StepClock()
    sync()
    t0 = time.perf_counter()
    latents = pipe(
        prompt=req.prompt,
        width=w1,
        height=h1,
        num_frames=req.num_frames,
        frame_rate=req.fps,
        num_inference_steps=preset.stage1_steps,
        guidance_scale=preset.guidance_scale,
        generator=g,
        output_type="latent",
        callback_on_step_end=clock,
    ).frames
    sync()
    t1 = time.perf_counter()
    latents = up(
        latents=latents, width=w1, height=h1, adain_factor=1.0, output_type="latent"
    ).frames
    sync()
    t2 = time.perf_counter()
    n1 = len(clock.times)
    pipe(
        prompt=req.prompt,
        width=2 * w1,
        height=2 * h1,
        num_frames=req.num_frames,
        frame_rate=req.fps,
        latents=latents,
        denoise_strength=0.4,
        num_inference_steps=refine_schedule(3, 0.4),
        guidance_scale=1.0,
        decode_timestep=0.05,
        decode_noise_scale=0.025,
        generator=g,
        output_type="pt",
        callback_on_step_end=clock,
    )
    sync()
    t3 = time.perf_counter()
    return clock.breakdown(t0=t0, t1=t1, t2=t2, t3=t3, stage1_steps=n1)


def run_plain_ltx2(
    comps: dict[str, Any], req: GenerationRequest, preset: Preset, device: torch.device
) -> dict[str, float]:
    """The LTX-2 two-stage recipe with plain diffusers calls (distilled LoRA in stage 2)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, LTX2LatentUpsamplePipeline, LTX2Pipeline
    from diffusers.pipelines.ltx2.utils import (
        DISTILLED_SIGMA_VALUES,
        STAGE_2_DISTILLED_SIGMA_VALUES,
    )

    from aiprod.engine.ltx2_engine import LORA_ADAPTER, NO_GUIDANCE

    parts = {k: v for k, v in comps.items() if k != "latent_upsampler"}
    pipe = LTX2Pipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    up = LTX2LatentUpsamplePipeline(vae=pipe.vae, latent_upsampler=comps["latent_upsampler"])
    base = pipe.scheduler
    plain = FlowMatchEulerDiscreteScheduler.from_config(
        base.config, use_dynamic_shifting=False, shift_terminal=None
    )
    has_lora = LORA_ADAPTER in (getattr(pipe.transformer, "peft_config", None) or {})
    g = torch.Generator("cpu").manual_seed(req.seed)
    w1, h1 = half(req.width), half(req.height)
    clock = StepClock()
    stage1: dict[str, Any] = {"num_inference_steps": preset.stage1_steps}
    if preset.distilled and preset.stage1_steps == len(DISTILLED_SIGMA_VALUES):
        pipe.scheduler = plain
        stage1 |= {"sigmas": DISTILLED_SIGMA_VALUES, **NO_GUIDANCE}
    elif preset.guidance_scale <= 1.0:
        stage1 |= NO_GUIDANCE
    else:
        stage1["guidance_scale"] = preset.guidance_scale
    if has_lora:
        pipe.disable_lora()
    sync()
    t0 = time.perf_counter()
    latents, audio_latents = pipe(
        prompt=req.prompt,
        width=w1,
        height=h1,
        num_frames=req.num_frames,
        frame_rate=float(req.fps),
        generator=g,
        output_type="latent",
        return_dict=False,
        callback_on_step_end=clock,
        **stage1,
    )
    sync()
    t1 = time.perf_counter()
    latents = up(
        latents=latents, width=w1, height=h1, num_frames=req.num_frames, output_type="latent"
    ).frames
    sync()
    t2 = time.perf_counter()
    n1 = len(clock.times)
    if has_lora:
        pipe.enable_lora()
        pipe.set_adapters([LORA_ADAPTER], [1.0])
    pipe.scheduler = plain
    sig = STAGE_2_DISTILLED_SIGMA_VALUES
    pipe(
        prompt=req.prompt,
        width=2 * w1,
        height=2 * h1,
        num_frames=req.num_frames,
        frame_rate=float(req.fps),
        latents=latents,
        audio_latents=audio_latents,
        sigmas=sig,
        noise_scale=sig[0],
        num_inference_steps=len(sig),
        generator=g,
        output_type="pt",
        return_dict=False,
        callback_on_step_end=clock,
        **NO_GUIDANCE,
    )
    sync()
    t3 = time.perf_counter()
    pipe.scheduler = base
    if has_lora:
        pipe.disable_lora()
    return clock.breakdown(t0=t0, t1=t1, t2=t2, t3=t3, stage1_steps=n1)


def engine_entry(family: str, preset: Preset, args: argparse.Namespace) -> ModelEntry:
    options: dict[str, Any] = {
        "compile": args.compile,
        "attention_backend": args.attention_backend,
        "vae_tiling": args.vae_tiling,
        "refine_steps": 3,
    }
    if family == "ltx2":  # an ltx2-only option (the registry refuses it for ltxv)
        options["distilled"] = preset.distilled
    return ModelEntry.model_validate(
        {
            "id": f"bench-{family}",
            "family": family,
            "dtype": "bfloat16",
            "limits": {"max_width": 1280, "max_height": 1280, "max_frames": 257},
            "options": options,
        }
    )


def run_aiprod(pipe: Any, req: GenerationRequest) -> dict[str, float]:
    sync()
    t0 = time.perf_counter()
    video = pipe(req)
    sync()
    total = time.perf_counter() - t0
    info = video.info
    return {
        "stage1_s": float(info.get("text_encode_s", 0.0)) + float(info["stage1_s"]),
        "upsample_s": float(info.get("upsample_s", 0.0)),
        "stage2_s": float(info.get("stage2_s", 0.0)),
        "decode_s": float(info["decode_s"]),
        "total_s": total,
        "steps": int(info["steps"]),
        "stage1_steps": int(info["stages"][0][2]),
    }


def measure(
    fn: Callable[[], dict[str, float]], result: Result, *, warmup: int, device: torch.device
) -> Result:
    try:
        for _ in range(warmup):
            fn()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        out = fn()
    except torch.OutOfMemoryError as exc:
        result.error = f"out of memory: {str(exc).splitlines()[0]}"
        return result
    except Exception as exc:  # noqa: BLE001 - one failed configuration must not lose the table
        traceback.print_exc()
        result.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return result
    for k in ("stage1_s", "upsample_s", "stage2_s", "decode_s", "total_s"):
        setattr(result, k, round(float(out[k]), 4))
    result.steps = int(out["steps"])
    denoise = result.stage1_s + result.stage2_s
    result.steps_per_s = round(result.steps / denoise, 3) if denoise > 0 else 0.0
    if device.type == "cuda":
        result.peak_gb = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return result


def bench_requests(args: argparse.Namespace, preset: Preset) -> list[GenerationRequest]:
    """One two-stage request per ``--size``; both runners get the same ones."""
    requests = []
    for size in args.size:
        w, h = (int(x) for x in size.lower().split("x"))
        req = GenerationRequest(
            prompt=PROMPT,
            width=w,
            height=h,
            num_frames=args.frames,
            fps=24,
            seed=0,
            num_inference_steps=preset.stage1_steps,
            guidance_scale=preset.guidance_scale,
            two_stage=True,
        )
        requests.append(req)
    return requests


def bench_family(family: str, args: argparse.Namespace, device: torch.device) -> list[Result]:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.tiny:
        comps = tiny_components(family, device)
    elif family == "ltx2":
        comps = ltx2_components(device, dtype, args.lora_rank)
    else:
        comps = ltxv_components(device, dtype, args.ltxv_size)
    if args.vae_tiling:  # a memory option of diffusers itself: both runners get it
        comps["vae"].enable_tiling()
    preset = preset_for(family, args.preset, args.tiny)
    results: list[Result] = []
    requests = bench_requests(args, preset)
    for req in requests:
        plain = run_plain_ltx2 if family == "ltx2" else run_plain_ltxv
        r = Result(family, "diffusers", req.width, req.height, args.frames, preset.name)
        fn = functools.partial(plain, comps, req, preset, device)
        results.append(measure(fn, r, warmup=args.warmup, device=device))
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    # The engine applies its options (compile, attention backend) to the shared modules, so it
    # runs after every plain diffusers measurement of this family.
    entry = engine_entry(family, preset, args)
    pipe = pipeline_from_components(entry, comps, str(device))
    for req in requests:
        r = Result(family, "aiprod", req.width, req.height, args.frames, preset.name)
        r.notes = {
            "compile": args.compile,
            "attention_backend": args.attention_backend,
            "vae_tiling": args.vae_tiling,
        }
        fn = functools.partial(run_aiprod, pipe, req)
        results.append(measure(fn, r, warmup=args.warmup, device=device))
    pipe = comps = None  # free the weights before the next family is built
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return results


def table(results: list[Result]) -> str:
    cols = [
        ("family", "family"),
        ("runner", "runner"),
        ("size", None),
        ("frames", "num_frames"),
        ("steps", "steps"),
        ("stage1 s", "stage1_s"),
        ("upsample s", "upsample_s"),
        ("stage2 s", "stage2_s"),
        ("decode s", "decode_s"),
        ("total s", "total_s"),
        ("steps/s", "steps_per_s"),
        ("peak GiB", "peak_gb"),
    ]
    rows = [[c for c, _ in cols]]
    for r in results:
        row = []
        for _, attr in cols:
            if attr is None:
                row.append(f"{r.width}x{r.height}")
            elif r.error and attr not in ("family", "runner", "num_frames"):
                row.append(
                    ("OOM" if r.error.startswith("out of memory") else "ERR")
                    if attr == "steps"
                    else "-"
                )
            else:
                v = getattr(r, attr)
                row.append("-" if v is None else str(v))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--family", action="append", choices=["ltx2", "ltxv"], help="default: both")
    p.add_argument("--size", action="append", help="WxH, repeatable (default 768x512)")
    p.add_argument("--frames", type=int, default=None, help="default 121 (9 with --tiny)")
    p.add_argument("--preset", choices=["distilled", "full"], default="distilled")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before the timed one")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--attention-backend", default=None, help="e.g. _native_cudnn, flash")
    p.add_argument("--vae-tiling", action="store_true")
    p.add_argument("--ltxv-size", choices=sorted(LTXV_SIZES), default="2b")
    p.add_argument("--lora-rank", type=int, default=64, help="LTX-2 distilled LoRA stand-in")
    p.add_argument("--tiny", action="store_true", help="tiny models: a smoke run, CPU is fine")
    p.add_argument("--json", type=Path, default=Path("engine_gpu.json"))
    args = p.parse_args(argv)
    args.family = args.family or ["ltx2", "ltxv"]
    args.size = args.size or (["64x32"] if args.tiny else ["768x512"])
    args.frames = args.frames or (9 if args.tiny else 121)
    if args.tiny and args.compile and not torch.cuda.is_available():
        args.compile = False  # compiling tiny models on CPU only measures the compiler
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available() and not args.tiny:
        print(
            "engine_gpu.py needs a CUDA GPU (none found): run it on the GPU machine, "
            "or use --tiny for a CPU smoke run of the same code",
            file=sys.stderr,
        )
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.backends.cuda.matmul.allow_tf32 = True
    results: list[Result] = []
    for family in args.family:
        results.extend(bench_family(family, args, device))
    print(table(results))
    meta = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "tiny": args.tiny,
        "preset": args.preset,
        "ltxv_size": args.ltxv_size,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    tmp = args.json.with_suffix(".tmp")
    tmp.write_text(json.dumps({"meta": meta, "results": [asdict(r) for r in results]}, indent=2))
    tmp.replace(args.json)
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
