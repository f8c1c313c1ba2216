"""The parts of waiting without polling and of the /v1 facade that need no server: the Prefer
header, the event stream's framing and heartbeat, the running ETA, expires_at, and the
translation of an OpenAI request (the end-to-end tests are test_waiting.py and
test_openai_videos.py)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aiprod.core.errors import InvalidRequest
from aiprod.core.registry import load_registry
from aiprod.db.models import Job, JobStatus
from aiprod.jobs.openai_videos import VideoRequest, to_generate_body
from aiprod.jobs.views import expires_at, running_eta
from aiprod.jobs.watch import MAX_WAIT_SECONDS, JobState
from aiprod.service.waiting import job_events, prefer_wait
from tests.service.harness import write_models_toml


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("wait=5", 5),
        ("WAIT=5", 5),
        ("wait", MAX_WAIT_SECONDS),
        ("wait=3600", MAX_WAIT_SECONDS),
        ("respond-async, wait=10", 10),
        ('wait="7"', 7),
        ("wait=0", None),
        ("wait=soon", None),
        ("wait=-3", None),
        ("return=minimal", None),
    ],
)
def test_prefer_wait(header: str | None, seconds: int | None) -> None:
    assert prefer_wait(header) == seconds


def test_events_framing_progress_and_heartbeat() -> None:
    states = iter(
        [JobState("queued", 0.0)] * 4
        + [JobState("running", 0.0), JobState("running", 0.5), JobState("running", 0.5)]
        + [JobState("succeeded", 1.0), JobState("succeeded", 1.0)]
    )
    current: list[JobState] = []

    def read() -> JobState:
        current.append(next(states))
        return current[-1]

    def render() -> dict[str, object]:
        return {"status": current[-1].status, "progress": current[-1].progress}

    async def collect() -> list[str]:
        return [
            chunk
            async for chunk in job_events(read=read, render=render, heartbeat=0.0, interval=0.001)
        ]

    chunks = asyncio.run(collect())
    events = [c for c in chunks if not c.startswith(":")]
    assert [e.split("\n")[0] for e in events] == [
        "event: status",
        "event: status",
        "event: progress",
        "event: status",
    ]
    assert [json.loads(e.split("\n")[1][6:])["status"] for e in events] == [
        "queued",
        "running",
        "running",
        "succeeded",
    ]
    assert all(c.endswith("\n\n") for c in chunks)
    assert ": heartbeat\n\n" in chunks  # the unchanged reads (heartbeat=0: at once)
    assert chunks[-1].startswith("event: status")  # the stream ends after the terminal one


def _job(**values: object) -> Job:
    return Job(id="j", status=JobStatus.RUNNING, progress=0.0, **values)


def test_running_eta_follows_measured_progress() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    started = now - timedelta(seconds=30)
    # no progress yet: the estimate
    assert running_eta(_job(estimated_seconds=100.0, started_at=started), now) == 100.0
    # a quarter done in 30 s: 90 s left, whatever the estimate said
    job = _job(estimated_seconds=10.0, started_at=started)
    job.progress = 0.25
    assert running_eta(job, now) == pytest.approx(90.0)
    job.progress = 0.75
    assert running_eta(job, now) == pytest.approx(10.0)
    assert running_eta(_job(), now) is None  # neither progress nor an estimate


def test_expires_at_from_retention() -> None:
    done = datetime(2026, 1, 1, tzinfo=UTC)
    ok = Job(id="j", status=JobStatus.SUCCEEDED, completed_at=done)
    assert expires_at(ok, 2.0) == done + timedelta(days=2)
    assert expires_at(ok, None) is None  # no retention
    ok.deleted_at = done
    assert expires_at(ok, 2.0) is None
    for status in (JobStatus.FAILED, JobStatus.CANCELED, JobStatus.RUNNING):
        assert expires_at(Job(id="j", status=status, completed_at=done), 2.0) is None


@pytest.fixture
def registry(tmp_path: Path):  # type: ignore[no-untyped-def]
    return load_registry(write_models_toml(tmp_path))


def test_openai_request_to_generate_body(registry) -> None:  # type: ignore[no-untyped-def]
    body = to_generate_body(
        VideoRequest({"prompt": "a fox", "size": "64x32", "seconds": "2", "seed": "4"}, form=True),
        registry,
    )
    # 2 s at the model's 8 fps = 16 frames -> the nearest 8k+1 frame count
    assert (body.width, body.height, body.num_frames, body.seed) == (64, 32, 17, 4)
    assert to_generate_body(VideoRequest({"prompt": "a fox"}), registry).num_frames is None


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({}, "prompt"),
        ({"prompt": "x", "size": "64"}, "size"),
        ({"prompt": "x", "seconds": "0"}, "seconds"),
        ({"prompt": "x", "seconds": "60"}, "seconds"),
        ({"prompt": "x", "seconds": "soon"}, "seconds"),
        ({"prompt": "x", "seconds": "nan"}, "seconds"),
        ({"prompt": "x", "seconds": "inf"}, "seconds"),
        ({"prompt": "x", "seed": "4"}, "seed"),  # JSON: a number, not a string
        ({"prompt": 5}, "prompt"),
        ({"prompt": "x", "input_reference": {"url": "data:,"}}, "input_reference"),
        ({"prompt": "x", "seed": "1.5"}, "seed"),
        ({"prompt": "x", "model": "sora-2"}, "model"),
        ({"prompt": "x", "input_reference": {"file_id": "f"}}, "input_reference"),
        ({"prompt": "x", "input_reference": "https://example.com/a.png"}, "input_reference"),
        ({"prompt": "x", "input_reference": "data:image/png;base64,@@"}, "input_reference"),
        ({"prompt": "x", "remix_video_id": "v"}, "remix_video_id"),
    ],
)
def test_openai_request_refusals_name_the_parameter(
    registry,  # type: ignore[no-untyped-def]
    fields: dict[str, object],
    param: str,
) -> None:
    with pytest.raises(InvalidRequest) as info:
        to_generate_body(VideoRequest(fields), registry)
    assert info.value.field == param, info.value.message
