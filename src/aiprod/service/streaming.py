"""A stored MP4 as an HTTP answer: ETag, ``Range`` (206) and streaming from local disk or S3.

Shared by the client download (``GET /api/v1/jobs/{id}/download``) and the console's video
player (``GET /dashboard/jobs/{id}/video``), which differ only in who may ask."""

from __future__ import annotations

import re

from fastapi.responses import JSONResponse, Response, StreamingResponse

from aiprod.core.errors import AiprodError, NotFound
from aiprod.db.models import Job
from aiprod.jobs.storage import LocalStorage, S3Storage
from aiprod.jobs.views import require_output

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def stream_output(
    job: Job,
    storage: LocalStorage | S3Storage,
    *,
    range_header: str | None,
    if_none_match: str | None,
    disposition: str = "attachment",
) -> Response:
    """The job's MP4 (410 once deleted or expired, 409 unless it has succeeded; 404 if storage
    lost it), whole or the one
    byte range asked for; 304 when ``If-None-Match`` holds its ETag."""
    out_key = require_output(job)  # 410 once deleted or expired, 409 before it succeeded
    size = storage.size(out_key)  # local file or S3 object; streamed either way
    if size is None:
        raise NotFound(f"the output of job {job.id} is no longer in storage")
    etag = f'"{job.output_sha256 or job.id}"'
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Content-Disposition": f'{disposition}; filename="{job.id}.mp4"',
        "Cache-Control": "private, max-age=3600",
    }
    if if_none_match and etag in [t.strip() for t in if_none_match.split(",")]:
        return Response(status_code=304, headers=headers)
    if range_header:
        m = _RANGE.match(range_header.strip())
        if m is None or (not m.group(1) and not m.group(2)):
            raise AiprodError(
                "Range must look like 'bytes=START-END' (one range)",
                status_code=416,
                code="bad_range",
            )
        if m.group(1):
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
        else:  # suffix range: the last N bytes
            start = max(0, size - int(m.group(2)))
            end = size - 1
        if start >= size or end < start:
            headers["Content-Range"] = f"bytes */{size}"
            return JSONResponse(
                {"error": {"code": "bad_range", "message": f"range outside the {size}-byte file"}},
                status_code=416,
                headers=headers,
            )
        length = end - start + 1
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        headers["Content-Length"] = str(length)
        return StreamingResponse(
            storage.iter_range(out_key, start, length),
            status_code=206,
            media_type="video/mp4",
            headers=headers,
        )
    headers["Content-Length"] = str(size)
    return StreamingResponse(
        storage.iter_range(out_key, 0, size), media_type="video/mp4", headers=headers
    )
