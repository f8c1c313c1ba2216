"""Scene/shot split with PySceneDetect, then a clip-length window.

Splitting does not re-encode: each scene becomes a manifest row pointing at its source file
with ``start_s``/``end_s`` (and ``parent_id``); ``normalize`` cuts and re-encodes it. Scenes
shorter than ``min_clip_s`` are dropped; longer than ``max_clip_s`` are cut into equal pieces.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence

from aiprod.data.config import SplitConfig
from aiprod.data.manifest import ACCEPTED, REJECTED, ClipRecord
from aiprod.data.parallel import run_parallel

log = logging.getLogger(__name__)


def detect_scenes(
    path: str, *, threshold: float, min_scene_s: float = 0.5
) -> list[tuple[float, float]]:
    """Scene boundaries in seconds, ``[(start, end), ...]`` covering the whole video."""
    from scenedetect import ContentDetector, detect

    # min_scene_len in frames is unknown before opening; a short fixed floor avoids flashes
    # splitting a shot, and the clip window below applies the configured minimum.
    scenes = detect(
        path,
        ContentDetector(threshold=threshold, min_scene_len=max(1, int(min_scene_s * 24))),
        start_in_scene=True,
    )
    return [(s.get_seconds(), e.get_seconds()) for s, e in scenes]


def window(
    scenes: Sequence[tuple[float, float]], *, min_s: float, max_s: float
) -> list[tuple[float, float]]:
    """Drop scenes shorter than ``min_s``; cut longer than ``max_s`` into equal pieces."""
    out: list[tuple[float, float]] = []
    for start, end in scenes:
        length = end - start
        if length + 1e-6 < min_s:
            continue
        pieces = max(1, math.ceil(length / max_s - 1e-9))
        step = length / pieces
        for k in range(pieces):
            out.append((round(start + k * step, 4), round(start + (k + 1) * step, 4)))
    return out


def split_clip(rec: ClipRecord, cfg: SplitConfig) -> list[ClipRecord]:
    """The scenes of one accepted clip as new rows (or the clip rejected if none is usable)."""
    scenes = detect_scenes(rec.path, threshold=cfg.threshold)
    if not scenes and rec.duration_s > 0:
        scenes = [(0.0, rec.duration_s)]
    pieces = window(scenes, min_s=cfg.min_clip_s, max_s=cfg.max_clip_s)
    if not pieces:
        return [
            rec.replace(
                status=REJECTED,
                reject_reason=(
                    f"no_usable_scene: {len(scenes)} scene(s), none >= {cfg.min_clip_s:g}s"
                ),
            )
        ]
    out = []
    for k, (start, end) in enumerate(pieces):
        checks = dict(rec.checks)
        checks.update(scenes_in_source=len(scenes), scene_index=k)
        out.append(
            rec.replace(
                clip_id=f"{rec.clip_id}-s{k:03d}",
                parent_id=rec.clip_id,
                start_s=start,
                end_s=end,
                duration_s=round(end - start, 4),
                num_frames=int(round((end - start) * rec.fps)) if rec.fps else 0,
                checks=checks,
            )
        )
    return out


def split(
    records: Sequence[ClipRecord],
    cfg: SplitConfig,
    *,
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[ClipRecord]:
    """Split every accepted, not-yet-split clip; other rows pass through unchanged."""
    todo = [i for i, r in enumerate(records) if r.status == ACCEPTED and r.start_s is None]
    results = run_parallel(
        functools.partial(split_clip, cfg=cfg),
        [records[i] for i in todo],
        workers=workers,
        on_progress=on_progress,
    )
    by_index = dict(zip(todo, results, strict=True))
    out: list[ClipRecord] = []
    for i, rec in enumerate(records):
        out.extend(by_index.get(i, [rec]))
    log.info("split %d clips into %d rows", len(todo), sum(len(r) for r in results))
    return out
