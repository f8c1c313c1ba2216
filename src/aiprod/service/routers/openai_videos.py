"""OpenAI-compatible video routes under ``/v1`` (the shape the ``openai`` SDK, SGLang,
FastVideo and Dynamo use), over the same keys, jobs table, rate limits and costs as
``/api/v1``. Errors here have OpenAI's shape (``service/errors.py``)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile

from aiprod.core.errors import InvalidRequest, NotFound
from aiprod.core.registry import MAX_PROMPT_CHARS
from aiprod.db.models import Job
from aiprod.db.repositories import JobRepository
from aiprod.jobs import transitions
from aiprod.jobs.openai_videos import VideoRequest, refine_field, to_generate_body, video_object
from aiprod.jobs.submit import MAX_IDEMPOTENCY_KEY
from aiprod.jobs.views import require_output
from aiprod.service.deps import (
    ApiKeyDep,
    SessionDep,
    StateDep,
    known_query_params,
    read_inline,
    read_session,
    storage_writable,
    write_slot,
)
from aiprod.service.state import AppState

# --- response models (OpenAI's) -------------------------------------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OpenAIErrorBody(_Out):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, ...")
    param: str | None = Field(description="The request parameter at fault, if any.")
    code: str | None


class OpenAIError(_Out):
    """Every error under /v1: OpenAI's shape."""

    error: OpenAIErrorBody


class VideoError(_Out):
    code: str
    message: str


class Video(_Out):
    """OpenAI's video object."""

    id: str
    object: Literal["video"]
    model: str
    status: Literal["queued", "in_progress", "completed", "failed"]
    progress: int = Field(ge=0, le=100)
    created_at: int = Field(description="Unix seconds.")
    completed_at: int | None
    expires_at: int | None = Field(description="When retention deletes the MP4 (unix s).")
    size: str = Field(description="WIDTHxHEIGHT")
    seconds: str
    prompt: str
    remixed_from_video_id: None
    error: VideoError | None


class VideoList(_Out):
    object: Literal["list"]
    data: list[Video]
    first_id: str | None
    last_id: str | None
    has_more: bool


class VideoDeleted(_Out):
    id: str
    object: Literal["video.deleted"]
    deleted: Literal[True]


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": OpenAIError} for s in statuses}


router = APIRouter(
    prefix="/v1",
    tags=["openai-compatible"],
    responses={
        **_errors(400, 401, 429, 503),
        # FastAPI documents a 422 for every route with parameters: here it is never sent
        422: {"model": OpenAIError, "description": "Not sent: /v1 answers a bad field with 400"},
    },
    dependencies=[Depends(known_query_params)],
)

_PROMPT = {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS, "pattern": r"\S"}
_FIELDS: dict[str, Any] = {
    "prompt": _PROMPT,
    "model": {"type": "string", "description": "An id from GET /api/v1/models."},
    "size": {"type": "string", "pattern": r"^[0-9]{1,5}x[0-9]{1,5}$", "example": "160x160"},
    "seconds": {"anyOf": [{"type": "string"}, {"type": "number"}], "example": "1"},
    # aiprod's own, as `extra_body` of the SDK
    "negative_prompt": {"type": "string", "maxLength": MAX_PROMPT_CHARS},
    "seed": {"type": "integer"},
    "num_inference_steps": {"type": "integer"},
    "guidance_scale": {"type": "number"},
    "fps": {"type": "integer"},
}
_CREATE_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["prompt"],
                "additionalProperties": False,
                "properties": {
                    **_FIELDS,
                    "input_reference": {
                        "type": "object",
                        "required": ["image_url"],
                        "additionalProperties": False,
                        "properties": {
                            "image_url": {"type": "string", "description": "a data: URL"}
                        },
                    },
                },
            }
        },
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["prompt"],
                "additionalProperties": False,
                "properties": {
                    **_FIELDS,
                    "input_reference": {"type": "string", "format": "binary"},
                },
            }
        },
    },
}


async def _parse(request: Request) -> VideoRequest:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form()
        fields: dict[str, Any] = {}
        image = None
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name != "input_reference":
                    raise InvalidRequest(f"unexpected file in field '{name}'", field=name)
                image = await value.read()
            elif name.startswith("input_reference[") and name.endswith("]"):
                fields.setdefault("input_reference", {})[name[16:-1]] = value
            else:
                fields[name] = value
        return VideoRequest(fields=fields, image=image, form=True)
    if ctype in ("application/json", ""):
        try:
            data = json.loads(await request.body() or b"null")
        except ValueError:
            raise InvalidRequest("the request body is not valid JSON", field="body") from None
        if not isinstance(data, dict):
            raise InvalidRequest("the request body must be a JSON object", field="body")
        return VideoRequest(fields=data)
    raise InvalidRequest(
        f"Content-Type {ctype} is not accepted: send JSON or multipart/form-data",
        field="body",
    )


def _visible(state: AppState, video_id: str, key_id: str) -> Job:
    with read_session(state) as session:
        return _visible_in(session, video_id, key_id)


