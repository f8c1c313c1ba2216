"""Serving overhead: the same generation run directly through the pipeline and through the API.

Direct: load the pipeline once in this process, then for each run generate + write the MP4.
API: a real ``aiprod serve --workers 1`` (fresh data dir, SQLite, loopback): submit
``POST /api/v1/generate``, poll ``GET /api/v1/jobs/{id}`` until it succeeds, download the MP4.
Both use the same model entry, size, steps and seed; runs alternate direct/API so both see the
same machine load, and run 0 of each is an untimed warm-up. Besides the ratio it reports the
serving overhead proper: end-to-end time minus the worker's own measured generation time.

The ratio API/direct (medians) is the price of the queue, the database, the worker hand-off and
HTTP: it is dominated by the poll intervals for tiny jobs and tends to 1 for real ones. The
server it starts has its per-key rate limit raised, since the client polls every 50 ms.

    .venv/bin/python benchmarks/serving_overhead.py                     # builtin, 5 runs
    .venv/bin/python benchmarks/serving_overhead.py --runs 10 --width 256 --height 256 --steps 8

Prints a table and writes JSON (``--json``, default benchmarks/results/serving_overhead.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_direct(args: argparse.Namespace) -> tuple[Any, Any, float]:
    """(pipeline, request, load seconds) for the direct path, in this process."""
    from aiprod import engine
    from aiprod.core.registry import load_registry

    entry = load_registry(args.models_file).get(args.model)
    t0 = time.perf_counter()
    pipe = engine.load_pipeline(entry, device=args.device)
    load_s = time.perf_counter() - t0
    return pipe, engine.build_request(entry, request_params(args)), load_s


def direct_run(pipe: Any, req: Any, path: Path) -> float:
    """Seconds for one generation + MP4 encode."""
    from aiprod.core.media import write_mp4

    t0 = time.perf_counter()
    video = pipe(req)
    write_mp4(path, video.frames, video.fps)
    return time.perf_counter() - t0


def request_params(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "prompt": args.prompt,
        "width": args.width,
        "height": args.height,
        "num_frames": args.frames,
        "num_inference_steps": args.steps,
        "seed": args.seed,
    }


@contextmanager
def api_server(
    args: argparse.Namespace, tmp: Path
) -> Iterator[Callable[[Path], tuple[float, float]]]:
    """Start `aiprod serve --workers 1`; yields run(path) -> (end-to-end seconds for submit ->
    succeeded -> downloaded, the worker's gpu_seconds for that job)."""
    port = free_port()
    env = dict(os.environ)
    env.update(
        AIPROD_DATA_DIR=str(tmp / "data"),
        AIPROD_WORKER_POLL_INTERVAL=str(args.worker_poll),
        # The client polls every 50 ms: raise the per-key limit (the limiter still runs).
        AIPROD_RATE_LIMIT_PER_MINUTE="100000",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    env.pop("AIPROD_DATABASE_URL", None)
    if args.models_file:
        env["AIPROD_MODELS_FILE"] = str(args.models_file)
    if args.device:
        env["AIPROD_DEVICE"] = args.device
    log = (tmp / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "aiprod.cli.main", "serve", "--port", str(port), "--workers", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        cwd=tmp,
    )
    try:
        assert proc.stdout is not None
        key = None
        for raw in proc.stdout:
            line = raw.decode().strip()
            if re.fullmatch(r"aiprod_sk_\S+", line):
                key = line
                break
        if key is None:
            raise SystemExit(f"serve did not print an admin key; see {tmp / 'serve.log'}")
        url = f"http://127.0.0.1:{port}"
        c = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait until the worker has loaded the model
            try:
                ws = c.get("/api/v1/admin/workers").json()["data"]
                if any(w["status"] == "idle" for w in ws):
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        body = {**request_params(args), "model": args.model}

        def run(path: Path) -> tuple[float, float]:
            t0 = time.perf_counter()
            job = c.post("/api/v1/generate", json=body).raise_for_status().json()
            while True:
                j = c.get(f"/api/v1/jobs/{job['id']}").raise_for_status().json()
                if j["status"] in {"succeeded", "failed", "canceled"}:
                    break
                time.sleep(args.client_poll)
            if j["status"] != "succeeded":
                raise SystemExit(f"job failed: {j.get('error')}")
            path.write_bytes(c.get(j["download_url"]).raise_for_status().content)
            return time.perf_counter() - t0, float(j["gpu_seconds"])

        yield run
        c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--model", default=None, help="model id (default: the registry's default)")
    p.add_argument("--models-file", type=Path, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--prompt", default="a red fox running through snow")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--client-poll", type=float, default=0.05, help="client poll interval (s)")
    p.add_argument("--worker-poll", type=float, default=0.1, help="idle worker poll interval (s)")
    p.add_argument(
        "--json", type=Path, default=REPO / "benchmarks" / "results" / "serving_overhead.json"
    )
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from aiprod.core.registry import load_registry

    entry = load_registry(args.models_file).get(args.model)
    args.model = entry.id
    resolved = entry.resolve_request(request_params(args))
    direct: list[float] = []
    api: list[float] = []
    gpu: list[float] = []
    with tempfile.TemporaryDirectory(prefix="aiprod-bench-") as d, api_server(args, Path(d)) as run:
        tmp = Path(d)
        pipe, req, load_s = load_direct(args)
        # Interleaved, so both paths see the same machine load; run 0 warms both up.
        for i in range(args.runs + 1):
            t_direct = direct_run(pipe, req, tmp / f"direct_{i}.mp4")
            t_api, t_gpu = run(tmp / f"api_{i}.mp4")
            if i:
                direct.append(t_direct)
                api.append(t_api)
                gpu.append(t_gpu)
    serving = [a - g for a, g in zip(api, gpu, strict=True)]
    med_d, med_a = statistics.median(direct), statistics.median(api)
    result = {
        "model": entry.id,
        "model_version": entry.version,
        "params": {k: v for k, v in resolved.items() if k != "prompt"},
        "runs": args.runs,
        "direct_s": direct,
        "api_s": api,
        "worker_gpu_seconds": gpu,
        "direct_median_s": med_d,
        "api_median_s": med_a,
        "overhead_median_s": med_a - med_d,
        "serving_overhead_s": serving,  # end to end minus the worker's own generation time
        "serving_overhead_median_s": statistics.median(serving),
        "ratio_api_over_direct": med_a / med_d,
        "model_load_s": load_s,
        "client_poll_s": args.client_poll,
        "worker_poll_s": args.worker_poll,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
    }
    from rich.console import Console
    from rich.table import Table

    t = Table(
        title=f"serving overhead: {entry.id} {resolved['width']}x{resolved['height']}, "
        f"{resolved['num_frames']} frames, {resolved['num_inference_steps']} steps, "
        f"{args.runs} runs"
    )
    for col in ("path", "median s", "min s", "max s"):
        t.add_column(col, justify="right" if col != "path" else "left")
    t.add_row("direct (pipeline + MP4)", f"{med_d:.3f}", f"{min(direct):.3f}", f"{max(direct):.3f}")
    t.add_row("API (submit, poll, download)", f"{med_a:.3f}", f"{min(api):.3f}", f"{max(api):.3f}")
    t.add_row(
        "  of which worker gpu_seconds",
        f"{statistics.median(gpu):.3f}",
        f"{min(gpu):.3f}",
        f"{max(gpu):.3f}",
    )
    t.add_row(
        "  the rest: queue, DB, polls, HTTP",
        f"{statistics.median(serving):.3f}",
        f"{min(serving):.3f}",
        f"{max(serving):.3f}",
    )
    Console().print(t)
    Console().print(
        f"ratio API/direct (medians): {result['ratio_api_over_direct']:.2f}x, "
        f"serving overhead {result['serving_overhead_median_s']:.3f}s per job "
        f"(client poll {args.client_poll}s, worker poll {args.worker_poll}s)"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp_json = args.json.with_suffix(".tmp")
    tmp_json.write_text(json.dumps(result, indent=2))
    tmp_json.replace(args.json)
    Console().print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
