"""``aiprod train``: train a model from a YAML config, evaluate a checkpoint, register it.

Examples::

    aiprod train configs/debug.yaml --dry-run
    aiprod train configs/builtin-step1-scratch.yaml   # then --resume after an interruption
    aiprod eval runs/builtin-step1 --out runs/builtin-step1/eval
    aiprod models register runs/builtin-step1 --id builtin   # (in aiprod.cli.main)
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from aiprod.cli.errors import EXIT_FAILED, cli_errors

app = typer.Typer(
    help="Train and evaluate models.\n\nExample: aiprod train configs/debug.yaml --dry-run",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
out = Console()
# The training config is a file named on the command line: a bad one is bad input (exit 1),
# and so are the ValueErrors its checks raise.
train_errors = cli_errors(config_status=EXIT_FAILED, expected=(ValueError,))


def _event_printer() -> Any:
    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == "log":
            keys = ("step", "phase", "loss", "lr", "samples_per_s")
            shown = " ".join(
                f"{k}={data[k]:.4g}" if isinstance(data[k], float) else f"{k}={data[k]}"
                for k in keys
                if k in data
            )
            out.print(shown, highlight=False)
        elif kind in (
            "phase",
            "checkpoint",
            "resume",
            "heldout",
            "video",
            "prepare",
            "gpu_memory_warning",
            "precision_warning",
        ):
            out.print(f"[bold]{kind}[/bold] {json.dumps(data, default=str)}", highlight=False)

    return on_event


def _accelerate_cpu_processes() -> int:
    """The N of ``accelerate launch --cpu --num_processes N`` when it started this process
    alone, else 1. Its CPU launcher starts one process (with ACCELERATE_USE_CPU and
    MASTER_ADDR set, no RANK): it leaves the other N-1 to ``mpirun`` (``--mpirun_hostfile``),
    and without one the run would train in one process. N is read from that launcher's
    command line (the parent process)."""
    env = os.environ
    if env.get("ACCELERATE_USE_CPU", "").lower() not in ("true", "1") or "MASTER_ADDR" not in env:
        return 1
    if any(k in env for k in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMI_SIZE")):
        return 1  # already one rank of a launcher that started them all
    import psutil

    try:
        argv = psutil.Process(os.getppid()).cmdline()
    except psutil.Error:
        return 1
    if not any("accelerate" in a for a in argv[:4]):  # `accelerate launch`, `-m accelerate...`
        return 1
    n = 1
    for i, a in enumerate(argv):
        for flag in ("--num_processes", "--num-processes"):
            if a == flag and i + 1 < len(argv):
                n = int(argv[i + 1])
            elif a.startswith(flag + "="):
                n = int(a.split("=", 1)[1])
    return n


def _relaunch(n: int) -> int:
    """Start this command again as ``n`` ranks under torchrun (gloo on CPU); its exit status."""
    env = os.environ
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(n),
        "--master_addr",
        env["MASTER_ADDR"],
        "--master_port",
        env.get("MASTER_PORT", "29500"),
        "-m",
        "aiprod.cli.main",
        *sys.argv[1:],
    ]
    return subprocess.call(cmd)


@app.command("train")
@train_errors
def train_cmd(
    config: Annotated[Path, typer.Argument(help="training YAML (see configs/)")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="one batch per phase")] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue from the latest checkpoint")
    ] = False,
    document: Annotated[
        str | None,
        typer.Option("--doc", help="the document of a multi-document YAML with this name"),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="KEY=VALUE over the config (repeatable): a dotted path, list items by index, "
            "a YAML value, e.g. --set phases.0.steps=3",
        ),
    ] = None,
) -> None:
    """Train a model through its curriculum phases.

    Example: aiprod train configs/builtin-step1-scratch.yaml --resume
    """
    processes = _accelerate_cpu_processes()
    if processes > 1:
        raise typer.Exit(_relaunch(processes))
    rank = int(os.environ.get("RANK", "0"))  # torchrun / accelerate launch; only rank 0 logs
    level = logging.INFO if rank == 0 else logging.ERROR
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from aiprod.training.config import load_config
    from aiprod.training.provenance import write_run_file
    from aiprod.training.trainer import Trainer

    cfg = load_config(config, overrides=overrides, document=document)
    trainer = Trainer(cfg, on_event=_event_printer())
    if trainer.ranks.main and not dry_run:
        write_run_file(cfg, config, overrides=overrides or [])
    if dry_run:
        report = trainer.dry_run()
        if not trainer.ranks.main:
            return
        table = Table(
            "phase", "target", "batch", "out", "loss", "prep s", "step s", "params", "RSS MiB"
        )
        for r in report:
            table.add_row(
                r["phase"],
                r["target"],
                str(r["batch_shape"]),
                str(r["out_shape"] or "-"),
                f"{r['loss']:.4f}",
                f"{r['prepare_s']:.2f}",
                f"{r['step_s']:.3f}",
                f"{r['trainable_params']:,}",
                f"{r['rss_peak_mib']:.0f}",
            )
        out.print(table)
        return
    result = trainer.train(resume=resume)
    if trainer.ranks.main:
        out.print(json.dumps(result, indent=2))


_SERVED = "default: the served built-in model's (models.toml)"


@app.command("eval")
@train_errors
def eval_cmd(
    checkpoint: Annotated[
        Path,
        typer.Argument(help="checkpoint step-N folder, a run folder (its best) or a model folder"),
    ],
    out_dir: Annotated[Path | None, typer.Option("--out", help="report folder")] = None,
    num_prompts: Annotated[int, typer.Option(help="held-out prompts")] = 200,
    phases: Annotated[
        str, typer.Option(help="curriculum phases to draw prompts from")
    ] = "1,2,3,4,5",
    width: Annotated[int | None, typer.Option(help=_SERVED)] = None,
    height: Annotated[int | None, typer.Option(help=_SERVED)] = None,
    num_frames: Annotated[int | None, typer.Option(help=_SERVED)] = None,
    steps: Annotated[int | None, typer.Option(help="denoising steps (stage 1); " + _SERVED)] = None,
    guidance: Annotated[float | None, typer.Option(help=_SERVED)] = None,
    shift: Annotated[
        float | None,
        typer.Option(help="stage-1 schedule shift (default: the model's scheduler config)"),
    ] = None,
    single_stage: Annotated[
        bool | None,
        typer.Option("--single-stage/--two-stage", help="skip the upsampler, or not; " + _SERVED),
    ] = None,
    refine_steps: Annotated[int | None, typer.Option(help=_SERVED)] = None,
    refine_strength: Annotated[
        float | None,
        typer.Option(help="noise level the two-stage refinement starts from; " + _SERVED),
    ] = None,
    refine_guidance: Annotated[
        float | None,
        typer.Option(
            help="the two-stage refinement's guidance (1 = none, about half the refinement's "
            "time); " + _SERVED + ", where unset means --guidance"
        ),
    ] = None,
    candidates: Annotated[
        int | None,
        typer.Option(
            help="stage-1 drafts per clip, ranked by the model's prompt verifier (two-stage "
            "only); " + _SERVED + ", 1 with --single-stage"
        ),
    ] = None,
    guidance_min_sigma: Annotated[
        float | None,
        typer.Option(
            help="stage-1 guidance only at noise levels at or above this (0 = every step); "
            + _SERVED
        ),
    ] = None,
    i3d: Annotated[Path | None, typer.Option(help="local TorchScript I3D for standard FVD")] = None,
    seed: int = 20_261_121,
    backend: Annotated[
        str, typer.Option(help="trainer (own sampler) or engine (the served builtin backend)")
    ] = "trainer",
) -> None:
    """Score a checkpoint on held-out synthetic prompts (JSON + HTML + PNG).

    Options left out take the served built-in model's settings (its models.toml entry's
    defaults and options), so a checkpoint is scored as the API would serve it.

    Example: aiprod eval runs/builtin --num-prompts 200 --out runs/builtin/eval
    """
    from rich.progress import Progress

    from aiprod.training.evaluate import evaluate, served_settings

    try:
        ph = tuple(int(p) for p in phases.split(",") if p.strip())
    except ValueError:
        raise ValueError(f"--phases {phases!r}: give numbers 1..5, e.g. 1,2,3") from None
    dest = out_dir or (Path(checkpoint) / "eval")
    asked = {
        "width": width,
        "height": height,
        "num_frames": num_frames,
        "steps": steps,
        "guidance": guidance,
        "two_stage": None if single_stage is None else not single_stage,
        "refine_steps": refine_steps,
        "refine_sigma": refine_strength,
        "refine_guidance": refine_guidance,
        "candidates": candidates,
        "guidance_min_sigma": guidance_min_sigma,
    }
    served = served_settings()
    settings = {**served, **{k: v for k, v in asked.items() if v is not None}}
    if candidates is None and not settings.get("two_stage", True):
        settings["candidates"] = 1  # drafts are ranked for the two-stage path only
    with Progress(transient=True) as bar:
        task = bar.add_task("generating", total=num_prompts)
        result = evaluate(
            checkpoint,
            out_dir=dest,
            num_prompts=num_prompts,
            phases=ph,
            **settings,
            i3d=i3d,
            seed=seed,
            backend=backend,
            shift=shift,
            candidates_fallback=candidates is None,
            on_progress=lambda d, t: bar.update(task, completed=d),
        )
    used = result["settings"]["candidates"]
    if used != settings.get("candidates", 1):
        out.print(f"{checkpoint} has no prompt verifier: scored with {used} stage-1 draft per clip")
    m = result["metrics"]
    table = Table("metric", "value")
    for k, v in m.items():
        if not isinstance(v, dict):
            table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    out.print(table)
    out.print(f"wrote {dest / 'eval.json'} and {dest / 'report.html'}")


def register_model(
    checkpoint: Path,
    model_id: str | None,
    *,
    models_file: Path | None = None,
    version: str | None = None,
    description: str | None = None,
    make_default: bool = False,
    upsampler_of: str | None = None,
) -> dict[str, Any]:
    """``aiprod models register RUN --id ID`` (or ``--upsampler-of ENTRY``): install a run.

    ``models_file`` defaults to ``AIPROD_MODELS_FILE`` (settings), else the packaged one.
    """
    from aiprod.core.errors import ConfigError
    from aiprod.training.register import register, register_upsampler

    if models_file is None:
        from aiprod.core.registry import default_models_file
        from aiprod.core.settings import Settings

        # read now, not the process-wide cached settings: the CLI's other commands and
        # served_settings() read AIPROD_MODELS_FILE the same way
        models_file = Settings().models_file or default_models_file()
    if upsampler_of is not None:
        if model_id is not None:
            raise ConfigError("give --id (a new model) or --upsampler-of (an entry's upsampler)")
        return register_upsampler(checkpoint, entry_id=upsampler_of, models_file=Path(models_file))
    if model_id is None:
        raise ConfigError("--id is missing: the registry id to serve it as, e.g. --id my-model")
    return register(
        checkpoint,
        model_id=model_id,
        models_file=Path(models_file),
        version=version,
        description=description,
        make_default=make_default,
    )
