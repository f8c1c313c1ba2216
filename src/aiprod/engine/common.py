"""Pieces every backend shares: device/dtype, step progress + cancel, OOM handling, frames."""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from aiprod.core.errors import ConfigError, GenerationCanceled, GenerationFailed
from aiprod.engine.types import CancelFn, ProgressFn

log = logging.getLogger(__name__)


class _DropMessages(logging.Filter):
    """Drop known-harmless diffusers warnings that would repeat on every job."""

    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(f in msg for f in self.fragments)


# LTXConditionPipeline passes explicit timesteps by design (the LTX linear-quadratic schedule).
logging.getLogger("diffusers.schedulers.scheduling_flow_match_euler_discrete").addFilter(
    _DropMessages("`timesteps` were passed without `sigmas`")
)
# Printed on every pipe.to(device) of a model that has no fp32-pinned modules at all.
logging.getLogger("diffusers.models.modeling_utils").addFilter(
    _DropMessages("that should be kept in float32: []")
)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str | None) -> torch.device:
    """``None`` -> cuda if available, else cpu; a CUDA device without CUDA is a ConfigError."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(
            f"device '{device}' is not a torch device (use cpu, cuda, cuda:1)"
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{device}' asked for, but CUDA is not available here (use cpu)")
    return dev


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The entry's dtype on accelerators; float32 on CPU, where half precision is slow."""
    if device.type == "cpu" and name != "float32":
        log.info("running on CPU: using float32 instead of %s", name)
        return torch.float32
    return _DTYPES[name]


@dataclass
class StepTracker:
    """Turns diffusers' per-step callbacks into weighted progress and cooperative cancel.

    ``stages`` is ``[(steps, cost_per_step), ...]``; progress is the finished share of the
    summed cost, so a cheap half-resolution step moves the bar less than a full-size one.
    """

    stages: Sequence[tuple[int, float]]
    on_progress: ProgressFn | None = None
    should_cancel: CancelFn | None = None
    done_cost: float = 0.0
    steps_done: int = 0
    stage: int = 0
    stage_steps: int = 0
    step_end_times: list[float] = field(default_factory=list)

    @property
    def total_cost(self) -> float:
        return sum(n * c for n, c in self.stages) or 1.0

    def check_cancel(self) -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise GenerationCanceled(
                f"generation canceled after {self.steps_done} denoising step(s)"
            )

    def start_stage(self, index: int) -> None:
        self.stage, self.stage_steps = index, 0
        self.check_cancel()

    def step_done(self) -> None:
        self.steps_done += 1
        self.stage_steps += 1
        self.done_cost += self.stages[self.stage][1]
        self.step_end_times.append(time.perf_counter())
        if self.on_progress is not None:
            self.on_progress(min(1.0, self.done_cost / self.total_cost))
        self.check_cancel()

    def diffusers_callback(
        self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """``callback_on_step_end`` for diffusers pipelines; raising here stops the loop now."""
        self.step_done()
        return {}


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text.lower() or "can't allocate memory" in text
    )


@contextlib.contextmanager
def oom_guard(what: str, *, hint: str) -> Iterator[None]:
    """Turn an out-of-memory error into ``GenerationFailed`` and free what it held."""
    detail = None
    try:
        yield
    except (RuntimeError, torch.OutOfMemoryError) as exc:
        if not is_oom(exc):
            raise
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "OOM"
    if detail is None:
        return
    # Out of the except block: the traceback (and the activations its frames hold) is gone, so
    # the cached blocks can really be returned before the worker takes its next job.
    free_memory()
    log.warning("out of memory while generating %s: %s", what, detail)
    raise GenerationFailed(f"out of memory while generating {what}: {hint}")


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def video_to_uint8(video: torch.Tensor, *, height: int, width: int) -> np.ndarray:
    """(B, F, C, H', W') float in [0, 1] -> (F, H, W, 3) uint8, resized if the sizes differ."""
    frames = video[0]  # (F, C, H', W')
    if frames.shape[-2:] != (height, width):
        frames = torch.nn.functional.interpolate(
            frames.float(), size=(height, width), mode="bilinear", antialias=True
        )
    frames = (frames.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return frames.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def check_attention_backend(entry_id: str, name: str | None) -> None:
    if name is None:
        return
    from diffusers.models.attention_dispatch import AttentionBackendName

    known = [b.value for b in AttentionBackendName]
    if name not in known:
        raise ConfigError(
            f"model '{entry_id}': options.attention_backend '{name}' is unknown; "
            f"use one of: {', '.join(known)}"
        )
