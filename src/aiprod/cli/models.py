"""``aiprod models ...``: list the model registry, register a trained checkpoint in it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from aiprod.cli.common import load_settings, out, table_console
from aiprod.cli.errors import EXIT_CONFIG, cli_errors, fail

app = typer.Typer(
    help="The model registry (models.toml).\n\nExample: aiprod models list", no_args_is_help=True
)


@app.command("list")
@cli_errors
def models_list() -> None:
    """List the models in the registry (AIPROD_MODELS_FILE or the built-in models.toml) and
    check each one's files: one line per problem on stderr, exit 2 when any entry has one.

    Example: aiprod models list
    """
    from aiprod.core.model_files import registry_problems
    from aiprod.core.registry import load_registry

    reg = load_registry(load_settings().models_file)
    problems = registry_problems(reg)
    table = Table(
        "id", "family", "version", "default", "$/GPU-s", "max size", "max frames", "files"
    )
    for m in reg.models:
        n = len(problems.get(m.id, []))
        table.add_row(
            m.id,
            m.family,
            m.version,
            "*" if m.id == reg.default else "",
            f"{m.price_per_gpu_second:g}",
            f"{m.limits.max_width}x{m.limits.max_height}",
            str(m.limits.max_frames),
            "ok" if not n else f"{n} problem{'s' if n > 1 else ''}",
        )
    for model_id in reg.skipped:
        table.add_row(model_id, "?", "", "", "", "", "", "invalid entry")
    table_console().print(table)
    for lines in problems.values():
        for line in lines:
            fail(line, EXIT_CONFIG)
    if problems:
        raise fail(
            f"{len(problems)} model(s) cannot run: {', '.join(problems)} (fix the lines above; "
            "`aiprod serve` skips them, and refuses to start while the default is one)",
            EXIT_CONFIG,
        )


@app.command("register")
@cli_errors
def models_register(
    checkpoint: Annotated[
        Path, typer.Argument(help="a run folder (its best), a step-N checkpoint or a model folder")
    ],
    model_id: Annotated[
        str | None, typer.Option("--id", help="registry id the API will serve it as")
    ] = None,
    version: Annotated[
        str | None, typer.Option(help="model_version recorded on jobs (default: from the run)")
    ] = None,
    description: Annotated[str | None, typer.Option(help="shown by GET /models")] = None,
    default: Annotated[
        bool, typer.Option("--default", help="make it the server's default model")
    ] = False,
    upsampler_of: Annotated[
        str | None,
        typer.Option(
            "--upsampler-of",
            help="install an upsampler run as this entry's components.upsampler (no --id)",
        ),
    ] = None,
) -> None:
    """Install a training run as a model folder and add it to the registry (comments and
    layout of models.toml kept); or attach an upsampler run to an entry.

    Example: aiprod models register runs/lora-ltxv --id my-ltxv-lora
    """
    from aiprod.cli.train import register_model

    entry = register_model(
        checkpoint,
        model_id,
        models_file=load_settings().models_file,
        version=version,
        description=description,
        make_default=default,
        upsampler_of=upsampler_of,
    )
    out.print(json.dumps(entry, indent=2, default=str), highlight=False)
    out.print("restart the workers (or `aiprod serve`) to serve it")
