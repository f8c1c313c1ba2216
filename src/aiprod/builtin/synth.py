"""The built-in model's synthetic dataset: rendered clips of the five curriculum phases as
H.264 MP4s plus a curriculum manifest (``aiprod data synth``).

The clips are drawn by :func:`aiprod.builtin.grammar.draws`, captioned by
:func:`aiprod.builtin.grammar.caption` and rendered by :func:`aiprod.builtin.render.render`;
each is stored under its content address, so an interrupted run resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiprod.builtin.grammar import PHASES, SynthParams, caption, draws
from aiprod.builtin.render import SYNTH_VERSION, check_min_gap, check_size, render
from aiprod.data.frames import motion_score
from aiprod.data.manifest import ACCEPTED, ClipRecord, write_manifest

log = logging.getLogger(__name__)


def clip_key(
    params: SynthParams,
    *,
    width: int,
    height: int,
    num_frames: int,
    fps: float,
    seed: int,
    min_gap: float = 0.0,
) -> str:
    """Content address of a synthetic clip: same key, same pixels."""
    content: dict[str, Any] = {
        "v": SYNTH_VERSION,
        "params": params.to_dict(),
        "size": [width, height, num_frames, float(fps)],
        "seed": int(seed),
    }
    if min_gap:  # left out at the default, so earlier datasets keep their keys
        content["min_gap"] = float(min_gap)
    blob = json.dumps(content, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_synth_dataset(
    out_dir: str | Path,
    *,
    n_per_phase: int,
    width: int = 64,
    height: int = 64,
    num_frames: int = 16,
    fps: float = 24.0,
    seed: int = 0,
    phases: tuple[int, ...] = PHASES,
    min_gap: float = 0.0,
    on_progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Render ``n_per_phase`` clips for each phase as H.264 MP4s plus a manifest.

    ``min_gap`` keeps the subjects apart (see :func:`render`).

    Layout: ``out_dir/clips/phase{p}/{clip_id}.mp4`` and ``out_dir/manifest.parquet`` (+ .csv).
    Each row carries the caption, the phase, the parameters (``params`` with the render
    ``seed``), and ``source="synth"``, ``license="CC0-1.0"``. Clips whose content address is
    already on disk are not rendered again, so an interrupted run resumes. Returns the
    Parquet manifest path.
    """
    from aiprod.core.media import write_mp4

    if n_per_phase < 1:
        raise ValueError(f"n_per_phase must be >= 1, got {n_per_phase}")
    for p in phases:
        if p not in PHASES:
            raise ValueError(f"phase {p!r} is not a curriculum phase {list(PHASES)}")
    check_size(width=width, height=height, num_frames=num_frames, fps=fps)
    check_min_gap(min_gap)
    if width % 2 or height % 2:
        raise ValueError(f"H.264 needs even width and height, got {width}x{height}")
    root = Path(out_dir).absolute()  # so the manifest stores paths relative to it
    records: list[ClipRecord] = []
    total = n_per_phase * len(phases)
    done = 0
    size = {"width": width, "height": height, "num_frames": num_frames, "fps": fps}
    for phase in phases:
        for i, (params, rng) in enumerate(draws(phase, n_per_phase, seed)):
            clip_seed = int(rng.integers(0, 2**31 - 1))
            key = clip_key(params, **size, seed=clip_seed, min_gap=min_gap)
            clip_id = f"synth-p{phase}-{i:05d}-{key[:10]}"
            path = root / "clips" / f"phase{phase}" / f"{clip_id}.mp4"
            # Rendering is cheap next to encoding; re-render for the motion score, and
            # encode only what an earlier (interrupted) run did not finish.
            frames = render(params, **size, seed=clip_seed, min_gap=min_gap)
            if not path.exists():
                write_mp4(path, frames, fps=fps)
            motion = motion_score(frames)
            tags = ["synth", f"subjects:{params.count}", f"speed:{params.speed}"]
            if params.camera_pan != "none":
                tags.append("camera:pan")
            tags += [f"edge:{e}" for e in params.edge_cases]
            records.append(
                ClipRecord(
                    clip_id=clip_id,
                    path=str(path),
                    caption=caption(params),
                    phase=phase,
                    status=ACCEPTED,
                    source="synth",
                    license="CC0-1.0",
                    attribution=f"aiprod procedural generator v{SYNTH_VERSION}",
                    sha256=_sha256_file(path),
                    fps=float(fps),
                    width=width,
                    height=height,
                    num_frames=num_frames,
                    duration_s=num_frames / float(fps),
                    codec="h264",
                    pix_fmt="yuv420p",
                    has_audio=False,
                    motion_score=motion,
                    tags=tags,
                    params={
                        **params.to_dict(),
                        "seed": clip_seed,
                        "content_key": key,
                        **({"min_gap": min_gap} if min_gap else {}),
                    },
                )
            )
            done += 1
            if on_progress is not None:
                on_progress(done, total)
    manifest = write_manifest(records, root)
    log.info("wrote %d synthetic clips to %s", len(records), root)
    return manifest
