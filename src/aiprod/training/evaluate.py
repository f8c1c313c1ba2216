"""``aiprod eval``: generate from held-out synthetic prompts and score the videos exactly.

Prompts come from ``aiprod.builtin.grammar`` with a seed no training config uses (the default
``EVAL_SEED``), so the parameter draws are held out; the grammar is small, so the same
*sentence* can also occur in training (as it would for any user). For each prompt the
reference clip (the synthetic renderer's ground truth) is rendered too: the scorer's accuracy
on references is reported as its ceiling, and the FVD is measured between references and
generated clips.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aiprod.builtin.scoring import aggregate, score
from aiprod.training.data import tensor_to_frames
from aiprod.training.fvd import FeatureExtractor, I3DFeatures, PixelStatsFeatures, fvd
from aiprod.training.report import contact_sheet, write_html, write_png

log = logging.getLogger(__name__)

EVAL_SEED = 20_261_121


def served_settings(models_file: Path | None = None) -> dict[str, Any]:
    """The generation settings the served built-in model runs with, as ``evaluate`` keywords.

    From the models.toml the server reads (``AIPROD_MODELS_FILE``, else the packaged one): its
    default entry when that is of the ``builtin`` family, else its first ``builtin`` entry.
    ``aiprod eval`` uses them for every option left out, so a checkpoint is scored as the API
    would serve it. Empty when there is no such entry.
    """
    from aiprod.core.registry import load_registry
    from aiprod.core.settings import Settings

    reg = load_registry(models_file or Settings().models_file)  # None: the packaged file
    default = reg.default_entry
    entry = (
        default
        if default.family == "builtin"
        else next((m for m in reg.models if m.family == "builtin"), None)
    )
    if entry is None:
        return {}
    d, o = entry.defaults, entry.options
    return {
        "width": d.width,
        "height": d.height,
        "num_frames": d.num_frames,
        "fps": d.fps,
        "steps": d.num_inference_steps,
        "guidance": d.guidance_scale,
        "two_stage": d.two_stage,
        "refine_steps": o.refine_steps,
        "refine_sigma": o.refine_strength,
        "refine_guidance": o.refine_guidance_scale,
        "candidates": o.candidates,
        "guidance_min_sigma": o.guidance_min_sigma,
    }


def heldout_prompts(
    n: int, *, seed: int = EVAL_SEED, phases: tuple[int, ...] = (1, 2, 3, 4, 5)
) -> list[tuple[str, Any, int]]:
    """``n`` (caption, params, render seed) triples cycling through ``phases``."""
    from aiprod.builtin import grammar

    out = []
    for i in range(n):
        phase = phases[i % len(phases)]
        rng = np.random.default_rng(np.random.SeedSequence([seed, phase, i]))
        params = grammar.sample_params(phase, rng)
        out.append((grammar.caption(params), params, int(rng.integers(0, 2**31 - 1))))
    return out


def evaluate(
    model_path: Path,
    *,
    out_dir: Path,
    num_prompts: int = 200,
    phases: tuple[int, ...] = (1, 2, 3, 4, 5),
    width: int = 128,
    height: int = 128,
    num_frames: int = 25,
    fps: int = 24,
    steps: int = 12,
    guidance: float = 3.0,
    two_stage: bool = True,
    refine_steps: int = 3,
    refine_sigma: float = 0.4,
    refine_guidance: float | None = None,
    candidates: int = 1,
    candidates_fallback: bool = False,
    guidance_min_sigma: float = 0.0,
    batch_size: int = 4,
    seed: int = EVAL_SEED,
    i3d: Path | None = None,
    backend: str = "trainer",
    shift: float | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Generate, score and write ``eval.json``, ``report.html`` and ``samples.png``.

    ``backend="trainer"`` samples with :func:`aiprod.builtin.sample.generate` (checkpoints or
    model folders); ``backend="engine"`` runs a model folder through the serving engine's
    ``builtin`` backend (``aiprod.builtin.backend``) with its own defaults for the two-stage
    refinement, i.e. exactly what the API serves, one clip at a time.

    ``candidates`` > 1 ranks that many stage-1 drafts per clip with the model's prompt
    verifier; a model without one is refused, or with ``candidates_fallback`` (the CLI, when
    the number came from the served settings) scored with one draft. ``guidance_min_sigma``
    limits stage 1's guidance to the noise levels at or above it (models.toml's option).
    """
    from aiprod.builtin import render
    from aiprod.builtin.sample import generate, model_shift
    from aiprod.training.deploy import load_any

    if shift is not None and shift <= 0:
        raise ValueError(f"--shift {shift}: give a number > 0 (1 = none, > 1 = toward high noise)")
    if shift is not None and backend == "engine":
        raise ValueError(
            "--shift applies to the trainer's sampler only; the engine backend uses the "
            "model's scheduler/scheduler_config.json"
        )
    if not 0 < refine_sigma <= 1:
        raise ValueError(
            f"--refine-strength {refine_sigma}: give a noise level in (0, 1] (default 0.4)"
        )
    if refine_steps < 1:
        raise ValueError(f"--refine-steps {refine_steps}: give 1 or more")
    if refine_guidance is not None and refine_guidance < 1:
        raise ValueError(
            f"--refine-guidance {refine_guidance}: give 1 (none) or more; leave it out to "
            "refine with --guidance"
        )
    if candidates < 1:
        raise ValueError(f"--candidates {candidates}: give 1 (one stage-1 draft) or more")
    if not 0 <= guidance_min_sigma <= 1:
        raise ValueError(
            f"--guidance-min-sigma {guidance_min_sigma}: give a noise level in [0, 1] "
            "(0 guides every stage-1 step)"
        )
    if candidates > 1 and not two_stage:
        raise ValueError(
            f"--candidates {candidates} ranks the stage-1 drafts of the two-stage path: drop "
            "--single-stage or pass --candidates 1"
        )
    refine_guidance = guidance if refine_guidance is None else refine_guidance
    comp, info = load_any(Path(model_path))
    if candidates > 1 and comp.verifier is None:
        if not candidates_fallback:
            raise ValueError(
                f"{model_path} has no prompt verifier (verifier/), so it cannot rank "
                f"{candidates} stage-1 drafts: pass --candidates 1"
            )
        candidates = 1
    if backend == "engine":
        batch_size = 1
        engine_pipe = _engine_pipeline(
            Path(model_path),
            refine_steps=refine_steps,
            refine_strength=refine_sigma,
            refine_guidance=refine_guidance,
            candidates=candidates,
            guidance_min_sigma=guidance_min_sigma,
        )
    if two_stage and comp.upsampler is None:
        raise ValueError(f"{model_path} has no latent upsampler: pass --single-stage")
    if shift is None:
        shift = model_shift(comp)
    prompts = heldout_prompts(num_prompts, seed=seed, phases=phases)
    rows, refs, fakes, ref_rows, ae_rows, st2_rows = [], [], [], [], [], []
    gen_seconds = 0.0
    for s in range(0, len(prompts), batch_size):
        chunk = prompts[s : s + batch_size]
        t0 = time.perf_counter()
        if backend == "engine":
            video = _engine_generate(
                engine_pipe,
                chunk[0][0],
                width=width,
                height=height,
                num_frames=num_frames,
                fps=fps,
                steps=steps,
                guidance=guidance,
                seed=seed + s,
                two_stage=two_stage,
            )
        else:
            video = generate(
                comp,
                [c for c, _, _ in chunk],
                width=width,
                height=height,
                num_frames=num_frames,
                fps=fps,
                steps=steps,
                guidance=guidance,
                seed=seed + s,
                two_stage=two_stage,
                refine_steps=refine_steps,
                refine_sigma=refine_sigma,
                shift=shift,
                refine_guidance=refine_guidance,
                candidates=candidates,
                guidance_min_sigma=guidance_min_sigma,
            )
        gen_seconds += time.perf_counter() - t0
        for (cap, params, rseed), v in zip(chunk, video, strict=True):
            frames = v if isinstance(v, np.ndarray) else tensor_to_frames(v)
            ref = render.render(
                params, width=width, height=height, num_frames=num_frames, fps=fps, seed=rseed
            )
            rows.append({**score(cap, frames), "phase": params.phase})
            ref_rows.append(score(cap, ref))
            ae_rows.append(score(cap, _autoencode(comp, ref)))
            fakes.append(frames)
            refs.append(ref)
        if two_stage:
            st2 = _stage2_ceiling(
                comp,
                chunk,
                width=width,
                height=height,
                num_frames=num_frames,
                fps=fps,
                guidance=refine_guidance,
                seed=seed + s,
                refine_steps=refine_steps,
                refine_sigma=refine_sigma,
            )
            st2_rows += [score(cap, f) for (cap, _, _), f in zip(chunk, st2, strict=True)]
        if on_progress:
            on_progress(min(s + batch_size, len(prompts)), len(prompts))
    extractor: FeatureExtractor = I3DFeatures(i3d) if i3d else PixelStatsFeatures()
    metrics: dict[str, Any] = aggregate(rows)
    metrics["reference_scorer_ceiling"] = {
        k: v for k, v in aggregate(ref_rows).items() if k.endswith("accuracy")
    }
    # What survives the model's own autoencoder: no generation can score above this.
    metrics["autoencoder_ceiling"] = {
        k: v for k, v in aggregate(ae_rows).items() if k.endswith("accuracy")
    }
    if st2_rows:
        # A perfect stage 1 (the reference rendered at half size, encoded) through the
        # upsampler and the refinement: what stage 2 lets through.
        metrics["two_stage_ceiling"] = {
            k: v for k, v in aggregate(st2_rows).items() if k.endswith("accuracy")
        }
    for p in sorted(set(phases)):
        sub = [r for r in rows if r["phase"] == p]
        if sub:
            metrics[f"phase{p}"] = {
                k: v for k, v in aggregate(sub).items() if k.endswith("accuracy")
            }
    metrics["fvd"] = fvd(np.stack(refs), np.stack(fakes), extractor) if len(rows) > 1 else None
    metrics["fvd_extractor"] = extractor.name
    metrics["seconds_per_clip"] = gen_seconds / max(1, len(rows))
    result = {
        "model": str(model_path),
        "model_info": {k: v for k, v in info.items() if isinstance(v, str | int | float)},
        "settings": {
            "num_prompts": num_prompts,
            "phases": list(phases),
            "width": width,
            "height": height,
            "num_frames": num_frames,
            "fps": fps,
            "steps": steps,
            "shift": shift,
            "guidance": guidance,
            "two_stage": two_stage,
            "refine_steps": refine_steps,
            "refine_sigma": refine_sigma,
            "refine_guidance": refine_guidance,
            "candidates": candidates,
            "guidance_min_sigma": guidance_min_sigma,
            "seed": seed,
            "threads": torch.get_num_threads(),
            "backend": backend,
        },
        "metrics": metrics,
        "per_prompt": rows,
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    k = min(8, len(fakes))
    sheet = np.concatenate(
        [
            contact_sheet(fakes[:k]),
            np.full((4, contact_sheet(fakes[:k]).shape[1], 3), 255, np.uint8),
            contact_sheet(refs[:k]),
        ]
    )
    write_png(out_dir / "samples.png", sheet)
    tmp = out_dir / ".eval.json.tmp"
    tmp.write_text(json.dumps(result, indent=2, default=_jsonable))
    os.replace(tmp, out_dir / "eval.json")
    write_html(
        out_dir / "report.html",
        {**result, "metrics": {k: v for k, v in metrics.items() if not isinstance(v, dict)}},
        sheet="samples.png",
    )
    return result


@torch.no_grad()
def _autoencode(comp: Any, frames: np.ndarray) -> np.ndarray:
    from aiprod.training.data import frames_to_tensor

    dev = next(comp.vae.parameters()).device
    z = comp.vae.encode(frames_to_tensor(frames)[None].to(dev)).latent_dist.mean
    return tensor_to_frames(comp.vae.decode(z, return_dict=False)[0][0])


@torch.no_grad()
def _stage2_ceiling(
    comp: Any,
    chunk: list[tuple[str, Any, int]],
    *,
    width: int,
    height: int,
    num_frames: int,
    fps: int,
    guidance: float,
    seed: int,
    refine_steps: int,
    refine_sigma: float,
) -> list[np.ndarray]:
    """Each prompt's reference rendered at half size and encoded (a perfect stage 1), then the
    model's own stage 2 (upsampler + refinement, as sampled) -> decoded full-size clips."""
    from aiprod.builtin import render
    from aiprod.builtin.sample import refine
    from aiprod.training.data import frames_to_tensor
    from aiprod.training.encode import denormalize_latents, encode_prompts, normalize_latents

    dev = next(comp.vae.parameters()).device
    half = [
        render.render(
            p, width=width // 2, height=height // 2, num_frames=num_frames, fps=fps, seed=rs
        )
        for _, p, rs in chunk
    ]
    z = comp.vae.encode(torch.stack([frames_to_tensor(f) for f in half]).to(dev)).latent_dist.mean
    caps = [c for c, _, _ in chunk]
    cond = encode_prompts(comp, caps, dev)
    uncond = encode_prompts(comp, [""] * len(caps), dev) if guidance != 1.0 else None
    x = refine(
        comp,
        normalize_latents(comp.vae, z),
        cond,
        uncond,
        generator=torch.Generator().manual_seed(seed),
        guidance=guidance,
        fps=fps,
        steps=refine_steps,
        sigma=refine_sigma,
    )
    video = comp.vae.decode(denormalize_latents(comp.vae, x), return_dict=False)[0].clamp(-1, 1)
    return [tensor_to_frames(v) for v in video]


def _engine_pipeline(
    folder: Path,
    *,
    refine_steps: int,
    refine_strength: float,
    refine_guidance: float,
    candidates: int = 1,
    guidance_min_sigma: float = 0.0,
) -> Any:
    from aiprod.core.registry import BuiltinEntry, BuiltinOptions
    from aiprod.engine import load_pipeline

    if not (folder / "model_index.json").is_file():
        raise ValueError(f"--backend engine needs a model folder (model_index.json), not {folder}")
    entry = BuiltinEntry(
        id="eval",
        path=folder.resolve(),
        dtype="float32",
        options=BuiltinOptions(
            refine_steps=refine_steps,
            refine_strength=refine_strength,
            refine_guidance_scale=refine_guidance,
            candidates=candidates,
            guidance_min_sigma=guidance_min_sigma,
        ),
    )
    return load_pipeline(entry, "cuda" if torch.cuda.is_available() else "cpu")


def _engine_generate(
    pipe: Any,
    prompt: str,
    *,
    width: int,
    height: int,
    num_frames: int,
    fps: int,
    steps: int,
    guidance: float,
    seed: int,
    two_stage: bool,
) -> list[np.ndarray]:
    from aiprod.engine.types import GenerationRequest

    req = GenerationRequest(
        prompt=prompt,
        width=width,
        height=height,
        num_frames=num_frames,
        fps=fps,
        seed=seed,
        num_inference_steps=steps,
        guidance_scale=guidance,
        two_stage=two_stage,
    )
    return [pipe(req).frames]


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(type(o).__name__)
