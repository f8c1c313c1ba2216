"""Job domain logic shared by the API and the worker: create, estimate, cancel, render, finish.

No FastAPI and no torch here; queries go through the repositories and the queue module.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import math
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aiprod.core.errors import Conflict, InvalidRequest
from aiprod.core.logging import log_job_transition
from aiprod.core.registry import ModelEntry, Registry
from aiprod.core.settings import Settings
from aiprod.db import queue
from aiprod.db.models import TERMINAL_STATUSES, Job, new_id, utcnow
from aiprod.db.repositories import (
    CostRepository,
    JobRepository,
    TimingRepository,
    WebhookRepository,
    WorkerRepository,
)
from aiprod.service.storage import Storage, input_key

MAX_IMAGE_BYTES = 10 * 1024 * 1024
MAX_METADATA_BYTES = 8 * 1024
MAX_IDEMPOTENCY_KEY = 255
# Used by /estimate-cost only until a worker has measured this model: seconds = 1 + rate * work.
HEURISTIC_SECONDS_PER_UNIT = 2e-8


class GenerateBody(BaseModel):
    """The body of POST /generate and /estimate-cost (limits are checked against the model)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"prompt": "a red fox running through snow", "num_frames": 9, "seed": 1}]
        },
    )

    prompt: str = Field(description="What the video shows (1..2000 characters).")
    negative_prompt: str | None = None
    model: str | None = Field(default=None, description="Model id; default: the server's default.")
    width: int | None = None
    height: int | None = None
    num_frames: int | None = None
    fps: int | None = None
    seed: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    two_stage: bool | None = None
    image: str | None = Field(
        default=None, description="Conditioning image (PNG/JPEG/WebP), base64 or a data: URL."
    )
    webhook_url: str | None = Field(default=None, max_length=2000)
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True)
class Validated:
    entry: ModelEntry
    params: dict[str, Any]
    image: bytes | None


def decode_image(data: str) -> bytes:
    """Base64 (or data: URL) -> image bytes, checked to be a readable PNG/JPEG/WebP."""
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
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as im:
            fmt = im.format
            im.verify()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InvalidRequest(
            "image is not a readable PNG, JPEG or WebP picture", field="image"
        ) from exc
    if fmt not in {"PNG", "JPEG", "WEBP"}:
        raise InvalidRequest(
            f"image format {fmt} is not supported: use PNG, JPEG or WebP", field="image"
        )
    return raw


