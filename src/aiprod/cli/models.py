"""``aiprod models ...``: list the model registry, register a trained checkpoint in it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from aiprod.cli.common import load_settings, out, table_console
from aiprod.cli.errors import cli_errors

app = typer.Typer(
    help="The model registry (models.toml).\n\nExample: aiprod models list", no_args_is_help=True
)


@app.command("list")
@cli_errors
def models_list() -> None:
    """List the models in the registry (AIPROD_MODELS_FILE or the built-in models.toml).

    Example: aiprod models list
    """
    from aiprod.core.registry import load_registry

    reg = load_registry(load_settings().models_file)
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
    table_console().print(table)


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
