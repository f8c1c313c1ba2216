"""Trainer throughput vs a plain PyTorch loop on the same model and data.

Both sides train the built-in transformer (configs/builtin-step1-scratch.yaml architecture) with the
flow-matching loss on the same cached latents/embeddings (synthetic phase-1 clips), AdamW,
grad clipping, batch size B. "trainer" is ``Trainer.train_step`` + its monitoring
(``Monitor.log_step``: per-sigma-bucket losses, lr, throughput, memory, TensorBoard); "plain" is a
hand-written loop with none of that. Short blocks of steps alternate (plain, trainer,
plain, ...) so a shared machine's load hits both alike; the verdict uses the median of the
per-pair speed ratios.

    .venv/bin/python benchmarks/train_throughput.py --steps 30 --repeats 3 --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "builtin-step1-scratch.yaml")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per side per repeat")
    ap.add_argument("--block", type=int, default=5, help="steps per interleaved block")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--size", type=int, default=64, help="clip width = height")
    ap.add_argument("--frames", type=int, default=25)
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="write results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from aiprod.training.config import load_config
    from aiprod.training.encode import velocity
    from aiprod.training.flow import add_noise, sample_sigmas, velocity_target
    from aiprod.training.trainer import Trainer

    base = load_config(args.config)
    tp = next(p for p in base.phases if p.target == "transformer")
    tmp = Path(tempfile.mkdtemp(prefix="aiprod-bench-"))
    phase = tp.model_copy(
        update={
            "name": "bench",
            "data": tp.data.model_copy(
                update={"synth": tp.data.synth.model_copy(update={"count": args.clips})}
            ),
            "steps": 10**6,
            "batch_size": args.batch_size,
            "buckets": [(args.size, args.size, args.frames)],
            "caption_dropout": 0.0,
            "lr": tp.lr.model_copy(update={"warmup_steps": 0, "schedule": "constant"}),
        }
    )
    cfg = base.model_copy(
        update={
            "output_dir": tmp,
            "device": args.device,
            "phases": [phase],
            "monitor": base.monitor.model_copy(update={"log_every": 10, "video_every": 0}),
        }
    )
    trainer = Trainer(cfg)
    run = trainer._setup_phase(0)
    run.module.train()
    data, dev = run.data, trainer.device

    # The plain loop trains its own copy of the same initial weights on the same batches.
    plain_model = copy.deepcopy(trainer.comp.transformer).train()
    plain_opt = torch.optim.AdamW(plain_model.parameters(), lr=phase.lr.peak, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(0)
    n = len(data.latents)

    def plain_step(i: int) -> None:
        idx = [(i * args.batch_size + k) % n for k in range(args.batch_size)]
        x0 = torch.stack([data.latents[j] for j in idx]).to(dev)
        emb = torch.stack([data.emb[j] for j in idx]).to(dev)
        mask = torch.stack([data.mask[j] for j in idx]).to(dev)
        sig = sample_sigmas(len(idx), cfg.flow, generator=gen).to(dev)
        noise = torch.randn(x0.shape, generator=gen).to(dev)
        v = velocity(
            plain_model, trainer.comp.vae, add_noise(x0, noise, sig), sig, emb, mask, fps=24
        )
        loss = (v - velocity_target(x0, noise)).pow(2).mean()
        plain_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plain_model.parameters(), phase.grad_clip or 1e9)
        plain_opt.step()

    def trainer_step(i: int) -> None:
        loss, extra = trainer.train_step(run)
        trainer.state.step += 1
        trainer.monitor.log_step(run, trainer.state.step, loss, extra)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def block(fn: object, start: int) -> float:
        sync()
        t0 = time.perf_counter()
        for i in range(start, start + args.block):
            fn(i)  # type: ignore[operator]
        sync()
        return time.perf_counter() - t0

    for i in range(args.warmup):
        plain_step(i)
        trainer_step(i)
    # Interleave short blocks (plain, trainer, plain, ...) so that load from other processes
    # on a shared machine hits both sides alike; compare per-pair ratios and totals.
    plain_t: list[float] = []
    ours_t: list[float] = []
    for r in range(args.repeats * max(1, args.steps // args.block)):
        plain_t.append(block(plain_step, r * args.block))
        ours_t.append(block(trainer_step, r * args.block))
    per_block = args.block * args.batch_size
    plain = [per_block / t for t in plain_t]
    ours = [per_block / t for t in ours_t]
    ratios = [p_ / o_ for p_, o_ in zip(plain_t, ours_t, strict=True)]  # = ours/plain speed
    p = len(plain_t) * per_block / sum(plain_t)
    t = len(ours_t) * per_block / sum(ours_t)
    ratio = statistics.median(ratios)
    result = {
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "clip": [args.size, args.size, args.frames],
        "latent_shape": list(data.latents[0].shape),
        "steps": args.steps,
        "repeats": args.repeats,
        "plain_samples_per_s": plain,
        "trainer_samples_per_s": ours,
        "plain_median": p,
        "trainer_median": t,
        "trainer_vs_plain": t / p,
        "within_5_percent": t >= 0.95 * p,
    }
    print(f"{'loop':<10}{'samples/s':>12}{'min block':>12}{'max block':>12}")
    for name, v, blocks in (("plain", p, plain), ("trainer", t, ours)):
        print(f"{name:<10}{v:>12.2f}{min(blocks):>12.2f}{max(blocks):>12.2f}")
    verdict = "within" if ratio >= 0.95 else "NOT within"
    print(
        f"trainer / plain: {t / p:.3f} overall, {ratio:.3f} median of {len(ratios)} "
        f"interleaved block pairs ({verdict} 5 %)"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
