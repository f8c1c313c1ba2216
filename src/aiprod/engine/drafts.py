"""Draft ranking as the LTX-Video engine sees it: a small protocol, no caption grammar.

A model may rank several stage-1 drafts of a clip and keep the best (best-of-N): the built-in
model does it with its prompt verifier (``aiprod.builtin``). The engine draws ``k`` drafts per
prompt in the candidate-major layout ``tile`` makes (rows ``k*B + i`` are prompt i's draft k)
and asks the ranker which one to keep. Torch-free: tensors are only passed through.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class DraftRanker(Protocol):
    """Keeps the best of ``k`` drafts per prompt."""

    @property
    def stage(self) -> int:
        """Which latents it ranks: 1 = the stage-1 drafts (only the best is refined), 2 = the
        drafts after the refinement (every draft refined, only the best decoded)."""
        ...

    def judges(self, prompts: Sequence[str]) -> bool:
        """Whether any prompt states something it scores (else one draft is enough)."""
        ...

    def pick_best(self, latents: Any, prompts: Sequence[str], k: int) -> tuple[Any, Any, Any]:
        """Of ``k`` candidate-major latents per prompt ((k*B, ...)), keep the best: returns
        (best latents (B, ...), chosen draft per prompt (B,), scores (k, B))."""
        ...

    def to(self, device: Any) -> Any:
        """Move the ranker's weights to ``device`` (once, at load)."""
        ...


def tile(t: Any, candidates: int) -> Any:
    """A batch tensor repeated for ``candidates`` drafts in the candidate-major layout (rows
    ``k*B + i`` are row i's draft k); None stays None."""
    return None if t is None else t.repeat(candidates, *[1] * (t.dim() - 1))
