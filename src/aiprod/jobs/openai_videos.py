"""The OpenAI video API's terms over aiprod's jobs: a ``POST /v1/videos`` request -> the
``GenerateBody`` every submit goes through, and a job -> OpenAI's video object.

What cannot be honoured is refused naming the OpenAI parameter (``InvalidRequest.field``):
``size`` outside the model's limits, ``seconds`` beyond its frames, an ``input_reference``
by ``file_id`` or remote URL (aiprod stores no files apart from jobs, and fetches no URLs).
"""

from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass
from typing import Any

from aiprod.core.errors import InvalidRequest
from aiprod.core.registry import Registry
from aiprod.core.settings import Settings
from aiprod.db.models import Job, JobStatus
from aiprod.jobs.schema import GenerateBody, JobParams
from aiprod.jobs.views import expires_at

# OpenAI's parameters of POST /videos that aiprod takes, and aiprod's own it also takes there
# (from `extra_body`): the rest is refused with a 400 naming the parameter.
OPENAI_FIELDS = ("prompt", "model", "size", "seconds", "input_reference")
EXTRA_FIELDS = ("negative_prompt", "seed", "num_inference_steps", "guidance_scale", "fps")
_SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*$")

STATUS = {
    JobStatus.QUEUED: "queued",
    JobStatus.RUNNING: "in_progress",
    JobStatus.SUCCEEDED: "completed",
    JobStatus.EXPIRED: "completed",  # its content is gone: expires_at is in the past
    JobStatus.FAILED: "failed",
    JobStatus.CANCELED: "failed",  # OpenAI has no canceled status: error.code says it
}


@dataclass(frozen=True)
class VideoRequest:
    """A ``POST /v1/videos`` request as parsed from JSON or a multipart form."""

    fields: dict[str, Any]  # name -> JSON value, or a string from a form
    image: bytes | None = None  # an uploaded input_reference file
    form: bool = False  # numbers come as strings (a form); in JSON they must be numbers


def _number(
    name: str, value: Any, kind: type[int] | type[float], *, text: bool = True
) -> int | float:
    """``value`` as a number; a string only where ``text`` (form fields are strings)."""
    if isinstance(value, bool) or (isinstance(value, str) and not text):
        raise InvalidRequest(f"{name} must be a JSON number, not {value!r}", field=name)
    if not isinstance(value, int | float | str):
        raise InvalidRequest(f"{name} must be a number", field=name)
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise InvalidRequest(f"{name} must be a number, not {value!r}", field=name) from None
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise InvalidRequest(f"{name} must be a whole number", field=name)
    return number


def to_generate_body(req: VideoRequest, registry: Registry) -> GenerateBody:
    """The aiprod request for an OpenAI one; InvalidRequest names the OpenAI parameter."""
    f = req.fields
    for name in f:
        if name not in OPENAI_FIELDS and name not in EXTRA_FIELDS:
            raise InvalidRequest(
                f"unsupported parameter '{name}': aiprod's /v1/videos takes "
                + ", ".join(OPENAI_FIELDS + EXTRA_FIELDS),
                field=name,
            )
    for name in ("prompt", "model", "size", "negative_prompt"):
        if f.get(name) is not None and not isinstance(f[name], str):
            raise InvalidRequest(f"{name} must be a string", field=name)
    prompt = f.get("prompt")
    if prompt is None:
        raise InvalidRequest("prompt is required: a text prompt", field="prompt")
    entry = registry.get(f.get("model") or None)
    body: dict[str, Any] = {"prompt": prompt, "model": entry.id}
    if f.get("negative_prompt") is not None:
        body["negative_prompt"] = f["negative_prompt"]
    for name in ("seed", "num_inference_steps", "fps"):
        if f.get(name) is not None:
            body[name] = _number(name, f[name], int, text=req.form)
    if f.get("guidance_scale") is not None:
        body["guidance_scale"] = _number(
            "guidance_scale", f["guidance_scale"], float, text=req.form
        )
    if f.get("size") is not None:
        m = _SIZE.match(str(f["size"]))
        if m is None:
            raise InvalidRequest(
                f"size must be WIDTHxHEIGHT, e.g. '{entry.defaults.width}x"
                f"{entry.defaults.height}', not {f['size']!r}",
                field="size",
            )
        body["width"], body["height"] = int(m.group(1)), int(m.group(2))
    if f.get("seconds") is not None:
        fps = body.get("fps", entry.defaults.fps)
        body["num_frames"] = _frames(entry.id, f["seconds"], fps, registry)
    image = req.image
    ref = f.get("input_reference")
    if image is None and ref is not None:
        image = _reference_image(ref)
    if image is not None:
        body["image"] = base64.b64encode(image).decode()
    try:
        return GenerateBody.model_validate(body)
    except ValueError as exc:  # e.g. invalid unicode in the prompt
        raise InvalidRequest(f"invalid request: {exc}", field="prompt") from None


