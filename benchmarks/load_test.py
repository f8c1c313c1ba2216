"""Load test: N concurrent clients submitting jobs and polling their status on a real server.

By default it starts its own server on a free loopback port (``aiprod serve --api-processes
4`` with a fresh data dir, SQLite, ``--workers W`` real worker processes running the built-in
model at its smallest size) and runs three phases, 5, 50 and 200 concurrent clients. Each
client loops for the phase's duration: submit a job, poll ``GET /api/v1/jobs/{id}`` every
``--poll-interval`` seconds until the job ends, submit the next. The queue stays full, so the
workers are busy the whole time and the status latencies are measured under that load.

Reported per phase: requests/s, jobs submitted and finished, p50/p95/p99/max latency of the
status calls and of the submits, and errors (any non-2xx answer or transport error, by kind).
These figures are the steady state: the phase's first ``--warmup`` seconds (5 by default), when
every client connects and sends its first submit within one poll interval (200 submits in a
second at 200 clients), are reported apart as its ramp (requests, errors, latencies), the way
load-testing tools keep their ramp-up out of the steady-state figures.

    .venv/bin/python benchmarks/load_test.py                       # 5, 50, 200 clients
    .venv/bin/python benchmarks/load_test.py --clients 5 --duration 10
    .venv/bin/python benchmarks/load_test.py --worker-nice 19 \
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/aiprod_load
    .venv/bin/python benchmarks/load_test.py --url http://host:8000 --api-key aiprod_sk_...
    .venv/bin/python benchmarks/load_test.py --clients 200 --worker-nice 19 --repeat 3

``--repeat N`` runs it all N times, each on a fresh server and database (on PostgreSQL a new
database beside the one named, dropped afterwards), and reports each run and all of them
pooled: on a small shared machine one 20 s run's p99 moves by tens of ms from run to run.

``--worker-nice N`` has the server's workers generate at a lower CPU priority
(``AIPROD_WORKER_NICE``; their database writes keep the normal one): on a CPU-only machine the
built-in model's denoising would otherwise compete with the API for the same cores, which on a
GPU machine it does not. ``--database-url`` points the server it starts
at another database (e.g. an empty PostgreSQL database) instead of a fresh SQLite file.
The results go to ``--out`` (default benchmarks/results/load_test.json) as JSON, with the
machine's 1-minute load average at the start and end of each phase.

The server it starts has its per-key rate limit raised (AIPROD_RATE_LIMIT_PER_MINUTE) because
every simulated client shares one key; the limiter still runs on every request. Only loopback
addresses are used unless ``--url`` says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = {"succeeded", "failed", "canceled", "expired"}
TINY_JOB = {"width": 32, "height": 32, "num_frames": 9, "num_inference_steps": 2, "fps": 8}


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@dataclass
class PhaseResult:
    clients: int
    duration_s: float
    requests: int = 0
    status_calls: int = 0
    submits: int = 0
    jobs_finished: int = 0
    jobs_succeeded: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    requests_per_s: float = 0.0
    status_ms: dict[str, float | None] = field(default_factory=dict)
    submit_ms: dict[str, float | None] = field(default_factory=dict)
    queue_depth_end: int | None = None
    load_avg_1m: tuple[float, float] = (0.0, 0.0)  # machine load at the phase's start and end
    client_cpu_s: float = 0.0  # CPU time the load generator itself used during the phase
    # The phase's first ``warmup_s`` seconds (all clients connecting and submitting their
    # first job), measured but kept apart from the figures above: requests, p50/p95/p99/max.
    warmup_s: float = 0.0
    ramp: dict[str, Any] = field(default_factory=dict)
    # the raw latencies (ms), for pooling repeated runs; not written to the JSON
    samples: dict[str, list[float]] = field(default_factory=dict, repr=False)

    def report(self) -> dict[str, Any]:
        out = asdict(self)
        del out["samples"]
        return out


def _ramp(status: list[float], submit: list[float], errors: int) -> dict[str, Any]:
    return {
        "requests": len(status) + len(submit),
        "errors": errors,
        "status_ms": _summary(status),
        "submit_ms": _summary(submit),
    }


def pooled(runs: list[PhaseResult]) -> PhaseResult:
    """Several runs of one phase as one: counts added, percentiles over all their samples."""
    status = [ms for r in runs for ms in r.samples["status"]]
    submit = [ms for r in runs for ms in r.samples["submit"]]
    ramp_status = [ms for r in runs for ms in r.samples["ramp_status"]]
    ramp_submit = [ms for r in runs for ms in r.samples["ramp_submit"]]
    errors: Counter[str] = Counter()
    for r in runs:
        errors.update(r.error_kinds)
    seconds = sum(r.duration_s for r in runs)
    requests = sum(r.requests for r in runs)
    return PhaseResult(
        clients=runs[0].clients,
        duration_s=round(seconds, 2),
        requests=requests,
        status_calls=len(status),
        submits=sum(r.submits for r in runs),
        jobs_finished=sum(r.jobs_finished for r in runs),
        jobs_succeeded=sum(r.jobs_succeeded for r in runs),
        errors=sum(r.errors for r in runs),
        error_kinds=dict(errors),
        requests_per_s=round(requests / seconds, 1) if seconds else 0.0,
        status_ms=_summary(status),
        submit_ms=_summary(submit),
        queue_depth_end=None,
        load_avg_1m=(min(r.load_avg_1m[0] for r in runs), max(r.load_avg_1m[1] for r in runs)),
        client_cpu_s=round(sum(r.client_cpu_s for r in runs), 2),
        warmup_s=runs[0].warmup_s,
        ramp=_ramp(ramp_status, ramp_submit, sum(r.ramp.get("errors", 0) for r in runs)),
        samples={
            "status": status,
            "submit": submit,
            "ramp_status": ramp_status,
            "ramp_submit": ramp_submit,
        },
    )


def _summary(ms: list[float]) -> dict[str, float | None]:
    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 2)

    return {
        "p50": r(_percentile(ms, 0.50)),
        "p95": r(_percentile(ms, 0.95)),
        "p99": r(_percentile(ms, 0.99)),
        "max": r(max(ms) if ms else None),
    }


class HttpError(Exception):
    """A transport-level failure of the load generator's connection."""


