"""Probe and validate clips: container facts, decodability, black/frozen, motion score.

Every check's outcome goes into the record's ``checks``; a rejected clip keeps every reason
it failed in ``reject_reason`` (``code: detail``, joined by ``; ``), first the most basic.
Reason codes: ``not_a_video``, ``codec_not_allowed``, ``fps_too_low``, ``resolution_too_low``,
``too_short``, ``too_long``, ``corrupt``, ``truncated``, ``black``, ``frozen``. A reason a
threshold decided names the setting and its value (``validate.min_short_side=256``) and how to
keep the clip. The thresholds used are stored in ``checks["thresholds"]``: a later run with
other thresholds checks the clips it rejected again (``--recheck`` forces it).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aiprod.core.media import MediaError, MediaInfo, probe
from aiprod.data.config import ValidateConfig
from aiprod.data.manifest import ACCEPTED, REJECTED, ClipRecord
from aiprod.data.parallel import run_parallel_where

log = logging.getLogger(__name__)

ANALYZE_SIDE = 128  # frames are analyzed as luma at most this many pixels on the long side
ANALYZE_RATE = 8.0  # ... at about this many frames per second (slow motion adds up between them)
CHANGED_LUMA = 6.0  # a pixel whose luma moves more than this between analyzed frames "changed"


@dataclass(frozen=True)
class Analysis:
    """What decoding a clip tells (luma statistics on frames shrunk to ~64 px)."""

    decoded_frames: int  # frames decoded
    total_frames: int  # video packets present in the file (one per frame for video codecs)
    mean_luma: float
    p98_luma: float  # 98th percentile: low in an underexposed clip
    p999_luma: float  # 99.9th percentile: near 0 only when (almost) nothing in the clip is lit
    motion_score: float  # mean |luma change| between frames ~1/8 s apart (0..255)
    changed_fraction: float  # mean fraction of pixels that change between those frames
    decode_error: str = ""


def analyze(path: str | Path, *, max_seconds: float = 0.0) -> Analysis:
    """Decode the first ``max_seconds`` (0 = all) as small luma frames and measure them."""
    import av

    # Pass 1: count the packets that are really in the file (cheap, no decoding); a file cut
    # short still has a header promising every frame, but fewer packets.
    packets = 0
    error = ""
    with av.open(str(path)) as container:
        try:
            packets = sum(1 for p in container.demux(container.streams.video[0]) if p.size > 0)
        except av.FFmpegError as exc:
            error = str(exc)
    lumas: list[np.ndarray] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        w, h = stream.codec_context.width, stream.codec_context.height
        scale = min(1.0, ANALYZE_SIDE / max(w, h, 1))
        sw, sh = max(2, int(round(w * scale))), max(2, int(round(h * scale)))
        rate = float(stream.average_rate or stream.guessed_rate or ANALYZE_RATE)
        every = max(1, int(round(rate / ANALYZE_RATE)))
        decoded = 0
        try:
            for frame in container.decode(stream):
                if decoded % every == 0:
                    lumas.append(frame.to_ndarray(format="gray", width=sw, height=sh))
                decoded += 1
                if max_seconds > 0 and frame.time is not None and frame.time >= max_seconds:
                    break
        except av.FFmpegError as exc:
            error = error or str(exc)
    mean_luma = p98 = p999 = motion = changed = 0.0
    if lumas:
        y = np.stack(lumas).astype(np.float32)  # (F, h, w)
        mean_luma = float(y.mean())
        p98, p999 = (float(v) for v in np.percentile(y, [98, 99.9]))
        if len(y) > 1:
            d = np.abs(np.diff(y, axis=0))
            motion = float(d.mean())
            changed = float((d > CHANGED_LUMA).mean())
    return Analysis(
        decoded_frames=decoded if lumas else 0,
        total_frames=packets,
        mean_luma=mean_luma,
        p98_luma=p98,
        p999_luma=p999,
        motion_score=motion,
        changed_fraction=changed,
        decode_error=error,
    )


def mp4_cut_short(path: str | Path) -> str | None:
    """Why an MP4/MOV that FFmpeg cannot open looks cut short, or None if it does not.

    Walks the top-level boxes: a file that starts like an MP4 (``ftyp``) but whose last box
    runs past the end of the file, or that has media data (``mdat``) but no index (``moov``,
    written last unless "faststart"), was most likely truncated in a copy or download.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(12)
            if len(head) < 8 or head[4:8] != b"ftyp":
                return None
            fh.seek(0)
            pos, boxes = 0, []
            while pos + 8 <= size:
                fh.seek(pos)
                hdr = fh.read(16)
                box_len, kind = int.from_bytes(hdr[:4], "big"), hdr[4:8]
                if box_len == 1 and len(hdr) >= 16:
                    box_len = int.from_bytes(hdr[8:16], "big")
                elif box_len == 0:
                    box_len = size - pos  # "to the end of the file"
                if box_len < 8:
                    return f"broken MP4 box at byte {pos}"
                boxes.append(kind)
                if pos + box_len > size:
                    return (
                        f"MP4 box {kind.decode('latin-1')!r} runs {pos + box_len - size} bytes "
                        "past the end of the file (cut short in a copy or download?)"
                    )
                pos += box_len
    except OSError:
        return None
    if b"mdat" in boxes and b"moov" not in boxes:
        return "MP4 has media data but no index (moov): cut short before it was written?"
    return None


