"""schemathesis against the real app's /openapi.json (in process, through its ASGI support), with
a client key and with an admin key, on SQLite and on PostgreSQL:
no server errors (5xx other than documented 503s) and no schema violations (status codes,
content types, headers and bodies as documented), for positive and negative data.

All of schemathesis's checks run, two of them replaced by stricter-where-it-matters variants:
``not_a_server_error`` (here a 503 is allowed only where the route documents it: /readyz with no
live worker) and ``positive_data_acceptance`` (here a schema-valid request may get a 422 only
for a field whose valid values the OpenAPI cannot state: see _SERVER_CHECKED).

Bounded for CI: AIPROD_FUZZ_EXAMPLES cases per operation and generation mode (default 20: 226
cases per key and database, about 20 s for all four runs); a longer run:
``AIPROD_FUZZ_EXAMPLES=200 pytest tests/service/test_schemathesis.py``.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
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
from aiprod.jobs.schema import NOT_ONLY_WHITESPACE
from aiprod.service.app import create_app
from aiprod.service.keys import create_key
from tests.service.harness import fresh_pg_database, write_models_toml

# property-based fuzzing of every route: the full suite runs it, `make test-fast` does not
pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("AIPROD_FUZZ_EXAMPLES", "20"))

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
# A schema-valid 422 is expected only for these: the per-model fields above, and the lists'
# `cursor`, an opaque token that only a previous page's `next_cursor` makes valid (like an
# unknown job id is a 404).
_SERVER_CHECKED = {
    "/api/v1/generate": _PER_MODEL_FIELDS,
    "/api/v1/estimate-cost": _PER_MODEL_FIELDS,
    "/api/v1/jobs": {"cursor"},
    "/api/v1/admin/jobs": {"cursor"},
    "/api/v1/admin/webhooks": {"cursor"},
    # a key name: its whitespace rules (Unicode's and the JSON Schema regex's differ at the
    # edges, e.g. U+0085) are the server's
    "/api/v1/admin/keys": {"name"},
    "/api/v1/admin/keys/{key_id}": {"name"},
}
# The OpenAI-compatible routes answer a bad field with OpenAI's 400 (`param` names it): the
# per-model fields, a size or length the model cannot make, and `after`, an id only a listed
# video makes valid.
_SERVER_CHECKED_400 = {
    "/v1/videos": _PER_MODEL_FIELDS | {"size", "seconds", "input_reference", "after"},
}
_ACCEPTED = {401, 403, 404, 409, 429}
# No rate limit: every case reaches its route (at 100 a minute most would get a 429)
# ... and a short `Prefer: wait` cap: no worker runs here, so a held request waits it out
UNLIMITED: dict[str, Any] = {"rate_limit_per_minute": 10**9, "max_wait_seconds": 1}


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
    if status == 400:
        param = (response.json().get("error") or {}).get("param")
        if param in _SERVER_CHECKED_400.get(case.operation.path, ()):
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
        yield _make_app(Settings(data_dir=tmp, models_file=write_models_toml(tmp), **UNLIMITED))
        return
    with fresh_pg_database("z") as url:
        yield _make_app(
            Settings(
                data_dir=tmp, models_file=write_models_toml(tmp), database_url=url, **UNLIMITED
            )
        )


def send_and_check(
    case: Any, headers: dict[str, str], failures: dict[str, str], statuses: Counter[int]
) -> None:
    """Send one case and run the checks; record each failure once per operation, mode and
    kind (the first example of it)."""
    response = case.call(headers=headers)
    statuses[response.status_code] += 1
    try:
        case.validate_response(
            response,
            headers=headers,
            excluded_checks=[not_a_server_error, positive_data_acceptance],
            additional_checks=[documented_server_errors_only, positive_data_accepted],
        )
    except (Failure, FailureGroup) as exc:
        for sub in exc.exceptions if isinstance(exc, FailureGroup) else (exc,):
            line = f"{case.operation.label} [{case.meta.generation.mode.value}] {sub.title}"
            failures.setdefault(line, f"{line}: {str(sub)[:600]}\nrequest: {case!r}")


def fuzz_operation(
    op: Any,
    mode: GenerationMode,
    headers: dict[str, str],
    examples: int,
    failures: dict[str, str],
    statuses: Counter[int],
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
        send_and_check(case, headers, failures, statuses)

    try:
        one()
    except Unsatisfiable:
        # Nothing to negate (no parameters, or only the path string): the negative mode has no
        # case to send for this operation.
        assert mode is GenerationMode.NEGATIVE, op.label
    return sent


def run_schemathesis(app: Any, key: str, examples: int) -> tuple[int, list[str], Counter[int]]:
    """Every operation, positive then negative data, ``examples`` cases each. Returns the
    number of cases sent, one line per distinct failure and the count of each status."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    # The cases carry the real key (below); schemathesis would otherwise also generate their
    # Authorization header from the bearerAuth scheme, and most cases would only test the 401.
    schema.config.generation.update(with_security_parameters=False)
    headers = {"Authorization": f"Bearer {key}"}
    sent = 0
    failures: dict[str, str] = {}
    statuses: Counter[int] = Counter()
    for result in schema.get_all_operations():
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            sent += fuzz_operation(result.ok(), mode, headers, examples, failures, statuses)
    return sent, list(failures.values()), statuses


