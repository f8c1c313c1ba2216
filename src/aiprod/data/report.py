"""Report: manifest (Parquet + CSV), counts per phase, rejection reasons, licenses, and a
contact sheet PNG per phase (a few frames of each clip with its caption) for a person to look
at."""

from __future__ import annotations

import json
import logging
import textwrap
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aiprod.data._fs import atomic_write
from aiprod.data.config import ReportConfig
from aiprod.data.manifest import ACCEPTED, REJECTED, ClipRecord, write_manifest
from aiprod.data.validate import reason_codes

log = logging.getLogger(__name__)


def summary(records: Sequence[ClipRecord]) -> dict[str, Any]:
    """Counts per phase and status, rejection reason codes, licenses, sources, hours."""
    acc = [r for r in records if r.status == ACCEPTED]
    rej = [r for r in records if r.status == REJECTED]
    reasons: Counter[str] = Counter()
    for r in rej:
        reasons.update(set(reason_codes(r.reject_reason)))
    return {
        "clips": len(records),
        "accepted": len(acc),
        "rejected": len(rej),
        "pending": len(records) - len(acc) - len(rej),
        "per_phase": {str(p): sum(1 for r in acc if r.phase == p) for p in (1, 2, 3, 4, 5)}
        | {"unassigned": sum(1 for r in acc if r.phase is None)},
        "accepted_seconds": round(sum(r.duration_s for r in acc), 2),
        "rejected_reasons": dict(reasons.most_common()),
        "licenses": dict(Counter(r.license or "(none)" for r in acc).most_common()),
        "sources": dict(Counter(r.source or "(none)" for r in records).most_common()),
    }


def _thumbs(rec: ClipRecord, *, n: int, height: int) -> list[np.ndarray]:
    """``n`` evenly spaced frames of the clip (its cut if any), ``height`` px high."""
    import av

    frames: list[np.ndarray] = []
    with av.open(rec.path) as container:
        stream = container.streams.video[0]
        w, h = stream.codec_context.width, stream.codec_context.height
        tw = max(2, int(round(w * height / max(h, 1))))
        start = rec.start_s or 0.0
        end = rec.end_s if rec.end_s is not None else start + (rec.duration_s or 1e9)
        if start > 0:
            container.seek(int(start / stream.time_base), stream=stream, backward=True)
        for frame in container.decode(stream):
            t = float(frame.time or 0.0)
            if t < start - 1e-6:
                continue
            if t >= end - 1e-6:
                break
            frames.append(frame.to_ndarray(format="rgb24", width=tw, height=height))
    if not frames:
        return []
    idx = np.linspace(0, len(frames) - 1, num=min(n, len(frames))).round().astype(int)
    return [frames[i] for i in idx]


def contact_sheet(
    records: Sequence[ClipRecord],
    path: str | Path,
    *,
    frames: int = 4,
    thumb_height: int = 96,
    title: str = "",
) -> Path:
    """One row per clip: ``frames`` thumbnails and the caption/id underneath. Written atomically."""
    from PIL import Image, ImageDraw

    rows: list[tuple[list[np.ndarray], str]] = []
    for rec in records:
        try:
            thumbs = _thumbs(rec, n=frames, height=thumb_height)
        except Exception as exc:  # a sheet must not die on one unreadable clip
            log.warning("contact sheet: cannot read %s: %s", rec.path, exc)
            continue
        if thumbs:
            rows.append((thumbs, f"{rec.clip_id}  {rec.caption}"[:400]))
    line_h, pad = 12, 4
    width = max([sum(t.shape[1] for t in th) + pad * (len(th) + 1) for th, _ in rows] + [480])
    # PIL's default font is ~6 px per character: wrap captions to the sheet's width.
    wrapped = [textwrap.wrap(label, width=max(20, (width - 2 * pad) // 6)) for _, label in rows]
    height = 20 + sum(thumb_height + line_h * len(w) + 2 * pad for w in wrapped) + pad
    sheet = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 4), title or f"{len(rows)} clips", fill=(240, 240, 240))
    y = 20
    for (thumbs, _), lines in zip(rows, wrapped, strict=True):
        x = pad
        for t in thumbs:
            sheet.paste(Image.fromarray(t), (x, y))
            x += t.shape[1] + pad
        for k, line in enumerate(lines):
            draw.text((pad, y + thumb_height + 2 + k * line_h), line, fill=(220, 220, 220))
        y += thumb_height + line_h * len(lines) + 2 * pad
    out = atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))
    return out


def write_report(
    records: Sequence[ClipRecord], out_dir: str | Path, cfg: ReportConfig | None = None
) -> dict[str, Any]:
    """Write the manifest, ``report/summary.json`` and ``report/phase{N}.png``; return summary."""
    cfg = cfg or ReportConfig()
    root = Path(out_dir)
    write_manifest(records, root)
    info = summary(records)
    sheets = {}
    for phase in (1, 2, 3, 4, 5):
        clips = [r for r in records if r.status == ACCEPTED and r.phase == phase]
        if not clips:
            continue
        # Spread the picks over the phase rather than showing only the first few.
        idx = np.linspace(0, len(clips) - 1, num=min(cfg.contact_sheet_clips, len(clips)))
        picks = [clips[i] for i in sorted(set(idx.round().astype(int).tolist()))]
        sheet = contact_sheet(
            picks,
            root / "report" / f"phase{phase}.png",
            frames=cfg.contact_sheet_frames,
            thumb_height=cfg.thumb_height,
            title=f"phase {phase}: {len(clips)} clips (showing {len(picks)})",
        )
        sheets[str(phase)] = str(sheet.relative_to(root))
    info["contact_sheets"] = sheets
    summary_text = json.dumps(info, indent=2, sort_keys=True)
    atomic_write(root / "report" / "summary.json", lambda tmp: tmp.write_text(summary_text))
    return info
