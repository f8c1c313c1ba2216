"""Normalize clips to H.264 yuv420p MP4 at a fixed frame rate, short side resized.

Output files are content-addressed: the name is a hash of the source's SHA-256, the cut
(``start_s``/``end_s``) and the normalize settings, so re-running skips what is done and a
settings change produces new files instead of silently mixing old and new. Files are written
through :func:`aiprod.core.media.write_mp4` (temp file + rename). Audio is dropped: the
training data is video-only.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from aiprod.core.errors import AiprodError
from aiprod.data.config import NormalizeConfig
from aiprod.data.ingest import sha256_file
from aiprod.data.manifest import ACCEPTED, REJECTED, ClipRecord
from aiprod.data.parallel import run_parallel_where

log = logging.getLogger(__name__)

NORMALIZE_VERSION = 1
MAX_FRAME_BYTES = 1_500_000_000  # refuse to hold more than this in memory for one clip


def output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Scale so the short side is ``short_side`` (never upscale); both sides even."""
    scale = min(1.0, short_side / max(1, min(width, height)))
    w = max(2, int(round(width * scale / 2)) * 2)
    h = max(2, int(round(height * scale / 2)) * 2)
    return w, h


def _cut(rec: ClipRecord) -> tuple[float | None, float | None]:
    """The cut of the source this row stands for (kept in checks once normalized)."""
    if "normalize_key" in rec.checks:
        return rec.checks.get("source_start_s"), rec.checks.get("source_end_s")
    return rec.start_s, rec.end_s


def normalize_key(rec: ClipRecord, cfg: NormalizeConfig, source_sha: str) -> str:
    start, end = _cut(rec)
    blob = json.dumps(
        {
            "v": NORMALIZE_VERSION,
            "src": source_sha,
            "start": start,
            "end": end,
            "cfg": cfg.model_dump(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def decode_resampled(
    path: str | Path,
    *,
    fps: float,
    start_s: float | None = None,
    end_s: float | None = None,
    width: int | None = None,
    height: int | None = None,
) -> np.ndarray:
    """Decode ``[start_s, end_s)`` at exactly ``fps`` (repeat/drop frames), resized by swscale.

    Output frame k shows the last source frame at or before ``start + k / fps``.
    """
    import av

    start = start_s or 0.0
    eps = 1e-6
    out: list[np.ndarray] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if start > 0:
            container.seek(int(start / stream.time_base), stream=stream, backward=True)
        k = 0
        prev: np.ndarray | None = None
        prev_t = 0.0
        for frame in container.decode(stream):
            t = float(frame.time) if frame.time is not None else prev_t + 1.0 / fps
            if end_s is not None and t >= end_s - eps:
                break
            # Every output time before this frame shows the previous frame.
            while prev is not None and start + k / fps < t - eps:
                out.append(prev)
                k += 1
            prev = frame.to_ndarray(
                format="rgb24", width=width, height=height, interpolation="AREA"
            )
            prev_t = t
            if len(out) * prev.nbytes > MAX_FRAME_BYTES:
                raise AiprodError(
                    f"{path}: clip too long to normalize in memory; run `aiprod data split` "
                    "first (it cuts clips to split.max_clip_s)",
                    code="clip_too_long",
                )
        if prev is not None:
            # The last frame lasts one source frame period, or until the cut's end.
            src_rate = float(stream.average_rate or fps)
            stop = prev_t + 1.0 / src_rate
            if end_s is not None:
                stop = end_s
            while start + k / fps < stop - eps:
                out.append(prev)
                k += 1
    if not out:
        raise AiprodError(f"{path}: no frames in [{start}, {end_s}) to normalize")
    return np.stack(out)


def normalize_clip(rec: ClipRecord, cfg: NormalizeConfig, out_dir: Path) -> ClipRecord:
    """Normalize one clip into ``out_dir/clips`` (skipped when its output already exists)."""
    from aiprod.core.media import MediaError, write_mp4

    source_sha = str(rec.checks.get("source_sha256") or rec.sha256)
    if not source_sha:
        source_sha = sha256_file(rec.path)
    key = normalize_key(rec, cfg, source_sha)
    dest = out_dir / "clips" / f"{key}.mp4"
    checks = dict(rec.checks)
    if "normalize_key" in rec.checks and Path(rec.path).resolve() == dest.resolve():
        return rec  # this very row is already the normalized clip, with these settings
    if "normalize_key" in rec.checks:
        # Normalized before with other settings: start again from the source, not this copy.
        from aiprod.core.media import probe

        src = str(checks["source_path"])
        info = probe(src)
        start, end = _cut(rec)
        rec = rec.replace(path=src, width=info.width, height=info.height, start_s=start, end_s=end)
    if not dest.exists():
        w, h = output_size(rec.width, rec.height, cfg.short_side) if rec.width else (None, None)
        try:
            frames = decode_resampled(
                rec.path, fps=cfg.fps, start_s=rec.start_s, end_s=rec.end_s, width=w, height=h
            )
            write_mp4(dest, frames, cfg.fps, crf=cfg.crf, preset=cfg.preset, tune=cfg.tune or None)
        except (AiprodError, MediaError, ValueError, OSError) as exc:
            msg = exc.message if isinstance(exc, AiprodError) else str(exc)
            return rec.replace(status=REJECTED, reject_reason=f"normalize_failed: {msg}")
        n, oh, ow = frames.shape[:3]
    else:
        from aiprod.core.media import probe

        info = probe(dest)
        n, oh, ow = info.num_frames, info.height, info.width
    start, end = _cut(rec)
    checks.update(
        source_sha256=source_sha,
        source_path=str(checks.get("source_path") or rec.path),
        source_start_s=start,
        source_end_s=end,
        normalize_key=key,
    )
    return rec.replace(
        start_s=None,  # the normalized file is the cut; its own timeline starts at 0
        end_s=None,
        path=str(dest),
        sha256=sha256_file(dest),
        fps=float(cfg.fps),
        width=int(ow),
        height=int(oh),
        num_frames=int(n),
        duration_s=round(n / cfg.fps, 4),
        codec="h264",
        pix_fmt="yuv420p",
        has_audio=False,
        checks=checks,
    )


def normalize(
    records: Sequence[ClipRecord],
    cfg: NormalizeConfig,
    out_dir: str | Path,
    *,
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[ClipRecord]:
    """Normalize every accepted clip in parallel; rejected rows pass through unchanged."""
    out, results = run_parallel_where(
        functools.partial(normalize_clip, cfg=cfg, out_dir=Path(out_dir)),
        records,
        lambda r: r.status == ACCEPTED,
        workers=workers,
        on_progress=on_progress,
    )
    log.info("normalized %d clips into %s", len(results), Path(out_dir) / "clips")
    return out
