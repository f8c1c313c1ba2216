"""S3-compatible storage against a real S3 server (moto's server mode on loopback), the storage
contract shared with LocalStorage, and one job end to end with AIPROD_STORAGE_URL=s3://..."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import create_engine, update

from aiprod.core.errors import ConfigError
from aiprod.core.media import read_video
from aiprod.core.settings import Settings
from aiprod.db.models import Job
from aiprod.jobs.retention import output_deleter
from aiprod.jobs.storage import LocalStorage, S3Storage, StorageError, open_storage
from tests.service.harness import Stack, aiprod_cmd, free_port, wait_job

pytestmark = pytest.mark.integration  # real servers and worker subprocesses

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

CREDS = {
    "AWS_ACCESS_KEY_ID": "aiprod-test",
    "AWS_SECRET_ACCESS_KEY": "aiprod-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A real S3-compatible HTTP server on a free loopback port, with test credentials set."""
    saved = {k: os.environ.get(k) for k in CREDS}
    os.environ.update(CREDS)
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _bucket(endpoint: str) -> str:
    name = f"aiprod-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    return name


def _keys(endpoint: str, bucket: str) -> list[str]:
    resp = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in resp.get("Contents", []))


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Every backend, for the contract tests."""
    if request.param == "local":
        return LocalStorage(tmp_path / "outputs")
    endpoint = request.getfixturevalue("s3_endpoint")
    url = f"s3://{_bucket(endpoint)}/videos/run1"
    return S3Storage.from_url(url, endpoint_url=endpoint)


def test_write_read_exists_size_delete(storage: Any) -> None:
    key = "inputs/job1.img"
    assert not storage.exists(key) and storage.size(key) is None
    storage.write_bytes(key, b"hello world")
    assert storage.exists(key) and storage.size(key) == 11
    assert storage.read_bytes(key) == b"hello world"
    storage.write_bytes(key, b"replaced")  # overwrite
    assert storage.read_bytes(key) == b"replaced"
    freed = output_deleter(storage)(key)
    assert freed == 8
    assert not storage.exists(key)
    storage.delete(key)  # deleting a missing key is not an error
    assert output_deleter(storage)(key) == 0
    storage.check_writable()


def test_range_reads(storage: Any) -> None:
    data = np.random.default_rng(0).integers(0, 256, 700_000, dtype=np.uint8).tobytes()
    storage.write_bytes("big.mp4", data)
    for start, length in [(0, 100), (5, 1), (123_456, 400_000), (len(data) - 7, 7), (0, len(data))]:
        got = b"".join(storage.iter_range("big.mp4", start, length))
        assert got == data[start : start + length], (start, length)


def test_staged_path_publishes_only_a_complete_file(storage: Any) -> None:
    with storage.staged_path("a.mp4") as p:
        p.write_bytes(b"partial")
        if storage.local_root is None:  # S3: nothing visible until the block ends
            assert not storage.exists("a.mp4")
        p.write_bytes(b"complete")
    assert storage.read_bytes("a.mp4") == b"complete"
    if storage.local_root is None:
        with pytest.raises(RuntimeError), storage.staged_path("b.mp4") as p:
            p.write_bytes(b"half")
            raise RuntimeError("encoder crashed")
        assert not storage.exists("b.mp4") and not p.exists()  # no object, no temp file


def test_missing_object_and_bad_keys(storage: Any) -> None:
    with pytest.raises(FileNotFoundError) as exc:
        storage.read_bytes("nope.mp4")
    if storage.local_root is None:
        assert "s3://" in str(exc.value) and "videos/run1/nope.mp4" in str(exc.value)
    with pytest.raises(ValueError, match="storage key"):
        storage.exists("../escape.mp4")


def test_prefix_and_object_keys(s3_endpoint: str) -> None:
    bucket = _bucket(s3_endpoint)
    st = S3Storage.from_url(f"s3://{bucket}/a/b/", endpoint_url=s3_endpoint)
    bare = S3Storage.from_url(f"s3://{bucket}", endpoint_url=s3_endpoint)
    assert st.describe() == f"s3://{bucket}/a/b/" and bare.describe() == f"s3://{bucket}/"
    st.write_bytes("x.mp4", b"1")
    bare.write_bytes("inputs/y.img", b"2")
    assert _keys(s3_endpoint, bucket) == ["a/b/x.mp4", "inputs/y.img"]
    assert not bare.exists("x.mp4") and bare.read_bytes("a/b/x.mp4") == b"1"


def test_missing_bucket_is_a_clear_error(s3_endpoint: str) -> None:
    st = S3Storage.from_url("s3://no-such-bucket-here/p", endpoint_url=s3_endpoint)
    with pytest.raises(StorageError) as exc:
        st.check_writable()
    assert "NoSuchBucket" in exc.value.message and "create the bucket" in exc.value.message
    assert exc.value.status_code == 503
    down = S3Storage.from_url("s3://b/p", endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StorageError, match="EndpointConnectionError.*AIPROD_S3_ENDPOINT_URL"):
        down.read_bytes("x.mp4")


def test_open_storage_reads_settings(s3_endpoint: str) -> None:
    st = open_storage(
        Settings(storage_url="s3://bkt/out", s3_endpoint_url=s3_endpoint, s3_region="eu-west-1")
    )
    assert isinstance(st, S3Storage) and st.describe() == "s3://bkt/out/"
    assert st.client.meta.region_name == "eu-west-1"
    with pytest.raises(ConfigError, match="names no bucket"):
        open_storage(Settings(storage_url="s3:///x"))


def test_without_boto3_local_works_and_s3_names_the_extra(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['boto3'] = None; sys.modules['botocore'] = None\n"
        "from aiprod.service.app import create_app\n"
        "from aiprod.core.settings import Settings\n"
        "from aiprod.jobs.storage import open_storage\n"
        f"open_storage(Settings(storage_url={str(tmp_path)!r}))\n"
        "try:\n"
        "    open_storage(Settings(storage_url='s3://b/p'))\n"
        "except Exception as exc:\n"
        "    sys.stdout.write(type(exc).__name__ + ': ' + str(exc))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert (
        out.stdout
        == "ConfigError: AIPROD_STORAGE_URL=s3://... needs boto3: pip install 'aiprod[s3]'"
    )
    # and `aiprod serve` says so in one line (brackets intact, not eaten as rich markup)
    fake = tmp_path / "fake"
    (fake / "boto3").mkdir(parents=True)
    (fake / "boto3" / "__init__.py").write_text("raise ImportError('No module named boto3')\n")
    env = {
        **os.environ,
        "PYTHONPATH": str(fake),
        "AIPROD_DATA_DIR": str(tmp_path / "data"),
        "AIPROD_STORAGE_URL": "s3://b/p",
    }
    res = subprocess.run(
        aiprod_cmd("serve", "--no-worker", "--port", str(free_port())),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode != 0
    assert res.stderr.strip().splitlines()[-1] == (
        "error: AIPROD_STORAGE_URL=s3://... needs boto3: pip install 'aiprod[s3]'"
    )


def test_job_end_to_end_on_s3(s3_endpoint: str, tmp_path: Path) -> None:
    """Image upload, worker output, download with Range/ETag, /readyz, retention: all on S3."""
    from PIL import Image

    bucket = _bucket(s3_endpoint)
    db = f"sqlite:///{tmp_path / 'aiprod.db'}"
    stack = Stack(
        tmp_path,
        db,
        workers=1,
        AIPROD_STORAGE_URL=f"s3://{bucket}/outputs",
        AIPROD_S3_ENDPOINT_URL=s3_endpoint,
        **CREDS,
    )
    try:
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, format="PNG")
        image = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        key = stack.create_key("acme")
        with stack.client(key) as c:
            r = c.post("/api/v1/generate", json={"prompt": "a red square", "image": image})
            assert r.status_code == 202, r.text
            job = wait_job(c, r.json()["id"], {"succeeded", "failed"}, timeout=120)
            assert job["status"] == "succeeded", (job["error"], stack.logs())
            jid = job["id"]
            assert _keys(s3_endpoint, bucket) == [f"outputs/{jid}.mp4", f"outputs/inputs/{jid}.img"]
            assert not (stack.data_dir / "outputs").exists()  # nothing written locally

            d = c.get(f"/api/v1/jobs/{jid}/download")
            assert d.status_code == 200 and d.headers["content-type"] == "video/mp4"
            assert int(d.headers["content-length"]) == len(d.content)
            (tmp_path / "dl.mp4").write_bytes(d.content)
            frames, fps = read_video(tmp_path / "dl.mp4")
            assert frames.shape == (9, 32, 32, 3) and fps == 8
            part = c.get(f"/api/v1/jobs/{jid}/download", headers={"Range": "bytes=100-299"})
            assert part.status_code == 206 and part.content == d.content[100:300]
            assert part.headers["content-range"] == f"bytes 100-299/{len(d.content)}"
            tail = c.get(f"/api/v1/jobs/{jid}/download", headers={"Range": "bytes=-50"})
            assert tail.status_code == 206 and tail.content == d.content[-50:]
            etag = d.headers["etag"]
            nm = c.get(f"/api/v1/jobs/{jid}/download", headers={"If-None-Match": etag})
            assert nm.status_code == 304

            ready = c.get("/readyz").json()
            assert ready["checks"]["storage"] == "ok" and ready["checks"]["disk"] == "n/a"
            assert ready["details"]["storage"] == {"url": f"s3://{bucket}/outputs/"}

        # Retention deletes the object and expires the job.
        eng = create_engine(db)
        with eng.begin() as conn:
            old = datetime.now(UTC) - timedelta(days=40)
            conn.execute(update(Job).where(Job.id == jid).values(completed_at=old))
        eng.dispose()
        out = stack.cli("db", "retention", "--days", "30").stdout
        assert "expired 1 jobs, deleted 1 files" in out
        assert _keys(s3_endpoint, bucket) == [f"outputs/inputs/{jid}.img"]
        with stack.client(key) as c:
            assert c.get(f"/api/v1/jobs/{jid}").json()["status"] == "expired"
            gone = c.get(f"/api/v1/jobs/{jid}/download")
            assert gone.status_code == 410 and gone.json()["error"]["code"] == "expired"
            # DELETE removes the object from the bucket; the row stays
            other = c.post("/api/v1/generate", json={"prompt": "x"}, headers={"Prefer": "wait"})
            oid = other.json()["id"]
            assert other.json()["status"] == "succeeded", stack.logs()
            assert f"outputs/{oid}.mp4" in _keys(s3_endpoint, bucket)
            deleted = c.delete(f"/api/v1/jobs/{oid}").json()
            assert deleted["deleted_at"] is not None and deleted["status"] == "succeeded"
            assert _keys(s3_endpoint, bucket) == [f"outputs/inputs/{jid}.img"]
            assert c.get(f"/api/v1/jobs/{oid}/download").status_code == 410
    finally:
        stack.stop()
