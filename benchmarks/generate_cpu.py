"""Default generation, stage by stage, on this machine's CPU (what `aiprod generate` runs).

Loads a registry entry (the default one: the built-in model) once, runs one warm-up, then
``--runs`` generations with the entry's served defaults (the same prompt, seeds 1, 2, ...)
and reports, per run and as medians: text encoding, stage 1, upsampler, stage 2 (refinement),
VAE decode, the pipeline call in all, and the MP4 write; the warm-up's figures apart, since
`aiprod generate` makes exactly one such first call per process. The JSON names the CPU
(model, the vector extensions PyTorch can use, threads), because the same model runs several
times faster on a CPU with AVX-512 / AMX than on an AVX2-only one, and the target (issue 5: at
most 10 s per clip on the 2-core CPU) is only comparable on the same kind of CPU.

    .venv/bin/python benchmarks/generate_cpu.py                     # built-in model, 3 runs
    .venv/bin/python benchmarks/generate_cpu.py --runs 5 --json benchmarks/results/x.json

Prints a table and writes JSON (``--json``, default benchmarks/results/generate_cpu.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STAGES = ("text_encode_s", "stage1_s", "upsample_s", "stage2_s", "decode_s")
# /proc/cpuinfo flags that decide how fast the CPU kernels (GEMM, attention) run.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="registry id (default: the default entry)")
    p.add_argument("--models-file", type=Path, default=None, help="models.toml to read")
    p.add_argument("--prompt", default="a red circle moving right on a black background")
    p.add_argument("--runs", type=int, default=3, help="timed runs after one warm-up")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--json", type=Path, default=REPO / "benchmarks" / "results" / "generate_cpu.json"
    )
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error(f"--runs {args.runs}: give 1 or more")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads {args.threads}: give 1 or more")
    return args


def cpu_info() -> dict[str, Any]:
    """The CPU's model name and which of ``ISA_FLAGS`` it has (Linux /proc/cpuinfo; else none)."""
    import torch

    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return {
        "model": model,
        "cpus": os.cpu_count(),
        "isa": [f for f in ISA_FLAGS if f in flags],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from aiprod import engine
    from aiprod.core.media import write_mp4
    from aiprod.core.registry import load_registry

    if args.threads:
        torch.set_num_threads(args.threads)
    reg = load_registry(args.models_file)
    entry = reg.get(args.model) if args.model else reg.default_entry
    t0 = time.perf_counter()
    pipe = engine.load_pipeline(entry, "cpu")
    load_s = time.perf_counter() - t0
    runs: list[dict[str, float]] = []  # runs[0] is the warm-up (a fresh process's first call)
    with tempfile.TemporaryDirectory(prefix="aiprod-bench-") as d:
        for i in range(args.runs + 1):  # run 0 warms up
            req = engine.build_request(entry, {"prompt": args.prompt, "seed": i})
            t0 = time.perf_counter()
            video = pipe(req)
            t1 = time.perf_counter()
            write_mp4(Path(d) / f"{i}.mp4", video.frames, video.fps)
            t2 = time.perf_counter()
            row = {k: float(video.info.get(k, 0.0)) for k in STAGES}
            runs.append({**row, "pipeline_s": t1 - t0, "mp4_s": t2 - t1, "total_s": t2 - t0})
    warmup, runs = runs[0], runs[1:]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    result = {
        "model": entry.id,
        "model_version": entry.version,
        "request": {
            "width": req.width,
            "height": req.height,
            "num_frames": req.num_frames,
            "fps": req.fps,
            "steps": req.num_inference_steps,
            "guidance_scale": req.guidance_scale,
            "two_stage": req.two_stage,
            "refine_steps": entry.options.refine_steps,
            # stage-1 drafts ranked by the prompt verifier (1: none)
            "candidates": int(video.info.get("candidates", 1)),
        },
        "runs": runs,
        "median": med,
        # What `aiprod generate` pays: one call in a fresh process, one-off set-up included.
        "first_call": warmup,
        "model_load_s": load_s,
        "machine": {**cpu_info(), "platform": platform.platform(), "torch": torch.__version__},
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    from rich.console import Console
    from rich.table import Table

    c = Console()
    t = Table(
        title=f"{entry.id} ({entry.version}) {req.width}x{req.height}x{req.num_frames}, "
        f"{req.num_inference_steps} steps, two-stage={req.two_stage}, {args.runs} runs; "
        f"{result['machine']['model']}, {torch.get_num_threads()} threads, "
        f"{' '.join(result['machine']['isa']) or 'no AVX2'}"
    )
    t.add_column("part")
    for col in ("median s", "min s", "max s"):
        t.add_column(col, justify="right")
    for k in (*STAGES, "pipeline_s", "mp4_s", "total_s"):
        vals = [r[k] for r in runs]
        t.add_row(k.removesuffix("_s"), f"{med[k]:.3f}", f"{min(vals):.3f}", f"{max(vals):.3f}")
    c.print(t)
    c.print(f"first call (the warm-up, as `aiprod generate` runs it): {warmup['total_s']:.3f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(args.json)
    c.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
