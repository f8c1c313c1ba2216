"""A phase's learning-rate schedule (checkpointed with the run)."""

from __future__ import annotations

import math

from aiprod.training.config import PhaseConfig


class PhaseLR:
    """Linear warmup, then constant / cosine / linear decay to ``peak * min_ratio``."""

    def __init__(self, phase: PhaseConfig, total_steps: int) -> None:
        self.cfg = phase.lr
        self.total = max(1, total_steps)
        self.step_count = 0

    def lr(self, step: int | None = None) -> float:
        s = self.step_count if step is None else step
        c = self.cfg
        if c.warmup_steps and s < c.warmup_steps:
            return c.peak * (s + 1) / c.warmup_steps
        if c.schedule == "constant":
            return c.peak
        frac = min(1.0, (s - c.warmup_steps) / max(1, self.total - c.warmup_steps))
        if c.schedule == "cosine":
            k = 0.5 * (1 + math.cos(math.pi * frac))
        else:
            k = 1 - frac
        return c.peak * (c.min_ratio + (1 - c.min_ratio) * k)

    def state_dict(self) -> dict[str, int]:
        return {"step_count": self.step_count, "total": self.total}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step_count, self.total = state["step_count"], state["total"]
