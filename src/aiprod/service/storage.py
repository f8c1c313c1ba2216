"""Where job inputs and output MP4s live. Local disk (default: ``<data_dir>/outputs``).

Keys are relative paths (``<job_id>.mp4``, ``inputs/<job_id>.img``) stored in the jobs table, so
the API and every worker resolve them against the same root. No FastAPI, no torch.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from aiprod.core.errors import ConfigError
from aiprod.core.settings import Settings


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        p = (self.root / key).resolve()
        if self.root not in p.parents:
            raise ValueError(f"storage key {key!r} escapes the storage root")
        return p

    def write_bytes(self, key: str, data: bytes) -> Path:
        """Write atomically (temp file in the same folder, then rename)."""
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    def read_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)


def output_key(job_id: str) -> str:
    return f"{job_id}.mp4"


def input_key(job_id: str) -> str:
    return f"inputs/{job_id}.img"


def open_storage(settings: Settings) -> LocalStorage:
    url = settings.resolved_storage_url
    if url.startswith("s3://"):
        raise ConfigError(
            "AIPROD_STORAGE_URL=s3://... is not supported by this build yet; "
            "use a local folder (or a mounted bucket) path"
        )
    if url.startswith("file://"):
        url = url[len("file://") :]
    return LocalStorage(Path(url))
