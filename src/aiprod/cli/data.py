"""`aiprod data ...`: the data pipeline from raw videos to a curriculum manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from aiprod.core.errors import AiprodError

app = typer.Typer(
    name="data",
    help="Data pipeline: ingest, probe, validate, split, normalize, organize, report, synth.",
    no_args_is_help=True,
)
console = Console(stderr=True)


@app.callback()
def _main() -> None:
    """Data pipeline: raw videos -> validated, normalized, curriculum-organized clips."""


def _progress() -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def _fail(err: Exception) -> typer.Exit:
    msg = err.message if isinstance(err, AiprodError) else str(err)
    console.print(f"[red]error:[/red] {msg}", highlight=False)
    return typer.Exit(code=1)


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write clips/ and manifest into.")],
    n_per_phase: Annotated[int, typer.Option("--n-per-phase", "-n", min=1)] = 8,
    width: Annotated[int, typer.Option(min=8)] = 64,
    height: Annotated[int, typer.Option(min=8)] = 64,
    num_frames: Annotated[int, typer.Option("--num-frames", "-f", min=1)] = 16,
    fps: Annotated[float, typer.Option(min=1.0)] = 24.0,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Render procedural captioned clips for curriculum phases 1-5 plus a manifest.

    Example: aiprod data synth ./synth -n 16 --width 64 --height 64 -f 17
    """
    from aiprod.data.synth import PHASES, write_synth_dataset

    try:
        with _progress() as progress:
            task = progress.add_task("rendering", total=n_per_phase * len(PHASES))
            manifest = write_synth_dataset(
                out_dir,
                n_per_phase=n_per_phase,
                width=width,
                height=height,
                num_frames=num_frames,
                fps=fps,
                seed=seed,
                on_progress=lambda done, _total: progress.update(task, completed=done),
            )
    except (AiprodError, ValueError) as err:
        raise _fail(err) from err
    console.print(f"wrote {n_per_phase * len(PHASES)} clips; manifest: {manifest}")


if __name__ == "__main__":
    app()
