"""Real videos with known properties, built with PyAV (through aiprod.core.media)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from aiprod.builtin import grammar, render
from aiprod.core.media import write_mp4

W, H = 320, 256  # 256p: just passes validate.min_short_side


def moving(
    *, width: int = W, height: int = H, frames: int = 36, seed: int = 0, **kw: object
) -> np.ndarray:
    p = grammar.SynthParams(
        phase=1,
        shape=str(kw.get("shape", "circle")),
        color=str(kw.get("color", "red")),
        count=1,
        direction=str(kw.get("direction", "left")),
        background=str(kw.get("background", "black")),
    )
    return render.render(p, width=width, height=height, num_frames=frames, seed=seed)


@pytest.fixture(scope="session")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """good, slow, fps15, p200, truncated (two kinds), not_video, black, frozen, two_scenes."""
    d = tmp_path_factory.mktemp("videos")
    out: dict[str, Path] = {}
    out["good"] = write_mp4(d / "good.mp4", moving(), 24)
    out["fps15"] = write_mp4(d / "fps15.mp4", moving(frames=24), 15)
    out["p200"] = write_mp4(d / "p200.mp4", moving(width=356, height=200), 24)
    data = out["good"].read_bytes()
    out["truncated"] = d / "truncated.mp4"
    out["truncated"].write_bytes(data[: len(data) // 2])
    # The same cut on an MP4 whose index (moov) comes last: FFmpeg cannot open it at all.
    tail_index = d / "tail_index_full.mp4"
    with av.open(str(tail_index), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        for i, f in enumerate(moving(frames=24)):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = i
            for pkt in s.encode(vf):
                c.mux(pkt)
        for pkt in s.encode(None):
            c.mux(pkt)
    data2 = tail_index.read_bytes()
    tail_index.unlink()
    out["truncated_tail_index"] = d / "truncated_tail_index.mp4"
    out["truncated_tail_index"].write_bytes(data2[: len(data2) * 2 // 3])
    out["not_video"] = d / "not_video.mp4"
    out["not_video"].write_bytes(b"this is a text file, not a video\n" * 50)
    out["black"] = write_mp4(d / "black.mp4", np.zeros((36, H, W, 3), np.uint8), 24)
    still = moving(frames=1)
    out["frozen"] = write_mp4(d / "frozen.mp4", np.repeat(still, 36, axis=0), 24)
    # Slow, small, low-contrast motion must not read as frozen.
    slow = grammar.SynthParams(
        phase=1, shape="square", color="magenta", count=1, direction="down", speed="slow",
        background="gray", size=0.06,
    )  # fmt: skip
    out["slow"] = write_mp4(
        d / "slow.mp4", render.render(slow, width=W, height=H, num_frames=48, seed=3), 24
    )
    a = moving(frames=30, color="red", background="black", direction="left")
    b = moving(frames=30, color="blue", shape="square", background="gray", direction="up", seed=5)
    out["two_scenes"] = write_mp4(d / "two_scenes.mp4", np.concatenate([a, b]), 24)
    return out
