"""Structured logging: one JSON object per line in production, readable text in a terminal.

``configure_logging()`` installs one handler on the root logger. The format is JSON unless the
stream is a terminal (then text); ``AIPROD_LOG_FORMAT=json|text`` and ``AIPROD_LOG_LEVEL``
override it (``Settings.log_format`` / ``log_level``, so a ``.env`` line works too). Anything
passed through ``extra=`` becomes a field of the line::

    logger.info("request", extra={"event": "http.request", "route": "/api/v1/jobs/{job_id}",
                                  "status": 200, "latency_ms": 3.1})
    -> {"ts": "...", "level": "info", "logger": "aiprod.http", "msg": "request",
        "event": "http.request", "route": "/api/v1/jobs/{job_id}", "status": 200, ...}

The current request id (``request_id_var``) is added to every line logged while a request is
being handled, so a request's lines can be found together. Job state changes go through
``log_job_transition`` so that every transition is one line with the same fields.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any, Literal

from aiprod.core.settings import Settings

LogFormat = Literal["json", "text", "auto"]

#: The id of the HTTP request being handled in this context (set by the request middleware).
request_id_var: ContextVar[str | None] = ContextVar("aiprod_request_id", default=None)

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is a field.
_RESERVED = frozenset(
    logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None).__dict__.keys()
    | {"message", "asctime", "taskName", "color_message"}  # color_message: uvicorn's ANSI copy
)

_HANDLER_MARK = "_aiprod_handler"

job_logger = logging.getLogger("aiprod.jobs")

#: The longest error message written into a job (the full text goes to the log).
JOB_ERROR_CHARS = 500
# A filesystem path: absolute (/a/b, ~/a, C:\a\b) with at least two parts, not inside a URL
# (https://host/x is preceded by ':' or '/') or a word (32/64).
_PATH = re.compile(
    r"""(?<![\w:/.\\])(?:~|[A-Za-z]:)?(?:[/\\][^\s'"`,;:()<>\[\]{}|/\\]+){2,}[/\\]?"""
)


def job_error_message(message: str) -> str:
    """``message`` as a job's client-visible error: server paths replaced by ``<path>``, cut
    to ``JOB_ERROR_CHARS``. The worker logs the full text."""
    short = _PATH.sub("<path>", message).strip()
    if len(short) > JOB_ERROR_CHARS:
        short = short[: JOB_ERROR_CHARS - 3].rstrip() + "..."
    return short


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = {k: v for k, v in record.__dict__.items() if k not in _RESERVED}
    if "request_id" not in fields:
        rid = request_id_var.get()
        if rid is not None:
            fields["request_id"] = rid
    return fields


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, then the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _fields(record).items():
            line.setdefault(key, _jsonable(value))
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``HH:MM:SS level logger: msg key=value ...`` for people reading a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        parts = [f"{ts} {record.levelname:<7} {record.name}: {record.getMessage()}"]
        for key, value in _fields(record).items():
            parts.append(f"{key}={value}")
        text = " ".join(parts)
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


#: The attribute ``aiprod.db.session`` sets on an exception it reported as a database outage.
OUTAGE_MARK = "aiprod_db_outage"


def is_outage_error(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a database outage that
    ``aiprod.db.session.OutageLog`` already logged."""
    seen = 0
    while exc is not None and seen < 10:
        if getattr(exc, OUTAGE_MARK, False):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


class OutageFilter(logging.Filter):
    """Drops records about an error that is a database outage (``is_outage_error``): while the
    database is down, every loop that retries (heartbeat, dispatcher, retention) would log a
    traceback about once a second; the outage is logged once per state change plus a reminder
    by ``aiprod.db.session.OutageLog`` instead. Installed on aiprod's handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not is_outage_error(exc)


def resolve_format(fmt: LogFormat | str | None, stream: IO[str]) -> Literal["json", "text"]:
    """``json``/``text`` as asked (or from AIPROD_LOG_FORMAT); ``auto``: text on a terminal."""
    chosen = (fmt or Settings().log_format or "auto").lower()
    if chosen not in {"json", "text", "auto"}:
        raise ValueError(f"log format must be json, text or auto, not {chosen!r}")
    if chosen == "auto":
        isatty = getattr(stream, "isatty", None)
        return "text" if isatty is not None and isatty() else "json"
    return "json" if chosen == "json" else "text"


def configure_logging(
    *,
    level: int | str | None = None,
    fmt: LogFormat | str | None = None,
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Install (or replace) aiprod's handler on the root logger and return it.

    ``level`` defaults to AIPROD_LOG_LEVEL or INFO; ``fmt`` to AIPROD_LOG_FORMAT or ``auto``
    (text when ``stream`` is a terminal, JSON otherwise); ``stream`` to stderr. Calling it
    again replaces the previous handler instead of adding a second one.
    """
    out = stream if stream is not None else sys.stderr
    chosen = resolve_format(fmt, out)
    lvl = level if level is not None else Settings().log_level
    if isinstance(lvl, str):
        numeric = logging.getLevelName(lvl.upper())
        if not isinstance(numeric, int):
            raise ValueError(f"unknown log level {lvl!r}: use DEBUG, INFO, WARNING or ERROR")
        lvl = numeric
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    handler.addFilter(OutageFilter())
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(lvl)
    # uvicorn's access log would duplicate our one-line-per-request log.
    logging.getLogger("uvicorn.access").disabled = True
    return handler


def log_job_transition(
    job_id: str,
    *,
    old: str | None,
    new: str,
    model: str | None = None,
    worker: str | None = None,
    logger: logging.Logger | None = None,
    **fields: Any,
) -> None:
    """Log one job state change as one line: ``event=job.transition job_id from to ...``."""
    extra: dict[str, Any] = {
        "event": "job.transition",
        "job_id": str(job_id),
        "from_status": old,
        "to_status": new,
    }
    if model is not None:
        extra["model"] = model
    if worker is not None:
        extra["worker"] = worker
    for key, value in fields.items():
        extra[key if key not in _RESERVED else f"{key}_"] = value
    level = logging.WARNING if new == "failed" else logging.INFO
    (logger or job_logger).log(level, "job %s: %s -> %s", job_id, old or "-", new, extra=extra)
