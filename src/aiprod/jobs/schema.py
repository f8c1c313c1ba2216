"""The generate request and the one resolved parameter type, for the API, worker and CLI.

``GenerateBody`` is what a client sends (POST /generate and /estimate-cost; every field but
``prompt`` optional). ``JobParams`` is the request after the model entry filled the defaults and
checked the limits (``ModelEntry.resolve_request``): stored as the job's ``params``, shown in the
job object, turned into the engine's ``GenerationRequest`` by the worker.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aiprod.core.errors import InvalidRequest
from aiprod.core.media import image_from_base64
from aiprod.core.model_files import fit_request
from aiprod.core.registry import MAX_PROMPT_CHARS, ModelEntry, Registry
from aiprod.core.vocabulary import prompt_warnings
from aiprod.jobs.destinations import DestinationRefused, Network, check_webhook_url

MAX_METADATA_BYTES = 8 * 1024

# Webhook events a client can ask for (``webhook_events``): sent as ``job.<event>``.
WEBHOOK_EVENTS = ("started", "succeeded", "failed", "canceled")
DEFAULT_WEBHOOK_EVENTS = ("succeeded", "failed", "canceled")  # the terminal ones


# One character that Python's str.strip() keeps (the server's check): JSON Schema's `\S` is
# ECMAScript's, which takes \x1c-\x1f and \x85 for text, so a prompt of one of those passed the
# OpenAPI's pattern and got a 422 (found by schemathesis).
NOT_ONLY_WHITESPACE = (
    r"[^\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
)


class GenerateBody(BaseModel):
    """The body of POST /generate and /estimate-cost (limits are checked against the model)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"prompt": "a red fox running through snow", "num_frames": 9, "seed": 1}]
        },
    )

    # The server's checks (core/registry.py resolve_request) stated in the OpenAPI: 1..2000
    # characters, at least one of them not whitespace (the JSON Schema pattern is a search).
    prompt: str = Field(
        description="What the video shows (1..2000 characters, not only whitespace).",
        json_schema_extra={
            "minLength": 1,
            "maxLength": MAX_PROMPT_CHARS,
            "pattern": NOT_ONLY_WHITESPACE,
        },
    )
    negative_prompt: str | None = Field(
        default=None, json_schema_extra={"maxLength": MAX_PROMPT_CHARS}
    )
    model: str | None = Field(default=None, description="Model id; default: the server's default.")
    # Strict: JSON numbers and booleans only, as the OpenAPI states (lax pydantic took
    # `"seed": false` as 0 and `"width": "32"` as 32: schemathesis's negative_data_rejection).
    width: int | None = Field(default=None, strict=True)
    height: int | None = Field(default=None, strict=True)
    num_frames: int | None = Field(default=None, strict=True)
    fps: int | None = Field(default=None, strict=True)
    seed: int | None = Field(default=None, strict=True)
    num_inference_steps: int | None = Field(default=None, strict=True)
    guidance_scale: float | None = Field(default=None, strict=True)
    two_stage: bool | None = Field(default=None, strict=True)
    image: str | None = Field(
        default=None, description="Conditioning image (PNG/JPEG/WebP), base64 or a data: URL."
    )
    webhook_url: str | None = Field(default=None, max_length=2000)
    webhook_events: list[str] | None = Field(
        default=None,
        description="Which events POST to webhook_url, each sent as `job.<event>`: any of "
        + ", ".join(WEBHOOK_EVENTS)
        + " (default: the terminal ones, "
        + ", ".join(DEFAULT_WEBHOOK_EVENTS)
        + ").",
        json_schema_extra={"items": {"type": "string", "enum": list(WEBHOOK_EVENTS)}},
    )
    metadata: dict[str, Any] | None = None

    @field_validator("*", mode="after")
    @classmethod
    def _valid_unicode(cls, value: Any) -> Any:
        # JSON's "\ud800" escape parses to a lone surrogate, which no database, hash or log
        # line can encode as UTF-8: refuse it here (a 422 naming the field), not with a 500.
        where = _invalid_unicode(value)
        if where is not None:
            raise ValueError(
                f"contains invalid unicode {where}(a lone surrogate such as \\ud800): "
                "send valid UTF-8 text"
            )
        return value


