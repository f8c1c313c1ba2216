"""Shared pieces of the fault suite (issue 32): an API process that can be SIGKILLed and
restarted on its port, `aiprod worker` processes, client threads that record every answer,
and a throwaway PostgreSQL the suite starts itself.

Short form (CI): each test runs a few seconds to ~45 s. AIPROD_FAULTS_LONG=1 runs the long
form (minutes of load and soak); see docs/TROUBLESHOOTING.md ("Fault suite")."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.service.harness import (
    Stack,
    _die_with_parent,
    aiprod_cmd,
    free_port,
    wait_for,
)

LONG = os.environ.get("AIPROD_FAULTS_LONG") == "1"
TERMINAL = {"succeeded", "failed", "canceled"}


def seconds(short: float, long: float) -> float:
    return long if LONG else short


def kill_api(stack: Stack) -> None:
    """SIGKILL the `aiprod serve --workers 0` process (uvicorn runs in it)."""
    stack.proc.send_signal(signal.SIGKILL)
    stack.proc.wait()


def restart_api(stack: Stack) -> None:
    """Start `aiprod serve` again on the same port, data and database (no banner key now:
    the admin key exists) and wait until it answers /readyz."""
    stack.proc = subprocess.Popen(
        aiprod_cmd("serve", "--port", str(stack.port), "--workers", "0"),
        env=stack.env,
        stdout=subprocess.DEVNULL,
        stderr=stack.log,
        cwd=stack.tmp,
        preexec_fn=_die_with_parent,
        start_new_session=True,
    )

    def ready() -> bool:
        if stack.proc.poll() is not None:
            raise AssertionError(f"serve exited on restart:\n{stack.logs()}")
        try:
            return httpx.get(f"{stack.url}/readyz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(ready, 180, 0.2, "the restarted API")


@dataclass
class Record:
    """What the client threads saw."""

    accepted: list[str] = field(default_factory=list)  # job ids answered 202
    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: int = 0
    bad: list[str] = field(default_factory=list)  # 5xx (other than allowed) or malformed
    lock: threading.Lock = field(default_factory=threading.Lock)

    def saw(self, resp: httpx.Response, allowed_5xx: frozenset[int] = frozenset()) -> None:
        with self.lock:
            self.statuses[resp.status_code] += 1
            if resp.status_code >= 500 and (
                resp.status_code not in allowed_5xx or "Retry-After" not in resp.headers
            ):
                self.bad.append(
                    f"{resp.request.method} {resp.request.url.path}: "
                    f"{resp.status_code} {resp.text[:200]}"
                )


def run_threads(n: int, target: Callable[[int], None]) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    return threads


def join(threads: list[threading.Thread], timeout: float = 120) -> None:
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "a client thread hung"


def wait_terminal(c: httpx.Client, ids: list[str], timeout: float) -> dict[str, dict]:
    """Poll every job until it is terminal; returns id -> job."""
    done: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for job_id in [i for i in ids if i not in done]:
            j = c.get(f"/api/v1/jobs/{job_id}").json()
            if j["status"] in TERMINAL:
                done[job_id] = j
        if len(done) == len(ids):
            return done
        time.sleep(0.5)
    missing = {i for i in ids if i not in done}
    raise AssertionError(f"{len(missing)} of {len(ids)} jobs not terminal after {timeout}s")


def completions(worker_logs: str, job_id: str) -> int:
    return worker_logs.count(f"job {job_id} succeeded in ")


# --- a PostgreSQL of its own --------------------------------------------------------------


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


class OwnPostgres:
    """initdb + pg_ctl into a temp dir on a free loopback port (as `postgres` when root:
    PostgreSQL refuses to run as root). Never touches any other server."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="aiprod-faults-pg-"))
        self.data = self.dir / "data"
        self.as_root = os.geteuid() == 0
        if self.as_root:
            os.chmod(self.dir, 0o755)
            shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bindir / tool), *args]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise AssertionError(f"{tool} failed: {res.stdout}\n{res.stderr}")

    def start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c max_connections=200"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            opts,
            "-l",
            str(self.dir / "pg.log"),
            "-w",
            "-t",
            "120",
            "start",
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "120", "stop")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def own_postgres(bindir: Path) -> Iterator[OwnPostgres]:
    pg = OwnPostgres(bindir)
    try:
        pg.start()
        yield pg
    finally:
        pg.close()
