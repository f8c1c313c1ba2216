"""Rectified-flow (flow matching) objective, timestep samplers, and the Euler sampler.

Convention (the one diffusers' LTX pipelines use): ``x_s = (1 - s) * x0 + s * eps`` with
noise level ``s`` in [0, 1]; the transformer sees ``timestep = 1000 * s`` and predicts the
velocity ``v = eps - x0``; an Euler step is ``x <- x + (s_next - s) * v``.
"""

from __future__ import annotations

import math

import torch

from aiprod.training.config import FlowConfig


def shift_sigmas(s: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3-style resolution shift: pushes mass to high noise when ``shift > 1``."""
    if shift == 1.0:
        return s
    return shift * s / (1 + (shift - 1) * s)


def sample_sigmas(
    n: int, cfg: FlowConfig, *, generator: torch.Generator, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Draw ``n`` training noise levels in (0, 1) from the configured sampler."""
    if cfg.sampler == "logit_normal":
        u = torch.randn(n, generator=generator) * cfg.logit_std + cfg.logit_mean
        s = torch.sigmoid(u)
    else:
        s = torch.rand(n, generator=generator)
    s = shift_sigmas(s, cfg.shift) if cfg.sampler == "shifted" or cfg.shift != 1.0 else s
    if cfg.max_sigma != 1.0:
        s = s * cfg.max_sigma
    return s.clamp(1e-4, 1 - 1e-4).to(device)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    s = sigmas.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0


def refine_path(
    x0: torch.Tensor, start: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor, s0: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, target velocity) on the straight path from a refinement's start to the clip.

    The two-stage path refines ``x_s0 = (1 - s0) start + s0 noise`` (``start``: the upsampled
    half-size latent) from noise level ``s0`` down to 0. On the line from x_s0 (at s0) to
    ``x0`` (at 0) the velocity is constant, ``(x_s0 - x0) / s0``, so Euler steps on it land on
    ``x0``; when ``start == x0`` this is the usual flow path and target.
    """
    x_s0 = add_noise(start, noise, torch.full((x0.shape[0],), s0, device=x0.device))
    return add_noise(x0, x_s0, sigmas / s0), (x_s0 - x0) / s0


def sigma_bucket(sigmas: torch.Tensor, n: int) -> torch.Tensor:
    """Index of each sigma's bucket among ``n`` equal bins of [0, 1]."""
    return (sigmas * n).long().clamp(0, n - 1)


def inference_sigmas(num_steps: int, *, shift: float = 1.0) -> list[float]:
    """The schedule LTXPipeline uses with a non-dynamic FlowMatchEuler scheduler, then 0."""
    if num_steps < 1:
        raise ValueError("num_steps must be >= 1")
    base = torch.linspace(1.0, 1.0 / num_steps, num_steps, dtype=torch.float64)
    s = shift_sigmas(base, shift)
    return [float(v) for v in s] + [0.0]


def logit_normal_quantile(q: float, mean: float = 0.0, std: float = 1.0) -> float:
    """The q-quantile of the logit-normal distribution (for fixed held-out timesteps)."""
    z = math.sqrt(2) * torch.erfinv(torch.tensor(2 * q - 1, dtype=torch.float64)).item()
    return 1 / (1 + math.exp(-(mean + std * z)))
