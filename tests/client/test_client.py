"""The Python client (sync and async) against a real ``aiprod serve`` on loopback: settings
from the environment, base URLs with or without /api/v1, a quick and named connection error,
downloads into a folder, every list filter, every job field, waiting."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from aiprod.client import (
    AsyncClient,
    Client,
    ClientError,
    ConnectionFailed,
    Job,
    JobCanceled,
    NotFoundError,
)
from aiprod.core.media import read_video
from aiprod.service.schemas import JobOut
from tests.service.harness import Stack, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("client")
    s = Stack(tmp, f"sqlite:///{tmp / 'aiprod.db'}", workers=1)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def key(stack: Stack) -> str:
    return stack.create_key("client-tests")


def test_reads_aiprod_url_and_key_and_takes_either_base_url(
    stack: Stack, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIPROD_URL", stack.url)
    monkeypatch.setenv("AIPROD_API_KEY", key)
    with Client() as client:
        assert client.base_url == stack.url
        assert client.models()[0]["id"] == "builtin"
    for url in (f"{stack.url}/api/v1", f"{stack.url}/api/v1/", f"{stack.url}/"):
        with Client(url) as client:
            assert client.models()[0]["id"] == "builtin"
            with pytest.raises(NotFoundError):
                client.get_job("00000000-0000-0000-0000-000000000000")
    monkeypatch.delenv("AIPROD_API_KEY")
    with pytest.raises(ClientError, match="AIPROD_API_KEY"):
        Client()


def test_no_server_raises_its_own_error_naming_the_url_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("AIPROD_URL", url)
    start = time.monotonic()
    with Client(api_key="aiprod_sk_x") as client, pytest.raises(ConnectionFailed) as err:
        client.models()
    assert time.monotonic() - start < 3  # no silent retries
    assert url in str(err.value) and err.value.url == url and "AIPROD_URL" in str(err.value)

    async def run() -> None:
        async with AsyncClient(api_key="aiprod_sk_x") as client:
            await client.get_job("x")

    with pytest.raises(ConnectionFailed, match=url):
        asyncio.run(run())


def test_job_has_every_field_of_the_job_object_and_tolerates_new_ones() -> None:
    fields = {f.name for f in dataclasses.fields(Job)}
    assert set(JobOut.model_fields) <= fields
    job = Job.from_dict({"id": "j", "status": "queued", "attempts": 2, "field_of_2027": 1})
    assert job.attempts == 2 and job.raw["field_of_2027"] == 1


def test_generate_wait_download_into_a_folder_and_filters(
    stack: Stack, key: str, tmp_path: Path
) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    with Client(stack.url, api_key=key) as client:
        job = client.generate("a red fox", seed=5, wait=True, timeout=180, poll_interval=0.1)
        assert job.status == "succeeded" and job.attempts == 1 and job.cancel_requested is False
        path = client.download(job.id, f"{tmp_path}/videos/new/")
        assert path == tmp_path / "videos" / "new" / f"{job.id}.mp4"
        frames, _ = read_video(path)
        assert frames.shape[0] == 9
        again = client.download(job.id, str(tmp_path / "videos"))  # an existing folder
        assert again == tmp_path / "videos" / f"{job.id}.mp4"
        # long enough (400 steps) to be canceled before it ends
        queued = client.generate("a blue square", seed=6, num_inference_steps=400)
        client.cancel(queued.id)
        with pytest.raises(JobCanceled):
            client.wait(queued.id, timeout=120, poll_interval=0.1)
        after = datetime.now(UTC) + timedelta(seconds=1)
        ids = {j.id for j in client.iter_jobs(status="succeeded", created_after=before)}
        assert job.id in ids and queued.id not in ids
        both = {j.id for j in client.iter_jobs(status=["succeeded", "canceled"], page_size=1)}
        assert {job.id, queued.id} <= both
        assert not list(client.iter_jobs(created_before=before))
        assert {j.id for j in client.iter_jobs(created_after=before, created_before=after)} >= {
            job.id,
            queued.id,
        }


def test_wait_holds_the_request_where_the_server_allows_it_and_polls_otherwise(
    stack: Stack, key: str
) -> None:
    """One wait costs about one request where the server applies ``Prefer: wait`` (counted
    with X-RateLimit-Remaining), and polls (several requests) where it does not."""
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}) as raw:
        job_id = raw.post("/api/v1/generate", json={"prompt": "a fox", "seed": 9}).json()["id"]
        applied = "wait" in raw.get(
            f"/api/v1/jobs/{job_id}", headers={"Prefer": "wait=1"}
        ).headers.get("Preference-Applied", "")
        job_id = raw.post(
            "/api/v1/generate", json={"prompt": "a fox", "seed": 10, "num_inference_steps": 200}
        ).json()["id"]
        left = int(raw.get("/api/v1/models").headers["X-RateLimit-Remaining"])
        with Client(stack.url, api_key=key) as client:
            job = client.wait(job_id, timeout=300, poll_interval=0.05)
        assert job.status == "succeeded"
        used = left - int(raw.get("/api/v1/models").headers["X-RateLimit-Remaining"]) - 1
    if applied:
        assert used <= 3, used
    else:
        assert used >= 2, used  # polled


def test_async_client_has_the_same_surface_and_works(
    stack: Stack, key: str, tmp_path: Path
) -> None:
    def public(cls: type) -> set[str]:
        return {n for n, _ in inspect.getmembers(cls, callable) if not n.startswith("_")}

    assert public(Client) - {"close"} == public(AsyncClient) - {"close"}
    for name in public(Client) - {"close", "iter_jobs"}:
        assert inspect.iscoroutinefunction(getattr(AsyncClient, name)), name
        assert inspect.signature(getattr(Client, name)) == inspect.signature(
            getattr(AsyncClient, name)
        ), name

    async def run() -> None:
        async with AsyncClient(f"{stack.url}/api/v1", api_key=key) as client:
            job = await client.generate("a red fox", seed=11, wait=True, timeout=180)
            path = await client.download(job.id, f"{tmp_path}/out/")
            assert path.name == f"{job.id}.mp4" and path.stat().st_size > 0
            ids = [j.id async for j in client.iter_jobs(status="succeeded", page_size=1)]
            assert job.id in ids
            assert (await client.get_job(job.id)).gpu_seconds

    asyncio.run(run())