def _facts(rec: ClipRecord, info: MediaInfo) -> ClipRecord:
    return rec.replace(
        fps=round(info.fps, 4),
        width=info.width,
        height=info.height,
        num_frames=info.num_frames,
        duration_s=round(info.duration, 4),
        codec=info.codec,
        has_audio=info.has_audio,
    )


def thresholds(cfg: ValidateConfig) -> dict[str, object]:
    """The settings a validation used (stored with every validated clip)."""
    return cfg.model_dump(mode="json")


def _setting(name: str, value: object, change: str = "lower") -> str:
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    return (
        f" (below validate.{name}={shown}, {change} `validate.{name}` in your data config "
        "to keep it)"
    )


def validate_clip(rec: ClipRecord, cfg: ValidateConfig) -> ClipRecord:
    """Probe, decode and check one clip; return it accepted or rejected with its reasons."""
    reasons: list[str] = []
    checks: dict[str, object] = dict(rec.checks)
    checks["thresholds"] = thresholds(cfg)
    try:
        info = probe(rec.path)
    except MediaError as exc:
        checks["probe"] = "failed"
        cut = mp4_cut_short(rec.path)
        reason = f"truncated: {cut}" if cut else f"not_a_video: {exc.message}"
        return rec.replace(status=REJECTED, reject_reason=reason, checks=checks)
    rec = _facts(rec, info)
    checks["probe"] = "ok"
    if cfg.allowed_codecs and info.codec not in cfg.allowed_codecs:
        reasons.append(
            f"codec_not_allowed: {info.codec} is not in validate.allowed_codecs="
            f"{cfg.allowed_codecs} (add it, or empty the list, in your data config to keep it)"
        )
    if info.fps < cfg.min_fps:
        reasons.append(f"fps_too_low: {info.fps:.3g} fps" + _setting("min_fps", cfg.min_fps))
    short = min(info.width, info.height)
    if short < cfg.min_short_side:
        reasons.append(
            f"resolution_too_low: {info.width}x{info.height} (short side {short}px)"
            + _setting("min_short_side", cfg.min_short_side)
        )
    if info.duration < cfg.min_duration_s:
        reasons.append(
            f"too_short: {info.duration:.2f}s" + _setting("min_duration_s", cfg.min_duration_s)
        )
    if info.duration > cfg.max_duration_s:
        reasons.append(
            f"too_long: {info.duration:.1f}s (above validate.max_duration_s="
            f"{cfg.max_duration_s:g}, raise `validate.max_duration_s` in your data config to "
            "keep it)"
        )
    try:
        a = analyze(rec.path, max_seconds=cfg.analyze_max_s)
    except (MediaError, OSError) as exc:
        reasons.append(f"corrupt: {exc}")
        a = None
    if a is not None:
        checks.update(
            decoded_frames=a.decoded_frames,
            total_frames=a.total_frames,
            mean_luma=round(a.mean_luma, 3),
            p98_luma=round(a.p98_luma, 3),
            p999_luma=round(a.p999_luma, 3),
            changed_fraction=round(a.changed_fraction, 6),
            motion_score=round(a.motion_score, 4),
        )
        rec = rec.replace(motion_score=round(a.motion_score, 4))
        promised = info.num_frames
        if promised and a.total_frames < cfg.min_decoded_fraction * promised:
            reasons.append(
                f"truncated: {a.total_frames} of {promised} frames present (under "
                f"validate.min_decoded_fraction={cfg.min_decoded_fraction:g})"
            )
        elif a.decoded_frames == 0:
            reasons.append(f"corrupt: no frame decodes ({a.decode_error or 'empty stream'})")
        elif a.decode_error:
            reasons.append(f"corrupt: {a.decode_error}")
        if a.decoded_frames:
            if a.p999_luma <= cfg.black_max_luma:
                reasons.append(
                    f"black: 99.9th-percentile luma {a.p999_luma:.1f} is at or under "
                    f"validate.black_max_luma={cfg.black_max_luma:g} (lower it in your data "
                    "config to keep it)"
                )
            elif a.decoded_frames > 1 and a.changed_fraction <= cfg.frozen_max_changed:
                reasons.append(
                    f"frozen: {a.changed_fraction:.2%} of pixels change, at or under "
                    f"validate.frozen_max_changed={cfg.frozen_max_changed:g} (lower it in your "
                    "data config to keep it)"
                )
    checks["valid"] = not reasons
    if reasons:
        return rec.replace(status=REJECTED, reject_reason="; ".join(reasons), checks=checks)
    return rec.replace(status=ACCEPTED, reject_reason="", checks=checks)


