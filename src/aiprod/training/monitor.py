"""What a run reports while it trains: per-step scalars (loss by noise level, lr, throughput,
memory) to the event callback and TensorBoard, the held-out flow loss, validation videos."""

from __future__ import annotations

import contextlib
import logging
import resource
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aiprod.training.cache import LatentCache
from aiprod.training.components import Components
from aiprod.training.config import TrainConfig
from aiprod.training.encode import embed_ids, velocity
from aiprod.training.flow import add_noise, logit_normal_quantile, sigma_bucket, velocity_target
from aiprod.training.targets.base import PhaseData, PhaseRun, Target

log = logging.getLogger(__name__)

Events = Callable[[str, dict[str, Any]], None]


def memory_stats(device: torch.device) -> dict[str, float]:
    """Process peak RSS and, on CUDA, allocated/total GPU memory (MiB)."""
    out = {"rss_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["gpu_alloc_mib"] = torch.cuda.memory_allocated(device) / 2**20
        out["gpu_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["gpu_total_mib"] = torch.cuda.get_device_properties(device).total_memory / 2**20
    return out


@contextlib.contextmanager
def averaged(run: PhaseRun | None) -> Iterator[None]:
    """The EMA weights in place of the trained ones for the block (no-op without EMA)."""
    if run is None or run.ema is None:
        yield
        return
    run.ema.store(run.params)
    run.ema.copy_to(run.params)
    try:
        yield
    finally:
        run.ema.restore(run.params)


class Monitor:
    """Logging, TensorBoard, held-out loss and validation videos of one run."""

    def __init__(
        self,
        cfg: TrainConfig,
        comp: Components,
        cache: LatentCache,
        targets: dict[str, Target],
        *,
        out: Path,
        device: torch.device,
        on_event: Events,
        writes: bool = True,
        main_first: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    ) -> None:
        self.cfg, self.comp, self.cache, self.targets = cfg, comp, cache, targets
        self.out, self.device, self.on_event = out, device, on_event
        # Under FSDP every rank evaluates (the sharded forward needs them all): only the one
        # that ``writes`` keeps TensorBoard and videos, and it writes the cache first.
        self.writes, self.main_first = writes, main_first
        self._writer: Any = None
        self._heldout: tuple[str, PhaseData] | None = None
        self._acc: dict[str, list[float]] = {}
        self.restart_clock()

    @property
    def writer(self) -> Any:
        if self._writer is None and self.cfg.monitor.tensorboard and self.writes:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.out / "tb"))
        return self._writer

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def restart_clock(self) -> None:
        self._t_last, self._samples_since = time.perf_counter(), 0

    def log_step(self, run: PhaseRun, step: int, loss: float, extra: dict[str, Any]) -> None:
        """Accumulate a step's loss; every ``log_every`` steps report the means."""
        acc = self._acc
        acc.setdefault("loss", []).append(loss)
        self._samples_since += extra["batch"]
        if "per_sample" in extra:
            nb = extra["sigma_buckets"]
            for per, b in zip(
                extra["per_sample"].tolist(),
                sigma_bucket(extra["sigmas"], nb).tolist(),
                strict=True,
            ):
                acc.setdefault(f"loss_sigma/{b / nb:.2f}-{(b + 1) / nb:.2f}", []).append(per)
        if step % self.cfg.monitor.log_every:
            return
        now = time.perf_counter()
        scalars = {k: float(np.mean(v)) for k, v in acc.items()}
        scalars["lr"] = extra["lr"]
        scalars["samples_per_s"] = self._samples_since / max(now - self._t_last, 1e-9)
        mem = memory_stats(self.device)
        scalars.update({f"memory/{k}": v for k, v in mem.items()})
        warn = self.cfg.monitor.gpu_memory_warn_fraction
        if "gpu_total_mib" in mem and mem["gpu_alloc_mib"] > warn * mem["gpu_total_mib"]:
            log.warning(
                "GPU memory %.0f of %.0f MiB (> %.0f%%)",
                mem["gpu_alloc_mib"],
                mem["gpu_total_mib"],
                100 * warn,
            )
            self.on_event("gpu_memory_warning", mem)
        if self.writer is not None:
            for k, v in scalars.items():
                self.writer.add_scalar(
                    f"{run.cfg.target}/{k}" if k.startswith("loss") else k, v, step
                )
        self.on_event("log", {"step": step, "phase": run.cfg.name, **scalars})
        self._acc = {}
        self._t_last, self._samples_since = now, 0

    def periodic(self, run: PhaseRun, step: int) -> dict[str, float] | None:
        """Held-out loss and videos when due in a validating phase; returns the loss if run."""
        mon = self.cfg.monitor
        if not run.target.validates:
            return None
        heldout = None
        if mon.heldout and step % mon.heldout_every == 0:
            heldout = self.heldout_loss(run)
            if heldout and self.writer is not None:
                for k, v in heldout.items():
                    self.writer.add_scalar(f"heldout/{k}", v, step)
            self.on_event("heldout", {"step": step, **(heldout or {})})
        if mon.video_every and step % mon.video_every == 0:
            self.validation_videos(run, step)
        return heldout

    # ------------------------------------------------------------------ held-out loss

    def _heldout_data(self) -> PhaseData | None:
        phases = [p for p in self.cfg.phases if self.targets[p.target].validates]
        if not phases:
            return None
        phase = phases[-1]
        key = self.cache.key(phase, heldout=True)
        if self._heldout is None or self._heldout[0] != key:
            with self.main_first():
                data = self.cache.prepare(phase, heldout=True, limit=self.cfg.monitor.heldout_clips)
            self._heldout = (key, data)
        return self._heldout[1]

    def heldout_loss(self, run: PhaseRun | None = None) -> dict[str, float] | None:
        """Flow loss on held-out clips at fixed noise levels with fixed noise (with ``run``'s
        EMA weights when it keeps an average)."""
        with averaged(run):
            return self._heldout_loss()

    @torch.no_grad()
    def _heldout_loss(self) -> dict[str, float] | None:
        data = self._heldout_data()
        if data is None or not data.latents:
            return None
        tr = self.comp.transformer
        was_training = tr.training
        tr.eval()
        gen = torch.Generator().manual_seed(12345)
        fc = self.cfg.flow
        out: dict[str, float] = {}
        for q in self.cfg.monitor.heldout_quantiles:
            s = logit_normal_quantile(q, fc.logit_mean, fc.logit_std)
            losses = []
            for i in range(len(data.latents)):
                x0 = data.latents[i].unsqueeze(0).to(self.device)
                noise = torch.randn(x0.shape, generator=gen).to(self.device)
                sig = torch.full((1,), s, device=self.device)
                v = velocity(
                    tr,
                    self.comp.vae,
                    add_noise(x0, noise, sig),
                    sig,
                    embed_ids(self.comp, data.ids[i][None], self.device),
                    data.mask[i][None].to(self.device),
                    fps=data.fps[i],
                )
                losses.append(float((v.float() - velocity_target(x0, noise)).pow(2).mean()))
            out[f"q{q:.2f}_s{s:.3f}"] = float(np.mean(losses))
        out["mean"] = float(np.mean(list(out.values())))
        tr.train(was_training)
        return out

    def validation_videos(self, run: PhaseRun, step: int) -> None:
        from aiprod.builtin.sample import generate
        from aiprod.training.report import save_video_grid

        prompts = self.cfg.monitor.video_prompts
        if not prompts:
            return
        w, h, f = run.cfg.buckets[0]
        modes = {name: m.training for name, m in self.comp.modules().items()}
        with averaged(run):
            video = generate(
                self.comp,
                prompts,
                width=w,
                height=h,
                num_frames=f,
                steps=self.cfg.monitor.video_steps,
                seed=0,
            )
        for name, m in self.comp.modules().items():
            m.train(modes[name])
        if not self.writes:
            return
        path = save_video_grid(video, self.out / "samples" / f"step-{step:08d}", fps=24)
        self.on_event("video", {"step": step, "path": str(path)})
