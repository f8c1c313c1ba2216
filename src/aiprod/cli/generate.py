"""``aiprod generate``: one video straight from the engine, no server, with a progress bar."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from aiprod.cli.common import load_settings
from aiprod.cli.errors import cli_errors, err, warn
from aiprod.core.errors import AiprodError


@cli_errors
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
    settings = load_settings()
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
    from aiprod import engine

    # defaults filled, limits and what the model's files can do checked (the API's checks:
    # bad input fails here, before the model loads)
    req = engine.build_request(entry, {**params, "image": image_bytes})
    from aiprod.core.vocabulary import prompt_warnings

    for line in prompt_warnings(entry, req.prompt, req.negative_prompt):
        warn(line)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=err,
    ) as bar:
        task = bar.add_task(f"loading {entry.id}", total=1.0)
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
