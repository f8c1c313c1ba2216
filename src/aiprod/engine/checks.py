"""Request checks that run before any tensor work (torch-free).

The registry entry holds the limits (``ModelEntry.resolve_request``); this module applies them
to a ``GenerationRequest`` and decodes the optional conditioning image, so a bad request fails
in milliseconds with a message that says how to fix it.
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import TYPE_CHECKING, Any

from aiprod.core.errors import InvalidRequest
from aiprod.core.media import decode_image  # the one decoder, with the API's limits
from aiprod.core.model_files import fit_request
from aiprod.engine.types import GenerationRequest

if TYPE_CHECKING:
    from PIL import Image

    from aiprod.core.registry import ModelEntry


def build_request(entry: ModelEntry, params: dict[str, Any]) -> GenerationRequest:
    """Defaults from ``entry``, limits checked; a missing seed becomes a random 31-bit one."""
    resolved = entry.resolve_request(params)
    fit_request(entry, resolved)  # what the model's files cannot do (as the API refuses it)
    if resolved["seed"] is None:
        resolved["seed"] = secrets.randbelow(2**31)
    image = params.get("image")
    if image is not None and not isinstance(image, bytes | bytearray):
        raise InvalidRequest("image must be the encoded bytes of a PNG/JPEG/WebP", field="image")
    return GenerationRequest(**resolved, image=bytes(image) if image is not None else None)


def check_request(entry: ModelEntry, request: GenerationRequest) -> Image.Image | None:
    """Check ``request`` against ``entry``'s limits; return the decoded RGB image, if any."""
    if not isinstance(request, GenerationRequest):
        raise TypeError(f"expected a GenerationRequest, got {type(request).__name__}")
    params = dataclasses.asdict(request)
    params.pop("image")
    entry.resolve_request(params)  # raises InvalidRequest naming the field and the range
    if request.image is None:
        return None
    return decode_image(request.image)


def check_geometry(
    model_id: str, request: GenerationRequest, *, size_multiple: int, temporal_ratio: int
) -> None:
    """What the model itself needs, whatever the entry's limits say: sizes that are multiples
    of the pipelines' 32 and frame counts on the VAE's temporal grid."""
    for name in ("width", "height"):
        v = getattr(request, name)
        if v % size_multiple:
            near = max(size_multiple, round(v / size_multiple) * size_multiple)
            raise InvalidRequest(
                f"{name}={v} must be a multiple of {size_multiple} for model '{model_id}' "
                f"(try {near})",
                field=name,
            )
    if (request.num_frames - 1) % temporal_ratio:
        k = max(1, round((request.num_frames - 1) / temporal_ratio))
        raise InvalidRequest(
            f"num_frames={request.num_frames} must be {temporal_ratio}*k+1 for model "
            f"'{model_id}' (e.g. {temporal_ratio * k + 1})",
            field="num_frames",
        )
