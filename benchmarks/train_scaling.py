"""Trainer throughput under 1, 2, ... processes (DDP through ``accelerate``, or the
denoiser sharded with FSDP2 under ``--strategy fsdp``; gloo on CPU).

Each process count trains the same denoiser phase (the built-in transformer of
configs/builtin-step1-scratch.yaml on synthetic phase-1 clips) with the same global batch B,
the ranks sharing it (``training.distributed``); the machine's threads are split across the
ranks (``--threads`` in all), so the figures compare the same hardware used by 1 or N
processes. Reported: samples/s of the global batch over the timed steps (rank 0's clock,
between barriers), and the speed-up over the first count.

    .venv/bin/python benchmarks/train_scaling.py --processes 1 2 --json out.json
    .venv/bin/python benchmarks/train_scaling.py --processes 1 2 --strategy ddp fsdp

(FSDP in one process shards nothing: that row would repeat DDP's and is left out.)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def _config(args: argparse.Namespace, out: Path, threads: int, strategy: str) -> Any:
    from aiprod.training.config import DistributedConfig, load_config

    base = load_config(args.config)
    tp = next(p for p in base.phases if p.target == "transformer")
    synth = tp.data.synth.model_copy(update={"count": args.clips})  # type: ignore[union-attr]
    phase = tp.model_copy(
        update={
            "name": "bench",
            "data": tp.data.model_copy(update={"synth": synth}),
            "steps": 10**6,
            "batch_size": args.batch_size,
            "buckets": [(args.size, args.size, args.frames)],
            "lr": tp.lr.model_copy(update={"warmup_steps": 0, "schedule": "constant"}),
            "ema_decay": None,
        }
    )
    monitor = base.monitor.model_copy(update={"tensorboard": False, "video_every": 0})
    return base.model_copy(
        update={
            "output_dir": out,
            "device": "cpu",
            "num_threads": threads,
            "phases": [phase],
            "monitor": monitor,
            "distributed": DistributedConfig(strategy=strategy),  # type: ignore[arg-type]
        }
    )


def _worker(
    rank: int, world: int, port: int, args: argparse.Namespace, out: str, strategy: str
) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS=str(max(1, args.threads // world)),
    )
    from aiprod.training.distributed import barrier
    from aiprod.training.trainer import Trainer

    threads = max(1, args.threads // world)
    trainer = Trainer(_config(args, Path(out), threads, strategy))
    run = trainer._setup_phase(0)
    run.module.train()
    for _ in range(args.warmup):
        trainer.train_step(run)
    barrier(trainer.ranks)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step(run)
    barrier(trainer.ranks)
    seconds = time.perf_counter() - t0
    if trainer.ranks.main:
        result = {"seconds": seconds, "samples_per_s": args.steps * args.batch_size / seconds}
        result["threads_per_process"] = threads
        (Path(out) / "result.json").write_text(json.dumps(result))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "builtin-step1-scratch.yaml")
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per process count")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8, help="global batch")
    ap.add_argument("--size", type=int, default=32, help="clip width = height")
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--strategy", nargs="+", choices=["ddp", "fsdp"], default=["ddp"])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="in all")
    ap.add_argument("--json", type=Path, default=None, help="write results here")
    args = ap.parse_args()

    import torch.multiprocessing as mp

    rows: list[dict[str, Any]] = []
    for strategy in args.strategy:
        for n in args.processes:
            if strategy == "fsdp" and n == 1:
                continue
            out = Path(tempfile.mkdtemp(prefix=f"aiprod-scaling-{strategy}-{n}-"))
            spawn_args = (n, _free_port(), args, str(out), strategy)
            mp.spawn(_worker, args=spawn_args, nprocs=n, join=True)
            result = json.loads((out / "result.json").read_text())
            rows.append({"strategy": strategy, "processes": n, **result})
    base = rows[0]["samples_per_s"]
    print(f"{'strategy':>9}{'processes':>10}{'threads/proc':>14}{'samples/s':>12}{'speed-up':>10}")
    for r in rows:
        r["speedup"] = r["samples_per_s"] / base
        print(
            f"{r['strategy']:>9}{r['processes']:>10}{r['threads_per_process']:>14}"
            f"{r['samples_per_s']:>12.2f}{r['speedup']:>10.2f}"
        )
    result = {
        "device": "cpu",
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "batch_size": args.batch_size,
        "clip": [args.size, args.size, args.frames],
        "steps": args.steps,
        "load_average_at_end": os.getloadavg(),  # other work on the machine skews the figures
        "rows": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