class Conn:
    """One keep-alive HTTP/1.1 connection per simulated client.

    Deliberately minimal (asyncio streams, Content-Length or chunked bodies): a full client
    library costs several times more CPU per request, and on a 2-core machine the load
    generator's own CPU would show up as server latency.
    """

    def __init__(self, host: str, port: int, api_key: str) -> None:
        self.host, self.port = host, port
        self.auth = f"Authorization: Bearer {api_key}\r\n"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: str = ""
    ) -> tuple[int, bytes]:
        for attempt in (0, 1):  # one silent reconnect if the server closed an idle connection
            if self.writer is None:
                try:
                    self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
                except OSError as exc:
                    raise HttpError(f"connect: {exc}") from exc
            assert self.reader is not None and self.writer is not None
            head = (
                f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{self.auth}"
                f"{headers}Content-Length: {len(body)}\r\n"
            )
            if body:
                head += "Content-Type: application/json\r\n"
            try:
                self.writer.write(head.encode() + b"\r\n" + body)
                await self.writer.drain()
                return await self._response()
            except (OSError, asyncio.IncompleteReadError, HttpError) as exc:
                await self.close()
                if attempt:
                    raise HttpError(f"{type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")

    async def _response(self) -> tuple[int, bytes]:
        assert self.reader is not None
        status_line = await self.reader.readline()
        if not status_line:
            raise HttpError("connection closed")
        status = int(status_line.split(b" ", 2)[1])
        length, chunked, close = 0, False, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            elif name == "connection" and "close" in value.lower():
                close = True
        if chunked:
            parts = []
            while True:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readline()
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readline()
            data = b"".join(parts)
        else:
            data = await self.reader.readexactly(length)
        if close:
            await self.close()
        return status, data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
        self.reader = self.writer = None


@dataclass
class Tally:
    """What the clients of a phase record: from ``measure_from`` on, the figures; before it
    (the warm-up), the ``ramp_*`` latencies and error count only."""

    measure_from: float  # time.monotonic()
    status_ms: list[float] = field(default_factory=list)
    submit_ms: list[float] = field(default_factory=list)
    ramp_status_ms: list[float] = field(default_factory=list)
    ramp_submit_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    ramp_errors: int = 0
    counts: Counter[str] = field(default_factory=Counter)

    def latency(self, kind: str, started: float, ms: float) -> None:
        """A request sent at ``started`` (time.monotonic()) took ``ms``."""
        measured = started >= self.measure_from
        if kind == "submit":
            (self.submit_ms if measured else self.ramp_submit_ms).append(ms)
        else:
            (self.status_ms if measured else self.ramp_status_ms).append(ms)
        if measured:
            self.counts["requests"] += 1

    def error(self, kind: str, started: float) -> None:
        if started >= self.measure_from:
            self.errors[kind[:80]] += 1
        else:
            self.ramp_errors += 1

    def count(self, what: str, started: float, n: int = 1) -> None:
        if started >= self.measure_from:
            self.counts[what] += n


