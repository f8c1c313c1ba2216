"""The curriculum trainer: ``train()`` -> ``train_step()`` -> ``forward_backward()``.

Phases run in order; each sets up its data once (latents and text embeddings are computed
once per phase and cached on disk under ``output_dir/cache``), a fresh optimizer over the
phase's target, a learning-rate schedule and a :class:`BucketBatcher`. Every source of
randomness in a step comes from one ``torch.Generator`` (noise levels, noise, caption
dropout) whose state is checkpointed with the global RNGs, so ``resume=True`` continues
bit-for-bit (on CPU) from the latest checkpoint. A phase with ``ema_decay`` also keeps an
exponential moving average of its weights (checkpointed too), evaluates with it and ends
with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aiprod.builtin.sample import embed_ids, normalize_latents, tokenize, velocity
from aiprod.core.errors import ConfigError
from aiprod.training import checkpoint as ckpt
from aiprod.training.components import Components, build_components
from aiprod.training.config import DENOISERS, FlowConfig, PhaseConfig, TrainConfig
from aiprod.training.data import (
    HELDOUT_SEED_OFFSET,
    BucketBatcher,
    Clip,
    frames_to_tensor,
    latent_foreground,
    load_clips,
    tensors_digest,
)
from aiprod.training.flow import (
    add_noise,
    logit_normal_quantile,
    refine_path,
    sample_sigmas,
    sigma_bucket,
    velocity_target,
)
from aiprod.training.lora import add_lora, lora_state_dict

log = logging.getLogger(__name__)


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


@dataclass
class TrainState:
    step: int = 0
    phase_index: int = 0
    phase_step: int = 0
    best_heldout: float | None = None


def _weighted(phase: PhaseConfig, heldout: bool) -> bool:
    """Whether a phase's cached items need subject maps: denoiser training items with fg_weight."""
    return bool(phase.fg_weight) and phase.target in DENOISERS and not heldout


@dataclass
class PhaseData:
    """Cached training items of one phase (one entry per clip)."""

    bucket_of: list[int]
    fps: list[float]
    latents: list[torch.Tensor] = field(default_factory=list)  # transformer: (C, f, h, w)
    emb: list[torch.Tensor] = field(default_factory=list)  # (L, D)
    mask: list[torch.Tensor] = field(default_factory=list)  # (L,)
    ids: list[torch.Tensor] = field(default_factory=list)  # (L,) token ids of the caption
    pixels: list[np.ndarray] = field(default_factory=list)  # vae: (F, H, W, 3) uint8
    low: list[torch.Tensor] = field(default_factory=list)  # upsampler: raw latents (C,f,h,w)
    high: list[torch.Tensor] = field(default_factory=list)
    # refiner phases with refine_from: the upsampled half-size latent (normalised), where the
    # two-stage path starts the refinement from
    start: list[torch.Tensor] = field(default_factory=list)
    # denoiser phases with fg_weight: each latent cell's share of subject pixels (1, f, h, w)
    fg: list[torch.Tensor] = field(default_factory=list)
    # verifier phases: (4,) class indices of what the caption states (verifier.IGNORE: silent)
    labels: list[torch.Tensor] = field(default_factory=list)


@dataclass
class PhaseRun:
    index: int
    cfg: PhaseConfig
    data: PhaseData
    module: torch.nn.Module
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    schedule: PhaseLR
    batcher: BucketBatcher
    total_steps: int
    ema: Any | None = None  # diffusers EMAModel over ``params`` when the phase asks for one
    text_encoder: torch.nn.Module | None = None  # set when the phase trains it too


def _vocab_from_configs(cfg: TrainConfig) -> set[str]:
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


def _device(name: str) -> torch.device:
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