@pytest.mark.parametrize("who", ["client", "admin"])
def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    app_and_keys: tuple[Any, dict[str, str]], who: str
) -> None:
    app, keys = app_and_keys
    sent, failures, statuses = run_schemathesis(app, keys[who], EXAMPLES)
    print(f"schemathesis: {sent} cases ({who} key), {len(failures)} failures, {dict(statuses)}")
    assert sent >= 10 * EXAMPLES  # every operation was exercised, not skipped
    assert failures == [], "\n\n".join(failures)
    assert 429 not in statuses  # the cases reached the routes (the keys have no rate limit)
    assert statuses[202] and statuses[200]  # jobs were created, reads answered
    if who == "client":
        assert statuses[403]  # the admin routes refused a client key


def test_the_openapi_states_the_constraints_the_server_enforces(
    app_and_keys: tuple[Any, dict[str, str]],
) -> None:
    """Each constraint schemathesis found unstated is now in /openapi.json, and the server
    still refuses a value outside it with a 422 naming the field (not a 5xx, not accepted)."""
    app, keys = app_and_keys
    c = TestClient(app)  # no lifespan: the module's other tests share this app
    spec = c.get("/openapi.json").json()
    body = spec["components"]["schemas"]["GenerateBody"]["properties"]
    stated = {"minLength": 1, "maxLength": 2000, "pattern": NOT_ONLY_WHITESPACE}
    assert body["prompt"] | stated == body["prompt"]
    assert body["negative_prompt"]["maxLength"] == 2000
    gen = spec["paths"]["/api/v1/generate"]["post"]["parameters"]
    idem = next(p for p in gen if p["name"] == "Idempotency-Key")["schema"]
    assert (idem["minLength"], idem["maxLength"]) == (1, 255)
    params = {p["name"]: p["schema"] for p in spec["paths"]["/api/v1/jobs"]["get"]["parameters"]}
    assert params["status"]["items"]["enum"] == [
        "queued",
        "running",
        "succeeded",
        "failed",
        "canceled",
        "expired",
    ]
    for name in ("created_after", "created_before"):
        formats = {s["format"] for s in params[name]["anyOf"]}
        assert formats == {"date", "date-time"}, name

    auth = {"Authorization": f"Bearer {keys['client']}"}

    def refused(field: str, r: Any) -> None:
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] == field, r.text

    for route in ("/api/v1/generate", "/api/v1/estimate-cost"):
        for prompt in ("", " \t\n", "x" * 2001):
            refused("prompt", c.post(route, json={"prompt": prompt}, headers=auth))
        long_neg = {"prompt": "a fox", "negative_prompt": "x" * 2001}
        refused("negative_prompt", c.post(route, json=long_neg, headers=auth))
    for idem in ("", "k" * 256):
        r = c.post(
            "/api/v1/generate",
            json={"prompt": "a fox"},
            headers={**auth, "Idempotency-Key": idem},
        )
        refused("Idempotency-Key", r)
    for name in ("created_after", "created_before"):
        for value in ("", "yesterday", "2026-13-01"):
            refused(name, c.get("/api/v1/jobs", params={name: value}, headers=auth))
        ok = c.get("/api/v1/jobs", params={name: "2026-01-31T00:00:00Z"}, headers=auth)
        assert ok.status_code == 200, ok.text
    refused("status", c.get("/api/v1/jobs", params={"status": ""}, headers=auth))
    refused("status", c.get("/api/v1/jobs", params={"status": "done"}, headers=auth))


def test_numbers_and_booleans_must_be_json_numbers_and_booleans(
    app_and_keys: tuple[Any, dict[str, str]],
) -> None:
    """schemathesis sent `"seed": false` to /estimate-cost and got a 200 (pydantic's lax mode
    read it as 0): values of another JSON type than the OpenAPI states are a 422 naming the
    field, on /generate and /estimate-cost alike."""
    app, keys = app_and_keys
    c = TestClient(app)
    auth = {"Authorization": f"Bearer {keys['client']}"}
    wrong = {
        "seed": False,
        "width": "32",
        "height": 32.0,
        "num_frames": True,
        "fps": "8",
        "num_inference_steps": "2",
        "guidance_scale": "3.0",
        "two_stage": "false",
    }
    for route in ("/api/v1/generate", "/api/v1/estimate-cost"):
        for name, value in wrong.items():
            r = c.post(route, json={"prompt": "a fox", name: value}, headers=auth)
            assert r.status_code == 422, (route, name, r.text)
            assert r.json()["error"]["field"] == name, r.text
        ok = {"prompt": "a fox", "seed": 0, "guidance_scale": 3, "two_stage": False}
        assert c.post(route, json=ok, headers=auth).status_code in (200, 202)
