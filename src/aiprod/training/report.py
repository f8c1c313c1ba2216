"""Small report files: PNG contact sheets, MP4 samples and the eval HTML page."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch


def contact_sheet(
    videos: list[np.ndarray], *, frames_per_row: int = 5, labels: list[str] | None = None
) -> np.ndarray:
    """One row per video with ``frames_per_row`` evenly spaced frames: (H', W', 3) uint8."""
    rows = []
    for v in videos:
        idx = np.linspace(0, len(v) - 1, frames_per_row).round().astype(int)
        sep = np.full((v.shape[1], 2, 3), 255, np.uint8)
        row = np.concatenate([x for i in idx for x in (v[i], sep)][:-1], axis=1)
        rows.append(row)
        rows.append(np.full((2, row.shape[1], 3), 255, np.uint8))
    del labels
    return np.concatenate(rows[:-1], axis=0)


def write_png(path: Path, image: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(image).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def save_video_grid(video: torch.Tensor, folder: Path, *, fps: int = 24) -> Path:
    """Validation output: a PNG contact sheet and one MP4 per sample; returns the PNG."""
    from aiprod.core.media import write_mp4
    from aiprod.training.data import tensor_to_frames

    clips = [tensor_to_frames(v) for v in video]
    for i, c in enumerate(clips):
        write_mp4(folder / f"sample-{i:02d}.mp4", c, fps=fps)
    return write_png(folder / "sheet.png", contact_sheet(clips))


def write_html(path: Path, result: dict[str, Any], *, sheet: str | None) -> Path:
    """A one-page report: the headline metrics, per-attribute table, and the sample sheet."""
    m = result["metrics"]
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.4g}</td></tr>"
        if isinstance(v, float)
        else f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
        for k, v in m.items()
    )
    per = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(str(r.get(k)))}</td>"
            for k in (
                "prompt",
                "color_ok",
                "shape_ok",
                "count_ok",
                "direction_ok",
                "pred_color",
                "pred_shape",
                "pred_count",
                "pred_direction",
            )
        )
        + "</tr>"
        for r in result.get("per_prompt", [])[:40]
    )
    img = (
        f'<img src="{html.escape(sheet)}" style="image-rendering:pixelated;max-width:100%">'
        if sheet
        else ""
    )
    page = f"""<!doctype html><meta charset="utf-8"><title>aiprod eval</title>
<style>body{{font:14px sans-serif;margin:2em}}
td{{padding:2px 8px;border-bottom:1px solid #ddd}}</style>
<h1>aiprod eval: {html.escape(str(result.get("model", "")))}</h1>
<p>{html.escape(json.dumps(result.get("settings", {})))}</p>
<h2>Metrics</h2><table>{rows}</table>
<h2>Samples (generated; rows = prompts below, first rows)</h2>{img}
<h2>Per prompt (first 40)</h2><table><tr><th>prompt</th><th>color</th><th>shape</th>
<th>count</th><th>direction</th><th>pred color</th><th>pred shape</th><th>pred count</th>
<th>pred dir</th></tr>{per}</table>
"""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page)
    os.replace(tmp, path)
    return path
