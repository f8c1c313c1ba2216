"""Data pipeline benchmark: validate+normalize clips/s vs the plain ffmpeg command line, and
CurriculumVideoDataset load time per clip.

What is compared (same clips, same parallelism, same settings):

- aiprod: ``aiprod.data.validate.validate`` (probe, packet count, decode of every frame as
  small luma for black/frozen/motion) then ``aiprod.data.normalize.normalize`` (24 fps, short
  side 256, H.264 yuv420p, preset veryfast, tune fastdecode, crf 18) over a process pool of
  ``-j`` workers.
- ffmpeg CLI: per clip ``ffprobe`` (streams/format as JSON), ``ffmpeg -f null`` with
  ``blackdetect`` + ``freezedetect`` (full decode, the same black/frozen checks) and
  ``ffmpeg -vf fps=24,scale=-2:256:flags=area -c:v libx264 -preset veryfast -tune fastdecode
  -crf 18 -pix_fmt yuv420p``, with ``-j`` clips in flight at once.

The loader figures: ms per ``dataset[i]`` (single process, no DataLoader workers) for the
normalized clips, for 64x64 synthetic clips (the built-in model's training size) and for the
latent-cache hit path.

ffmpeg is a benchmark-only dependency (``apt-get install -y ffmpeg``); without it the ffmpeg
rows are reported as absent and the rest still runs.

    .venv/bin/python benchmarks/data_pipeline.py                  # 12 clips, 640x360 @30 fps, 3 s
    .venv/bin/python benchmarks/data_pipeline.py --clips 24 -j 1 -j 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def _cpu_s() -> float:
    """CPU seconds used so far by this process and its reaped children (all threads)."""
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _make_sources(folder: Path, *, n: int, width: int, height: int, fps: float, seconds: float):
    from aiprod.builtin import grammar, render
    from aiprod.core.media import write_mp4

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        params = grammar.sample_params(1 + i % 4, rng)
        frames = render.render(
            params, width=width, height=height, num_frames=int(round(seconds * fps)), seed=i
        )
        paths.append(write_mp4(folder / f"src{i:03d}.mp4", frames, fps, crf=20, preset="veryfast"))
    return paths


def _aiprod_run(paths: list[Path], out: Path, workers: int) -> tuple[float, float, int]:
    from aiprod.data.config import NormalizeConfig, ValidateConfig
    from aiprod.data.ingest import ingest
    from aiprod.data.manifest import write_manifest
    from aiprod.data.normalize import normalize
    from aiprod.data.validate import validate

    recs = ingest(paths, out)
    t0, c0 = time.perf_counter(), _cpu_s()
    recs = validate(recs, ValidateConfig(), workers=workers)
    recs = normalize(recs, NormalizeConfig(short_side=256, preset="veryfast"), out, workers=workers)
    elapsed, cpu = time.perf_counter() - t0, _cpu_s() - c0
    ok = sum(r.status == "accepted" for r in recs)
    for r in recs:
        if r.status != "accepted":
            print(f"  rejected {r.path}: {r.reject_reason}", file=sys.stderr)
    write_manifest([r for r in recs if r.status == "accepted"], out)
    return elapsed, cpu, ok


def _ffmpeg_one(src: Path, dst: Path) -> None:
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(src)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    json.loads(probe.stdout)
    subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-i", str(src), "-an", "-vf",
         "scale=64:-2,blackdetect=d=0:pix_th=0.1,freezedetect=n=0.003:d=0.5",
         "-f", "null", "-"],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-y", "-i", str(src), "-an",
         "-vf", "fps=24,scale=-2:256:flags=area", "-c:v", "libx264", "-preset", "veryfast",
         "-tune", "fastdecode",
         "-crf", "18", "-pix_fmt", "yuv420p", str(dst)],
        check=True, capture_output=True,
    )  # fmt: skip


def _ffmpeg_run(paths: list[Path], out: Path, workers: int) -> tuple[float, float]:
    out.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), _cpu_s()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda p: _ffmpeg_one(p, out / p.name), paths))
    return time.perf_counter() - t0, _cpu_s() - c0


def _compare_outputs(aiprod_dir: Path, ffmpeg_dir: Path) -> dict:
    """Check both tools produced the same kind of output (size, fps, frame count, codec)."""
    from aiprod.core.media import probe
    from aiprod.data.manifest import read_manifest

    same, diffs = 0, []
    for rec in read_manifest(aiprod_dir):
        src_name = Path(str(rec.checks.get("source_path", ""))).name
        a, b = probe(rec.path), probe(ffmpeg_dir / src_name)
        key_a = (a.width, a.height, round(a.fps, 3), a.num_frames, a.codec)
        key_b = (b.width, b.height, round(b.fps, 3), b.num_frames, b.codec)
        if key_a == key_b:
            same += 1
        else:
            diffs.append({"clip": src_name, "aiprod": key_a, "ffmpeg": key_b})
    return {"same_size_fps_frames_codec": same, "differ": diffs}


def _time_items(ds, passes: int) -> dict[str, float]:
    for i in range(min(2, len(ds))):  # warm-up: imports, codec init
        ds[i]
    times, cpu = [], []
    for _ in range(passes):
        for i in range(len(ds)):
            t0, c0 = time.perf_counter(), time.process_time()
            ds[i]
            times.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.process_time() - c0) * 1000)
    return {
        "median_ms": round(statistics.median(times), 2),
        "mean_ms": round(statistics.fmean(times), 2),
        "median_cpu_ms": round(statistics.median(cpu), 2),
        "items": len(times),
    }


def _loader_rows(normalized_manifest: Path, tmp: Path, passes: int) -> list[dict]:
    import torch

    from aiprod.builtin import synth
    from aiprod.data.dataset import CurriculumVideoDataset

    class PoolVAE(torch.nn.Module):
        name, version = "avgpool8", "1"

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.avg_pool3d(x, (1, 8, 8))

    small = synth.write_synth_dataset(
        tmp / "synth64", n_per_phase=8, width=64, height=64, num_frames=16, fps=24, seed=0
    )
    from aiprod.data.manifest import read_manifest

    torch.set_num_threads(1)  # as in a DataLoader worker
    n_src = read_manifest(normalized_manifest)[0].num_frames
    cases = [
        (f"normalized 256p, 16 of {n_src} frames, uniform",
         CurriculumVideoDataset(normalized_manifest, num_frames=16)),
        ("normalized 256p -> bucket 224x128x16, stride 2",
         CurriculumVideoDataset(normalized_manifest, buckets=[(224, 128, 16)],
                                sampling="stride", stride=2)),
        ("synth 64x64, 16 frames, uniform", CurriculumVideoDataset(small, num_frames=16)),
    ]  # fmt: skip
    cached = CurriculumVideoDataset(
        normalized_manifest, num_frames=16, cache_dir=tmp / "cache", vae_encoder=PoolVAE()
    )
    cached.fill_cache()
    cases.append(("normalized 256p, VAE latents from the cache", cached))
    rows = []
    for name, ds in cases:
        rows.append({"case": name, "clips": len(ds), **_time_items(ds, passes)})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--clips", type=int, default=12)
    ap.add_argument("--size", default="640x360", help="source WxH")
    ap.add_argument("--fps", type=float, default=30.0, help="source frame rate")
    ap.add_argument("--seconds", type=float, default=3.0, help="source clip length")
    ap.add_argument(
        "-j", "--workers", type=int, action="append", help="repeatable; default 1 and all cores"
    )
    ap.add_argument("--passes", type=int, default=3, help="loader passes over each dataset")
    ap.add_argument("--json", default="benchmarks/results/data_pipeline.json")
    args = ap.parse_args(argv)

    from aiprod.data.parallel import default_workers

    workers = args.workers or sorted({1, default_workers()})
    w, h = (int(v) for v in args.size.lower().split("x"))
    has_ffmpeg = shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None
    if not has_ffmpeg:
        print("NOTE: ffmpeg/ffprobe not found on PATH: the ffmpeg CLI rows are skipped "
              "(install with `apt-get install -y ffmpeg`; benchmark-only dependency)",
              file=sys.stderr)  # fmt: skip
    result: dict = {
        "machine": {
            "platform": platform.platform(),
            "cores": os.cpu_count(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "ffmpeg": _ffmpeg_version() if has_ffmpeg else None,
        },
        "sources": {"clips": args.clips, "size": f"{w}x{h}", "fps": args.fps,
                    "seconds": args.seconds},
        "pipeline": [],
        "loader": [],
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="aiprod-bench-data-") as tmpdir:
        tmp = Path(tmpdir)
        t0 = time.perf_counter()
        paths = _make_sources(tmp / "src", n=args.clips, width=w, height=h, fps=args.fps,
                              seconds=args.seconds)  # fmt: skip
        print(f"made {len(paths)} source clips in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        normalized = None
        for j in workers:
            # Interleave the two tools so that load from other jobs hits both alike.
            elapsed, cpu, ok = _aiprod_run(paths, tmp / f"aiprod-j{j}", j)
            normalized = normalized or tmp / f"aiprod-j{j}"
            row = {
                "workers": j,
                "aiprod_s": round(elapsed, 3),
                "aiprod_clips_per_s": round(len(paths) / elapsed, 3),
                "aiprod_cpu_s_per_clip": round(cpu / len(paths), 3),
                "accepted": ok,
            }
            if has_ffmpeg:
                fe, fcpu = _ffmpeg_run(paths, tmp / f"ffmpeg-j{j}", j)
                row.update(ffmpeg_s=round(fe, 3), ffmpeg_clips_per_s=round(len(paths) / fe, 3),
                           ffmpeg_cpu_s_per_clip=round(fcpu / len(paths), 3),
                           aiprod_vs_ffmpeg=round(fe / elapsed, 3))  # fmt: skip
            if has_ffmpeg:
                row["outputs"] = _compare_outputs(tmp / f"aiprod-j{j}", tmp / f"ffmpeg-j{j}")
            result["pipeline"].append(row)
        if normalized is not None:
            result["loader"] = _loader_rows(normalized, tmp, args.passes)
    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]

    print(f"\nvalidate+normalize: {args.clips} clips {w}x{h} @{args.fps:g} fps, {args.seconds:g}s "
          f"-> 24 fps, short side 256")  # fmt: skip
    print(
        f"{'workers':>7} | {'aiprod clips/s':>14} | {'ffmpeg CLI clips/s':>18} | {'ratio':>6} | "
        f"{'aiprod CPU s/clip':>17} | {'ffmpeg CPU s/clip':>17}"
    )
    for r in result["pipeline"]:
        ff = f"{r['ffmpeg_clips_per_s']:.2f}" if "ffmpeg_clips_per_s" in r else "absent"
        ratio = f"{r['aiprod_vs_ffmpeg']:.2f}" if "aiprod_vs_ffmpeg" in r else "-"
        fcpu = f"{r['ffmpeg_cpu_s_per_clip']:.3f}" if "ffmpeg_cpu_s_per_clip" in r else "-"
        print(
            f"{r['workers']:>7} | {r['aiprod_clips_per_s']:>14.2f} | {ff:>18} | {ratio:>6} | "
            f"{r['aiprod_cpu_s_per_clip']:>17.3f} | {fcpu:>17}"
        )
    print("\nCurriculumVideoDataset, one process, per item (wall ms; CPU ms of this process)")
    print(f"{'case':<52} | {'median':>7} | {'mean':>7} | {'CPU':>7}")
    for r in result["loader"]:
        print(
            f"{r['case']:<52} | {r['median_ms']:>7.2f} | {r['mean_ms']:>7.2f} | "
            f"{r['median_cpu_ms']:>7.2f}"
        )
    print(f"\nload average start {result['machine']['loadavg_start']} "
          f"end {result['machine']['loadavg_end']}")  # fmt: skip
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


def _ffmpeg_version() -> str:
    res = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True)
    return res.stdout.splitlines()[0] if res.stdout else "unknown"


if __name__ == "__main__":
    sys.exit(main())
