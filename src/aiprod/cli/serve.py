"""``aiprod serve`` (the API and its worker subprocesses) and ``aiprod worker``.

Neither imports torch here: ``serve`` runs the FastAPI app, and the worker loads the engine
only once it claims a job.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Annotated

import typer

from aiprod.cli.common import load_settings, out, setup_logging
from aiprod.cli.errors import EXIT_CONFIG, cli_errors, fail, warn

if TYPE_CHECKING:
    from aiprod.core.settings import Settings


def _die_with_parent() -> None:
    """In a worker subprocess: get SIGTERM when `serve` dies, however it dies.

    uvicorn re-raises the SIGTERM it caught once it has shut down, which kills `serve` before
    its `finally` can stop the workers; without this they would run on as orphans.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class Supervisor:
    """Runs N ``aiprod worker`` subprocesses and restarts any that die.

    A worker that exits soon after it started (within ``healthy_after`` seconds) counts as a
    crash: the n-th crash in a row waits ``base * 2**(n-1)`` seconds (capped at ``cap``) before
    the restart, so a worker that cannot start is retried every ``cap`` seconds, not in a tight
    loop. A worker that ran longer is restarted at once and its count starts over.
    """

    def __init__(
        self,
        count: int,
        env: dict[str, str],
        *,
        cmd: list[str] | None = None,
        base: float = 2.0,
        cap: float = 120.0,
        healthy_after: float = 60.0,
        poll: float = 1.0,
    ) -> None:
        self.count = count
        self.env = env
        self.cmd = cmd or [sys.executable, "-m", "aiprod.cli.main", "worker"]
        self.base, self.cap, self.healthy_after, self.poll = base, cap, healthy_after, poll
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * count
        self.started: list[float] = [0.0] * count
        self.crashes: list[int] = [0] * count  # quick exits in a row, per slot
        self.restart_at: list[float | None] = [None] * count
        self.delays: list[float] = []  # every backoff chosen (logged; read by the tests)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="supervisor", daemon=True)

    def _spawn(self, i: int) -> None:
        proc = subprocess.Popen(self.cmd, env=self.env, preexec_fn=_die_with_parent)
        self.procs[i] = proc
        self.started[i] = time.monotonic()
        self.restart_at[i] = None
        logging.getLogger("aiprod.serve").info("worker %d started (pid %d)", i, proc.pid)

    def start(self) -> None:
        for i in range(self.count):
            self._spawn(i)
        self.thread.start()

    def restart_delay(self, crashes: int) -> float:
        """Seconds to wait before restarting after ``crashes`` quick exits in a row."""
        if crashes <= 0:
            return 0.0
        return float(min(self.cap, self.base * 2 ** (crashes - 1)))

    def _loop(self) -> None:
        log = logging.getLogger("aiprod.serve")
        while not self.stop.wait(self.poll):
            now = time.monotonic()
            for i, p in enumerate(self.procs):
                if self.stop.is_set():
                    return
                if p is None or p.poll() is None:
                    continue
                if self.restart_at[i] is None:
                    ran = now - self.started[i]
                    self.crashes[i] = self.crashes[i] + 1 if ran < self.healthy_after else 0
                    delay = self.restart_delay(self.crashes[i])
                    self.delays.append(delay)
                    self.restart_at[i] = now + delay
                    log.warning(
                        "worker %d (pid %d) exited with %s after %.0fs; restarting in %.0fs"
                        " (quick exits in a row: %d)",
                        i,
                        p.pid,
                        p.returncode,
                        ran,
                        delay,
                        self.crashes[i],
                    )
                restart_at = self.restart_at[i]
                if restart_at is not None and now >= restart_at:
                    self._spawn(i)

    def shutdown(self, timeout: float = 15.0) -> None:
        self.stop.set()
        for p in self.procs:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.procs:
            if p is None:
                continue
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@cli_errors
def worker(
    max_jobs: Annotated[
        int | None, typer.Option("--max-jobs", help="Exit after this many jobs.")
    ] = None,
    exit_when_idle: Annotated[
        bool, typer.Option("--exit-when-idle", help="Exit once the queue is empty.")
    ] = False,
    log_level: Annotated[str, typer.Option("--log-level")] = "INFO",
) -> None:
    """Run a worker: claim jobs from the database and generate them (one per GPU).

    Example: AIPROD_DATABASE_URL=postgresql+psycopg://user@db/aiprod aiprod worker
    """
    from aiprod.db.migrate import upgrade
    from aiprod.worker.runner import Worker

    setup_logging(log_level)
    settings = load_settings()
    upgrade(settings.resolved_database_url)
    w = Worker(settings, max_jobs=max_jobs, exit_when_idle=exit_when_idle)
    w.install_signal_handlers()
    w.run()


