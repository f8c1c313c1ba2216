"""The ``aiprod`` command line (typer).

Commands that talk to the service (``serve``, ``keys``, ``db``, ``models``) never import torch;
``worker`` and ``generate`` load the engine lazily. The ``data`` and ``train`` sub-apps live in
their own modules and are imported only when used.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table
from typer.core import TyperGroup

from aiprod.cli.db import register_db_commands
from aiprod.core.errors import AiprodError

err = Console(stderr=True)
out = Console()

F = TypeVar("F", bound=Callable[..., Any])

# Commands owned by other modules: name -> (module, command inside that module's typer `app`,
# or None for the whole app as a group). Imported only when invoked or listed in --help.
LAZY_SUBAPPS: dict[str, tuple[str, str | None]] = {
    "data": ("aiprod.cli.data", None),
    "train": ("aiprod.cli.train", "train"),
    "eval": ("aiprod.cli.train", "eval"),
}


class LazyGroup(TyperGroup):
    """Adds the lazily-imported sub-apps, so `aiprod serve` never imports their dependencies."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = list(super().list_commands(ctx))
        for name, (module, _) in LAZY_SUBAPPS.items():
            if name not in names and importlib.util.find_spec(module) is not None:
                names.append(name)
        return names

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None or cmd_name not in LAZY_SUBAPPS:
            return cmd
        module_name, inner = LAZY_SUBAPPS[cmd_name]
        if importlib.util.find_spec(module_name) is None:
            return None
        module = importlib.import_module(module_name)
        sub = typer.main.get_command(module.app)
        if inner is not None:
            sub = sub.commands[inner]  # type: ignore[attr-defined]
        sub.name = cmd_name
        return sub


app = typer.Typer(
    cls=LazyGroup,
    help="aiprod: self-hosted text/image-to-video engine, service and training pipeline.\n\n"
    "Example: aiprod serve",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
keys_app = typer.Typer(
    help="Create, list and revoke API keys.\n\nExample: aiprod keys create --name acme",
    no_args_is_help=True,
)
db_app = typer.Typer(
    help="Database migrations.\n\nExample: aiprod db upgrade", no_args_is_help=True
)
models_app = typer.Typer(
    help="The model registry (models.toml).\n\nExample: aiprod models list", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")
app.add_typer(db_app, name="db")
app.add_typer(models_app, name="models")
register_db_commands(db_app)  # db backup | restore | retention (aiprod.cli.db)


def fail(message: str, code: int = 1) -> typer.Exit:
    # escape: messages quote things like `pip install 'aiprod[s3]'` that are not rich markup
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def one_line_errors(fn: F) -> F:
    """Expected errors become one line on stderr and exit status 1 (2 for config errors)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pydantic import ValidationError
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return fn(*args, **kwargs)
        except AiprodError as exc:
            raise fail(exc.message, 2 if exc.code == "config_error" else 1) from None
        except ValidationError as exc:  # bad AIPROD_* environment value
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise fail(f"setting AIPROD_{loc.upper()}: {first['msg']}", 2) from None
        except OSError as exc:
            raise fail(str(exc)) from None
        except SQLAlchemyError as exc:  # database unreachable, wrong credentials, ...
            first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise fail(
                f"database error: {first} (check AIPROD_DATABASE_URL and that the server is up)"
            ) from None

    return wrapper  # type: ignore[return-value]


def _setup_logging(level: str = "INFO") -> None:
    from aiprod.core.logging import configure_logging

    # JSON lines (text on a terminal; AIPROD_LOG_FORMAT overrides): see aiprod.core.logging.
    configure_logging(level=level.upper())


def _table_console() -> Console:
    """Tables at the terminal's width; piped output gets room for full ids."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def _settings() -> Any:
    from aiprod.core.settings import Settings

    return Settings()


# ---------------------------------------------------------------------------------- db


@db_app.command("upgrade")
@one_line_errors
def db_upgrade() -> None:
    """Apply all database migrations (safe to run again).

    Example: AIPROD_DATABASE_URL=postgresql+psycopg://user@host/aiprod aiprod db upgrade
    """
    from aiprod.db.migrate import upgrade

    settings = _settings()
    rev = upgrade(settings.resolved_database_url)
    out.print(f"database at revision {rev}")


# ---------------------------------------------------------------------------------- keys


def _open_db(settings: Any) -> Any:
    from aiprod.db.migrate import upgrade
    from aiprod.db.session import make_engine, make_sessionmaker

    upgrade(settings.resolved_database_url)
    return make_sessionmaker(make_engine(settings.resolved_database_url))


@keys_app.command("create")
@one_line_errors
def keys_create(
    name: Annotated[str, typer.Option("--name", help="Client name shown in stats.")],
    admin: Annotated[
        bool, typer.Option("--admin", help="Admin scope (stats, clear-cache).")
    ] = False,
    budget: Annotated[
        float | None, typer.Option("--budget", help="Monthly budget in USD (flagged in stats).")
    ] = None,
    rate_limit: Annotated[
        int | None, typer.Option("--rate-limit", help="Requests per minute (default: server's).")
    ] = None,
    priority: Annotated[int, typer.Option("--priority", help="Queue priority (higher first).")] = 0,
) -> None:
    """Create an API key and print it once (alone on the last line).

    Example: aiprod keys create --name acme --budget 50
    """
    from aiprod.db.session import session_scope
    from aiprod.jobs.webhooks import webhook_secret
    from aiprod.service.keys import create_key

    settings = _settings()
    sessions = _open_db(settings)
    secret = settings.resolved_secret_key()
    with session_scope(sessions) as s:
        row, key = create_key(
            s,
            secret=secret,
            name=name,
            admin=admin,
            monthly_budget_usd=budget,
            rate_limit_per_minute=rate_limit,
            priority=priority,
        )
    err.print(f"created {row.scope} key '{row.name}' (id {row.id}); it is shown only now.")
    err.print(f"webhook signing secret: {webhook_secret(row.id, secret)}")
    typer.echo(key)


@keys_app.command("list")
@one_line_errors
def keys_list() -> None:
    """List API keys (never their secret part).

    Example: aiprod keys list
    """
    from aiprod.db.repositories import ApiKeyRepository
    from aiprod.db.session import session_scope

    sessions = _open_db(_settings())
    table = Table("name", "scope", "active", "prefix", "budget $/mo", "created", "last used")
    table.columns.insert(0, Column("id", no_wrap=True, min_width=36))
    with session_scope(sessions) as s:
        for k in ApiKeyRepository(s).list():
            table.add_row(
                k.id,
                k.name,
                k.scope,
                "yes" if k.active else "revoked",
                k.prefix + "...",
                "-" if k.monthly_budget_usd is None else f"{k.monthly_budget_usd:g}",
                k.created_at.strftime("%Y-%m-%d %H:%M"),
                k.last_used_at.strftime("%Y-%m-%d %H:%M") if k.last_used_at else "never",
            )
    _table_console().print(table)


@keys_app.command("revoke")
@one_line_errors
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="Key id (or a unique prefix of it, >= 6 chars).")],
) -> None:
    """Revoke a key: its requests get 401 from now on.

    Example: aiprod keys revoke 3f2a9c
    """
    from aiprod.db.repositories import ApiKeyRepository
    from aiprod.db.session import session_scope

    sessions = _open_db(_settings())
    with session_scope(sessions) as s:
        repo = ApiKeyRepository(s)
        row = repo.find(key_id)
        repo.revoke(row)
        out.print(f"revoked key '{row.name}' ({row.id})")


