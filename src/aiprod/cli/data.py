"""`aiprod data ...`: the data pipeline from raw videos to a curriculum manifest."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from aiprod.cli.errors import EXIT_FAILED, cli_errors

if TYPE_CHECKING:
    from aiprod.data.config import DataConfig
    from aiprod.data.manifest import ClipRecord

Progressed = Callable[[int, int], None]

app = typer.Typer(
    name="data",
    help="Data pipeline: ingest, probe, validate, split, normalize, organize, report, synth.\n\n"
    "Example: aiprod data synth ./synth -n 16 --width 64 --height 64 -f 17",
    no_args_is_help=True,
)
console = Console(stderr=True)
# The data config is a file named on the command line: a bad one is bad input (exit 1).
data_errors = cli_errors(config_status=EXIT_FAILED)


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


ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="Data config YAML (default: configs/data.yaml if present)."
    ),
]
WorkersOpt = Annotated[
    int | None, typer.Option("--workers", "-j", min=1, help="Processes (default: all cores).")
]
DatasetArg = Annotated[Path, typer.Argument(help="Dataset folder (holds manifest.parquet).")]


def _load(dataset: Path) -> list[ClipRecord]:
    from aiprod.data.manifest import read_manifest

    return read_manifest(dataset)


def _table(title: str, rows: Mapping[str, object]) -> None:
    from rich.table import Table

    t = Table(title=title, show_header=False)
    for k, v in rows.items():
        t.add_row(str(k), str(v))
    Console().print(t)


def _stage(
    name: str,
    *,
    dataset: Path,
    config: Path | None,
    run: Callable[[DataConfig, list[ClipRecord], Progressed], list[ClipRecord]],
) -> tuple[list[ClipRecord], list[ClipRecord]]:
    """Load the config and manifest, run one stage with a progress bar, write the manifest.

    ``run(cfg, records, on_progress)`` does the work; returns the rows before and after it.
    """
    from aiprod.data.config import load_config
    from aiprod.data.manifest import write_manifest

    cfg = load_config(config)
    before = _load(dataset)
    with _progress() as progress:
        task = progress.add_task(name, total=max(1, len(before)))
        after = run(
            cfg,
            before,
            lambda done, total: progress.update(task, completed=done, total=total),
        )
    write_manifest(after, dataset)
    return before, after


@app.command()
@data_errors
def ingest(
    sources: Annotated[
        list[str], typer.Argument(help="Folders, .txt/.csv lists (paths or URLs), files, URLs.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to add clips to.")],
    license: Annotated[str, typer.Option(help="License for rows that name none.")] = "",
    attribution: Annotated[str, typer.Option(help="Attribution for rows that name none.")] = "",
    copy: Annotated[bool, typer.Option(help="Copy local files into OUT/raw.")] = False,
    retries: Annotated[int, typer.Option(min=0)] = 3,
) -> None:
    """Add clips from folders, file lists and http(s) URL lists (resumable, checksummed).

    Example: aiprod data ingest ./videos urls.csv --out ./ds --license CC-BY-4.0
    """
    from aiprod.data import ingest as ing

    with _progress() as progress:
        task = progress.add_task("ingesting", total=None)
        recs = ing.ingest(
            sources,
            out,
            license=license,
            attribution=attribution,
            copy=copy,
            retries=retries,
            on_progress=lambda d, t: progress.update(task, completed=d, total=t),
        )
    _table(f"ingest -> {out}", ing.summarize(recs))


@app.command()
@data_errors
def probe(
    paths: Annotated[list[Path], typer.Argument(help="Video files to probe.")],
) -> None:
    """Print size, fps, frames, duration, codec and audio of video files (no decisions).

    Example: aiprod data probe clip.mp4 other.mov
    """
    from rich.table import Table

    from aiprod.core.media import MediaError
    from aiprod.core.media import probe as probe_file

    t = Table("file", "size", "fps", "frames", "duration_s", "codec", "audio")
    bad = 0
    for p in paths:
        try:
            i = probe_file(p)
        except MediaError as err:
            t.add_row(str(p), "-", "-", "-", "-", f"[red]{err.message}[/red]", "-")
            bad += 1
            continue
        t.add_row(
            str(p), f"{i.width}x{i.height}", f"{i.fps:.3f}", str(i.num_frames),
            f"{i.duration:.2f}", i.codec, "yes" if i.has_audio else "no",
        )  # fmt: skip
    Console().print(t)
    if bad:
        raise typer.Exit(EXIT_FAILED)  # the table names each file that failed


@app.command()
@data_errors
def validate(
    dataset: DatasetArg,
    config: ConfigOpt = None,
    workers: WorkersOpt = None,
    recheck: Annotated[
        bool,
        typer.Option(
            "--recheck",
            help="Check rejected clips again (done anyway when the thresholds changed).",
        ),
    ] = False,
) -> None:
    """Probe and check every clip (fps, size, duration, corrupt, black, frozen, motion).

    Clips rejected with other thresholds than the config's now are checked again.

    Example: aiprod data validate ./ds --config configs/data.yaml
    """
    from aiprod.data.report import summary
    from aiprod.data.validate import validate as run

    _, recs = _stage(
        "validating",
        dataset=dataset,
        config=config,
        run=lambda cfg, rows, on_progress: run(
            rows, cfg.validate_, workers=workers, on_progress=on_progress, recheck=recheck
        ),
    )
    info = summary(recs)
    _table("validate", {k: info[k] for k in ("accepted", "rejected", "rejected_reasons")})


@app.command()
@data_errors
def split(dataset: DatasetArg, config: ConfigOpt = None, workers: WorkersOpt = None) -> None:
    """Cut accepted clips into scenes (PySceneDetect) within the min/max clip length.

    Example: aiprod data split ./ds
    """
    from aiprod.data.split import split as run

    before, after = _stage(
        "splitting",
        dataset=dataset,
        config=config,
        run=lambda cfg, rows, on_progress: run(
            rows, cfg.split, workers=workers, on_progress=on_progress
        ),
    )
    _table("split", {"rows before": len(before), "rows after": len(after)})


@app.command()
@data_errors
def normalize(dataset: DatasetArg, config: ConfigOpt = None, workers: WorkersOpt = None) -> None:
    """Re-encode accepted clips to H.264 yuv420p at 24 fps, short side resized (skips done).

    Example: aiprod data normalize ./ds -j 8
    """
    from aiprod.data.normalize import normalize as run

    _, recs = _stage(
        "normalizing",
        dataset=dataset,
        config=config,
        run=lambda cfg, rows, on_progress: run(
            rows, cfg.normalize, dataset, workers=workers, on_progress=on_progress
        ),
    )
    _table("normalize", {"clips": sum(r.status == "accepted" for r in recs)})


@app.command()
@data_errors
def organize(
    dataset: DatasetArg,
    config: ConfigOpt = None,
    overrides: Annotated[
        Path | None, typer.Option(help="CSV clip_id,phase that wins over the rules.")
    ] = None,
    reassign: Annotated[
        bool, typer.Option(help="Re-apply rules to clips that have a phase.")
    ] = False,
) -> None:
    """Assign curriculum phases 1-5 by the config's rules (and manual overrides).

    Example: aiprod data organize ./ds --overrides fixes.csv
    """
    from aiprod.data.config import load_config
    from aiprod.data.manifest import write_manifest
    from aiprod.data.organize import organize as run
    from aiprod.data.organize import read_overrides
    from aiprod.data.report import summary

    cfg = load_config(config)
    recs = run(
        _load(dataset),
        cfg.organize,
        overrides=read_overrides(overrides) if overrides else None,
        reassign=reassign,
    )
    write_manifest(recs, dataset)
    _table("phases", summary(recs)["per_phase"])


@app.command()
@data_errors
def report(dataset: DatasetArg, config: ConfigOpt = None) -> None:
    """Write manifest Parquet+CSV, report/summary.json and a contact sheet PNG per phase.

    Example: aiprod data report ./ds
    """
    import json

    from aiprod.data.config import load_config
    from aiprod.data.report import write_report

    cfg = load_config(config)
    info = write_report(_load(dataset), dataset, cfg.report)
    _table(
        f"report: {dataset}",
        {k: json.dumps(v) if isinstance(v, dict) else v for k, v in info.items()},
    )


@app.command()
@cli_errors(config_status=EXIT_FAILED, expected=(ValueError,))
def synth(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write clips/ and manifest into.")],
    n_per_phase: Annotated[int, typer.Option("--n-per-phase", "-n", min=1)] = 8,
    width: Annotated[int, typer.Option(min=8)] = 64,
    height: Annotated[int, typer.Option(min=8)] = 64,
    num_frames: Annotated[int, typer.Option("--num-frames", "-f", min=1)] = 16,
    fps: Annotated[float, typer.Option(min=1.0)] = 24.0,
    seed: Annotated[int, typer.Option()] = 0,
    phase: Annotated[
        list[int] | None, typer.Option("--phase", "-p", help="Only these phases (repeatable).")
    ] = None,
    min_gap: Annotated[
        float,
        typer.Option(
            "--min-gap",
            help="Keep subjects this far apart over the whole clip, as a fraction of the "
            "short side (0-0.25; 0.1 = 6.4 px at 64x64; 0 = default layout, where three "
            "subjects can touch).",
        ),
    ] = 0.0,
) -> None:
    """Render procedural captioned clips for curriculum phases 1-5 plus a manifest.

    Example: aiprod data synth ./synth -n 16 --width 64 --height 64 -f 17
    """
    from aiprod.builtin.grammar import PHASES
    from aiprod.builtin.synth import write_synth_dataset

    phases = tuple(phase) if phase else PHASES
    with _progress() as progress:
        task = progress.add_task("rendering", total=n_per_phase * len(phases))
        manifest = write_synth_dataset(
            out_dir,
            n_per_phase=n_per_phase,
            width=width,
            height=height,
            num_frames=num_frames,
            fps=fps,
            seed=seed,
            phases=phases,
            min_gap=min_gap,
            on_progress=lambda done, _total: progress.update(task, completed=done),
        )
    console.print(f"wrote {n_per_phase * len(phases)} clips; manifest: {manifest}")


if __name__ == "__main__":
    app()