def _frames(model: str, seconds: Any, fps: Any, registry: Registry) -> int:
    """``seconds`` -> a frame count the model makes (``frames_multiple * k + 1``)."""
    lim = registry.get(model).limits
    secs = float(_number("seconds", seconds, float))
    if not math.isfinite(secs):
        raise InvalidRequest(f"seconds must be a finite number, not {seconds!r}", field="seconds")
    if not isinstance(fps, int) or fps <= 0:
        raise InvalidRequest("fps must be a positive integer", field="fps")
    k = max(0, round((secs * fps - 1) / lim.frames_multiple))
    frames = k * lim.frames_multiple + 1
    if secs <= 0 or not lim.min_frames <= frames <= lim.max_frames:
        lo, hi = lim.min_frames / fps, lim.max_frames / fps
        raise InvalidRequest(
            f"seconds={secs:g} is outside what model '{model}' makes at {fps} fps: "
            f"{lo:.3g}..{hi:.3g} seconds ({lim.min_frames}..{lim.max_frames} frames)",
            field="seconds",
        )
    return frames


def _reference_image(ref: Any) -> bytes:
    """An ``input_reference`` given as ``{"image_url": "data:..."}`` or a data URL string."""
    url = ref.get("image_url") if isinstance(ref, dict) else ref
    if isinstance(ref, dict) and set(ref) - {"image_url", "file_id"}:
        unknown = ", ".join(sorted(set(ref) - {"image_url", "file_id"}))
        raise InvalidRequest(
            f"input_reference takes image_url (a data: URL), not {unknown}",
            field="input_reference",
        )
    if isinstance(ref, dict) and "file_id" in ref:
        raise InvalidRequest(
            "input_reference.file_id is not supported: aiprod has no Files API; upload the "
            "image itself (input_reference=open('img.png', 'rb')) or send a data: URL",
            field="input_reference",
        )
    if not isinstance(url, str) or not url.startswith("data:"):
        raise InvalidRequest(
            "input_reference must be an uploaded image file or a base64 data: URL "
            "(aiprod fetches no remote URLs)",
            field="input_reference",
        )
    _, _, data = url.partition(",")
    try:
        return base64.b64decode(data, validate=True)
    except ValueError:
        raise InvalidRequest(
            "input_reference: the data: URL is not valid base64", field="input_reference"
        ) from None


def refine_field(exc: InvalidRequest) -> InvalidRequest:
    """A check of the aiprod request, renamed to the OpenAI parameter it came from."""
    rename = {
        "width": "size",
        "height": "size",
        "num_frames": "seconds",
        "image": "input_reference",
    }
    if exc.field in rename:
        return InvalidRequest(exc.message, field=rename[exc.field], code=exc.code)
    return exc


def _unix(job_time: Any) -> int | None:
    return None if job_time is None else int(job_time.timestamp())


def video_object(job: Job, settings: Settings) -> dict[str, Any]:
    """OpenAI's video object for a job."""
    params = JobParams.from_stored(job.params)
    status = STATUS[JobStatus(job.status)]
    error = None
    if job.status == JobStatus.FAILED:
        error = {"code": job.error_code or "error", "message": job.error_message or ""}
    elif job.status == JobStatus.CANCELED:
        error = {"code": "canceled", "message": "the job was canceled"}
    progress = 100 if status == "completed" else int(round(100 * float(job.progress or 0.0)))
    return {
        "id": job.id,
        "object": "video",
        "model": job.model,
        "status": status,
        "progress": progress,
        "created_at": _unix(job.created_at),
        "completed_at": _unix(job.completed_at),
        "expires_at": _unix(expires_at(job, settings.retention_days)),
        "size": f"{params.width}x{params.height}",
        "seconds": f"{params.num_frames / params.fps:g}",
        "prompt": job.prompt,
        "remixed_from_video_id": None,
        "error": error,
    }