@keys_app.command("webhook-secret")
@one_line_errors
def keys_webhook_secret(
    key_id: Annotated[str, typer.Argument(help="Key id (or a unique prefix of it).")],
) -> None:
    """Print the Standard Webhooks signing secret for a key's webhook deliveries.

    Example: aiprod keys webhook-secret 3f2a9c
    """
    from aiprod.db.repositories import ApiKeyRepository
    from aiprod.db.session import session_scope
    from aiprod.jobs.webhooks import webhook_secret

    settings = _settings()
    sessions = _open_db(settings)
    with session_scope(sessions) as s:
        row = ApiKeyRepository(s).find(key_id)
        typer.echo(webhook_secret(row.id, settings.resolved_secret_key()))


# ---------------------------------------------------------------------------------- models


@models_app.command("list")
@one_line_errors
def models_list() -> None:
    """List the models in the registry (AIPROD_MODELS_FILE or the built-in models.toml).

    Example: aiprod models list
    """
    from aiprod.core.registry import load_registry

    reg = load_registry(_settings().models_file)
    table = Table("id", "family", "version", "default", "$/GPU-s", "max size", "max frames")
    for m in reg.models:
        table.add_row(
            m.id,
            m.family,
            m.version,
            "*" if m.id == reg.default else "",
            f"{m.price_per_gpu_second:g}",
            f"{m.limits.max_width}x{m.limits.max_height}",
            str(m.limits.max_frames),
        )
    _table_console().print(table)


@models_app.command("register")
@one_line_errors
def models_register(
    checkpoint: Annotated[
        Path, typer.Argument(help="a run folder (its best), a step-N checkpoint or a model folder")
    ],
    model_id: Annotated[str, typer.Option("--id", help="registry id the API will serve it as")],
    version: Annotated[
        str | None, typer.Option(help="model_version recorded on jobs (default: from the run)")
    ] = None,
    description: Annotated[str | None, typer.Option(help="shown by GET /models")] = None,
    default: Annotated[
        bool, typer.Option("--default", help="make it the server's default model")
    ] = False,
) -> None:
    """Install a trained checkpoint as a model folder and add it to the registry.

    Example: aiprod models register runs/builtin --id builtin-v2 --default
    """
    from aiprod.cli.train import register_model

    entry = register_model(
        checkpoint,
        model_id,
        models_file=_settings().models_file,
        version=version,
        description=description,
        make_default=default,
    )
    out.print(json.dumps(entry, indent=2, default=str), highlight=False)
    out.print("restart the workers (or `aiprod serve`) to serve it")


