"""What a run sets up before its first phase: the device, ``accelerate``'s mixed precision,
and the tokenizer's vocabulary (the caption words of every phase's data)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from aiprod.core.errors import ConfigError
from aiprod.training.config import PhaseConfig, TrainConfig
from aiprod.training.data import HELDOUT_SEED_OFFSET


def vocab_from_config(cfg: TrainConfig) -> set[str]:
    """Caption words of every phase (captions only: nothing is rendered or decoded)."""
    from aiprod.training.components import caption_words

    words: set[str] = set()
    for p in cfg.phases:
        for text in _captions_only(p):
            words.update(caption_words(text))
    for text in cfg.monitor.video_prompts:
        words.update(caption_words(text))
    return words


def _captions_only(p: PhaseConfig) -> list[str]:
    d = p.data
    if d.synth is not None:
        from aiprod.builtin import grammar

        s = d.synth
        return [
            grammar.caption(params)
            for seed in (s.seed, s.seed + HELDOUT_SEED_OFFSET)
            for params, _ in grammar.draws(s.phase, s.count, seed, mix=s.mix)
        ]
    from aiprod.data.manifest import accepted, read_manifest

    if d.manifest is None or not Path(d.manifest).exists():
        raise ConfigError(f"phase '{p.name}': data.manifest {d.manifest} does not exist")
    return [r.caption for r in accepted(read_manifest(d.manifest)) if r.caption]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but no CUDA GPU is visible (use cpu/auto)")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX-512 BF16 or AMX); without it PyTorch
    emulates bf16 matmuls and autocast to bf16 runs slower than fp32. Unknown -> True."""
    checks = [
        getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    ]
    if any(c is None for c in checks):
        return True
    return any(c() for c in checks)


def make_accelerator(device: torch.device, precision: str) -> Any:
    """``accelerate``'s Accelerator: one process, or one rank of ``torchrun`` / ``accelerate
    launch`` (it reads their environment; gloo on CPU, NCCL on GPUs)."""
    from accelerate import Accelerator

    mp = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    try:
        return Accelerator(cpu=device.type == "cpu", mixed_precision=mp)
    except ValueError:
        # accelerate keeps one process-wide state; a second trainer in the same
        # (non-distributed) process with another precision must reset it first.
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state()
        return Accelerator(cpu=device.type == "cpu", mixed_precision=mp)


def refuse_sharding(accelerator: Any) -> None:
    """The trainer shards with FSDP2 itself (``training.sharding``); ``accelerate``'s
    DeepSpeed / Megatron-LM engines would take the model, its state dicts and its steps."""
    kind = str(getattr(accelerator, "distributed_type", ""))
    if kind.endswith(("DEEPSPEED", "MEGATRON_LM")):
        raise ConfigError(
            f"accelerate is set up for {kind.rsplit('.', 1)[-1]}, which the trainer does not "
            "run: launch without --use_deepspeed / --use_megatron_lm; to shard a large model "
            "use --use_fsdp or distributed.strategy: fsdp (docs/training.md, 'Large models')"
        )


def ddp_options(accelerator: Any, *, unused_parameters: bool) -> None:
    """How the next ``prepare`` wraps a module in DDP: ``unused_parameters`` for a target
    whose loss may leave a trained parameter out of a step (DDP must not wait for it)."""
    from accelerate.utils import DistributedDataParallelKwargs

    accelerator.ddp_handler = DistributedDataParallelKwargs(
        find_unused_parameters=unused_parameters
    )
