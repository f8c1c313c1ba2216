"""The OpenAI-compatible /v1/videos facade with the real `openai` SDK (pinned in the dev extra)
against a real `aiprod serve` (uvicorn on loopback + a worker on the tiny built-in model):
create (multipart, as the SDK sends it), poll, download_content (decoded back), list with
after/limit, delete; OpenAI's error shape for what aiprod cannot honour."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI
from PIL import Image

from aiprod.core.media import read_video
from tests.service.harness import Stack, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]

# The SDK marks the video methods deprecated (OpenAI's own Sora API): not our concern here.
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"openai\..*")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("openai")
    s = Stack(tmp, f"sqlite:///{tmp / 'aiprod.db'}", workers=1, AIPROD_RETENTION_DAYS="7")
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[OpenAI]:
    key = stack.create_key("openai-user")
    with OpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0) as c:
        yield c


def _wait(client: OpenAI, video_id: str) -> openai.types.Video:
    def done() -> openai.types.Video | None:
        v = client.videos.retrieve(video_id)
        return v if v.status in ("completed", "failed") else None

    result: openai.types.Video = wait_for(done, 180, 0.1, f"video {video_id}")
    return result


def test_create_poll_download_list_delete(client: OpenAI, tmp_path: Path) -> None:
    video = client.videos.create(prompt="a red fox running", size="32x32", seconds="1")
    assert video.object == "video" and video.model == "builtin"
    assert video.status in ("queued", "in_progress") and 0 <= video.progress <= 100
    assert video.size == "32x32" and video.created_at > 1_700_000_000
    # 1 s at the model's 8 fps: 9 frames (the model makes 8k+1), reported as they are
    assert video.seconds == "1.125"

    done = _wait(client, video.id)
    assert done.status == "completed" and done.progress == 100 and done.error is None
    assert done.completed_at is not None and done.completed_at >= done.created_at
    assert done.expires_at == done.completed_at + 7 * 86400  # AIPROD_RETENTION_DAYS=7

    content = client.videos.download_content(video.id)
    path = tmp_path / "fox.mp4"
    content.write_to_file(path)
    frames, fps = read_video(path)
    assert frames.shape == (9, 32, 32, 3) and frames.dtype == np.uint8 and fps == 8
    assert float(frames.std()) > 1.0  # a picture, not a blank

    # the SDK's poll helper works too
    assert client.videos.poll(video.id, poll_interval_ms=50).status == "completed"

    # list: two more videos, then pages of one with after/limit, newest first
    more = [
        client.videos.create(prompt=f"a blue ball {i}", extra_body={"seed": i}) for i in range(2)
    ]
    for v in more:
        _wait(client, v.id)
    first = client.videos.list(limit=1)
    assert len(first.data) == 1 and first.data[0].id == more[1].id and first.has_more
    second = client.videos.list(limit=1, after=first.data[0].id)
    assert [v.id for v in second.data] == [more[0].id]
    every = [v.id for v in client.videos.list(limit=1)]  # the SDK pages through with after
    assert every == [more[1].id, more[0].id, video.id]
    oldest = client.videos.list(order="asc", limit=2)
    assert [v.id for v in oldest.data] == [video.id, more[0].id]

    deleted = client.videos.delete(video.id)
    assert deleted.id == video.id and deleted.deleted and deleted.object == "video.deleted"
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)
    with pytest.raises(openai.NotFoundError):
        client.videos.download_content(video.id)
    assert video.id not in [v.id for v in client.videos.list(limit=100)]


def test_image_to_video_with_an_uploaded_reference(client: OpenAI) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buf, format="PNG")
    video = client.videos.create(
        prompt="a red square", input_reference=("ref.png", buf.getvalue(), "image/png")
    )
    assert _wait(client, video.id).status == "completed"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"size": "1280x720"}, "size"),
        ({"size": "big"}, "size"),
        ({"seconds": "12"}, "seconds"),
        ({"model": "sora-2"}, "model"),
        # the SDK cannot send a reference object in its multipart form: extra_body can
        ({"extra_body": {"input_reference": {"file_id": "file_123"}}}, "input_reference"),
        ({"extra_body": {"input_reference": {"image_url": "https://x/y.png"}}}, "input_reference"),
        ({"extra_body": {"remix_video_id": "video_1"}}, "remix_video_id"),
    ],
)
def test_what_aiprod_cannot_honour_is_an_openai_400(
    client: OpenAI, kwargs: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.videos.create(prompt="a fox", **kwargs)  # type: ignore[arg-type]
    err = info.value.body
    assert isinstance(err, dict) and err["param"] == param, err
    assert err["type"] == "invalid_request_error" and err["message"]


def test_remix_variant_and_errors_in_openai_shape(client: OpenAI, stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.videos.remix("anything", prompt="x")
    assert "remix is not supported" in info.value.message
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve("no-such-video")
    with pytest.raises(openai.BadRequestError) as bad:
        client.videos.list(after="no-such-video")
    assert isinstance(bad.value.body, dict) and bad.value.body["param"] == "after"
    with pytest.raises(openai.BadRequestError) as variant:
        client.videos.download_content("no-such-video", variant="thumbnail")
    assert isinstance(variant.value.body, dict) and variant.value.body["param"] == "variant"
    with OpenAI(base_url=f"{stack.url}/v1", api_key="aiprod_sk_wrong", max_retries=0) as bad_key:
        with pytest.raises(openai.AuthenticationError) as auth:
            bad_key.videos.list()
    assert isinstance(auth.value.body, dict) and auth.value.body["type"] == "authentication_error"
    # an unknown query parameter is refused, not ignored
    r = httpx.get(
        f"{stack.url}/v1/videos",
        params={"cursor": "x"},
        headers={"Authorization": f"Bearer {client.api_key}"},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "cursor"


def test_json_body_and_another_key_sees_nothing(client: OpenAI, stack: Stack) -> None:
    key = client.api_key
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}) as c:
        r = c.post("/v1/videos", json={"prompt": "a green tree", "size": "32x32", "seed": 3})
        assert r.status_code == 200, r.text
        vid = r.json()["id"]
    other = stack.create_key("someone-else")
    with OpenAI(base_url=f"{stack.url}/v1", api_key=other, max_retries=0) as c2:
        with pytest.raises(openai.NotFoundError):
            c2.videos.retrieve(vid)
        assert vid not in [v.id for v in c2.videos.list()]
    wait_for(lambda: client.videos.retrieve(vid).status == "completed", 180, 0.1, "json video")
