"""Text-to-video sampling with the trained parts (validation videos and ``aiprod eval``).

Mirrors diffusers' ``LTXPipeline`` conventions (prompt encoding without an attention mask in
the text encoder, mask in the transformer, latent normalisation with the VAE's
``latents_mean``/``latents_std``, RoPE scale ``(t_ratio / fps, s_ratio, s_ratio)``, Euler on
the flow) so what the trainer measures is what the engine's ``builtin`` backend serves.
Two-stage: stage 1 at half size, the latent upsampler x2, then a few refinement steps from a
partial noise level at full size (with the model's ``refiner`` when it has one).
"""

from __future__ import annotations

import torch

from aiprod.builtin.verifier import pick_best, tile
from aiprod.training.components import Components
from aiprod.training.encode import (
    denormalize_latents,
    encode_prompts,
    latent_shape,
    normalize_latents,
    velocity,
)
from aiprod.training.flow import inference_sigmas


def _denoise(
    comp: Components,
    transformer: torch.nn.Module,
    x: torch.Tensor,
    sigmas: list[float],
    cond: tuple[torch.Tensor, torch.Tensor],
    uncond: tuple[torch.Tensor, torch.Tensor] | None,
    *,
    guidance: float,
    fps: float,
    guidance_min_sigma: float = 0.0,
) -> torch.Tensor:
    """Euler steps along ``sigmas``; classifier-free guidance at the steps whose noise level is
    at least ``guidance_min_sigma`` (0: every step), one unguided pass at the others."""
    b = x.shape[0]
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        sig = torch.full((b,), s, device=x.device)
        if uncond is not None and guidance != 1.0 and s >= guidance_min_sigma:
            emb = torch.cat([uncond[0], cond[0]])
            mask = torch.cat([uncond[1], cond[1]])
            v_u, v_c = velocity(
                transformer, comp.vae, torch.cat([x, x]), sig.repeat(2), emb, mask, fps=fps
            ).chunk(2)
            v = v_u + guidance * (v_c - v_u)
        else:
            v = velocity(transformer, comp.vae, x, sig, cond[0], cond[1], fps=fps)
        x = x + (s_next - s) * v
    return x


def model_shift(comp: Components) -> float:
    """The static schedule shift the model's scheduler applies when the engine serves it."""
    cfg = comp.scheduler_config
    if cfg.get("use_dynamic_shifting", False):
        raise ValueError(
            "this model's scheduler uses dynamic shifting, which the trainer's sampler does not "
            "implement: set use_dynamic_shifting to false in scheduler/scheduler_config.json"
        )
    return float(cfg.get("shift", 1.0))