def reason_codes(reject_reason: str) -> list[str]:
    """``"fps_too_low: 15 < 24; black: ..."`` -> ``["fps_too_low", "black"]``."""
    return [part.split(":", 1)[0].strip() for part in reject_reason.split(";") if part.strip()]


def _rejected_by_validate(rec: ClipRecord) -> bool:
    return rec.checks.get("valid") is False or rec.checks.get("probe") == "failed"


def validate(
    records: Sequence[ClipRecord],
    cfg: ValidateConfig,
    *,
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    recheck: bool = False,
) -> list[ClipRecord]:
    """Validate every record not yet rejected, in parallel. A clip this stage rejected is
    checked again when the thresholds differ from those it was rejected with (or with
    ``recheck``); clips other stages rejected pass through.

    Scenes cut by ``split`` and not yet normalized (``start_s`` set) keep their source's
    result: they are checked again once ``normalize`` has made them files of their own.
    """
    current = thresholds(cfg)

    def due(r: ClipRecord) -> bool:
        if r.start_s is not None:
            return False
        if r.status != REJECTED:
            return True
        return _rejected_by_validate(r) and (recheck or r.checks.get("thresholds") != current)

    again = sum(1 for r in records if r.status == REJECTED and due(r))
    if again:
        why = "--recheck" if recheck else "the thresholds changed since they were rejected"
        log.info("checking %d rejected clips again (%s)", again, why)
    out, results = run_parallel_where(
        functools.partial(validate_clip, cfg=cfg),
        records,
        due,
        workers=workers,
        on_progress=on_progress,
    )
    n_rej = sum(1 for r in results if r.status == REJECTED)
    log.info(
        "validated %d clips: %d accepted, %d rejected", len(results), len(results) - n_rej, n_rej
    )
    return out
