"""The curriculum trainer: ``train()`` -> ``train_step()`` -> ``forward_backward()``.

Phases run in order; each gets its items once (``training.cache``: latents and text
embeddings cached on disk under ``output_dir/cache``), a fresh optimizer over what its target
trains (``training.targets``: one class per kind of phase), a learning-rate schedule and a
:class:`BucketBatcher`. Every source of randomness in a step comes from one
``torch.Generator`` (noise levels, noise, caption dropout) whose state is checkpointed with
the global RNGs, so ``resume=True`` continues bit-for-bit (on CPU) from the latest checkpoint.
A phase with ``ema_decay`` also keeps an exponential moving average of its weights
(checkpointed too), evaluates with it and ends with it. Logging, held-out loss and
validation videos are ``training.monitor``'s.

Under several processes (``torchrun`` / ``accelerate launch``: DDP through ``accelerate``)
each step's global batch is split across the ranks (``training.distributed``); only the
main process writes (cache, logs, TensorBoard, held-out loss, videos, checkpoints, the
final model), the others wait for it at a barrier where they need its files. With
``distributed.strategy: fsdp`` the denoisers are sharded (``training.sharding``): every rank
then takes part in their forwards (held-out loss, videos) and in gathering their state for
checkpoints and the export, which rank 0 writes in the one-process format.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aiprod.core.errors import ConfigError
from aiprod.training import checkpoint as ckpt
from aiprod.training.cache import LatentCache
from aiprod.training.components import Components, build_components
from aiprod.training.config import TrainConfig
from aiprod.training.data import BucketBatcher
from aiprod.training.distributed import barrier, gather, mean_over_ranks, ranks_of
from aiprod.training.lora import add_lora
from aiprod.training.monitor import Monitor, memory_stats
from aiprod.training.schedule import PhaseLR
from aiprod.training.setup import (
    cpu_has_native_bf16,
    ddp_options,
    make_accelerator,
    refuse_sharding,
    resolve_device,
    vocab_from_config,
)
from aiprod.training.sharding import Weights, launched_with_fsdp, shard, sharded_parts
from aiprod.training.targets.base import PhaseRun, TrainContext
from aiprod.training.targets.factory import make_targets

log = logging.getLogger(__name__)

__all__ = ["PhaseLR", "PhaseRun", "TrainState", "Trainer", "cpu_has_native_bf16"]


@dataclass
class TrainState:
    step: int = 0
    phase_index: int = 0
    phase_step: int = 0
    best_heldout: float | None = None


class Trainer:
    """Runs a :class:`TrainConfig` end to end."""

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.device = resolve_device(cfg.device)
        launcher_fsdp = launched_with_fsdp()  # (read before accelerate sees it)
        self.accelerator = make_accelerator(self.device, cfg.precision)
        refuse_sharding(self.accelerator)
        if cfg.num_threads:  # (after accelerate, which sets its own under several CPU ranks)
            torch.set_num_threads(cfg.num_threads)
        self.ranks = ranks_of(self.accelerator)
        # the parts FSDP shards; any -> every rank runs their forwards (held-out loss, videos)
        self.sharded = sharded_parts(cfg, launcher_fsdp=launcher_fsdp, world=self.ranks.world)
        self.evaluates = self.ranks.main or bool(self.sharded)
        if self.ranks.world > 1 and self.device.type == "cuda":
            self.device = self.accelerator.device  # this rank's GPU (cuda:LOCAL_RANK)
        # only the main process reports (the others' events would repeat its own)
        self.on_event = (on_event if self.ranks.main else None) or (lambda kind, data: None)
        if self.device.type == "cpu" and cfg.precision == "bf16" and not cpu_has_native_bf16():
            msg = (
                "precision: bf16 on a CPU without AVX-512 BF16 or AMX: PyTorch emulates bf16 "
                "there and training runs slower than in fp32; set precision: fp32 in the config"
            )
            log.warning(msg)
            self.on_event("precision_warning", {"precision": "bf16", "device": "cpu", "hint": msg})
        self.fingerprint = cfg.fingerprint()
        self.noise = torch.Generator().manual_seed(cfg.seed)
        self.state = TrainState()
        vocab = vocab_from_config(cfg) if cfg.model.source == "builtin" else set()
        self.comp = build_components(cfg.model, vocab=vocab, seed=cfg.seed)
        self.targets = make_targets(
            TrainContext(cfg, self.comp, self.device, self.noise, self.ranks)
        )
        self._finish_model(self.comp)
        self.weights = Weights(self.comp, cfg, self.sharded, main=self.ranks.main)
        self.cache = LatentCache(
            self.out / "cache",
            self.comp,
            self.targets,
            on_event=self.on_event,
            split=cfg.monitor.heldout,
        )
        self.monitor = Monitor(
            cfg,
            self.comp,
            self.cache,
            self.targets,
            out=self.out,
            device=self.device,
            on_event=self.on_event,
            writes=self.ranks.main,
            main_first=self.accelerator.main_process_first if self.sharded else nullcontext,
        )

    def _finish_model(self, comp: Components) -> None:
        """Check the buckets against the autoencoder; freeze all, LoRA, device."""
        cfg = self.cfg
        # The config allows any multiple of 16 (half of a 32-multiple: a two-stage stage 1);
        # the model decides which of those its autoencoder can encode.
        r = comp.vae.spatial_compression_ratio
        for p in cfg.phases:
            for w, h, _ in p.buckets:
                if w % r or h % r:
                    raise ConfigError(
                        f"phase '{p.name}': bucket {w}x{h} is not a multiple of this model's "
                        f"autoencoder compression ({r} px per latent): use sizes divisible by {r}"
                    )
        for m in comp.modules().values():
            m.requires_grad_(False)
        if cfg.mode == "lora":  # seeded: the same adapters on every rank (FSDP broadcasts nothing)
            add_lora(comp.transformer, cfg.lora, seed=cfg.seed)
        if cfg.gradient_checkpointing:
            comp.transformer.enable_gradient_checkpointing()
            comp.vae.enable_gradient_checkpointing()
        for name in self.sharded:  # before .to: only the shards reach the device
            shard(comp.modules()[name], device=self.device, world=self.ranks.world,
                  precision=cfg.precision)  # fmt: skip
        comp.to(self.device)
        comp.text_encoder.eval()

    # ------------------------------------------------------------------ phases

    def _setup_phase(self, index: int, *, dry_run: bool = False) -> PhaseRun:
        phase = self.cfg.phases[index]
        target = self.targets[phase.target]
        with self.accelerator.main_process_first():  # it writes the cache, the others read it
            data = self.cache.prepare(phase, limit=phase.batch_size if dry_run else None)
        if not data.bucket_of:
            raise ConfigError(f"phase '{phase.name}' has no clips")
        target.begin(index, phase_step=self.state.phase_step)
        mods = target.param_groups(phase)
        if self.cfg.mode == "full":
            for m, _ in mods:
                m.requires_grad_(True)
        trained = [[p for p in m.parameters() if p.requires_grad] for m, _ in mods]
        params = [p for ps in trained for p in ps]
        # one param group per module; ``lr_scale`` keeps a module at its own peak lr under
        # the phase's schedule (train_step sets lr * lr_scale)
        groups = [{"params": ps, "lr_scale": s} for ps, (_, s) in zip(trained, mods, strict=True)]
        optimizer = torch.optim.AdamW(
            groups, lr=phase.lr.peak, weight_decay=phase.weight_decay, betas=(0.9, 0.99)
        )
        distributed = self.ranks.world > 1
        if distributed:
            ddp_options(self.accelerator, unused_parameters=target.unused_parameters)
        if phase.target in self.sharded:  # FSDP2 syncs its gradients itself: no DDP
            module, optimizer = target.module(), self.accelerator.prepare(optimizer)
        else:
            module, optimizer = self.accelerator.prepare(
                target.ddp_module() if distributed else target.module(), optimizer
            )
        text_encoder = self.accelerator.prepare_model(mods[1][0]) if len(mods) > 1 else None
        batcher = BucketBatcher(
            data.bucket_of, batch_size=phase.batch_size, seed=self.cfg.seed * 101 + index
        )
        total = phase.steps if phase.steps else phase.epochs * batcher.batches_per_epoch  # type: ignore[operator]
        if dry_run:
            total = 1
        run = PhaseRun(
            index, phase, target, data, module, params, optimizer, PhaseLR(phase, total), batcher,
            total, None, text_encoder,
        )  # fmt: skip
        if phase.ema_decay is not None:
            from diffusers.training_utils import EMAModel

            run.ema = EMAModel(params, decay=phase.ema_decay)
        return run

    # ------------------------------------------------------------------ steps

    def forward_backward(self, run: PhaseRun, idx: list[int]) -> tuple[float, dict[str, Any]]:
        """Loss of one global batch (this rank's share of it), backpropagated; returns (the
        global batch's mean loss, this rank's per-sample details)."""
        with self.accelerator.autocast():
            loss, extra = run.target.loss(run, idx)
        if self.ranks.world > 1:
            loss = loss * self.ranks.weight(len(idx))
        self.accelerator.backward(loss)
        return mean_over_ranks(loss, self.ranks), extra

    def train_step(self, run: PhaseRun) -> tuple[float, dict[str, Any]]:
        """One optimizer step: next (global) batch, forward/backward, clip, step, schedule."""
        idx = run.batcher.next()
        lr = run.schedule.lr()
        for g in run.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        run.optimizer.zero_grad(set_to_none=True)
        loss, extra = self.forward_backward(run, idx)
        if run.cfg.grad_clip is not None:
            self.accelerator.clip_grad_norm_(run.params, run.cfg.grad_clip)
        run.optimizer.step()
        if run.ema is not None:
            run.ema.step(run.params)
        run.schedule.step_count += 1
        extra["lr"] = lr
        extra["batch"] = len(idx)
        return loss, extra

    # ------------------------------------------------------------------ the loop

    def train(self, *, resume: bool = False, stop_after: int | None = None) -> dict[str, Any]:
        """Run every phase (continuing from the latest checkpoint when ``resume``).

        ``stop_after``: checkpoint and return once the global step reaches it (time-boxed
        runs on a shared CPU; ``resume=True`` later continues exactly).
        """
        pending = self._resume() if resume else None
        t0 = time.perf_counter()
        phases = self.cfg.phases
        for index in range(self.state.phase_index, len(phases)):
            run = self._setup_phase(index)
            self.on_event(
                "phase",
                {
                    "phase": run.cfg.name,
                    "target": run.cfg.target,
                    "steps": run.total_steps,
                    "clips": len(run.data.bucket_of),
                },
            )
            if pending is not None:
                if pending["optimizer"] is not None:
                    self.weights.load_optimizer(run.cfg.target, run.optimizer, pending["optimizer"])
                    run.schedule.load_state_dict(pending["schedule"])
                    run.batcher.load_state_dict(pending["batcher"])
                    if run.ema is not None and pending.get("ema") is not None:
                        run.ema.load_state_dict(pending["ema"])
                ckpt.restore_rng(self._own_rng(pending), self.noise)
                pending = None
            self.monitor.restart_clock()
            run.module.train()
            while self.state.phase_step < run.total_steps:
                loss, extra = self.train_step(run)
                self.state.step += 1
                self.state.phase_step += 1
                if self.ranks.main:
                    self.monitor.log_step(run, self.state.step, loss, extra)
                self._periodic(run)
                if stop_after is not None and self.state.step >= stop_after:
                    if self.state.phase_step < run.total_steps:
                        if self.state.step % self.cfg.checkpoint.every:
                            self.save(run, heldout=None)
                        return self._stopped(t0)
            if run.ema is not None:
                run.ema.copy_to(run.params)
            run.target.end(run)
            self.state.phase_index = index + 1
            self.state.phase_step = 0
            self.save(None, heldout=self._maybe_heldout())
            if self.ranks.world > 1:
                self.accelerator.free_memory()  # drop this phase's DDP wrapper and optimizer
            if stop_after is not None and self.state.step >= stop_after:
                return self._stopped(t0)
        final = self.export(self.out / "final")  # every rank: sharded parts are gathered
        if self.ranks.main:
            self.monitor.flush()
        barrier(self.ranks)
        return {
            "steps": self.state.step,
            "seconds": time.perf_counter() - t0,
            "processes": self.ranks.world,
            "sharded": self.sharded,  # the parts FSDP sharded (none under DDP)
            "final": str(final),
            "checkpoint": str(ckpt.latest_checkpoint(self.ckpt_dir)),
        }

    def _resume(self) -> dict[str, Any]:
        """Load the latest checkpoint's weights and state; -> its optimizer/RNG state."""
        last = ckpt.latest_checkpoint(self.ckpt_dir)
        if last is None:
            raise ConfigError(f"--resume: no checkpoint under {self.ckpt_dir}")
        pending = ckpt.load_state(last)
        if pending["fingerprint"] != self.fingerprint:
            raise ConfigError(
                f"--resume: {last} was made with a different config (fingerprint "
                f"{pending['fingerprint']} != {self.fingerprint}); use the same config or "
                "a new output_dir"
            )
        self._load_weights(last)
        self.state = TrainState(**pending["train"])
        self.on_event("resume", {"from": str(last), "step": self.state.step})
        return pending

    def _own_rng(self, pending: dict[str, Any]) -> dict[str, Any]:
        """This rank's RNG states from a checkpoint: its own when written by as many
        processes, else the main process's (the step's generator is the same on every rank,
        so a run resumes exactly under another number of processes)."""
        per_rank = pending.get("rng_ranks")
        if per_rank and len(per_rank) == self.ranks.world:
            return per_rank[self.ranks.rank]
        return pending["rng"]

    def _stopped(self, t0: float) -> dict[str, Any]:
        self.on_event("stopped", {"step": self.state.step})
        if self.ranks.main:
            self.monitor.flush()
        return {
            "steps": self.state.step,
            "seconds": time.perf_counter() - t0,
            "stopped": True,
            "checkpoint": str(ckpt.latest_checkpoint(self.ckpt_dir)),
        }

    def _maybe_heldout(self) -> dict[str, float] | None:
        if not self.evaluates:
            return None
        done = self.cfg.phases[: self.state.phase_index]
        if not self.cfg.monitor.heldout or not any(self.targets[p.target].validates for p in done):
            return None
        return self.monitor.heldout_loss()

    def _periodic(self, run: PhaseRun) -> None:
        main = self.evaluates
        heldout = self.monitor.periodic(run, self.state.step) if main else None
        if self.state.step % self.cfg.checkpoint.every == 0 and (
            self.state.phase_step < run.total_steps
        ):
            if heldout is None and run.target.validates and main and self.cfg.monitor.heldout:
                heldout = self.monitor.heldout_loss(run)
            self.save(run, heldout=heldout)

    # ------------------------------------------------------------------ checkpoints

    def _parts(self) -> dict[str, dict[str, torch.Tensor]]:
        """What a checkpoint holds of the model (collective under FSDP: every rank calls)."""
        if self.cfg.mode == "lora":
            return {"transformer_lora": self.weights.state_dict("transformer", lora=True)}
        names = list(self.comp.modules())
        if self.cfg.model.source != "builtin":
            trained: set[str] = set()
            for p in self.cfg.phases:
                trained |= self.targets[p.target].trained_parts(p)
            names = [k for k in names if k in trained]
        return {k: self.weights.state_dict(k) for k in names}

    def save(self, run: PhaseRun | None, *, heldout: dict[str, float] | None = None) -> Path:
        """Checkpoint (every rank calls it; the main process writes, the others wait)."""
        rng = ckpt.capture_rng(self.noise)
        rng_ranks = gather(rng, self.ranks)
        parts = self._parts()  # (gathers sharded parts: on every rank)
        optimizer = self.weights.optimizer_state(run.cfg.target, run.optimizer) if run else None
        path = self.ckpt_dir / f"step-{self.state.step:08d}"
        if self.ranks.main:
            path = self._write(run, rng, rng_ranks, heldout, parts=parts, optimizer=optimizer)
        barrier(self.ranks)
        return path

    def _write(
        self,
        run: PhaseRun | None,
        rng: dict[str, Any],
        rng_ranks: list[dict[str, Any]],
        heldout: dict[str, float] | None,
        *,
        parts: dict[str, dict[str, torch.Tensor]],
        optimizer: dict[str, Any] | None,
    ) -> Path:
        state = {
            "fingerprint": self.fingerprint,
            "train": self.state.__dict__.copy(),
            "optimizer": optimizer,
            "schedule": run.schedule.state_dict() if run else None,
            "batcher": run.batcher.state_dict() if run else None,
            "ema": run.ema.state_dict() if run and run.ema else None,
            "rng": rng,
        }
        if self.ranks.world > 1:
            state["rng_ranks"] = rng_ranks
        phase = self.cfg.phases[min(self.state.phase_index, len(self.cfg.phases) - 1)]
        meta = {
            "step": self.state.step,
            "phase": phase.name,
            "phase_index": self.state.phase_index,
            "phase_step": self.state.phase_step,
            "fingerprint": self.fingerprint,
            "heldout_loss": heldout["mean"] if heldout else None,
            "heldout": heldout,
            "mode": self.cfg.mode,
        }
        path = ckpt.save_checkpoint(
            self.ckpt_dir,
            step=self.state.step,
            parts=parts,
            tokenizer=self.comp.tokenizer,
            config=self.cfg.model_dump(mode="json"),
            state=state,
            meta=meta,
            keep_last=self.cfg.checkpoint.keep_last,
            keep_best=self.cfg.checkpoint.keep_best,
        )
        self.on_event("checkpoint", {"step": self.state.step, "path": str(path)})
        return path

    def _load_weights(self, path: Path) -> None:
        for name, sd in ckpt.load_parts(path).items():
            if name == "transformer_lora":
                missing = self.weights.load("transformer", sd, strict=False)
                if missing.unexpected_keys:
                    raise ConfigError(f"{path}: LoRA weights do not fit this transformer")
                continue
            self.weights.load(name, sd)

    # ------------------------------------------------------------------ dry run / export

    def dry_run(self) -> list[dict[str, Any]]:
        """One batch per phase: shapes, memory and time; nothing is saved."""
        report = []
        for index, phase in enumerate(self.cfg.phases):
            t0 = time.perf_counter()
            run = self._setup_phase(index, dry_run=True)
            t1 = time.perf_counter()
            run.module.train()
            loss, extra = self.train_step(run)
            t2 = time.perf_counter()
            run.target.end(run)
            report.append(
                {
                    "phase": phase.name,
                    "target": phase.target,
                    "batch_shape": extra.get("shape"),
                    "out_shape": extra.get("out_shape") or extra.get("latent_shape"),
                    "loss": loss,
                    "prepare_s": t1 - t0,
                    "step_s": t2 - t1,
                    "trainable_params": sum(p.numel() for p in run.params),
                    **memory_stats(self.device),
                }
            )
        return report

    def export(self, dest: Path) -> Path:
        """Write the current model as a diffusers-layout folder (LoRA merged in); every rank
        calls it, rank 0 writes."""
        from aiprod.training.deploy import export_components
        from aiprod.training.provenance import run_info

        comp = self.weights.gathered()
        if not self.ranks.main:
            return dest
        return export_components(
            comp,
            dest,
            mode=self.cfg.mode,
            lora_export=self.cfg.lora.export,
            info={
                **run_info(self.cfg),
                "trained_by": "aiprod train",
                "config_name": self.cfg.name,
                "fingerprint": self.fingerprint,
                "steps": self.state.step,
                "phases": [
                    {
                        "name": p.name,
                        "target": p.target,
                        "steps": p.steps,
                        "epochs": p.epochs,
                        "data": p.data.model_dump(mode="json"),
                        "buckets": p.buckets,
                    }
                    for p in self.cfg.phases
                ],
            },
        )
