"""MP4 write -> decode round trips with real PyAV encoding; the conditioning-image checks."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest

from aiprod.core.errors import InvalidRequest
from aiprod.core.media import (
    MAX_IMAGE_BYTES,
    MediaError,
    check_image,
    decode_image,
    image_from_base64,
    probe,
    read_video,
    write_mp4,
)


def _frames(n: int = 9, h: int = 32, w: int = 48) -> np.ndarray:
    # Smooth gradients that move per frame: easy for H.264, distinct per frame.
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        out[i, ..., 0] = (xx * 4 + i * 20) % 256
        out[i, ..., 1] = (yy * 6) % 256
        out[i, ..., 2] = (128 + i * 8) % 256
    return out


@pytest.mark.parametrize("fps", [24, 30, 8])
def test_roundtrip_count_size_fps(tmp_path: Path, fps: int) -> None:
    frames = _frames()
    path = write_mp4(tmp_path / "out.mp4", frames, fps)
    decoded, got_fps = read_video(path)
    assert decoded.shape == frames.shape
    assert got_fps == pytest.approx(fps)
    # Lossy, but close: mean abs error of a few levels at crf 18.
    assert np.abs(decoded.astype(int) - frames.astype(int)).mean() < 6
    info = probe(path)
    assert (info.width, info.height, info.num_frames) == (48, 32, 9)
    assert info.fps == pytest.approx(fps)
    assert info.duration == pytest.approx(9 / fps, abs=1e-3)
    assert info.codec == "h264"
    assert not info.has_audio
    # Nothing but the final file is left behind.
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_audio_is_muxed(tmp_path: Path) -> None:
    rate = 16000
    t = np.arange(int(rate * 9 / 24)) / rate
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]  # (1, samples)
    path = write_mp4(tmp_path / "a.mp4", _frames(), 24, audio=tone, sample_rate=rate)
    info = probe(path)
    assert info.has_audio and info.audio_sample_rate == rate and info.audio_channels == 1
    frames, _ = read_video(path)
    assert frames.shape[0] == 9


def test_overwrite_is_atomic_replace(tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "v.mp4"
    write_mp4(dest, _frames(n=9), 24)
    write_mp4(dest, _frames(n=17), 24)
    assert probe(dest).num_frames == 17
    assert sorted(p.name for p in dest.parent.iterdir()) == ["v.mp4"]


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        (np.zeros((9, 32, 32), np.uint8), "shape"),
        (np.zeros((9, 32, 32, 3), np.float32), "uint8"),
        (np.zeros((9, 33, 32, 3), np.uint8), "even"),
        (np.zeros((0, 32, 32, 3), np.uint8), "empty"),
    ],
)
def test_bad_frames_are_rejected_before_writing(
    tmp_path: Path, frames: np.ndarray, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        write_mp4(tmp_path / "x.mp4", frames, 24)
    assert not list(tmp_path.iterdir())


def test_audio_without_rate_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        write_mp4(tmp_path / "x.mp4", _frames(), 24, audio=np.zeros((1, 100), np.float32))


def test_unreadable_files_raise_media_error(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="no such file"):
        probe(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all")
    with pytest.raises(MediaError):
        read_video(junk)


def test_long_video_roundtrip(tmp_path: Path) -> None:
    # Past x264's ~40-frame lookahead the muxer has rewritten the stream time base; 121 frames
    # (LTX's default length) must still mux with the right count and duration.
    frames = _frames(n=121, h=32, w=32)
    path = write_mp4(tmp_path / "long.mp4", frames, 24)
    info = probe(path)
    assert info.num_frames == 121 and info.duration == pytest.approx(121 / 24, abs=1e-3)
    decoded, fps = read_video(path)
    assert decoded.shape == frames.shape and fps == pytest.approx(24)


def _image_bytes(size: tuple[int, int], fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, format=fmt)
    return buf.getvalue()


def test_one_image_decoder_with_one_set_of_limits() -> None:
    """API (base64), CLI and engine (bytes) share these checks."""
    png = _image_bytes((16, 12), "PNG")
    assert check_image(png) == png
    assert image_from_base64("data:image/png;base64," + base64.b64encode(png).decode()) == png
    img = decode_image(_image_bytes((16, 12), "WEBP"))
    assert img.mode == "RGB" and img.size == (16, 12)
    bad = [
        (b"", "empty"),
        (b"\x89PNG" + b"0" * (MAX_IMAGE_BYTES), "larger than 10 MB"),
        (b"definitely not a png", "not a readable"),
        (_image_bytes((16, 16), "GIF"), "format GIF is not supported"),
        (_image_bytes((4, 16), "PNG"), "at least 8x8"),
    ]
    for data, message in bad:
        for decode in (check_image, decode_image):
            with pytest.raises(InvalidRequest, match=message) as err:
                decode(data)
            assert err.value.field == "image"
    with pytest.raises(InvalidRequest, match="not valid base64"):
        image_from_base64("not base64!")
