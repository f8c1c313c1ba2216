"""Where job inputs and output MP4s live: local disk (default: ``<data_dir>/outputs``) or an
S3-compatible bucket (``AIPROD_STORAGE_URL=s3://bucket/prefix``).

Keys are relative paths (``<job_id>.mp4``, ``inputs/<job_id>.img``) stored in the jobs table, so
the API and every worker resolve them against the same root. Both backends implement
``Storage``; a missing key raises ``FileNotFoundError`` from either. No FastAPI, no torch.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from aiprod.core.errors import AiprodError, ConfigError
from aiprod.core.settings import Settings

CHUNK = 256 * 1024

log = logging.getLogger("aiprod.storage")


class StorageError(AiprodError):
    """Storage failed or refused a request (unreachable, no bucket, access denied, disk full,
    folder not writable): a 503 with Retry-After in the API, never a 500."""

    status_code = 503
    code = "storage_unavailable"


#: Seconds a storage writability check is trusted (``ensure_writable``): submits are refused
#: with 503 while storage is not writable without a probe write per request.
WRITABLE_CHECK_SECONDS = 5.0


def local_storage_error(exc: OSError, action: str) -> StorageError:
    """A one-line StorageError for an OSError on local storage (disk full, read-only...).
    Its message names no server path (it reaches clients); the caller logs the path."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "is full (no space left on device)"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        what = "is not writable (permission denied or read-only)"
    else:
        what = f"failed ({exc.strerror or type(exc).__name__})"
    return StorageError(f"cannot {action}: the output storage {what}; retry later")


def check_local_writable(root: Path) -> None:
    """Raise StorageError (caused by the OSError) unless a file can be written under ``root``.
    The probe file (one name per process) is removed whether the write worked or not, so
    probes leave nothing behind, also when the disk is full."""
    probe = root / f".aiprod-write-probe-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        with probe.open("wb") as f:
            f.write(b"ok")
            f.flush()
            os.fsync(f.fileno())  # a full disk answers here at the latest
    except OSError as exc:
        log.debug("storage probe %s failed: %s", probe, exc)
        raise local_storage_error(exc, "write a file") from exc
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)


class WritableCheck:
    """Remembers a storage's last writability probe for ``WRITABLE_CHECK_SECONDS``
    (thread-safe; one probe at a time)."""

    def __init__(self, probe: Callable[[], None]) -> None:
        self._probe = probe
        self._lock = threading.Lock()
        self._checked_at = -float("inf")
        self._error: StorageError | None = None

    def fresh(self, max_age: float = WRITABLE_CHECK_SECONDS) -> bool:
        """Whether :meth:`ensure` would answer from memory (no probe, no I/O)."""
        return time.monotonic() - self._checked_at < max_age

    def raise_remembered(self) -> None:
        """Raise StorageError if the last probe failed (no lock, no I/O: for the event loop,
        when :meth:`fresh`)."""
        error = self._error
        if error is not None:
            raise StorageError(error.message)

    def ensure(self, max_age: float = WRITABLE_CHECK_SECONDS) -> None:
        """Raise StorageError if storage was not writable at the last probe (probing again
        when that is older than ``max_age`` seconds)."""
        with self._lock:
            now = time.monotonic()
            if now - self._checked_at >= max_age:
                was = self._error
                try:
                    self._probe()
                    self._error = None
                except StorageError as exc:
                    self._error = exc
                self._checked_at = time.monotonic()
                if (was is None) != (self._error is None):  # log state changes only
                    if self._error is not None:
                        log.warning("storage not writable: %s", self._error.message)
                    else:
                        log.warning("storage writable again")
            error = self._error
        if error is not None:
            raise StorageError(error.message)


class Storage(Protocol):
    """What the API, the workers and retention need from storage."""

    #: The folder on this machine holding the files, or None for remote (object) storage.
    local_root: Path | None

    def describe(self) -> str: ...
    def write_bytes(self, key: str, data: bytes) -> Any: ...
    def staged_path(self, key: str) -> contextlib.AbstractContextManager[Path]: ...
    def read_bytes(self, key: str) -> bytes: ...
    def size(self, key: str) -> int | None: ...
    def iter_range(self, key: str, start: int, length: int) -> Iterator[bytes]: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> int | None: ...
    def check_writable(self) -> None: ...
    def ensure_writable(self) -> None: ...

    @property
    def writable_check(self) -> WritableCheck: ...


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.local_root: Path | None = self.root
        self._writable = WritableCheck(self.check_writable)

    def describe(self) -> str:
        return str(self.root)

    def path(self, key: str) -> Path:
        p = (self.root / key).resolve()
        if self.root not in p.parents:
            raise ValueError(f"storage key {key!r} escapes the storage root")
        return p

    def write_bytes(self, key: str, data: bytes) -> Path:
        """Write atomically (temp file in the same folder, then rename). A full disk or a
        folder that cannot be written raises StorageError (503), with nothing left behind."""
        dest = self.path(key)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, dest)
        except OSError as exc:
            log.warning("storage write of %s failed: %s", dest, exc)
            raise local_storage_error(exc, "store a file") from exc
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        return dest

    @contextlib.contextmanager
    def staged_path(self, key: str) -> Iterator[Path]:
        """The path to write ``key``'s file at (locally: the final path itself)."""
        yield self.path(key)

    def read_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def size(self, key: str) -> int | None:
        p = self.path(key)
        return p.stat().st_size if p.is_file() else None

    def iter_range(self, key: str, start: int, length: int) -> Iterator[bytes]:
        with self.path(key).open("rb") as f:
            f.seek(start)
            left = length
            while left > 0:
                data = f.read(min(CHUNK, left))
                if not data:
                    break
                left -= len(data)
                yield data

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def check_writable(self) -> None:
        """Raise StorageError unless a file can be written under the root (see
        :func:`check_local_writable`)."""
        check_local_writable(self.root)

    def ensure_writable(self) -> None:
        """:meth:`check_writable`, remembered for ``WRITABLE_CHECK_SECONDS`` (for submits)."""
        self._writable.ensure()

    @property
    def writable_check(self) -> WritableCheck:
        return self._writable


