"""Sharded training under several processes: FSDP2 (``torch.distributed.fsdp.fully_shard``).

With ``distributed.strategy: fsdp`` (or ``accelerate launch --use_fsdp``) the denoisers
(``transformer``, ``refiner``: the modules that are large) are sharded across the ranks, one
FSDP unit per transformer block plus the root: each rank keeps 1/N of their weights,
gradients and Adam states and gathers one block at a time for its forward and backward. The
other modules (text encoder, autoencoder, upsampler, verifier) stay whole on every rank and
train under DDP as before.

The trainer applies FSDP2 itself, on CPU (gloo, tested) and GPU alike, rather than through
``accelerate``'s FSDP plugin: ``accelerate`` does not shard on CPU (``Accelerator(cpu=True)``
with FSDP set up is ``MULTI_CPU`` and wraps in DDP), so its path could not be tested here,
and FSDP1 fails on gloo. ``accelerate launch --use_fsdp`` selects this path.

Checkpoints stay one format whatever the strategy and the number of processes: every rank
takes part in gathering the full (unsharded) weights and optimizer states, rank 0 writes them
as a one-process run would, and a resumed rank keeps its own shard of them. So a checkpoint
written under FSDP on N processes resumes under DDP, FSDP or one process, on any number.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from aiprod.core.errors import ConfigError
from aiprod.training.components import Components
from aiprod.training.config import TrainConfig
from aiprod.training.lora import lora_state_dict

log = logging.getLogger(__name__)

SHARDED_TARGETS = ("transformer", "refiner")


def launched_with_fsdp() -> bool:
    """Whether ``accelerate launch --use_fsdp`` started this process. The flag is taken out
    of the environment: with it ``accelerate`` would switch to its own FSDP handling on GPUs
    (and ignores it on CPU), while the trainer shards with FSDP2 itself, one path for both."""
    return os.environ.pop("ACCELERATE_USE_FSDP", "false").lower() in ("true", "1")


def sharded_parts(cfg: TrainConfig, *, launcher_fsdp: bool, world: int) -> list[str]:
    """The model parts this run shards (none under DDP or in one process); refuses what the
    sharded path does not do, with the fix."""
    strategy = cfg.distributed.strategy
    if strategy == "ddp" and launcher_fsdp:
        raise ConfigError(
            "distributed.strategy is ddp but the run was started with accelerate launch "
            "--use_fsdp: set distributed.strategy to fsdp (or auto), or launch without --use_fsdp"
        )
    if strategy == "auto":
        strategy = "fsdp" if launcher_fsdp else "ddp"
    if strategy != "fsdp" or world == 1:
        return []
    parts = [t for t in SHARDED_TARGETS if any(p.target == t for p in cfg.phases)]
    for p in cfg.phases:
        if p.target in parts and p.ema_decay is not None:
            raise ConfigError(
                f"phase '{p.name}': ema_decay is not supported with distributed.strategy fsdp "
                "(the average would be sharded too): remove ema_decay or use strategy ddp"
            )
    return parts


def shard(module: torch.nn.Module, *, device: torch.device, world: int, precision: str) -> None:
    """FSDP2 in place: one unit per transformer block, then the root; the shards move to
    ``device``. On GPUs ``bf16``/``fp16`` precision computes and gathers in that dtype while
    the sharded weights, gradients reductions and Adam states stay fp32. FSDP2 does not
    broadcast: each rank keeps its part of its own copy, so every rank must hold the same
    weights before (seeded builds and LoRA draws, or the same files)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world,))
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    mp = MixedPrecisionPolicy()
    if low is not None and device.type == "cuda":
        mp = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32)
    # The LTX transformers return views (their output reshaped); every use of them here is
    # out of place, which is what FSDP2's warning about views asks for.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    for block in getattr(module, "transformer_blocks", None) or []:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(module, mesh=mesh, mp_policy=mp)


def full_state_dict(
    module: torch.nn.Module, *, main: bool, keep: Callable[[str], bool] | None = None
) -> dict[str, torch.Tensor]:
    """The unsharded weights (those ``keep`` names), on CPU, on the main rank ({} elsewhere).
    Collective: every rank calls it; one tensor is gathered at a time."""
    from torch.distributed.tensor import DTensor

    out: dict[str, torch.Tensor] = {}
    for k, v in module.state_dict().items():
        if keep is not None and not keep(k):
            continue
        if isinstance(v, DTensor):
            v = v.full_tensor()
        if main:
            out[k] = v.detach().cpu()
    return out


