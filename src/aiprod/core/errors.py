"""One error hierarchy for the whole project.

Every expected failure is an ``AiprodError`` (or subclass) carrying an HTTP status, a stable
machine-readable ``code`` and a message that tells the caller how to fix the problem. The
service renders it as ``{"error": {"code": ..., "message": ...}}``; the CLI prints the message
on one line and exits non-zero. Anything else reaching the top is a bug.
"""

from __future__ import annotations

from pydantic import ValidationError


class AiprodError(Exception):
    """Base class for expected errors: ``message`` is shown to the user verbatim."""

    status_code: int = 400
    code: str = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        if code is not None:
            self.code = code
        self.field = field

    def to_dict(self) -> dict[str, object]:
        body: dict[str, object] = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return {"error": body}


class InvalidRequest(AiprodError):
    """A request field is outside what the model/server accepts (HTTP 422)."""

    status_code = 422
    code = "invalid_request"


class NotFound(AiprodError):
    status_code = 404
    code = "not_found"


class Conflict(AiprodError):
    status_code = 409
    code = "conflict"


class Gone(AiprodError):
    """The resource existed and was removed on purpose (a deleted or expired output)."""

    status_code = 410
    code = "gone"


class Unauthorized(AiprodError):
    status_code = 401
    code = "unauthorized"


class Forbidden(AiprodError):
    status_code = 403
    code = "forbidden"


class RateLimited(AiprodError):
    status_code = 429
    code = "rate_limited"


class ConfigError(AiprodError):
    """A configuration file or entry is wrong (models.toml, settings, training YAML)."""

    status_code = 500
    code = "config_error"

    @classmethod
    def from_validation(cls, exc: ValidationError, source: str) -> ConfigError:
        """One line for a pydantic error in a config file: ``SOURCE: field.path: message``."""
        first = exc.errors()[0]
        loc = ".".join(str(part) for part in first["loc"])
        return cls(f"{source}: {loc}: {first['msg']}")


class GenerationCanceled(AiprodError):
    """Raised by an engine pipeline when ``should_cancel()`` returned True between steps."""

    status_code = 409
    code = "canceled"


class GenerationFailed(AiprodError):
    """The engine could not produce a video (out of memory, bad weights, ...)."""

    status_code = 500
    code = "generation_failed"


class ModelUnavailable(AiprodError):
    """The model cannot run on this server now (its files are broken or its load failed):
    503, with ``retry_after`` seconds when the workers will try it again."""

    status_code = 503
    code = "model_unavailable"

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message, field="model")
        self.retry_after = retry_after
