"""How every ``aiprod`` command turns an error into one line on stderr and an exit status.

Each command is wrapped in ``@cli_errors`` (and nothing else catches errors to exit), so
the mapping lives here only:

======  ==================================================================================
status  when
======  ==================================================================================
0       the command did what it was asked
1       an expected failure: an ``AiprodError`` (``InvalidRequest``, ``NotFound``, ...), a
        file or network error (``OSError``), a database error, or for the commands that
        name them, errors of the inputs they check (``expected=(ValueError,)``)
2       a configuration error: a ``ConfigError`` (models.toml, AIPROD_DATABASE_URL, a weak
        AIPROD_SECRET_KEY) or an AIPROD_* variable the ``Settings`` refuse; click's own
        usage errors (unknown option, missing argument) also exit 2. The commands whose
        configuration is a file named on their command line (``aiprod data ...``,
        ``train``, ``eval``) pass ``config_status=1`` and exit 1 for these, as they
        always have: a bad file there is bad input like any other.
======  ==================================================================================

The line is ``error: <message>``; the message is the error's own (it says how to fix it).
Anything else (a bug, or an exception from a model backend) is one line too, ``error: <type>:
<first line of its message>`` with exit 1; ``aiprod --debug ...`` (or ``AIPROD_DEBUG=1``)
re-raises it with its traceback.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar, overload

import typer
from rich.console import Console
from rich.markup import escape

from aiprod.core.errors import AiprodError, ConfigError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2

err = Console(stderr=True)


def debug_enabled() -> bool:
    """``aiprod --debug`` (which sets AIPROD_DEBUG=1) or AIPROD_DEBUG set: show tracebacks."""
    return os.environ.get("AIPROD_DEBUG", "").lower() in {"1", "true", "yes", "on"}


F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    """Print ``error: message`` on one stderr line; return the ``typer.Exit`` to raise."""
    # escape: messages quote things like `pip install 'aiprod[s3]'` that are not rich markup
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def warn(message: str) -> None:
    """Print ``warning: message`` on one stderr line."""
    err.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)


def exit_for(
    exc: BaseException,
    *,
    config_status: int = EXIT_CONFIG,
    expected: tuple[type[Exception], ...] = (),
) -> typer.Exit | None:
    """The one-line report and exit for an expected error; None for a bug (re-raise it)."""
    from pydantic import ValidationError
    from sqlalchemy.exc import SQLAlchemyError

    if isinstance(exc, ConfigError):
        return fail(exc.message, config_status)
    if isinstance(exc, AiprodError):
        return fail(exc.message, EXIT_FAILED)
    if isinstance(exc, ValidationError) and exc.title == "Settings":  # bad AIPROD_* value
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        return fail(f"setting AIPROD_{loc.upper()}: {first['msg']}", config_status)
    if isinstance(exc, OSError):
        return fail(str(exc), EXIT_FAILED)
    if isinstance(exc, SQLAlchemyError):  # database unreachable, wrong credentials, ...
        first_line = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return fail(
            f"database error: {first_line} (check AIPROD_DATABASE_URL and that the server is up)",
            EXIT_FAILED,
        )
    if expected and isinstance(exc, expected):
        return fail(str(exc), EXIT_FAILED)
    return None


@overload
def cli_errors(fn: F) -> F: ...


@overload
def cli_errors(
    *, config_status: int = EXIT_CONFIG, expected: tuple[type[Exception], ...] = ()
) -> Callable[[F], F]: ...


def cli_errors(
    fn: F | None = None,
    *,
    config_status: int = EXIT_CONFIG,
    expected: tuple[type[Exception], ...] = (),
) -> F | Callable[[F], F]:
    """Wrap a command so its expected errors exit as the table above says.

    ``@cli_errors`` for the service commands; ``@cli_errors(config_status=1)`` where the
    config is a file argument; ``expected=(ValueError,)`` adds errors the command's inputs
    raise (reported like an ``AiprodError``).
    """

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return f(*args, **kwargs)
            except typer.Exit:
                raise
            except Exception as exc:
                exit_ = exit_for(exc, config_status=config_status, expected=expected)
                if exit_ is None:
                    if debug_enabled():
                        raise
                    first = (str(exc).strip().splitlines() or [""])[0][:500]
                    exit_ = fail(
                        f"{type(exc).__name__}: {first} (unexpected; run `aiprod --debug ...` "
                        "for the traceback)",
                        EXIT_FAILED,
                    )
                raise exit_ from None

        wrapper.cli_errors = True  # type: ignore[attr-defined]  # checked by tests/cli
        return wrapper  # type: ignore[return-value]

    return decorate(fn) if fn is not None else decorate
