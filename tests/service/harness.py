"""Shared test harness for the service, worker, db and cli tests.

- ``pg_server_url``: the PostgreSQL server (AIPROD_TEST_POSTGRES_URL); unreachable = FAIL, never
  skip. ``fresh_pg_database()`` creates a uniquely named database and drops it afterwards, so
  parallel runs (xdist workers, several checkouts) never collide.
- ``write_models_toml``: the tiny builtin model (32x32, 9 frames, 2 steps) for fast jobs.
- ``Stack``: a real ``aiprod serve`` (uvicorn on a free loopback port + worker subprocesses),
  with its admin key parsed from the banner.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

MODELS_TOML = """
default = "builtin"

[[models]]
id = "builtin"
family = "builtin"
version = "builtin-test"
dtype = "float32"
price_per_gpu_second = 0.01

[models.limits]
max_width = 64
max_height = 64
max_frames = 17
max_steps = 400

[models.defaults]
width = 32
height = 32
num_frames = 9
fps = 8
num_inference_steps = 2
guidance_scale = 3.0
two_stage = false

[models.options]
tiny_seed = 0  # the tiny random built-in model
"""


def write_models_toml(folder: Path, text: str = MODELS_TOML) -> Path:
    path = folder / "models.toml"
    path.write_text(text)
    return path


def pg_server_url() -> str:
    return os.environ.get("AIPROD_TEST_POSTGRES_URL", DEFAULT_PG)


@contextlib.contextmanager
def fresh_pg_database(tag: str = "t") -> Iterator[str]:
    """Create ``aiprod_<tag>_<worker>_<random>`` on the test server; drop it afterwards."""
    base = make_url(pg_server_url())
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    name = f"aiprod_{tag}_{worker}_{uuid.uuid4().hex[:8]}".lower()
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # never skip silently: PostgreSQL is part of "done"
        admin.dispose()
        pytest.fail(
            f"PostgreSQL at {base.render_as_string(hide_password=True)} is unreachable ({exc}); "
            "start it (.ci/run does) or set AIPROD_TEST_POSTGRES_URL"
        )
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def sqlite_settings(tmp_path: Path, **settings: Any) -> Any:
    """Settings for a fresh, migrated SQLite file in ``tmp_path`` with the tiny built-in model
    and a fixed secret; ``settings``: other Settings fields to set."""
    from aiprod.core.settings import Settings
    from aiprod.db.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'aiprod.db'}"
    upgrade(url)
    return Settings(
        data_dir=tmp_path,
        models_file=write_models_toml(tmp_path),
        database_url=url,
        secret_key="s" * 32,
        **settings,
    )


@contextlib.contextmanager
def local_worker(tmp_path: Path, **settings: Any) -> Iterator[Any]:
    """An in-process ``Worker`` (no webhooks, nothing preloaded) on ``sqlite_settings``."""
    from aiprod.worker.runner import Worker

    worker = Worker(sqlite_settings(tmp_path, **settings), webhooks=False, preload=False)
    try:
        yield worker
    finally:
        worker.priorities.shutdown()
        worker.engine.dispose()


def queue_job(worker: Any, body: Any) -> Any:
    """Queue one job (``body``: a GenerateBody) for ``worker``'s database, under a new key."""
    from aiprod.db.session import session_scope
    from aiprod.jobs.submit import Submitter, submit_job
    from aiprod.service.keys import create_key

    with session_scope(worker.sessions) as s:
        key, _ = create_key(s, secret=worker.settings.resolved_secret_key(), name="t")
        return submit_job(
            s,
            submitter=Submitter(key.id),
            body=body,
            registry=worker.registry,
            storage=worker.storage,
            settings=worker.settings,
        ).job


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stack_env(data_dir: Path, database_url: str, models_file: Path, **extra: Any) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        AIPROD_DATA_DIR=str(data_dir),
        AIPROD_DATABASE_URL=database_url,
        AIPROD_MODELS_FILE=str(models_file),
        AIPROD_LEASE_SECONDS="2",
        AIPROD_HEARTBEAT_INTERVAL="0.3",
        AIPROD_WORKER_POLL_INTERVAL="0.05",
        AIPROD_REAPER_INTERVAL="0.5",
        AIPROD_RETRY_BACKOFF_SECONDS="0.2",
        AIPROD_WEBHOOK_TIMEOUT="2",
        AIPROD_WEBHOOK_BACKOFF_SECONDS="0.5",
        AIPROD_WEBHOOK_POLL_INTERVAL="0.1",
        AIPROD_WEBHOOK_ALLOW_NETWORKS="127.0.0.0/8",  # the tests' receivers are on loopback
        AIPROD_RATE_LIMIT_PER_MINUTE="100000",  # tests poll fast; the 429 test sets its own
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    env.pop("AIPROD_SECRET_KEY", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _die_with_parent() -> None:
    """SIGTERM the server if the test process dies (killed by a timeout, Ctrl-C twice, ...)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def aiprod_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "aiprod.cli.main", *args]


class Stack:
    """``aiprod serve --workers N`` on a free port; ``client(key)`` talks to it."""

    def __init__(
        self,
        tmp: Path,
        database_url: str,
        *,
        workers: int = 1,
        api_processes: int = 1,
        models_toml: str = MODELS_TOML,
        **settings: Any,
    ) -> None:
        self.tmp = tmp
        self.data_dir = tmp / "data"
        self.models_file = write_models_toml(tmp, models_toml)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.database_url = database_url
        self.workers = workers
        self.env = stack_env(self.data_dir, database_url, self.models_file, **settings)
        self.log = (tmp / "serve.log").open("wb")
        self.proc = subprocess.Popen(
            aiprod_cmd(
                "serve",
                "--port",
                str(self.port),
                "--workers",
                str(workers),
                "--api-processes",
                str(api_processes),
            ),
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=self.log,
            cwd=tmp,
            preexec_fn=_die_with_parent,
            # its own process group, which its worker subprocesses join: stop() waits for all
            start_new_session=True,
        )
        try:
            self.admin_key = self._read_admin_key()
            self._wait_ready()
        except BaseException:
            self.stop()  # never leave a server (and its workers) running after a failed start
            raise

    def _read_admin_key(self) -> str:
        assert self.proc.stdout is not None
        banner: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                break
            banner.append(line)
            m = re.match(r"^(aiprod_sk_\S+)\s*$", line)
            if m:
                self.banner = "".join(banner)
                return m.group(1)
        raise AssertionError(f"no admin key in serve output: {banner!r}\n{self.logs()}")

    def _wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        with self.client(self.admin_key) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"serve exited early:\n{self.logs()}")
                try:
                    if c.get("/readyz").status_code == 200:
                        ws = c.get("/api/v1/admin/workers").json()["data"]
                        if sum(w["status"] == "idle" for w in ws) >= self.workers:
                            return
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        raise AssertionError(f"stack not ready in {timeout}s:\n{self.logs()}")

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            aiprod_cmd(*args), env=self.env, capture_output=True, text=True, cwd=self.tmp
        )
        if check and res.returncode != 0:
            raise AssertionError(f"aiprod {' '.join(args)} failed: {res.stderr}")
        return res

    def create_key(self, name: str, *extra: str) -> str:
        return self.cli("keys", "create", "--name", name, *extra).stdout.strip().splitlines()[-1]

    def logs(self, *, full: bool = False) -> str:
        if not self.log.closed:
            self.log.flush()
        text = (self.tmp / "serve.log").read_text(errors="replace")
        return text if full else text[-6000:]

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM the server and wait until it and every worker it started have exited.

        Workers outlive a server that was killed (they get SIGTERM from PR_SET_PDEATHSIG and
        finish their step), and on a loaded machine that takes a while: a test that then drops
        its database or reads its files must not race them. After ``timeout`` the whole
        process group is killed."""
        if self.log.closed:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        group = self.proc.pid  # start_new_session: the group id is the server's pid
        deadline = time.monotonic() + timeout
        while _group_alive(group) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _group_alive(group):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
            wait_for(lambda: not _group_alive(group), 30, 0.1, f"process group {group} to exit")
        self.log.close()


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies, which hold nothing, do not
    count: an orphan's zombie waits for a reaper this test does not control)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while we looked
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


class Workers:
    """`aiprod worker` processes against a Stack's database (started apart from the API so
    the API can be killed alone, and a worker killed alone; tests/faults, tests/worker)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, **env: str) -> subprocess.Popen[bytes]:
        log = (self.stack.tmp / f"worker-{name}.log").open("ab")
        proc = subprocess.Popen(
            aiprod_cmd("worker"),
            env=dict(self.stack.env, **env),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.stack.tmp,
            preexec_fn=_die_with_parent,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "".join(
            p.read_text(errors="replace") for p in sorted(self.stack.tmp.glob("worker-*.log"))
        )

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def wait_for(predicate: Any, timeout: float = 30, interval: float = 0.05, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


def wait_job(c: httpx.Client, job_id: str, statuses: set[str], timeout: float = 180) -> dict:
    def check() -> dict | None:
        j = c.get(f"/api/v1/jobs/{job_id}").json()
        return j if j["status"] in statuses else None

    return wait_for(check, timeout, 0.05, f"job {job_id} to reach {statuses}")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A migrated-on-demand PostgreSQL database for this session (xdist worker)."""
    with fresh_pg_database("s") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database per test, on each backend."""
    from aiprod.db.migrate import upgrade

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'test.db'}"
        upgrade(url)
        yield url
    else:
        with fresh_pg_database("f") as url:
            upgrade(url)
            yield url
