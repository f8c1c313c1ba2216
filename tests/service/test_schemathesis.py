"""schemathesis against the real app's /openapi.json (in process, through its ASGI support), with
a client key and with an admin key, on SQLite and on PostgreSQL:
no server errors (5xx other than documented 503s) and no schema violations (status codes,
content types, headers and bodies as documented), for positive and negative data.

Bounded for CI: AIPROD_FUZZ_EXAMPLES cases per operation and generation mode (default 8, about
300 cases in all per key); a longer run: ``AIPROD_FUZZ_EXAMPLES=200 pytest
tests/service/test_schemathesis.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup, ServerError
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.specs.openapi.checks import positive_data_acceptance

from aiprod.core.settings import Settings
from aiprod.db.migrate import upgrade
from aiprod.db.session import make_engine, make_sessionmaker, session_scope
from aiprod.service.app import create_app
from aiprod.service.keys import create_key
from tests.service.harness import fresh_pg_database, write_models_toml

EXAMPLES = int(os.environ.get("AIPROD_FUZZ_EXAMPLES", "8"))

# Fields of the generate body whose valid values depend on the model (its limits, listed by
# GET /models) or on the server's policies (webhook destinations, image decoding, metadata
# bytes): a schema-valid value can get a 422 naming the field, which one OpenAPI cannot state.
_PER_MODEL_FIELDS = {
    "model",
    "width",
    "height",
    "num_frames",
    "fps",
    "seed",
    "num_inference_steps",
    "guidance_scale",
    "two_stage",
    "image",
    "webhook_url",
    "metadata",
}
# A schema-valid 422 is expected only for these: the per-model fields above, and GET /jobs's
# `cursor`, an opaque token that only a previous page's `next_cursor` makes valid (like an
# unknown job id is a 404).
_SERVER_CHECKED = {
    "/api/v1/generate": _PER_MODEL_FIELDS,
    "/api/v1/estimate-cost": _PER_MODEL_FIELDS,
    "/api/v1/jobs": {"cursor"},
}
_ACCEPTED = {401, 403, 404, 409, 429}


def documented_server_errors_only(ctx: Any, response: Any, case: Any) -> bool | None:
    """Like schemathesis's not_a_server_error, but a 503 the route documents is allowed
    (/readyz answers 503 while no worker is live)."""
    status = response.status_code
    if status >= 500 and not (
        status == 503 and "503" in case.operation.definition.raw["responses"]
    ):
        raise ServerError(operation=case.operation.label, status_code=status)
    return None


def positive_data_accepted(ctx: Any, response: Any, case: Any) -> bool | None:
    """Like schemathesis's positive_data_acceptance (schema-valid requests are not refused with
    a 4xx other than 401/403/404/409/429), except a 422 naming a field of _SERVER_CHECKED."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    status = response.status_code
    if status < 400 or status >= 500 or status in _ACCEPTED:
        return None
    if status == 422:
        field = (response.json().get("error") or {}).get("field")
        if field in _SERVER_CHECKED.get(case.operation.path, ()):
            return None
    raise RejectedPositiveData(
        operation=case.operation.label,
        message=f"[{status}] {response.text[:300]}\nrequest: {case!r}",
        status_code=status,
        allowed_statuses=["2xx", "3xx", *map(str, sorted(_ACCEPTED))],
    )


def _make_app(settings: Settings) -> tuple[Any, dict[str, str]]:
    upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    with session_scope(make_sessionmaker(engine)) as s:
        secret = settings.resolved_secret_key()
        _, client_key = create_key(s, secret=secret, name="client")
        _, admin_key = create_key(s, secret=secret, name="ops", admin=True)
    engine.dispose()
    return create_app(settings), {"client": client_key, "admin": admin_key}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def app_and_keys(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Any, dict[str, str]]]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    if request.param == "sqlite":
        yield _make_app(Settings(data_dir=tmp, models_file=write_models_toml(tmp)))
        return
    with fresh_pg_database("z") as url:
        yield _make_app(
            Settings(data_dir=tmp, models_file=write_models_toml(tmp), database_url=url)
        )


def send_and_check(case: Any, headers: dict[str, str], failures: dict[str, str]) -> None:
    """Send one case and run the checks; record each failure once per operation, mode and
    kind (the first example of it)."""
    try:
        case.call_and_validate(
            headers=headers,
            excluded_checks=[not_a_server_error, positive_data_acceptance],
            additional_checks=[documented_server_errors_only, positive_data_accepted],
        )
    except (Failure, FailureGroup) as exc:
        for sub in exc.exceptions if isinstance(exc, FailureGroup) else (exc,):
            line = f"{case.operation.label} [{case.meta.generation.mode.value}] {sub.title}"
            failures.setdefault(line, f"{line}: {str(sub)[:600]}")


def fuzz_operation(
    op: Any, mode: GenerationMode, headers: dict[str, str], examples: int, failures: dict[str, str]
) -> int:
    """Up to ``examples`` cases of one operation in one mode; returns how many were sent."""
    sent = 0

    @given(case=op.as_strategy(generation_mode=mode))
    @hsettings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,  # the same cases on every run: CI is reproducible
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate],
    )
    def one(case: Any) -> None:
        nonlocal sent
        sent += 1
        send_and_check(case, headers, failures)

    try:
        one()
    except Unsatisfiable:
        # Nothing to negate (no parameters, or only the path string): the negative mode has no
        # case to send for this operation.
        assert mode is GenerationMode.NEGATIVE, op.label
    return sent


def run_schemathesis(app: Any, key: str, examples: int) -> tuple[int, list[str]]:
    """Every operation, positive then negative data, ``examples`` cases each. Returns the
    number of cases sent and one line per distinct failure."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    headers = {"Authorization": f"Bearer {key}"}
    sent = 0
    failures: dict[str, str] = {}
    for result in schema.get_all_operations():
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            sent += fuzz_operation(result.ok(), mode, headers, examples, failures)
    return sent, list(failures.values())


@pytest.mark.parametrize("who", ["client", "admin"])
def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    app_and_keys: tuple[Any, dict[str, str]], who: str
) -> None:
    app, keys = app_and_keys
    sent, failures = run_schemathesis(app, keys[who], EXAMPLES)
    print(f"schemathesis: {sent} cases ({who} key), {len(failures)} failures")
    assert sent >= 10 * EXAMPLES  # every operation was exercised, not skipped
    assert failures == [], "\n\n".join(failures)