def _visible_in(session: Session, video_id: str, key_id: str) -> Job:
    job = JobRepository(session).get_owned(video_id, key_id)
    if job.deleted_at is not None:
        raise NotFound(f"video {video_id} not found (it was deleted)")
    return job


@router.post(
    "/videos",
    summary="Create a video (OpenAI-compatible)",
    response_model=Video,
    responses=_errors(409),  # an Idempotency-Key reused with another body
    openapi_extra={"requestBody": _CREATE_BODY},
    dependencies=[Depends(storage_writable), Depends(write_slot, scope="function")],
)
async def create_video(
    request: Request,
    key: ApiKeyDep,
    state: StateDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            json_schema_extra={"minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY},
        ),
    ] = None,
) -> JSONResponse:
    """`prompt`, `model`, `size` ("WxH"), `seconds`, `input_reference` (an image file or a
    data: URL), as JSON or a multipart form; also aiprod's `seed`, `negative_prompt`,
    `num_inference_steps`, `guidance_scale`, `fps`. Anything else: 400 naming it."""
    req = await _parse(request)

    def submit() -> dict[str, Any]:
        try:
            body = to_generate_body(req, state.registry)
            job = state.submit(key.submitter, body, idempotency_key).job
        except InvalidRequest as exc:
            raise refine_field(exc) from None
        return video_object(job, state.settings)

    return JSONResponse(await run_in_threadpool(submit))


@router.get("/videos", summary="List videos (OpenAI-compatible)", response_model=VideoList)
def list_videos(
    key: ApiKeyDep,
    state: StateDep,
    after: Annotated[str | None, Query(description="The last id of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Annotated[Literal["asc", "desc"], Query()] = "desc",
) -> JSONResponse:
    with read_session(state) as session:
        repo = JobRepository(session)
        cursor = None
        if after is not None:
            cursor = repo.get(after)
            if cursor is None or cursor.api_key_id != key.id:
                raise InvalidRequest(f"after: no video with id '{after}'", field="after")
        jobs, more = repo.list_after(key.id, after=cursor, limit=limit, ascending=order == "asc")
        data = [video_object(j, state.settings) for j in jobs]
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": more,
        }
    )


@router.get(
    "/videos/{video_id}",
    summary="Retrieve a video (OpenAI-compatible)",
    response_model=Video,
    responses=_errors(404),
)
async def retrieve_video(video_id: str, key: ApiKeyDep, state: StateDep) -> JSONResponse:
    def read(session: Session, _may_wait: bool) -> JSONResponse:
        job = _visible_in(session, video_id, key.id)
        return JSONResponse(video_object(job, state.settings))

    return await read_inline(state, read)  # on the event loop where it cannot wait (SQLite)


@router.get(
    "/videos/{video_id}/content",
    summary="Download a video's MP4 (OpenAI-compatible)",
    response_class=Response,
    responses={200: {"content": {"video/mp4": {}}}, **_errors(404, 409, 410)},
)
def video_content(
    video_id: str,
    key: ApiKeyDep,
    state: StateDep,
    variant: Annotated[
        str,
        Query(
            description="Only `video`: aiprod makes no thumbnail or spritesheet.",
            json_schema_extra={"enum": ["video"]},
        ),
    ] = "video",
) -> StreamingResponse:
    if variant != "video":
        raise InvalidRequest(
            f"variant '{variant}' is not supported: aiprod serves only variant=video",
            field="variant",
        )
    job = _visible(state, video_id, key.id)
    out_key = require_output(job)
    size = state.storage.size(out_key)
    if size is None:
        raise NotFound(f"the video of {job.id} is no longer in storage")
    return StreamingResponse(
        state.storage.iter_range(out_key, 0, size),
        media_type="video/mp4",
        headers={"Content-Length": str(size)},
    )


@router.delete(
    "/videos/{video_id}",
    summary="Delete a video (OpenAI-compatible)",
    response_model=VideoDeleted,
    responses=_errors(404),
    dependencies=[Depends(write_slot, scope="function")],
)
def delete_video(
    video_id: str, key: ApiKeyDep, session: SessionDep, state: StateDep
) -> JSONResponse:
    """Removes the MP4 (the job row stays for billing, as DELETE /api/v1/jobs/{id})."""
    job = JobRepository(session).get_owned(video_id, key.id)
    if job.deleted_at is not None:
        raise NotFound(f"video {video_id} not found (it was deleted)")
    transitions.delete_output(session, job, storage=state.storage, settings=state.settings)
    return JSONResponse({"id": job.id, "object": "video.deleted", "deleted": True})


# Only to say why (OpenAI's SDK has `videos.remix`): not in the schema, which lists what works.
@router.post("/videos/{video_id}/remix", include_in_schema=False)
def remix_video(video_id: str, key: ApiKeyDep) -> JSONResponse:
    """aiprod does not remix: create a new video with the same seed and a new prompt."""
    raise InvalidRequest(
        "remix is not supported by aiprod: create a new video (POST /v1/videos) with the new "
        "prompt, and the same seed through extra_body={'seed': N} to keep the look",
        field="video_id",
    )