class S3Storage:
    """Objects ``<prefix><key>`` in one bucket. An object appears complete or not at all (S3
    PUT and multipart uploads are atomic), so readers never see a half-written MP4."""

    local_root: Path | None = None

    def __init__(self, *, bucket: str, prefix: str, client: Any) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client
        self._writable = WritableCheck(self.check_writable)

    @classmethod
    def from_url(
        cls, url: str, *, endpoint_url: str | None = None, region: str | None = None
    ) -> S3Storage:
        """``s3://bucket/prefix`` -> storage; credentials from the standard AWS chain."""
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not bucket:
            raise ConfigError(f"AIPROD_STORAGE_URL={url!r} names no bucket: use s3://bucket/prefix")
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise ConfigError(
                "AIPROD_STORAGE_URL=s3://... needs boto3: pip install 'aiprod[s3]'"
            ) from None
        # Path-style addressing works with every S3-compatible server (MinIO, R2, Ceph, moto).
        config = Config(
            s3={"addressing_style": "path"} if endpoint_url else {},
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=5,  # an unreachable endpoint fails /readyz in seconds, not minutes
        )
        client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
        return cls(bucket=bucket, prefix=prefix, client=client)

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def object_key(self, key: str) -> str:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"storage key {key!r} is not a plain relative path")
        return self.prefix + key

    def _fail(self, exc: Exception, action: str, key: str) -> AiprodError:
        """Turn a boto error into FileNotFoundError (missing) or a one-line StorageError."""
        where = f"s3://{self.bucket}/{self.object_key(key)}" if key else self.describe()
        code = ""
        response = getattr(exc, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchKey", "404", "NotFound"):
            raise FileNotFoundError(f"{where} does not exist") from exc
        hint = {
            "NoSuchBucket": "create the bucket or fix AIPROD_STORAGE_URL",
            "AccessDenied": "check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)",
            "403": "check the credentials and their permissions on the bucket and prefix",
            "InvalidAccessKeyId": "check AWS_ACCESS_KEY_ID",
            "SignatureDoesNotMatch": "check AWS_SECRET_ACCESS_KEY",
        }.get(code, "check AIPROD_S3_ENDPOINT_URL, the credentials and that the server is up")
        return StorageError(f"cannot {action} {where} ({code or type(exc).__name__}): {hint}")

    def _call(self, action: str, key: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.bucket, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, action, key) from exc

    def write_bytes(self, key: str, data: bytes) -> str:
        self._call("write", key, self.client.put_object, Key=self.object_key(key), Body=data)
        return self.object_key(key)

    @contextlib.contextmanager
    def staged_path(self, key: str) -> Iterator[Path]:
        """A local temp file to write ``key``'s file at; uploaded when the block ends
        without an error, deleted either way."""
        fd, name = tempfile.mkstemp(prefix="aiprod-", suffix=Path(key).suffix)
        os.close(fd)
        tmp = Path(name)
        try:
            yield tmp
            from boto3.exceptions import S3UploadFailedError
            from botocore.exceptions import BotoCoreError, ClientError

            try:
                self.client.upload_file(str(tmp), self.bucket, self.object_key(key))
            except (ClientError, BotoCoreError, S3UploadFailedError) as exc:
                raise self._fail(exc, "upload", key) from exc
        finally:
            tmp.unlink(missing_ok=True)

    def read_bytes(self, key: str) -> bytes:
        obj = self._call("read", key, self.client.get_object, Key=self.object_key(key))
        data: bytes = obj["Body"].read()
        return data

    def size(self, key: str) -> int | None:
        try:
            head = self._call("stat", key, self.client.head_object, Key=self.object_key(key))
        except FileNotFoundError:
            return None
        return int(head["ContentLength"])

    def iter_range(self, key: str, start: int, length: int) -> Iterator[bytes]:
        if length <= 0:
            return
        obj = self._call(
            "read",
            key,
            self.client.get_object,
            Key=self.object_key(key),
            Range=f"bytes={start}-{start + length - 1}",
        )
        body = obj["Body"]
        try:
            yield from body.iter_chunks(CHUNK)
        finally:
            body.close()

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def delete(self, key: str) -> int:
        """Delete the object; returns its size in bytes (0 if it was already gone)."""
        size = self.size(key) or 0
        self._call("delete", key, self.client.delete_object, Key=self.object_key(key))
        return size

    def check_writable(self) -> None:
        """Raise StorageError unless an object can be written and deleted under the prefix."""
        key = f".aiprod-write-probe-{os.getpid()}"
        self.write_bytes(key, b"ok")
        self._call("delete", key, self.client.delete_object, Key=self.object_key(key))

    def ensure_writable(self) -> None:
        """:meth:`check_writable`, remembered for ``WRITABLE_CHECK_SECONDS`` (for submits)."""
        self._writable.ensure()

    @property
    def writable_check(self) -> WritableCheck:
        return self._writable


def output_key(job_id: str) -> str:
    return f"{job_id}.mp4"


def input_key(job_id: str) -> str:
    return f"inputs/{job_id}.img"


def open_storage(settings: Settings) -> LocalStorage | S3Storage:
    url = settings.resolved_storage_url
    if url.startswith("s3://"):
        return S3Storage.from_url(
            url, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region
        )
    if url.startswith("file://"):
        url = url[len("file://") :]
    return LocalStorage(Path(url))
