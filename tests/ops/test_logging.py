"""Structured logs: JSON lines with request/job fields, text on a terminal."""

from __future__ import annotations

import io
import json
import logging

import pytest

from aiprod.core.logging import configure_logging, log_job_transition, request_id_var


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_extra_fields_and_request_id(monkeypatch):
    monkeypatch.delenv("AIPROD_LOG_FORMAT", raising=False)
    buf = io.StringIO()
    configure_logging(stream=buf)  # not a terminal -> JSON
    token = request_id_var.set("req-123")
    try:
        logging.getLogger("aiprod.http").info(
            "request", extra={"route": "/api/v1/jobs/{job_id}", "status": 200, "latency_ms": 1.5}
        )
    finally:
        request_id_var.reset(token)
    log_job_transition("job-1", old="queued", new="running", model="builtin", worker="w1")
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert len(lines) == 2
    req, job = lines
    assert req["msg"] == "request" and req["level"] == "info" and req["logger"] == "aiprod.http"
    assert req["route"] == "/api/v1/jobs/{job_id}" and req["status"] == 200
    assert req["request_id"] == "req-123" and "ts" in req
    assert job["event"] == "job.transition" and job["job_id"] == "job-1"
    assert (job["from_status"], job["to_status"], job["worker"]) == ("queued", "running", "w1")
    assert "request_id" not in job


def test_text_on_a_terminal_and_reconfigure_replaces_handler(monkeypatch):
    monkeypatch.delenv("AIPROD_LOG_FORMAT", raising=False)
    first = io.StringIO()
    configure_logging(stream=first)
    tty = _Tty()
    configure_logging(stream=tty)
    logging.getLogger("aiprod.test").warning("hello %s", "there", extra={"k": "v"})
    assert first.getvalue() == ""  # the first handler was replaced, not kept
    out = tty.getvalue().strip()
    assert "WARNING" in out and "aiprod.test: hello there" in out and "k=v" in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


def test_env_forces_format_and_bad_values_are_named(monkeypatch):
    monkeypatch.setenv("AIPROD_LOG_FORMAT", "json")
    tty = _Tty()
    configure_logging(stream=tty)
    logging.getLogger("x").info("m")
    assert json.loads(tty.getvalue())["msg"] == "m"
    with pytest.raises(ValueError, match="log format"):
        configure_logging(fmt="xml", stream=io.StringIO())
    with pytest.raises(ValueError, match="log level"):
        configure_logging(level="LOUD", stream=io.StringIO())


def test_format_and_level_come_from_the_settings_dotenv_too(monkeypatch, tmp_path):
    # AIPROD_LOG_FORMAT / AIPROD_LOG_LEVEL are Settings fields, so a .env line works as well
    monkeypatch.delenv("AIPROD_LOG_FORMAT", raising=False)
    monkeypatch.delenv("AIPROD_LOG_LEVEL", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("AIPROD_LOG_FORMAT=json\nAIPROD_LOG_LEVEL=warning\n")
    tty = _Tty()
    configure_logging(stream=tty)  # a terminal, yet JSON from .env
    logging.getLogger("x").info("dropped")
    logging.getLogger("x").warning("kept")
    assert [json.loads(line)["msg"] for line in tty.getvalue().splitlines()] == ["kept"]
    monkeypatch.setenv("AIPROD_LOG_LEVEL", "loud")  # the environment wins over .env
    with pytest.raises(ValueError, match="log level"):
        configure_logging(stream=io.StringIO())