def memory_stats(device: torch.device) -> dict[str, float]:
    """Process peak RSS and, on CUDA, allocated/total GPU memory (MiB)."""
    out = {"rss_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["gpu_alloc_mib"] = torch.cuda.memory_allocated(device) / 2**20
        out["gpu_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["gpu_total_mib"] = torch.cuda.get_device_properties(device).total_memory / 2**20
    return out


class Trainer:
    """Runs a :class:`TrainConfig` end to end."""

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        from accelerate import Accelerator

        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.device = _device(cfg.device)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        mp = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[cfg.precision]
        try:
            self.accelerator = Accelerator(cpu=self.device.type == "cpu", mixed_precision=mp)
        except ValueError:
            # accelerate keeps one process-wide state; a second trainer in the same
            # (non-distributed) process with another precision must reset it first.
            from accelerate.state import AcceleratorState

            AcceleratorState._reset_state()
            self.accelerator = Accelerator(cpu=self.device.type == "cpu", mixed_precision=mp)
        self.on_event = on_event or (lambda kind, data: None)
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
        self.comp = self._build_model()
        self._writer: Any = None
        self._heldout: tuple[str, PhaseData] | None = None
        # the empty caption for caption dropout: (embedding, mask, token ids)
        self._uncond: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._log_acc: dict[str, list[float]] = {}
        self._t_last = time.perf_counter()
        self._samples_since = 0

    # ------------------------------------------------------------------ setup

    def _build_model(self) -> Components:
        cfg = self.cfg
        vocab = _vocab_from_configs(cfg) if cfg.model.source == "builtin" else set()
        comp = build_components(cfg.model, vocab=vocab, seed=cfg.seed)
        if any(p.target == "upsampler" for p in cfg.phases) and comp.upsampler is None:
            from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel

            up = cfg.model.architecture.upsampler
            comp.upsampler = LTXLatentUpsamplerModel(
                in_channels=comp.vae.config.latent_channels,
                mid_channels=up.mid_channels,
                num_blocks_per_stage=up.num_blocks_per_stage,
            )
        # A model without a refiner starts one as a copy of the transformer as it is when the
        # first refiner phase begins (the module exists from the start so checkpoints hold it).
        self._refiner_copies = comp.refiner is None
        if any(p.target == "refiner" for p in cfg.phases):
            comp.ensure_refiner()
        if any(p.target == "verifier" for p in cfg.phases):
            comp.ensure_verifier(cfg.model.architecture.verifier)
        if any(p.refine_from is not None for p in cfg.phases) and comp.upsampler is None:
            raise ConfigError(
                "refine_from trains the refiner on the latent upsampler's output, and this "
                "model has none: add an upsampler phase before it, or load a model with one"
            )
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
        if cfg.mode == "lora":
            add_lora(comp.transformer, cfg.lora)
        if cfg.gradient_checkpointing:
            comp.transformer.enable_gradient_checkpointing()
            comp.vae.enable_gradient_checkpointing()
        comp.to(self.device)
        comp.text_encoder.eval()
        return comp

    @property
    def writer(self) -> Any:
        if self._writer is None and self.cfg.monitor.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.out / "tb"))
        return self._writer

    def _module(self, target: str) -> torch.nn.Module:
        m = {
            "transformer": self.comp.transformer,
            "refiner": self.comp.refiner,
            "vae": self.comp.vae,
            "upsampler": self.comp.upsampler,
            "verifier": self.comp.verifier,
        }[target]
        assert m is not None
        return m

    def _cache_key(self, phase: PhaseConfig, *, heldout: bool, extra: str = "") -> str:
        parts = {
            "data": phase.data.model_dump(mode="json"),
            "buckets": phase.buckets,
            "target": phase.target,
            "heldout": heldout,
            "vae": tensors_digest(self.comp.vae.state_dict()),
            # held-out items and phases that train the encoder embed their token ids on use
            "te": None
            if heldout or phase.text_encoder_lr
            else tensors_digest(self.comp.text_encoder.state_dict()),
            "vocab": len(self.comp.tokenizer),
            "extra": extra,
            "format": 2,  # 2: items hold token ids
        }
        if phase.refine_from is not None:  # its items hold the upsampler's output too
            assert self.comp.upsampler is not None
            parts["upsampler"] = tensors_digest(self.comp.upsampler.state_dict())
        if _weighted(phase, heldout):  # its items hold the subject maps
            parts["fg"] = 1
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    @torch.no_grad()
    def _encode_video(self, frames: np.ndarray) -> torch.Tensor:
        """(F, H, W, 3) uint8 -> raw VAE latent mean (C, f, h, w)."""
        x = frames_to_tensor(frames).unsqueeze(0).to(self.device)
        return self.comp.vae.encode(x).latent_dist.mean[0].float().cpu()

    @torch.no_grad()
    def _prepare(
        self,
        phase: PhaseConfig,
        *,
        heldout: bool = False,
        limit: int | None = None,
    ) -> PhaseData:
        """Load a phase's clips and turn them into cached training items."""
        data_cfg = phase.data
        if limit is not None:
            data_cfg = data_cfg.model_copy(update={"limit": limit})
        if phase.target == "vae":
            clips = load_clips(data_cfg, phase.buckets, heldout=heldout)
            return PhaseData(
                bucket_of=[c.bucket for c in clips],
                fps=[c.fps for c in clips],
                pixels=[c.frames for c in clips],
            )
        key = self._cache_key(phase.model_copy(update={"data": data_cfg}), heldout=heldout)
        cache = self.out / "cache" / f"{phase.name}{'-heldout' if heldout else ''}-{key}.pt"
        if cache.is_file():
            return PhaseData(**torch.load(cache, weights_only=False))
        clips = load_clips(data_cfg, phase.buckets, heldout=heldout)
        self.on_event("prepare", {"phase": phase.name, "clips": len(clips), "heldout": heldout})
        data = PhaseData(bucket_of=[c.bucket for c in clips], fps=[c.fps for c in clips])
        self.comp.vae.eval()
        if phase.target in (*DENOISERS, "verifier"):  # each clip's normalised latent
            for c in clips:
                z = self._encode_video(c.frames).unsqueeze(0)
                data.latents.append(normalize_latents(self.comp.vae, z)[0])
                if _weighted(phase, heldout):  # (the held-out loss is unweighted)
                    data.fg.append(latent_foreground(c.frames, tuple(z.shape[-3:])))
                if phase.refine_from is not None:  # (refiner phases only)
                    data.start.append(self._upsampled(_half(c)))
            captions = [c.caption for c in clips]
            if phase.target == "verifier":  # ... and what its caption states
                assert self.comp.verifier is not None
                data.labels = list(self.comp.verifier.labels(captions))
            else:
                data.emb, data.mask, data.ids = self._embed(captions)
        else:  # upsampler: (half-size latent, full-size latent) pairs
            for c in clips:
                data.high.append(self._encode_video(c.frames))
                data.low.append(self._encode_video(_half(c)))
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        torch.save(data.__dict__, tmp)
        tmp.replace(cache)
        return data

    def _upsampled(self, frames: np.ndarray) -> torch.Tensor:
        """Normalised latent the two-stage path refines: the clip encoded, then upsampled x2."""
        assert self.comp.upsampler is not None
        self.comp.upsampler.eval()
        z = self._encode_video(frames).unsqueeze(0).to(self.device)
        up = self.comp.upsampler(z).float()
        return normalize_latents(self.comp.vae, up)[0].cpu()

    def _embed(self, captions: list[str]) -> tuple[list[torch.Tensor], ...]:
        """-> (embeddings, attention masks, token ids) of the captions, one entry each."""
        embs, masks, ids = [], [], []
        for s in range(0, len(captions), 64):
            t, m = tokenize(self.comp, captions[s : s + 64])
            embs += list(embed_ids(self.comp, t, self.device).cpu())
            masks += list(m)
            ids += list(t)
        return embs, masks, ids

    def _setup_phase(self, index: int, *, dry_run: bool = False) -> PhaseRun:
        phase = self.cfg.phases[index]
        limit = phase.batch_size if dry_run else None
        data = self._prepare(phase, limit=limit)
        if not data.bucket_of:
            raise ConfigError(f"phase '{phase.name}' has no clips")
        first_refiner = next(
            (i for i, p in enumerate(self.cfg.phases) if p.target == "refiner"), -1
        )
        if index == first_refiner and self._refiner_copies and self.state.phase_step == 0:
            self.comp.ensure_refiner().load_state_dict(self.comp.transformer.state_dict())
        module = self._module(phase.target)
        train_te = phase.text_encoder_lr is not None
        mods = self.comp.trained_by(phase.target, text_encoder=train_te)
        if self.cfg.mode == "full":
            for m in mods:
                m.requires_grad_(True)
        # One param group per module; ``lr_scale`` keeps the text encoder's lr at its own
        # peak under the phase's schedule (train_step sets lr * lr_scale).
        groups = [
            {
                "params": [p for p in m.parameters() if p.requires_grad],
                "lr_scale": (phase.text_encoder_lr / phase.lr.peak) if i else 1.0,  # type: ignore[operator]
            }
            for i, m in enumerate(mods)
        ]
        params = [p for g in groups for p in g["params"]]
        optimizer = torch.optim.AdamW(
            groups, lr=phase.lr.peak, weight_decay=phase.weight_decay, betas=(0.9, 0.99)
        )
        module, optimizer = self.accelerator.prepare(module, optimizer)
        text_encoder = self.accelerator.prepare_model(self.comp.text_encoder) if train_te else None
        batcher = BucketBatcher(
            data.bucket_of, batch_size=phase.batch_size, seed=self.cfg.seed * 101 + index
        )
        total = phase.steps if phase.steps else phase.epochs * batcher.batches_per_epoch  # type: ignore[operator]
        if dry_run:
            total = 1
        if phase.target in DENOISERS:  # (again: an earlier phase may have trained the encoder)
            t, m = tokenize(self.comp, [""])
            self._uncond = (embed_ids(self.comp, t, self.device)[0].cpu(), m[0], t[0])
        ema = None
        if phase.ema_decay is not None:
            from diffusers.training_utils import EMAModel

            ema = EMAModel(params, decay=phase.ema_decay)
        return PhaseRun(
            index,
            phase,
            data,
            module,
            params,
            optimizer,
            PhaseLR(phase, total),
            batcher,
            total,
            ema,
            text_encoder,
        )

    @contextlib.contextmanager
    def _averaged(self, run: PhaseRun | None) -> Iterator[None]:
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

    # ------------------------------------------------------------------ steps

    def forward_backward(self, run: PhaseRun, idx: list[int]) -> tuple[float, dict[str, Any]]:
        """Loss of one batch, backpropagated; returns (loss, per-sample details)."""
        fn = {
            "transformer": self._fb_transformer,
            "refiner": self._fb_transformer,  # run.module is the refiner
            "vae": self._fb_vae,
            "upsampler": self._fb_upsampler,
            "verifier": self._fb_verifier,
        }[run.cfg.target]
        with self.accelerator.autocast():
            loss, extra = fn(run, idx)
        self.accelerator.backward(loss)
        return float(loss.detach()), extra

    def _flow(self, run: PhaseRun) -> FlowConfig:
        """The phase's own timestep sampler, else the run's."""
        return run.cfg.flow or self.cfg.flow

    def _fb_transformer(self, run: PhaseRun, idx: list[int]) -> tuple[torch.Tensor, dict]:
        d, dev = run.data, self.device
        x0 = torch.stack([d.latents[i] for i in idx]).to(dev)
        mask = torch.stack([d.mask[i] for i in idx])
        b = x0.shape[0]
        drop = torch.rand(b, generator=self.noise) < run.cfg.caption_dropout
        assert self._uncond is not None
        mask[drop] = self._uncond[1]
        if run.text_encoder is not None:  # embed now, through the encoder being trained
            ids = torch.stack([d.ids[i] for i in idx])
            ids[drop] = self._uncond[2]
            emb = run.text_encoder(ids.to(dev))[0].float()
        else:
            emb = torch.stack([d.emb[i] for i in idx])
            emb[drop] = self._uncond[0]
        flow = self._flow(run)
        s0 = run.cfg.refine_from
        if s0 is not None:
            flow = flow.model_copy(update={"max_sigma": s0})
        sig = sample_sigmas(b, flow, generator=self.noise)
        noise = torch.randn(x0.shape, generator=self.noise).to(dev)
        if s0 is None:
            xt, target = add_noise(x0, noise, sig.to(dev)), velocity_target(x0, noise)
        else:
            # The straight path from where the refinement starts (the upsampled latent noised
            # to s0) to the clip; with a perfect upsampler it is the usual flow path.
            start = torch.stack([d.start[i] for i in idx]).to(dev)
            xt, target = refine_path(x0, start, noise, sig.to(dev), s0)
        v = velocity(
            run.module, self.comp.vae, xt, sig.to(dev), emb.to(dev), mask.to(dev), fps=d.fps[idx[0]]
        )
        err = (v.float() - target).pow(2)
        if run.cfg.fg_weight:  # subjects' cells count 1 + fg_weight times, the mean kept at 1
            w = 1 + run.cfg.fg_weight * torch.stack([d.fg[i] for i in idx]).to(dev)
            err = err * (w / w.mean(dim=(1, 2, 3, 4), keepdim=True))
        per = err.mean(dim=(1, 2, 3, 4))
        return per.mean(), {
            "per_sample": per.detach().cpu(),
            "sigmas": sig,
            "shape": tuple(x0.shape),
        }

    def _fb_vae(self, run: PhaseRun, idx: list[int]) -> tuple[torch.Tensor, dict]:
        x = torch.stack([frames_to_tensor(run.data.pixels[i]) for i in idx]).to(self.device)
        dist = run.module.encode(x).latent_dist
        eps = torch.randn(dist.mean.shape, generator=self.noise).to(self.device)
        z = dist.mean + run.cfg.posterior_noise * dist.std * eps
        rec = run.module.decode(z).sample
        w = torch.ones_like(x[:, :1])
        if run.cfg.fg_weight:
            med = x.flatten(3).median(dim=-1).values[..., None, None]  # (B, 3, F, 1, 1)
            fg = (x - med).abs().amax(dim=1, keepdim=True) > 0.2
            w = w + run.cfg.fg_weight * fg.float()
        err = rec.float() - x
        mse = (err.pow(2) * w).mean() / w.mean()
        l1 = (err.abs() * w).mean() / w.mean()
        kl = dist.kl().mean() / dist.mean[0].numel()
        loss = mse + run.cfg.l1_weight * l1 + run.cfg.kl_weight * kl
        return loss, {
            "shape": tuple(x.shape),
            "latent_shape": tuple(z.shape),
            "mse": float(mse.detach()),
        }

    def _fb_upsampler(self, run: PhaseRun, idx: list[int]) -> tuple[torch.Tensor, dict]:
        lo = torch.stack([run.data.low[i] for i in idx]).to(self.device)
        hi = torch.stack([run.data.high[i] for i in idx]).to(self.device)
        pred = run.module(lo)
        vae = self.comp.vae
        loss = (normalize_latents(vae, pred.float()) - normalize_latents(vae, hi)).pow(2).mean()
        return loss, {"shape": tuple(lo.shape), "out_shape": tuple(pred.shape)}

    def _fb_verifier(self, run: PhaseRun, idx: list[int]) -> tuple[torch.Tensor, dict]:
        from aiprod.builtin.verifier import classification_loss

        x0 = torch.stack([run.data.latents[i] for i in idx]).to(self.device)
        labels = torch.stack([run.data.labels[i] for i in idx]).to(self.device)
        sig = sample_sigmas(x0.shape[0], self._flow(run), generator=self.noise).to(self.device)
        noise = torch.randn(x0.shape, generator=self.noise).to(self.device)
        logits = run.module(add_noise(x0, noise, sig), sig)
        loss = classification_loss(logits, labels)
        return loss, {"shape": tuple(x0.shape), "sigmas": sig.cpu()}

    def train_step(self, run: PhaseRun) -> tuple[float, dict[str, Any]]:
        """One optimizer step: next batch, forward/backward, clip, step, schedule."""
        idx = run.batcher.next()
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        if world > 1:
            idx = idx[rank::world] or idx[:1]
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

    # ------------------------------------------------------------------ monitoring

    def _log_step(self, run: PhaseRun, loss: float, extra: dict[str, Any]) -> None:
        acc = self._log_acc
        acc.setdefault("loss", []).append(loss)
        self._samples_since += extra["batch"]
        if "per_sample" in extra:
            nb = self._flow(run).num_sigma_buckets
            for per, b in zip(
                extra["per_sample"].tolist(),
                sigma_bucket(extra["sigmas"], nb).tolist(),
                strict=True,
            ):
                acc.setdefault(f"loss_sigma/{b / nb:.2f}-{(b + 1) / nb:.2f}", []).append(per)
        step = self.state.step
        if step % self.cfg.monitor.log_every:
            return
        now = time.perf_counter()
        scalars = {k: float(np.mean(v)) for k, v in acc.items()}
        scalars["lr"] = extra["lr"]
        scalars["samples_per_s"] = self._samples_since / max(now - self._t_last, 1e-9)
        mem = memory_stats(self.device)
        scalars.update({f"memory/{k}": v for k, v in mem.items()})
        if "gpu_total_mib" in mem and mem["gpu_alloc_mib"] > (
            self.cfg.monitor.gpu_memory_warn_fraction * mem["gpu_total_mib"]
        ):
            log.warning(
                "GPU memory %.0f of %.0f MiB (> %.0f%%)",
                mem["gpu_alloc_mib"],
                mem["gpu_total_mib"],
                100 * self.cfg.monitor.gpu_memory_warn_fraction,
            )
            self.on_event("gpu_memory_warning", mem)
        if self.writer is not None:
            for k, v in scalars.items():
                self.writer.add_scalar(
                    f"{run.cfg.target}/{k}" if k.startswith("loss") else k, v, step
                )
        self.on_event("log", {"step": step, "phase": run.cfg.name, **scalars})
        self._log_acc = {}
        self._t_last, self._samples_since = now, 0

    def _heldout_data(self) -> PhaseData | None:
        phases = [p for p in self.cfg.phases if p.target == "transformer"]
        if not phases:
            return None
        phase = phases[-1]
        key = self._cache_key(phase, heldout=True)
        if self._heldout is None or self._heldout[0] != key:
            data = self._prepare(phase, heldout=True, limit=self.cfg.monitor.heldout_clips)
            self._heldout = (key, data)
        return self._heldout[1]

    def heldout_loss(self, run: PhaseRun | None = None) -> dict[str, float] | None:
        """Flow loss on held-out clips at fixed noise levels with fixed noise (with ``run``'s
        EMA weights when it keeps an average)."""
        with self._averaged(run):
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

    def _validation_videos(self, run: PhaseRun) -> None:
        from aiprod.builtin.sample import generate
        from aiprod.training.report import save_video_grid

        prompts = self.cfg.monitor.video_prompts
        if not prompts:
            return
        w, h, f = run.cfg.buckets[0]
        modes = {name: m.training for name, m in self.comp.modules().items()}
        with self._averaged(run):
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
        path = save_video_grid(video, self.out / "samples" / f"step-{self.state.step:08d}", fps=24)
        self.on_event("video", {"step": self.state.step, "path": str(path)})

    # ------------------------------------------------------------------ checkpoints

    def _parts(self) -> dict[str, dict[str, torch.Tensor]]:
        if self.cfg.mode == "lora":
            return {"transformer_lora": lora_state_dict(self.comp.transformer)}
        if self.cfg.model.source == "builtin":
            return {k: m.state_dict() for k, m in self.comp.modules().items()}
        trained = {p.target for p in self.cfg.phases}
        if any(p.text_encoder_lr for p in self.cfg.phases):
            trained.add("text_encoder")
        return {k: m.state_dict() for k, m in self.comp.modules().items() if k in trained}

    def save(self, run: PhaseRun | None, *, heldout: dict[str, float] | None = None) -> Path:
        state = {
            "fingerprint": self.fingerprint,
            "train": self.state.__dict__.copy(),
            "optimizer": run.optimizer.state_dict() if run else None,
            "schedule": run.schedule.state_dict() if run else None,
            "batcher": run.batcher.state_dict() if run else None,
            "ema": run.ema.state_dict() if run and run.ema else None,
            "rng": ckpt.capture_rng(self.noise),
        }
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
            parts=self._parts(),
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
        parts = ckpt.load_parts(path)
        for name, sd in parts.items():
            if name == "transformer_lora":
                missing = self.comp.transformer.load_state_dict(sd, strict=False)
                if missing.unexpected_keys:
                    raise ConfigError(f"{path}: LoRA weights do not fit this transformer")
                continue
            self.comp.modules()[name].load_state_dict(sd)

    # ------------------------------------------------------------------ the loop

    def train(self, *, resume: bool = False, stop_after: int | None = None) -> dict[str, Any]:
        """Run every phase (continuing from the latest checkpoint when ``resume``).

        ``stop_after``: checkpoint and return once the global step reaches it (time-boxed
        runs on a shared CPU; ``resume=True`` later continues exactly).
        """
        pending: dict[str, Any] | None = None
        if resume:
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
                    run.optimizer.load_state_dict(pending["optimizer"])
                    run.schedule.load_state_dict(pending["schedule"])
                    run.batcher.load_state_dict(pending["batcher"])
                    if run.ema is not None and pending.get("ema") is not None:
                        run.ema.load_state_dict(pending["ema"])
                ckpt.restore_rng(pending["rng"], self.noise)
                pending = None
            self._t_last, self._samples_since = time.perf_counter(), 0
            run.module.train()
            while self.state.phase_step < run.total_steps:
                loss, extra = self.train_step(run)
                self.state.step += 1
                self.state.phase_step += 1
                self._log_step(run, loss, extra)
                self._periodic(run)
                if stop_after is not None and self.state.step >= stop_after:
                    if self.state.phase_step < run.total_steps:
                        if self.state.step % self.cfg.checkpoint.every:
                            self.save(run, heldout=None)
                        return self._stopped(t0)
            if run.ema is not None:
                run.ema.copy_to(run.params)
            if run.cfg.target == "vae":
                self._fit_latent_stats(run)
            self.state.phase_index = index + 1
            self.state.phase_step = 0
            self.save(None, heldout=self._maybe_heldout())
            if stop_after is not None and self.state.step >= stop_after:
                return self._stopped(t0)
        final = self.export(self.out / "final")
        if self._writer is not None:
            self._writer.flush()
        return {
            "steps": self.state.step,
            "seconds": time.perf_counter() - t0,
            "final": str(final),
            "checkpoint": str(ckpt.latest_checkpoint(self.ckpt_dir)),
        }

    def _stopped(self, t0: float) -> dict[str, Any]:
        self.on_event("stopped", {"step": self.state.step})
        if self._writer is not None:
            self._writer.flush()
        return {
            "steps": self.state.step,
            "seconds": time.perf_counter() - t0,
            "stopped": True,
            "checkpoint": str(ckpt.latest_checkpoint(self.ckpt_dir)),
        }

    def _maybe_heldout(self) -> dict[str, float] | None:
        if not any(p.target == "transformer" for p in self.cfg.phases[: self.state.phase_index]):
            return None
        return self.heldout_loss()

    def _periodic(self, run: PhaseRun) -> None:
        step, mon = self.state.step, self.cfg.monitor
        heldout = None
        if run.cfg.target == "transformer" and step % mon.heldout_every == 0:
            heldout = self.heldout_loss(run)
            if heldout and self.writer is not None:
                for k, v in heldout.items():
                    self.writer.add_scalar(f"heldout/{k}", v, step)
            self.on_event("heldout", {"step": step, **(heldout or {})})
        if mon.video_every and run.cfg.target == "transformer" and step % mon.video_every == 0:
            self._validation_videos(run)
        if step % self.cfg.checkpoint.every == 0 and self.state.phase_step < run.total_steps:
            if heldout is None and run.cfg.target == "transformer":
                heldout = self.heldout_loss(run)
            self.save(run, heldout=heldout)

    @torch.no_grad()
    def _fit_latent_stats(self, run: PhaseRun) -> None:
        """Per-channel latent mean/std over the phase's clips, so the flow sees unit scale."""
        vae = self.comp.vae
        vae.eval()
        zs = [self._encode_video(px).flatten(1) for px in run.data.pixels[:256]]
        z = torch.cat(zs, dim=1)  # (C, N)
        vae.latents_mean.copy_(z.mean(dim=1))
        vae.latents_std.copy_(z.std(dim=1).clamp_min(1e-4))
        vae.train()

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
            if phase.target == "vae":
                self._fit_latent_stats(run)
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
        """Write the current model as a diffusers-layout folder (LoRA merged in)."""
        from aiprod.training.deploy import export_components

        return export_components(
            self.comp,
            dest,
            mode=self.cfg.mode,
            info={
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


def _half(clip: Clip) -> np.ndarray:
    import cv2

    f, h, w, _ = clip.frames.shape
    return np.stack(
        [cv2.resize(x, (w // 2, h // 2), interpolation=cv2.INTER_AREA) for x in clip.frames]
    )
