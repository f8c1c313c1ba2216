"""MP4 writing, reading and probing with PyAV (no torch).

Used by the engine (write the generated video), the worker/CLI (the output file) and the data
pipeline (probe and decode source clips). Frames are always ``(F, H, W, 3)`` uint8 RGB.

- :func:`write_mp4`: H.264 yuv420p at an exact frame rate (+ optional AAC audio), written to a
  temp file in the destination folder and renamed, so a reader never sees half a file.
- :func:`read_video`: decode every frame back to RGB, with the stream's frame rate.
- :func:`probe`: size, fps, frame count, duration, codec and audio presence, without decoding.
- :func:`image_from_base64`, :func:`check_image`, :func:`decode_image`: the one decoder of
  conditioning images, with one set of limits, used by the API (at submit), the CLI and the
  engine (before any tensor work).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import uuid
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np

from aiprod.core.errors import AiprodError, InvalidRequest

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "IMAGE_FORMATS",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "MIN_IMAGE_SIDE",
    "MediaError",
    "MediaInfo",
    "check_image",
    "decode_image",
    "image_from_base64",
    "probe",
    "read_video",
    "write_mp4",
]

#: Conditioning images: the limits for every way in (API, CLI, engine).
MAX_IMAGE_BYTES = 10 * 1024 * 1024
#: Declared width x height above this is refused before any pixel is decoded (40 MP: 160 MB as
#: RGBA while decoding; a 12000x12000 PNG can be 410 KB and 432 MB decoded). Pillow's own
#: decompression-bomb guard (89 MP warning, 179 MP error) is mapped to the same error.
MAX_IMAGE_PIXELS = 40_000_000
MIN_IMAGE_SIDE = 8
IMAGE_FORMATS = frozenset({"PNG", "JPEG", "WEBP"})


class MediaError(AiprodError):
    """A media file cannot be read (missing, not a video, corrupt)."""

    status_code = 400
    code = "invalid_media"


@dataclass(frozen=True)
class MediaInfo:
    """What :func:`probe` learns about a file from its container, without decoding."""

    width: int
    height: int
    fps: float
    num_frames: int
    duration: float  # seconds
    codec: str
    has_audio: bool
    audio_sample_rate: int | None = None
    audio_channels: int | None = None


def _as_rate(fps: float | int | Fraction) -> Fraction:
    if isinstance(fps, bool) or not isinstance(fps, int | float | Fraction):
        raise ValueError(f"fps must be a number, got {type(fps).__name__}")
    rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    return rate


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (F, H, W, 3), got {tuple(frames.shape)}")
    if frames.dtype != np.uint8:
        raise ValueError(
            f"frames must be uint8 RGB, got {frames.dtype} (scale to 0..255 and cast first)"
        )
    n, h, w, _ = frames.shape
    if n < 1:
        raise ValueError("frames is empty: need at least one frame")
    if h % 2 or w % 2:
        raise ValueError(
            f"frame size {w}x{h} must have even width and height for H.264 yuv420p "
            "(crop or pad by one pixel)"
        )
    return np.ascontiguousarray(frames)


def _check_audio(audio: np.ndarray, sample_rate: int | None) -> tuple[np.ndarray, int]:
    if sample_rate is None or isinstance(sample_rate, bool) or int(sample_rate) <= 0:
        raise ValueError("audio needs sample_rate (a positive integer, e.g. 24000)")
    arr = np.asarray(audio, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] not in (1, 2):
        raise ValueError(
            f"audio must have shape (channels, samples) with 1 or 2 channels, got {arr.shape}"
        )
    return np.ascontiguousarray(np.clip(arr, -1.0, 1.0)), int(sample_rate)


def _encode_audio(
    stream: av.audio.stream.AudioStream,
    container: av.container.OutputContainer,
    audio: np.ndarray,
    rate: int,
) -> None:
    channels = audio.shape[0]
    chunk = 1024  # AAC frame size; the encoder re-buffers anyway, this keeps pts simple
    for start in range(0, audio.shape[1], chunk):
        piece = np.ascontiguousarray(audio[:, start : start + chunk])  # (C, n) planar float
        frame = av.AudioFrame.from_ndarray(
            piece, format="fltp", layout="mono" if channels == 1 else "stereo"
        )
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def write_mp4(
    path: str | os.PathLike[str],
    frames: np.ndarray,
    fps: float | int | Fraction,
    *,
    audio: np.ndarray | None = None,
    sample_rate: int | None = None,
    crf: int = 18,
    preset: str = "medium",
    tune: str | None = None,
) -> Path:
    """Encode ``frames`` (F, H, W, 3) uint8 RGB as an H.264 yuv420p MP4 at exactly ``fps``.

    ``audio`` (channels, samples) float32 in [-1, 1] with ``sample_rate`` is muxed as AAC.
    ``tune`` is passed to x264 (``fastdecode``: ~1/3 cheaper to decode, slightly larger).
    The file is written to a temp name in the same folder and renamed into place.
    """
    frames = _check_frames(frames)
    rate = _as_rate(fps)
    audio_arr: np.ndarray | None = None
    audio_rate = 0
    if audio is not None:
        audio_arr, audio_rate = _check_audio(audio, sample_rate)

    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
    n, h, w, _ = frames.shape
    try:
        with av.open(
            str(tmp), mode="w", format="mp4", options={"movflags": "+faststart"}
        ) as container:
            stream = container.add_stream("libx264", rate=rate)
            stream.width = w
            stream.height = h
            stream.pix_fmt = "yuv420p"
            stream.time_base = 1 / rate
            options: dict[str, object] = {"crf": str(crf), "preset": preset}
            if tune:  # e.g. "fastdecode" for training data that is decoded many times
                options["tune"] = tune
            stream.options = options
            # Every stream must exist before the first packet is muxed (the header is written then).
            astream = None
            if audio_arr is not None:
                layout = "mono" if audio_arr.shape[0] == 1 else "stereo"
                astream = container.add_stream("aac", rate=audio_rate, layout=layout)
                astream.bit_rate = 128_000
            for i in range(n):
                frame = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
                frame.pts = i
                # Not stream.time_base: the muxer rewrites that (mp4: 1/12288) at the first
                # packet, which x264's ~40-frame lookahead delays; later frames would get
                # pts in the wrong unit and the mux fails with EINVAL past ~41 frames.
                frame.time_base = 1 / rate
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
            if astream is not None and audio_arr is not None:
                _encode_audio(astream, container, audio_arr, audio_rate)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _open(path: str | os.PathLike[str]) -> av.container.InputContainer:
    p = Path(path)
    if not p.is_file():
        raise MediaError(f"{p}: no such file")
    try:
        return av.open(str(p), mode="r")
    except av.FFmpegError as exc:
        raise MediaError(f"{p}: not a readable video file ({exc})") from exc


def _stream_fps(stream: av.video.stream.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def read_video(path: str | os.PathLike[str]) -> tuple[np.ndarray, float]:
    """Decode every frame of the first video stream: ``(frames (F, H, W, 3) uint8, fps)``."""
    with _open(path) as container:
        if not container.streams.video:
            raise MediaError(f"{path}: has no video stream")
        stream = container.streams.video[0]
        fps = _stream_fps(stream)
        try:
            out = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        except av.FFmpegError as exc:
            raise MediaError(f"{path}: decoding failed ({exc})") from exc
    if not out:
        raise MediaError(f"{path}: the video stream has no frames")
    return np.stack(out), fps


def probe(path: str | os.PathLike[str]) -> MediaInfo:
    """Read size, fps, frame count, duration, codec and audio info from the container."""
    with _open(path) as container:
        if not container.streams.video:
            raise MediaError(f"{path}: has no video stream")
        v = container.streams.video[0]
        fps = _stream_fps(v)
        if v.duration is not None and v.time_base is not None:
            duration = float(v.duration * v.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        num_frames = int(v.frames or 0)
        if num_frames == 0:
            # Some containers (e.g. webm, raw streams) do not store a count: count packets.
            num_frames = sum(1 for p in container.demux(v) if p.size > 0)
        if duration == 0.0 and fps > 0:
            duration = num_frames / fps
        a = container.streams.audio[0] if container.streams.audio else None
        return MediaInfo(
            width=int(v.codec_context.width),
            height=int(v.codec_context.height),
            fps=fps,
            num_frames=num_frames,
            duration=duration,
            codec=v.codec_context.name,
            has_audio=a is not None,
            audio_sample_rate=int(a.codec_context.sample_rate) if a is not None else None,
            audio_channels=int(a.codec_context.channels) if a is not None else None,
        )


# --- Conditioning images --------------------------------------------------------------------


def image_from_base64(
    data: str, *, min_width: int = MIN_IMAGE_SIDE, min_height: int = MIN_IMAGE_SIDE
) -> bytes:
    """Base64 (or a ``data:`` URL) -> image bytes, checked by :func:`check_image`."""
    if data.startswith("data:"):
        _, _, data = data.partition(",")
    if len(data) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise InvalidRequest(
            f"image is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MB", field="image"
        )
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(
            "image is not valid base64: send the PNG/JPEG/WebP file base64-encoded", field="image"
        ) from exc
    return check_image(raw, min_width=min_width, min_height=min_height)


def _too_large() -> InvalidRequest:
    return InvalidRequest(
        f"image has more than {MAX_IMAGE_PIXELS // 1_000_000} megapixels "
        f"({MAX_IMAGE_PIXELS} pixels, width x height): send a smaller picture",
        field="image",
    )


def _unreadable(what: str = "not a readable") -> InvalidRequest:
    return InvalidRequest(f"image is {what} PNG, JPEG or WebP picture", field="image")


def _open_checked(
    raw: bytes, min_width: int, min_height: int
) -> Image.Image:  # an open, fully decoded image (the caller closes it)
    import warnings

    from PIL import Image, UnidentifiedImageError

    if not raw:
        raise InvalidRequest("image is empty: send PNG, JPEG or WebP bytes", field="image")
    if len(raw) > MAX_IMAGE_BYTES:
        raise InvalidRequest(
            f"image is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MB", field="image"
        )
    try:
        with warnings.catch_warnings():
            # Pillow warns (above ~89 MP) before it errors (~179 MP): both are our "too large".
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(raw))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_large() from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise _unreadable() from exc
    try:
        fmt, (width, height) = im.format, im.size
        if fmt not in IMAGE_FORMATS:
            raise InvalidRequest(
                f"image format {fmt} is not supported: use PNG, JPEG or WebP", field="image"
            )
        # From the header: refuse before decoding a single pixel.
        if width * height > MAX_IMAGE_PIXELS:
            raise _too_large()
        if width < min_width or height < min_height:
            raise InvalidRequest(
                f"image is {width}x{height}; send at least {min_width}x{min_height} pixels",
                field="image",
            )
        try:  # a full decode: truncated or corrupt data fails here, not later in the worker
            im.load()
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
            raise _unreadable("truncated or corrupt: not a complete") from exc
    except BaseException:
        im.close()
        raise
    return im


def check_image(
    raw: bytes, *, min_width: int = MIN_IMAGE_SIDE, min_height: int = MIN_IMAGE_SIDE
) -> bytes:
    """Return ``raw`` if it is a complete PNG/JPEG/WebP within the limits, else raise
    InvalidRequest naming ``image``. The limits: at most ``MAX_IMAGE_BYTES`` bytes and
    ``MAX_IMAGE_PIXELS`` pixels as declared by the header (checked before decoding; Pillow's
    decompression-bomb guard gives the same error), at least ``min_width`` x ``min_height``
    (the API passes the model's minimum size), and the whole picture must decode (truncated
    data is refused)."""
    _open_checked(raw, min_width, min_height).close()
    return raw


def decode_image(
    raw: bytes, *, min_width: int = MIN_IMAGE_SIDE, min_height: int = MIN_IMAGE_SIDE
) -> Image.Image:
    """PNG/JPEG/WebP bytes -> an RGB PIL image, with :func:`check_image`'s limits."""
    with _open_checked(raw, min_width, min_height) as img:
        return img.convert("RGB")