# ---------------------------------------------------------------------------------- worker


@app.command("worker")
@one_line_errors
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

    _setup_logging(log_level)
    settings = _settings()
    upgrade(settings.resolved_database_url)
    w = Worker(settings, max_jobs=max_jobs, exit_when_idle=exit_when_idle)
    w.install_signal_handlers()
    w.run()


# ---------------------------------------------------------------------------------- serve


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
    """Runs N ``aiprod worker`` subprocesses and restarts any that die."""

    def __init__(self, count: int, env: dict[str, str]) -> None:
        self.count = count
        self.env = env
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * count
        self.started: list[float] = [0.0] * count
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="supervisor", daemon=True)

    def _spawn(self, i: int) -> None:
        cmd = [sys.executable, "-m", "aiprod.cli.main", "worker"]
        self.procs[i] = subprocess.Popen(cmd, env=self.env, preexec_fn=_die_with_parent)
        self.started[i] = time.monotonic()
        logging.getLogger("aiprod.serve").info("worker %d started (pid %d)", i, self.procs[i].pid)

    def start(self) -> None:
        for i in range(self.count):
            self._spawn(i)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.wait(1.0):
            for i, p in enumerate(self.procs):
                if p is not None and p.poll() is not None and not self.stop.is_set():
                    logging.getLogger("aiprod.serve").warning(
                        "worker %d (pid %d) exited with %s; restarting", i, p.pid, p.returncode
                    )
                    # A worker that keeps crashing at start is restarted at most every 5 s.
                    if time.monotonic() - self.started[i] < 5:
                        self.stop.wait(5)
                    if not self.stop.is_set():
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


@app.command("serve")
@one_line_errors
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

    _setup_logging(log_level)
    settings = _settings()
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
    n = 0 if no_worker else workers
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


# ---------------------------------------------------------------------------------- generate


@app.command("generate")
@one_line_errors
def generate(
    prompt: Annotated[str, typer.Argument(help="What the video shows.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the MP4.")],
    model: Annotated[
        str | None, typer.Option("--model", help="Model id (default: the registry's).")
    ] = None,
    width: Annotated[int | None, typer.Option("--width")] = None,
    height: Annotated[int | None, typer.Option("--height")] = None,
    num_frames: Annotated[int | None, typer.Option("--frames", help="8*k+1 frames.")] = None,
    fps: Annotated[int | None, typer.Option("--fps")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Denoising steps.")] = None,
    guidance: Annotated[float | None, typer.Option("--guidance")] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    image: Annotated[Path | None, typer.Option("--image", help="Conditioning image (i2v).")] = None,
    negative_prompt: Annotated[str | None, typer.Option("--negative-prompt")] = None,
    two_stage: Annotated[
        bool | None, typer.Option("--two-stage/--one-stage", help="Default: the model's.")
    ] = None,
) -> None:
    """Generate one video directly (no server) with a progress bar.

    Example: aiprod generate "a red fox running through snow" -o fox.mp4 --seed 1
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from aiprod.core.registry import load_registry

    if output.suffix.lower() != ".mp4":
        raise AiprodError(f"-o {output}: the output must be an .mp4 file")
    if not output.parent.exists():
        raise AiprodError(f"-o {output}: folder {output.parent} does not exist")
    image_bytes = None
    if image is not None:
        if not image.is_file():
            raise AiprodError(f"--image {image}: no such file")
        from aiprod.core.media import check_image  # a PNG/JPEG/WebP within the API's limits

        image_bytes = check_image(image.read_bytes())
    settings = _settings()
    entry = load_registry(settings.models_file).get(model)
    params = dict(
        prompt=prompt,
        negative_prompt=negative_prompt,
        width=width,
        height=height,
        num_frames=num_frames,
        fps=fps,
        num_inference_steps=steps,
        guidance_scale=guidance,
        seed=seed,
        two_stage=two_stage,
    )
    entry.resolve_request(params)  # fail on bad input before loading the model
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=err,
    ) as bar:
        task = bar.add_task(f"loading {entry.id}", total=1.0)
        from dataclasses import replace

        from aiprod import engine

        req = engine.build_request(entry, params)
        if image_bytes is not None:
            req = replace(req, image=image_bytes)
        pipe = engine.load_pipeline(entry, device=settings.device)
        bar.update(task, description="generating")
        t0 = time.perf_counter()
        video = engine.generate_to_file(
            entry,
            req,
            output,
            pipeline=pipe,
            on_progress=lambda f: bar.update(task, completed=f),
        )
        bar.update(task, completed=1.0, description="done")
    err.print(
        f"wrote {output} ({video.frames.shape[0]} frames {req.width}x{req.height}"
        f" @ {video.fps} fps,"
        f" seed {req.seed}, {time.perf_counter() - t0:.1f}s)"
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