@torch.no_grad()
def generate(
    comp: Components,
    prompts: list[str],
    *,
    width: int,
    height: int,
    num_frames: int,
    fps: float = 24.0,
    steps: int = 12,
    guidance: float = 3.0,
    seed: int = 0,
    two_stage: bool = False,
    refine_steps: int = 3,
    refine_sigma: float = 0.4,
    negative_prompt: str = "",
    shift: float | None = None,
    refine_guidance: float | None = None,
    candidates: int = 1,
    guidance_min_sigma: float = 0.0,
) -> torch.Tensor:
    """Generate videos: (B, 3, F, H, W) float in [-1, 1].

    ``guidance_min_sigma`` limits stage 1's guidance to the noise levels at or above it
    (models.toml's ``guidance_min_sigma``; 0 guides every step).

    ``shift`` shifts the stage-1 schedule toward high noise as the model's
    FlowMatchEulerDiscreteScheduler does; None uses the model's own (``scheduler_config``).
    ``refine_guidance`` is the two-stage refinement's guidance (models.toml's
    ``refine_guidance_scale``); None uses ``guidance``. ``candidates`` > 1 draws that many
    stage-1 latents per prompt and keeps the one the model's prompt verifier scores highest
    (models.toml's ``candidates``; :mod:`aiprod.builtin.verifier`), unless no prompt states
    what the verifier scores: a stage-1 verifier ranks the drafts before the refinement, a
    stage-2 one after it (every draft refined, the best decoded).
    """
    if candidates < 1:
        raise ValueError(f"candidates={candidates}: give 1 (one draft) or more")
    if candidates > 1 and comp.verifier is None:
        raise ValueError(
            f"candidates={candidates} needs the model's prompt verifier (verifier/ in its "
            "folder, trained by a verifier phase); this model has none: use candidates=1"
        )
    if candidates > 1 and not two_stage:
        raise ValueError(
            f"candidates={candidates} ranks stage-1 drafts of the two-stage path: use "
            "two_stage=True or candidates=1"
        )
    if candidates > 1 and not comp.verifier.judges(prompts):  # type: ignore[union-attr]
        candidates = 1  # the prompts state nothing it scores: every draft would tie
    if shift is None:
        shift = model_shift(comp)
    dev = next(comp.transformer.parameters()).device
    for m in comp.modules().values():
        m.eval()
    b = len(prompts)
    cond = encode_prompts(comp, prompts, dev)
    g2 = guidance if refine_guidance is None else refine_guidance
    need_uncond = guidance != 1.0 or (two_stage and g2 != 1.0)
    uncond = encode_prompts(comp, [negative_prompt] * b, dev) if need_uncond else None
    gen = torch.Generator().manual_seed(seed)
    w1, h1 = (width // 2, height // 2) if two_stage else (width, height)
    shape = latent_shape(comp.vae, width=w1, height=h1, num_frames=num_frames)
    # a stage-2 verifier ranks the refined drafts: every draft is refined, the best decoded
    rank_refined = candidates > 1 and comp.verifier.config.stage == 2  # type: ignore[union-attr]
    x = draft(
        comp,
        cond,
        uncond,
        shape=shape,
        generator=gen,
        candidates=candidates,
        sigmas=inference_sigmas(steps, shift=shift),
        guidance=guidance,
        fps=fps,
        guidance_min_sigma=guidance_min_sigma,
    )
    if candidates > 1 and not rank_refined:
        x = pick_best(comp.verifier, x, prompts, candidates)[0]
    if two_stage:
        k = candidates if rank_refined else 1
        x = refine(
            comp,
            x,
            tile_prompts(cond, k),
            tile_prompts(uncond, k),
            generator=gen,
            guidance=g2,
            fps=fps,
            steps=refine_steps,
            sigma=refine_sigma,
        )
        if rank_refined:
            x = pick_best(comp.verifier, x, prompts, candidates)[0]
    video = comp.vae.decode(denormalize_latents(comp.vae, x), return_dict=False)[0]
    return video.clamp(-1, 1)


def tile_prompts(
    t: tuple[torch.Tensor, torch.Tensor] | None, candidates: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(embeddings, mask) repeated for ``candidates`` drafts (``verifier.tile``'s layout)."""
    return None if t is None else tuple(tile(u, candidates) for u in t)  # type: ignore[return-value]


@torch.no_grad()
def draft(
    comp: Components,
    cond: tuple[torch.Tensor, torch.Tensor],
    uncond: tuple[torch.Tensor, torch.Tensor] | None,
    *,
    shape: tuple,
    generator: torch.Generator,
    candidates: int,
    sigmas: list[float],
    guidance: float,
    fps: float,
    guidance_min_sigma: float = 0.0,
) -> torch.Tensor:
    """Stage 1: ``candidates`` normalised latents (C, f, h, w) per prompt, candidate-major
    (rows ``k*B + i`` are prompt i's draft k, as ``pick_best`` reads them). Draft 0 starts from
    the noise a single draft draws; the others from noise drawn after it."""
    b, dev = cond[0].shape[0], cond[0].device
    x = torch.randn((b, *shape), generator=generator).to(dev)
    if candidates > 1:
        more = torch.randn(((candidates - 1) * b, *shape), generator=generator).to(dev)
        x = torch.cat([x, more])
    emb, neg = tile_prompts(cond, candidates), tile_prompts(uncond, candidates)
    assert emb is not None
    return _denoise(
        comp,
        comp.transformer,
        x,
        sigmas,
        emb,
        neg,
        guidance=guidance,
        fps=fps,
        guidance_min_sigma=guidance_min_sigma,
    )


@torch.no_grad()
def refine(
    comp: Components,
    x: torch.Tensor,  # (B, C, f, h, w) normalised half-size latents
    cond: tuple[torch.Tensor, torch.Tensor],
    uncond: tuple[torch.Tensor, torch.Tensor] | None,
    *,
    generator: torch.Generator,
    guidance: float,
    fps: float,
    steps: int,
    sigma: float,
) -> torch.Tensor:
    """Stage 2: the latent upsampler x2, re-noise to ``sigma``, ``steps`` Euler steps to 0 with
    the model's stage-2 denoiser -> normalised full-size latents."""
    if comp.upsampler is None:
        raise ValueError("two_stage needs a latent upsampler in the model")
    x = normalize_latents(comp.vae, comp.upsampler(denormalize_latents(comp.vae, x)))
    noise = torch.randn(x.shape, generator=generator).to(x.device)
    x = (1 - sigma) * x + sigma * noise
    sig = [sigma * (1 - i / steps) for i in range(steps)] + [0.0]
    return _denoise(comp, comp.stage2, x, sig, cond, uncond, guidance=guidance, fps=fps)