def _invalid_unicode(value: Any, path: str = "") -> str | None:
    """Where in ``value`` (a string, or JSON lists/objects of them) a string cannot be
    encoded as UTF-8: "" for the value itself, "in key 'k' " / "at 'k.0' " inside; None if
    all is well."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"at '{path}' " if path else ""
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            sub = f"{path}.{k}" if path else str(k)
            if isinstance(k, str) and _invalid_unicode(k) is not None:
                return f"in a key under '{path}' " if path else "in a key "
            where = _invalid_unicode(v, sub)
            if where is not None:
                return where
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            where = _invalid_unicode(v, f"{path}.{i}" if path else str(i))
            if where is not None:
                return where
    return None


class JobParams(BaseModel):
    """A fully resolved request (defaults filled, limits checked, seed chosen).

    The field order is ``resolve_request``'s, so ``as_dict()`` is the stored ``params`` JSON;
    the job object's ``params`` (``service/schemas.py``) is this model.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    num_frames: int
    fps: int
    num_inference_steps: int
    guidance_scale: float
    two_stage: bool
    seed: int

    @classmethod
    def resolve(cls, entry: ModelEntry, request: dict[str, Any]) -> JobParams:
        """``entry``'s defaults and limits applied to the request's fields; a missing seed
        becomes a random 31-bit one. Raises InvalidRequest naming the field."""
        params = entry.resolve_request(request)
        fit_request(entry, params)  # what the model's files cannot do (two-stage, grid)
        if params["seed"] is None:
            params["seed"] = secrets.randbelow(2**31)
        return cls(**params)

    @classmethod
    def from_stored(cls, params: dict[str, Any]) -> JobParams:
        """The ``params`` of a job row (rows written before ``two_stage`` existed: False)."""
        fields = {name: params[name] for name in cls.model_fields if name in params}
        fields.setdefault("negative_prompt", None)
        fields["two_stage"] = bool(params.get("two_stage", False))
        return cls(**fields)

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def shape(self) -> dict[str, Any]:
        """What generation time depends on (the key of measured timings)."""
        return dict(
            width=self.width,
            height=self.height,
            num_frames=self.num_frames,
            steps=self.num_inference_steps,
            two_stage=self.two_stage,
        )


@dataclass(frozen=True)
class Validated:
    """A checked generate request: the model entry, its parameters and the image bytes."""

    entry: ModelEntry
    params: JobParams
    image: bytes | None
    warnings: list[str] = dataclasses.field(default_factory=list)


def validate_generate(
    body: GenerateBody, registry: Registry, *, webhook_allow: Sequence[Network] = ()
) -> Validated:
    """Check every field against the model entry; raises InvalidRequest naming the field.

    ``webhook_allow``: the non-public networks a webhook_url may name
    (``Settings.webhook_allowed_networks``); by default only public addresses."""
    entry = registry.get(body.model)
    params = JobParams.resolve(entry, body.model_dump())
    image = None
    if body.image is not None:  # the model's minimum size: smaller fails in the worker anyway
        lim = entry.limits
        image = image_from_base64(body.image, min_width=lim.min_width, min_height=lim.min_height)
    if body.webhook_url is not None:
        try:
            check_webhook_url(body.webhook_url, webhook_allow)
        except DestinationRefused as exc:
            raise InvalidRequest(str(exc), field="webhook_url") from None
    check_webhook_events(body.webhook_events, webhook_url=body.webhook_url)
    if body.metadata is not None:
        size = len(json.dumps(body.metadata, default=str))
        if size > MAX_METADATA_BYTES:
            raise InvalidRequest(
                f"metadata is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES}",
                field="metadata",
            )
    warnings = prompt_warnings(entry, params.prompt, params.negative_prompt)
    return Validated(entry=entry, params=params, image=image, warnings=warnings)


def check_webhook_events(events: list[str] | None, *, webhook_url: str | None) -> None:
    """422 naming the unknown event and the allowed ones (or a filter without a webhook_url)."""
    if events is None:
        return
    allowed = ", ".join(WEBHOOK_EVENTS)
    for name in events:
        if name not in WEBHOOK_EVENTS:
            raise InvalidRequest(
                f"webhook_events: unknown event '{name}'; the events are {allowed}",
                field="webhook_events",
            )
    if not events:
        raise InvalidRequest(
            f"webhook_events is empty: name at least one of {allowed}, or leave it out",
            field="webhook_events",
        )
    if webhook_url is None:
        raise InvalidRequest(
            "webhook_events needs a webhook_url to send them to", field="webhook_events"
        )


def request_hash(body: GenerateBody) -> str:
    """A digest of the request as sent (for Idempotency-Key replays)."""
    canon = json.dumps(body.model_dump(exclude_none=True), sort_keys=True, default=str)
    return hashlib.sha256(canon.encode()).hexdigest()
