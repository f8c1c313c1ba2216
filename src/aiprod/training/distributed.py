"""The trainer under several processes (``torchrun`` / ``accelerate launch``; gloo on CPU,
NCCL on GPUs): which samples of a global batch a rank computes, the loss weight that makes
DDP's gradient average the global batch's mean, and the collectives the trainer needs.

Every rank draws the random numbers of the whole global batch from the same generator and
keeps its own rows (``Ranks.local``), so the generators stay identical across ranks, a run's
result does not depend on the number of processes (up to float summation order), and a
checkpoint written by N processes resumes under M.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: ``rank`` of ``world`` processes."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def local(self, n: int) -> list[int]:
        """Positions (in a global batch of ``n``) this rank computes: every ``world``-th
        from ``rank``; a rank left without one computes position 0 at weight 0 (DDP needs
        every rank to run a forward)."""
        return list(range(self.rank, n, self.world)) or [0]

    def weight(self, n: int) -> float:
        """Factor on this rank's mean loss so that DDP's average of the ranks' gradients is
        the gradient of the global batch's mean loss (uneven shards included)."""
        return len(range(self.rank, n, self.world)) * self.world / n

    def pick(self, t: torch.Tensor, pos: list[int]) -> torch.Tensor:
        """Rows ``pos`` of a global-batch tensor (the tensor itself in one process)."""
        return t if self.world == 1 else t[pos]


def ranks_of(accelerator: Any) -> Ranks:
    return Ranks(accelerator.process_index, accelerator.num_processes)


def mean_over_ranks(value: torch.Tensor, ranks: Ranks) -> float:
    """The mean of a scalar over the ranks (the value itself in one process)."""
    if ranks.world == 1:
        return float(value.detach())
    import torch.distributed as dist

    t = value.detach().float().reshape(1).clone()  # on the loss's device (NCCL: the GPU)
    dist.all_reduce(t)
    return float(t[0].cpu()) / ranks.world


def gather(obj: Any, ranks: Ranks) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if ranks.world == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * ranks.world
    dist.all_gather_object(out, obj)
    return out


def barrier(ranks: Ranks) -> None:
    if ranks.world > 1:
        import torch.distributed as dist

        dist.barrier()
