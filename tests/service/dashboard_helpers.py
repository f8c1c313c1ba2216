"""Helpers for the console's tests: an app on a migrated database, keys, job rows in any state,
and a logged-in TestClient."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from aiprod.core.media import write_mp4
from aiprod.core.settings import Settings
from aiprod.db.models import Job, JobStatus, new_id
from aiprod.db.session import session_scope
from aiprod.service.app import create_app
from aiprod.service.keys import create_key
from tests.service.harness import write_models_toml

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def make_app(tmp_path: Path, db_url: str) -> Any:
    settings = Settings(
        data_dir=tmp_path / "data",
        models_file=write_models_toml(tmp_path),
        database_url=db_url,
        gpu_cost_per_hour=1.8,
    )
    return create_app(settings)


def add_key(app: Any, name: str, *, admin: bool = False, **kw: Any) -> tuple[str, str]:
    state = app.state.aiprod
    with session_scope(state.sessions) as s:
        row, secret = create_key(s, secret=state.secret, name=name, admin=admin, **kw)
        return row.id, secret


def add_job(
    app: Any,
    key_id: str,
    *,
    status: JobStatus = JobStatus.SUCCEEDED,
    prompt: str = "a red ball bounces",
    created: datetime | None = None,
    seconds: float = 4.0,
    video: bool = False,
    **extra: Any,
) -> str:
    """A job row as a worker would have left it (with a real MP4 in storage if ``video``)."""
    state = app.state.aiprod
    created = created or datetime.now(UTC) - timedelta(minutes=5)
    done = status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)
    job = Job(
        id=new_id(),
        api_key_id=key_id,
        prompt=prompt,
        model="builtin",
        model_version="builtin-test",
        params={
            "prompt": prompt,
            "negative_prompt": None,
            "width": 32,
            "height": 32,
            "num_frames": 9,
            "fps": 8,
            "num_inference_steps": 2,
            "guidance_scale": 3.0,
            "two_stage": False,
            "seed": 1,
        },
        status=status,
        created_at=created,
        available_at=created,
        started_at=created + timedelta(seconds=1) if status != JobStatus.QUEUED else None,
        completed_at=created + timedelta(seconds=1 + seconds) if done else None,
        gpu_seconds=seconds if done else None,
        cost_usd=round(seconds * 0.01, 6) if status == JobStatus.SUCCEEDED else None,
        progress=1.0 if status == JobStatus.SUCCEEDED else 0.0,
        **extra,
    )
    if video:
        out = state.storage.local_root / f"{job.id}.mp4"
        frames = np.zeros((9, 32, 32, 3), dtype=np.uint8)
        frames[:, :, :, 0] = np.linspace(0, 255, 9, dtype=np.uint8)[:, None, None]
        write_mp4(out, frames, 8)
        job.output_path = f"{job.id}.mp4"
        job.output_bytes = out.stat().st_size
    with session_scope(state.sessions) as s:
        s.add(job)
    return job.id


def csrf_of(html: str) -> str:
    m = CSRF.search(html)
    assert m, "no CSRF token in the page"
    return m.group(1)


def login(client: TestClient, key: str) -> str:
    """Log in through the form; returns the session's CSRF token."""
    form = client.get("/dashboard/login")
    r = client.post(
        "/dashboard/login",
        data={"api_key": key, "csrf_token": csrf_of(form.text)},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    return csrf_of(client.get("/dashboard").text)