def validate_generate(body: GenerateBody, registry: Registry) -> Validated:
    """Check every field against the model entry; raises InvalidRequest naming the field."""
    entry = registry.get(body.model)
    params = entry.resolve_request(body.model_dump())
    if params["seed"] is None:
        params["seed"] = secrets.randbelow(2**31)
    image = decode_image(body.image) if body.image is not None else None
    if body.webhook_url is not None:
        parts = urlsplit(body.webhook_url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise InvalidRequest(
                "webhook_url must be an absolute http(s) URL, e.g. https://example.com/hook",
                field="webhook_url",
            )
    if body.metadata is not None:
        size = len(json.dumps(body.metadata, default=str))
        if size > MAX_METADATA_BYTES:
            raise InvalidRequest(
                f"metadata is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES}",
                field="metadata",
            )
    return Validated(entry=entry, params=params, image=image)


def estimate_seconds(
    session: Session, entry: ModelEntry, params: dict[str, Any]
) -> tuple[float, str]:
    """(predicted seconds, basis): basis is 'measured' when workers have timed this model."""
    shape = dict(
        width=params["width"],
        height=params["height"],
        num_frames=params["num_frames"],
        steps=params["num_inference_steps"],
        two_stage=params["two_stage"],
    )
    measured = TimingRepository(session).estimate(
        model=entry.id, model_version=entry.version, **shape
    )
    if measured is not None:
        return measured, "measured"
    work = shape["width"] * shape["height"] * shape["num_frames"] * shape["steps"]
    return 1.0 + HEURISTIC_SECONDS_PER_UNIT * work, "heuristic"


def estimate(session: Session, v: Validated) -> dict[str, Any]:
    seconds, basis = estimate_seconds(session, v.entry, v.params)
    return {
        "model": v.entry.id,
        "model_version": v.entry.version,
        "params": v.params,
        "estimated_gpu_seconds": round(seconds, 4),
        "price_per_gpu_second": v.entry.price_per_gpu_second,
        "estimated_cost_usd": round(seconds * v.entry.price_per_gpu_second, 6),
        "basis": basis,
    }


def _request_hash(body: GenerateBody) -> str:
    canon = json.dumps(body.model_dump(exclude_none=True), sort_keys=True, default=str)
    return hashlib.sha256(canon.encode()).hexdigest()


def create_job(
    session: Session,
    *,
    api_key_id: str,
    priority: int,
    body: GenerateBody,
    registry: Registry,
    storage: Storage,
    settings: Settings,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """Validate and insert a queued job. Returns (job, created); created=False on an
    idempotent replay of an earlier identical request."""
    repo = JobRepository(session)
    req_hash = _request_hash(body)
    if idempotency_key is not None:
        if not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
            raise InvalidRequest(
                f"Idempotency-Key must be 1..{MAX_IDEMPOTENCY_KEY} characters",
                field="Idempotency-Key",
            )
        existing = repo.by_idempotency_key(api_key_id, idempotency_key)
        if existing is not None:
            return _replay(existing, req_hash), False
    v = validate_generate(body, registry)
    seconds, _ = estimate_seconds(session, v.entry, v.params)
    job = Job(
        id=new_id(),
        api_key_id=api_key_id,
        prompt=v.params["prompt"],
        model=v.entry.id,
        model_version=v.entry.version,
        params=v.params,
        status="queued",
        priority=priority,
        attempts=0,
        max_attempts=settings.max_attempts,
        available_at=utcnow(),
        progress=0.0,
        cancel_requested=False,
        idempotency_key=idempotency_key,
        request_hash=req_hash,
        webhook_url=body.webhook_url,
        created_at=utcnow(),
        estimated_seconds=seconds,
        estimated_cost_usd=round(seconds * v.entry.price_per_gpu_second, 6),
        metadata_=body.metadata,
    )
    try:
        if v.image is not None:
            job.input_image_path = input_key(job.id)
            storage.write_bytes(job.input_image_path, v.image)
        repo.add(job)
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key won the insert.
        existing = repo.by_idempotency_key(api_key_id, idempotency_key or "")
        if existing is None:
            raise
        return _replay(existing, req_hash), False
    log_job_transition(job.id, old=None, new="queued", model=job.model, key_id=api_key_id)
    return job, True


def _replay(existing: Job, req_hash: str) -> Job:
    if existing.request_hash != req_hash:
        raise Conflict(
            "this Idempotency-Key was already used with a different request body: "
            "use a new key for a new request",
            code="idempotency_conflict",
        )
    return existing


def cancel_job(session: Session, job: Job, *, settings: Settings) -> Job:
    """Cancel a queued job now, or flag a running one (its worker stops within one step).
    Terminal jobs are returned unchanged."""
    job = JobRepository(session).lock(job.id) or job
    if job.status in TERMINAL_STATUSES:
        return job
    if job.status == "queued":
        job.status = "canceled"
        job.completed_at = utcnow()
        job.cancel_requested = True
        on_terminal(session, job, settings=settings)
        log_job_transition(job.id, old="queued", new="canceled", model=job.model)
    else:
        job.cancel_requested = True
    session.flush()
    return job


def download_url(job: Job, base_url: str | None) -> str | None:
    if job.status != "succeeded":
        return None
    path = f"/api/v1/jobs/{job.id}/download"
    return f"{base_url.rstrip('/')}{path}" if base_url else path


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat().replace("+00:00", "Z") if dt is not None else None


def job_to_dict(
    job: Job,
    *,
    base_url: str | None,
    queue_position: int | None = None,
    eta_seconds: float | None = None,
) -> dict[str, Any]:
    """The job object of the API and of webhook payloads."""
    params = dict(job.params or {})
    params["image"] = job.input_image_path is not None
    return {
        "id": job.id,
        "status": job.status,
        "progress": 1.0 if job.status == "succeeded" else round(float(job.progress or 0.0), 4),
        "queue_position": queue_position if job.status == "queued" else None,
        "eta_seconds": None if eta_seconds is None else round(eta_seconds, 2),
        "model": job.model,
        "model_version": job.model_version,
        "params": params,
        "attempts": job.attempts,
        "cancel_requested": bool(job.cancel_requested),
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "completed_at": _iso(job.completed_at),
        "error": (
            {"code": job.error_code or "error", "message": job.error_message or ""}
            if job.status == "failed"
            else None
        ),
        "estimated_cost_usd": job.estimated_cost_usd,
        "cost_usd": job.cost_usd,
        "gpu_seconds": None if job.gpu_seconds is None else round(job.gpu_seconds, 4),
        "download_url": download_url(job, base_url),
        "metadata": job.metadata_,
    }


class QueueView:
    """The queue as status calls see it: one snapshot (and live-worker count) shared for
    ``ttl`` seconds instead of four queries per queued job's status (the profile's largest
    database cost at 200 polling clients). A position is at most ``ttl`` seconds old."""

    def __init__(self, ttl: float = 1.0) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._taken = -math.inf
        self._snapshot: queue.QueueSnapshot | None = None
        self._workers = 0

    def get(self, session: Session, settings: Settings) -> tuple[queue.QueueSnapshot, int]:
        with self._lock:
            if self._snapshot is not None and time.monotonic() - self._taken < self.ttl:
                return self._snapshot, self._workers
        snapshot = queue.QueueSnapshot.take(session)
        workers = len(WorkerRepository(session).alive(settings.lease_seconds * 2))
        with self._lock:
            self._snapshot, self._workers, self._taken = snapshot, workers, time.monotonic()
        return snapshot, workers


def render_job(
    session: Session,
    job: Job,
    *,
    base_url: str | None,
    settings: Settings,
    queue_view: QueueView | None = None,
) -> dict[str, Any]:
    """job_to_dict plus the queue position and ETA (live, or from ``queue_view``)."""
    position = None
    eta = None
    per_job = job.estimated_seconds
    if job.status == "queued":
        if queue_view is not None:
            snapshot, alive = queue_view.get(session, settings)
            position = snapshot.position(job.id)
        if queue_view is None or position is None:  # not queued yet when the view was taken
            position = queue.queue_position(session, job)
            alive = len(WorkerRepository(session).alive(settings.lease_seconds * 2))
        workers = max(1, alive)
        if per_job is not None:
            eta = (position // workers + 1) * per_job
    elif job.status == "running" and per_job is not None:
        eta = per_job * (1.0 - float(job.progress or 0.0))
    return job_to_dict(job, base_url=base_url, queue_position=position, eta_seconds=eta)


def on_terminal(session: Session, job: Job, *, settings: Settings) -> None:
    """Everything that happens in the same transaction as a job reaching a terminal status:
    the daily cost row and the webhook outbox entry."""
    gpu_seconds = float(job.gpu_seconds or 0.0)
    if gpu_seconds or job.status == "failed" or job.status == "succeeded":
        day = (job.completed_at or utcnow()).date()
        CostRepository(session).record(
            day=day,
            gpu_seconds=gpu_seconds,
            gpu_cost_usd=gpu_seconds * settings.gpu_cost_per_hour / 3600.0,
            revenue_usd=float(job.cost_usd or 0.0),
            succeeded=job.status == "succeeded",
            failed=job.status == "failed",
        )
    if job.webhook_url:
        payload = {
            "type": f"job.{job.status}",
            "timestamp": _iso(utcnow()),
            "data": job_to_dict(job, base_url=settings.public_url),
        }
        WebhookRepository(session).enqueue(job=job, event_type=payload["type"], payload=payload)