async def _client(
    conn: Conn,
    *,
    stop_at: float,
    poll_interval: float,
    job_params: dict[str, Any],
    tally: Tally,
    index: int,
) -> None:
    # Stagger the start so 200 clients do not all submit in the same millisecond.
    await asyncio.sleep((index % 50) * poll_interval / 50)
    body = json.dumps({"prompt": f"load test client {index}", **job_params}).encode()
    try:
        while time.monotonic() < stop_at:
            started, t0 = time.monotonic(), time.perf_counter()
            try:
                code, data = await conn.request(
                    "POST",
                    "/api/v1/generate",
                    body,
                    f"Idempotency-Key: {os.urandom(12).hex()}\r\n",
                )
            except HttpError as exc:
                tally.error(f"submit:{exc}", started)
                await asyncio.sleep(poll_interval)
                continue
            tally.latency("submit", started, (time.perf_counter() - t0) * 1000)
            if code != 202:
                tally.error(f"submit:{code}", started)
                await asyncio.sleep(poll_interval)
                continue
            tally.count("submits", started)
            job_path = f"/api/v1/jobs/{json.loads(data)['id']}"
            while time.monotonic() < stop_at:
                await asyncio.sleep(poll_interval)
                started, t0 = time.monotonic(), time.perf_counter()
                try:
                    code, data = await conn.request("GET", job_path)
                except HttpError as exc:
                    tally.error(f"status:{exc}", started)
                    continue
                tally.latency("status", started, (time.perf_counter() - t0) * 1000)
                if code != 200:
                    tally.error(f"status:{code}", started)
                    continue
                status = json.loads(data)["status"]
                if status in TERMINAL:
                    tally.count("finished", started)
                    tally.count("succeeded", started, status == "succeeded")
                    break
    finally:
        await conn.close()


async def run_phase(
    base_url: str,
    api_key: str,
    *,
    clients: int,
    duration: float,
    poll_interval: float,
    job_params: dict[str, Any],
    warmup: float = 0.0,
) -> PhaseResult:
    """``clients`` clients for ``warmup`` + ``duration`` seconds; the figures are those of the
    last ``duration`` seconds, the warm-up's go to ``ramp``."""
    url = httpx.URL(base_url)
    host, port = url.host, url.port or 80
    start = time.monotonic()
    tally = Tally(measure_from=start + warmup)
    stop_at = tally.measure_from + duration
    load_start = cpu_start = None

    async def start_measuring() -> None:
        nonlocal load_start, cpu_start
        await asyncio.sleep(max(0.0, tally.measure_from - time.monotonic()))
        load_start, cpu_start = os.getloadavg()[0], time.process_time()

    await asyncio.gather(
        start_measuring(),
        *(
            _client(
                Conn(host, port, api_key),
                stop_at=stop_at,
                poll_interval=poll_interval,
                job_params=job_params,
                tally=tally,
                index=i,
            )
            for i in range(clients)
        ),
    )
    elapsed = time.monotonic() - tally.measure_from
    assert load_start is not None and cpu_start is not None
    client_cpu = time.process_time() - cpu_start
    counts, errors = tally.counts, tally.errors
    depth = None
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
            metrics = (await http.get("/metrics")).text
        for line in metrics.splitlines():
            if line.startswith("aiprod_queue_depth "):
                depth = int(float(line.split()[1]))
    except httpx.HTTPError:
        pass
    return PhaseResult(
        clients=clients,
        duration_s=round(elapsed, 2),
        requests=counts["requests"],
        status_calls=len(tally.status_ms),
        submits=counts["submits"],
        jobs_finished=counts["finished"],
        jobs_succeeded=counts["succeeded"],
        errors=sum(errors.values()),
        error_kinds=dict(errors),
        requests_per_s=round(counts["requests"] / elapsed, 1) if elapsed else 0.0,
        status_ms=_summary(tally.status_ms),
        submit_ms=_summary(tally.submit_ms),
        queue_depth_end=depth,
        load_avg_1m=(round(load_start, 2), round(os.getloadavg()[0], 2)),
        client_cpu_s=round(client_cpu, 2),
        warmup_s=warmup,
        ramp=_ramp(tally.ramp_status_ms, tally.ramp_submit_ms, tally.ramp_errors),
        samples={
            "status": tally.status_ms,
            "submit": tally.submit_ms,
            "ramp_status": tally.ramp_status_ms,
            "ramp_submit": tally.ramp_submit_ms,
        },
    )


