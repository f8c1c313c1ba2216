"""Pieces the LTX backends share (LTX-2, LTX-Video and the built-in model): the two-stage
geometry, the request checks, the OOM message, the partial-denoise scheduler of the classic
LTX-Video pipelines and the guidance interval of stage 1."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import torch

from aiprod.core.errors import InvalidRequest
from aiprod.core.registry import ModelEntry
from aiprod.engine.checks import check_geometry, check_request
from aiprod.engine.common import oom_guard
from aiprod.engine.types import GenerationRequest

# The LTX pipelines check sizes against 32 whatever the VAE's own ratio is.
SIZE_MULTIPLE = 32


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