def load_full_state_dict(
    module: torch.nn.Module, sd: dict[str, torch.Tensor], *, strict: bool = True
) -> Any:
    """Unsharded weights into a sharded module (each rank keeps its own shard)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    return set_model_state_dict(
        module, sd, options=StateDictOptions(full_state_dict=True, strict=strict)
    )


def full_optimizer_state(optimizer: torch.optim.Optimizer, *, main: bool) -> dict[str, Any]:
    """``optimizer.state_dict()`` with every sharded state gathered: what the same optimizer
    over unsharded weights would hold (on the main rank; {} elsewhere). Collective."""
    from torch.distributed.tensor import DTensor

    sd = optimizer.state_dict()
    state: dict[int, dict[str, Any]] = {}
    for pid in sorted(sd["state"]):  # the same order on every rank
        entry = {}
        for k, v in sd["state"][pid].items():
            if isinstance(v, DTensor):
                v = v.full_tensor()
            entry[k] = v.detach().cpu() if torch.is_tensor(v) else v
        state[pid] = entry
    return {"state": state, "param_groups": sd["param_groups"]} if main else {}


def shard_optimizer_state(sd: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """An unsharded optimizer state (any checkpoint's) for an optimizer over sharded
    weights: each state tensor of a sharded weight's shape becomes this rank's shard."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = [p for g in optimizer.param_groups for p in g["params"]]

    def like(v: Any, p: torch.Tensor) -> Any:
        if isinstance(p, DTensor) and torch.is_tensor(v) and tuple(v.shape) == tuple(p.shape):
            # every rank read the same file: cut locally, no scatter
            return distribute_tensor(
                v.to(p.device, p.dtype), p.device_mesh, p.placements, src_data_rank=None
            )
        return v

    state = {pid: {k: like(v, params[pid]) for k, v in s.items()} for pid, s in sd["state"].items()}
    return {**sd, "state": state}


def plain_copy(
    module: torch.nn.Module, sd: dict[str, torch.Tensor], *, lora: Any | None
) -> torch.nn.Module:
    """An unsharded copy of a sharded diffusers model holding the gathered ``sd`` (``lora``:
    the run's LoRA config, whose adapters the module carries). Built on the meta device and
    given ``sd``'s tensors themselves: no second copy of a large model in host memory."""
    from torch.distributed.fsdp import FSDPModule

    base = next(c for c in type(module).__mro__ if not issubclass(c, FSDPModule))

    def build() -> torch.nn.Module:
        fresh: torch.nn.Module = base.from_config(module.config)  # type: ignore[attr-defined]
        if lora is not None:
            from aiprod.training.lora import add_lora

            add_lora(fresh, lora)
        return fresh

    with torch.device("meta"):
        fresh = build()
    fresh.load_state_dict(sd, assign=True)
    if any(t.is_meta for t in [*fresh.parameters(), *fresh.buffers()]):
        fresh = build()  # a buffer outside the state dict: build it for real
        fresh.load_state_dict(sd)
    return fresh.requires_grad_(False)


@dataclass
class Weights:
    """The run's model parts as whole (unsharded) weights, whether or not FSDP shards them:
    for checkpoints, resume and the export. Calls on a sharded part are collective."""

    comp: Components
    cfg: TrainConfig
    sharded: list[str]
    main: bool

    def state_dict(self, name: str, *, lora: bool = False) -> dict[str, torch.Tensor]:
        """A part's weights (``lora``: the adapters only), whole; {} off the main rank for a
        sharded part."""
        m = self.comp.modules()[name]
        if name not in self.sharded:
            return lora_state_dict(m) if lora else m.state_dict()
        keep = (lambda k: "lora_" in k) if lora else None  # what lora_state_dict keeps
        return full_state_dict(m, main=self.main, keep=keep)

    def load(self, name: str, sd: dict[str, torch.Tensor], *, strict: bool = True) -> Any:
        """Whole weights into a part (a sharded one keeps its shard of them on each rank)."""
        m = self.comp.modules()[name]
        if name in self.sharded:
            return load_full_state_dict(m, sd, strict=strict)
        return m.load_state_dict(sd, strict=strict)

    def optimizer_state(self, target: str, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer's state as over whole weights (gathered for a sharded target)."""
        if target in self.sharded:
            return full_optimizer_state(optimizer, main=self.main)
        return optimizer.state_dict()

    def load_optimizer(
        self, target: str, optimizer: torch.optim.Optimizer, sd: dict[str, Any]
    ) -> None:
        """A checkpoint's (whole) optimizer state into a phase's optimizer."""
        optimizer.load_state_dict(
            shard_optimizer_state(sd, optimizer) if target in self.sharded else sd
        )

    def gathered(self) -> Components:
        """The model with its sharded parts as whole CPU copies, on the main rank (the
        others get their own model back)."""
        whole = {}
        for name in self.sharded:
            m = self.comp.modules()[name]
            sd = full_state_dict(m, main=self.main)
            lora = self.cfg.lora if self.cfg.mode == "lora" and name == "transformer" else None
            if self.main:
                whole[name] = plain_copy(m, sd, lora=lora)
        return dataclasses.replace(self.comp, **whole)