def check_models_at_start(settings: Settings) -> None:
    """One line per problem of each registry entry (core/model_files.py); a broken default
    stops the start (exit 2), a broken other entry is reported and skipped."""
    from aiprod.core.model_files import registry_problems
    from aiprod.core.registry import load_registry

    reg = load_registry(settings.models_file)
    problems = registry_problems(reg)
    for model_id, lines in problems.items():
        if model_id == reg.default:
            continue
        for line in lines:
            warn(f"{line} (model '{model_id}' is skipped; the others are served)")
    if reg.default in problems:
        for line in problems[reg.default]:
            fail(line, EXIT_CONFIG)
        raise fail(
            f"the default model '{reg.default}' cannot run: fix the lines above, or set "
            "`default` in models.toml to a model that works",
            EXIT_CONFIG,
        )


@cli_errors
def serve(
    host: Annotated[str, typer.Option("--host", help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    no_worker: Annotated[
        bool, typer.Option("--no-worker", help="API only; run `aiprod worker` elsewhere.")
    ] = False,
    workers: Annotated[int, typer.Option("--workers", min=0, help="Worker subprocesses.")] = 1,
    api_processes: Annotated[
        int,
        typer.Option(
            "--api-processes",
            min=1,
            help="API server processes sharing the port (one per CPU core is a good start).",
        ),
    ] = 1,
    log_level: Annotated[str, typer.Option("--log-level")] = "INFO",
) -> None:
    """Start the API server and its worker subprocesses.

    Applies migrations first; on first start creates an admin key and prints it once.

    Example: aiprod serve --port 8000 --workers 1
    """
    import uvicorn

    from aiprod.db.migrate import upgrade
    from aiprod.db.repositories import ApiKeyRepository
    from aiprod.db.session import make_engine, make_sessionmaker, session_scope
    from aiprod.service.app import create_app
    from aiprod.service.keys import create_key

    setup_logging(log_level)
    settings = load_settings()
    n = 0 if no_worker else workers
    if settings.check_model_files is None and n == 0:
        # API only: the model files live on the workers' hosts (their failed loads still show).
        settings = settings.model_copy(update={"check_model_files": False})
        os.environ["AIPROD_CHECK_MODEL_FILES"] = "false"  # for --api-processes > 1
    if settings.check_model_files is not False:
        check_models_at_start(settings)
    settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    secret = settings.resolved_secret_key()
    upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    admin_key = None
    with session_scope(make_sessionmaker(engine)) as s:
        if not ApiKeyRepository(s).has_admin():
            _, admin_key = create_key(s, secret=secret, name="admin", admin=True)
    engine.dispose()

    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{shown}:{port}"
    out.print(
        f"aiprod {url}  (API docs: {url}/docs, OpenAPI: {url}/openapi.json)",
        highlight=False,
        soft_wrap=True,
    )
    out.print(
        f"database: {settings.resolved_database_url.split('@')[-1]}; workers: {n}", highlight=False
    )
    if admin_key is not None:
        out.print("admin key (shown only once; keep it safe):", highlight=False)
        out.print(admin_key, highlight=False, soft_wrap=True)
    sys.stdout.flush()

    supervisor = None
    if n:
        env = dict(os.environ)
        env.setdefault("AIPROD_DATA_DIR", str(settings.resolved_data_dir))
        supervisor = Supervisor(n, env)
        supervisor.start()
    if api_processes > 1:
        # The processes are spawned: they read their settings, log level and the shared
        # Prometheus directory (so /metrics counts every process's requests) from the env.
        os.environ["AIPROD_LOG_LEVEL"] = log_level.upper()
        metrics_dir = settings.resolved_data_dir / "metrics-multiproc"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    config = uvicorn.Config(
        create_app(settings) if api_processes == 1 else "aiprod.service.app:create_app_for_process",
        factory=api_processes > 1,
        workers=api_processes,
        host=host,
        port=port,
        log_level=log_level.lower(),
        access_log=False,
        log_config=None,  # uvicorn's own lines go through aiprod's (JSON) logging too
        timeout_graceful_shutdown=5,
    )
    # uvicorn restores the previous handlers and re-raises the signal it caught once it has
    # shut down; with these no-op handlers that re-raise is harmless, so the `finally` below
    # still stops the workers gracefully (PR_SET_PDEATHSIG remains the backstop).
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGINT, lambda *_: None)
    try:
        if api_processes == 1:
            uvicorn.Server(config).run()
        else:
            from uvicorn.supervisors import Multiprocess

            Multiprocess(config, sockets=[config.bind_socket()]).run()
    finally:
        if supervisor is not None:
            supervisor.shutdown()