# --- a server of our own --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _aiprod() -> list[str]:
    exe = shutil.which("aiprod", path=str(Path(sys.executable).parent)) or shutil.which("aiprod")
    return [exe] if exe else [sys.executable, "-m", "aiprod.cli.main"]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


@contextmanager
def fresh_database(url: str | None, run: int | None):  # type: ignore[no-untyped-def]
    """``url`` itself (None: SQLite in the server's data dir), or, for run ``run`` of a
    repeated benchmark on PostgreSQL, a new database beside it (``<name>_run<N>``), dropped
    afterwards: every run starts from an empty queue."""
    if url is None or run is None or not url.startswith("postgres"):
        yield url
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = make_url(url)
    name = f"{base.database}_run{run + 1}"
    admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            c.execute(text(f'CREATE DATABASE "{name}"'))
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _cli(env: dict[str, str], *args: str) -> str:
    """``aiprod ARGS`` for the server being set up -> its stdout; a failure names the command
    and shows what it said (e.g. a --database-url that is not empty: it must be)."""
    out = subprocess.run([*_aiprod(), *args], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        said = (out.stderr or out.stdout).strip().splitlines()[-5:]
        raise SystemExit(
            f"load_test: `aiprod {' '.join(args)}` failed (exit {out.returncode}) while setting "
            "up the server; --database-url must name an empty database (or use --repeat, "
            "which makes fresh ones beside it):\n  " + "\n  ".join(said)
        )
    return out.stdout


@contextmanager
def local_server(  # type: ignore[no-untyped-def]
    *,
    workers: int,
    data_dir: Path,
    log_path: Path,
    database_url: str | None = None,
    worker_nice: int = 0,
    api_processes: int = 1,
):
    """Start ``aiprod serve`` on a free loopback port; yield (base_url, api_key).

    With ``worker_nice`` > 0 its workers generate at that lower CPU priority
    (``AIPROD_WORKER_NICE``; their database writes keep the normal one): on a CPU-only box the
    workers' denoising would otherwise take the CPU that, on a GPU machine, runs on the GPU.
    """
    env = dict(os.environ)
    env.update(
        AIPROD_DATA_DIR=str(data_dir),
        AIPROD_RATE_LIMIT_PER_MINUTE="10000000",
        AIPROD_LOG_FORMAT="json",
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
    )
    env.pop("AIPROD_DATABASE_URL", None)
    env.pop("AIPROD_STORAGE_URL", None)
    if database_url:
        env["AIPROD_DATABASE_URL"] = database_url
    if worker_nice > 0:
        env["AIPROD_WORKER_NICE"] = str(worker_nice)
    _cli(env, "db", "upgrade")
    api_key = _cli(env, "keys", "create", "--name", "load-test").strip().splitlines()[-1].strip()
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    log = log_path.open("w")
    cmd = [*_aiprod(), "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--api-processes", str(api_processes)]
    proc = subprocess.Popen(
        [*cmd, "--workers", str(workers)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}; see {log_path}")
            try:
                if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after 120 s; see {log_path}")
            time.sleep(0.5)
        _warm_up(base_url, api_key)
        yield base_url, api_key
    finally:
        _stop(proc)
        log.close()


def _warm_up(base_url: str, api_key: str, timeout: float = 300) -> None:
    """Run one job to the end, so every phase measures workers that are already loaded."""
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as http:
        job = http.post("/api/v1/generate", json={"prompt": "warm-up", **TINY_JOB})
        job.raise_for_status()
        job_id = job.json()["id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = http.get(f"/api/v1/jobs/{job_id}").json()["status"]
            if status in TERMINAL:
                if status != "succeeded":
                    raise RuntimeError(f"warm-up job ended {status}")
                return
            time.sleep(0.2)
    raise RuntimeError(f"warm-up job not done after {timeout} s")


def _table(results: list[PhaseResult]) -> str:
    head = (
        f"{'clients':>7} {'secs':>5} {'req/s':>7} {'submits':>7} {'done':>5} {'errors':>6}"
        f" {'status p50':>10} {'p95':>7} {'p99':>7} {'max':>7} {'submit p99':>10}"
    )
    lines = [head, "-" * len(head)]

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    for r in results:
        lines.append(
            f"{r.clients:>7} {r.duration_s:>5.0f} {r.requests_per_s:>7.1f} {r.submits:>7}"
            f" {r.jobs_finished:>5} {r.errors:>6} {f(r.status_ms['p50']):>10}"
            f" {f(r.status_ms['p95']):>7} {f(r.status_ms['p99']):>7} {f(r.status_ms['max']):>7}"
            f" {f(r.submit_ms['p99']):>10}"
        )
    lines.append("(latencies in ms, measured by the client over loopback)")
    for r in results:
        if r.warmup_s and r.ramp:
            ramp = r.ramp
            lines.append(
                f"ramp, {r.clients} clients, first {r.warmup_s:g} s (not above): "
                f"{ramp['requests']} requests, {ramp['errors']} errors, "
                f"status p99 {f(ramp['status_ms']['p99'])}, "
                f"submit p50 {f(ramp['submit_ms']['p50'])} p99 {f(ramp['submit_ms']['p99'])}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[5, 50, 200])
    ap.add_argument(
        "--duration", type=float, default=20.0, help="seconds per phase (after its warm-up)"
    )
    ap.add_argument(
        "--warmup",
        type=float,
        default=5.0,
        help="seconds at the start of each phase whose requests are reported apart, as the "
        "ramp (clients connecting and sending their first submits at once), not in the figures",
    )
    ap.add_argument("--poll-interval", type=float, default=1.0, help="seconds between polls")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (own server)")
    ap.add_argument(
        "--api-processes",
        type=int,
        default=4,
        help="own server: API processes (`aiprod serve --api-processes`; 4 = two per core here)",
    )
    ap.add_argument(
        "--worker-nice",
        type=int,
        default=0,
        help="own server: the workers generate at this nice level (AIPROD_WORKER_NICE; "
        "CPU-only box: keep the API's CPU)",
    )
    ap.add_argument("--url", help="use this running server instead of starting one")
    ap.add_argument(
        "--database-url", help="own server: this database (default: SQLite in a temp dir)"
    )
    ap.add_argument("--api-key", default=os.environ.get("AIPROD_API_KEY"))
    ap.add_argument("--server-log", type=Path, help="own server: keep its log here")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="own server: run everything N times, each on a fresh server and database, and "
        "report each run and the runs pooled (percentiles over all their samples)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "load_test.json")
    args = ap.parse_args(argv)
    # SIGTERM (e.g. `timeout`) unwinds normally, so the server and workers it started stop too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.url and not args.api_key:
        ap.error("--url needs --api-key (or AIPROD_API_KEY)")
    if args.url and args.repeat != 1:
        ap.error("--repeat needs the benchmark's own server (no --url)")
    if args.url and not args.url.startswith("http://"):
        ap.error("--url must be http://HOST:PORT (the load generator speaks plain HTTP/1.1)")
    try:  # a faster event loop keeps the generator's own CPU out of the figures
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass

    def phases(base_url: str, api_key: str) -> list[PhaseResult]:
        results = []
        for n in args.clients:
            r = asyncio.run(
                run_phase(
                    base_url,
                    api_key,
                    clients=n,
                    duration=args.duration,
                    warmup=args.warmup,
                    poll_interval=args.poll_interval,
                    job_params=TINY_JOB,
                )
            )
            print(f"  {n} clients: {r.requests} requests, {r.errors} errors", flush=True)
            results.append(r)
        return results

    runs: list[list[PhaseResult]] = []
    if args.url:
        runs.append(phases(args.url, args.api_key))
    for i in range(args.repeat if not args.url else 0):
        if args.repeat > 1:
            print(f"run {i + 1} of {args.repeat}", flush=True)
        with tempfile.TemporaryDirectory(prefix="aiprod-load-") as tmp:
            log_path = args.server_log or Path(tmp) / "server.log"
            with (
                fresh_database(args.database_url, i if args.repeat > 1 else None) as db_url,
                local_server(
                    workers=args.workers,
                    data_dir=Path(tmp),
                    log_path=log_path,
                    database_url=db_url,
                    worker_nice=args.worker_nice,
                    api_processes=args.api_processes,
                ) as (url, key),
            ):
                runs.append(phases(url, key))
    results = [pooled([run[k] for run in runs]) for k in range(len(args.clients))]
    if len(runs) > 1:
        for i, run in enumerate(runs, 1):
            print(f"run {i}:\n{_table(run)}")
        print(f"{len(runs)} runs pooled:")
    print(_table(results))
    report = {
        "benchmark": "load_test",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "server": args.url
        or f"own (aiprod serve --workers {args.workers} --api-processes {args.api_processes}, "
        f"{'PostgreSQL' if (args.database_url or '').startswith('postgres') else 'SQLite'})",
        "worker_nice": args.worker_nice,
        "poll_interval_s": args.poll_interval,
        "job": TINY_JOB,
        "repeat": len(runs),
        # each phase over all runs (with one run: that run)
        "phases": [r.report() for r in results],
        "runs": [[r.report() for r in run] for run in runs],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp_out, args.out)
    print(f"wrote {args.out}")
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
