"""Job errors show a code and a short message; server paths go to the log only (issue 32)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import select

from aiprod.core.errors import AiprodError
from aiprod.core.logging import JOB_ERROR_CHARS, job_error_message
from aiprod.db.models import Job
from aiprod.db.session import session_scope
from aiprod.jobs.schema import GenerateBody
from tests.service.harness import local_worker, queue_job

SECRET_PATH = "/srv/aiprod-secret/models/ltx/transformer.safetensors"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            f"FileNotFoundError: [Errno 2] No such file: '{SECRET_PATH}'",
            "FileNotFoundError: [Errno 2] No such file: '<path>'",
        ),
        ("model folder /models/x not found", "model folder <path> not found"),
        ("see ~/models/ltx/a.bin", "see <path>"),
        (r"C:\models\ltx\a.bin missing", "<path> missing"),
        # Not paths: URLs, ratios, plain text.
        ("webhook https://example.com/a/b refused", "webhook https://example.com/a/b refused"),
        ("size 32/64 is odd", "size 32/64 is odd"),
    ],
)
def test_job_error_message_hides_paths(message: str, expected: str) -> None:
    assert job_error_message(message) == expected


def test_job_error_message_is_short() -> None:
    out = job_error_message("x" * 5000)
    assert len(out) == JOB_ERROR_CHARS and out.endswith("...")


class _Crashing:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def __call__(self, *args: object, **kwargs: object) -> None:
        raise self.exc


@pytest.mark.parametrize(
    "exc",
    [
        FileNotFoundError(2, "No such file or directory", SECRET_PATH),  # a crash
        AiprodError(f"cannot read {SECRET_PATH}: corrupt", status_code=400, code="bad_model"),
    ],
)
def test_worker_writes_no_server_path_into_the_job(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, exc: Exception
) -> None:
    with local_worker(tmp_path, max_attempts=1) as worker:
        job = queue_job(worker, GenerateBody(prompt="a fox"))
        worker.pipelines[worker.registry.default] = _Crashing(exc)
        with caplog.at_level(logging.WARNING):
            assert worker.step()
        with session_scope(worker.sessions) as s:
            row = s.execute(select(Job).where(Job.id == job.id)).scalar_one()
            assert row.status == "failed"
            assert row.error_code in {"generation_failed", "bad_model"}
            assert SECRET_PATH not in (row.error_message or "")
            assert "<path>" in row.error_message
        assert SECRET_PATH in caplog.text  # the operator still finds it in the log


@pytest.mark.parametrize(
    ("exc", "code", "attempts_left"),
    [
        # An upsampler that does not fit the model: the same on every attempt, not retried.
        (
            RuntimeError(
                "Given groups=1, weight of size [32, 16, 3, 3, 3], expected input[1, 8, 2, 4, 4]"
                " to have 16 channels, but got 8 channels instead\nmore torch text"
            ),
            "model_error",
            False,
        ),
        (ValueError("`height` and `width` have to be divisible by 32"), "model_error", False),
        # A transient failure: retried (the job goes back to the queue).
        (RuntimeError("CUDA error: unspecified launch failure"), "generation_failed", True),
        (RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), "generation_failed", True),
    ],
)
def test_backend_errors_are_classified(
    tmp_path: Path, exc: Exception, code: str, attempts_left: bool
) -> None:
    with local_worker(tmp_path, max_attempts=3) as worker:
        job = queue_job(worker, GenerateBody(prompt="a fox"))
        worker.pipelines[worker.registry.default] = _Crashing(exc)
        assert worker.step()
        with session_scope(worker.sessions) as s:
            row = s.execute(select(Job).where(Job.id == job.id)).scalar_one()
            assert row.error_code == code
            assert "\n" not in (row.error_message or "")  # one line
            assert row.error_message.startswith("model 'builtin'")
            assert row.status == ("queued" if attempts_left else "failed"), row.status
            assert row.attempts == 1
