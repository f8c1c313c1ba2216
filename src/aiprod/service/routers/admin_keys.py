"""Admin routes over API keys: list with usage, create, update, rotate the webhook secret."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from aiprod.jobs import admin as ops
from aiprod.jobs.admin_views import key_dict
from aiprod.service.deps import AdminDep, SessionDep, StateDep, read_session, write_slot
from aiprod.service.keys import create_key
from aiprod.service.schemas import errors
from aiprod.service.schemas_admin import (
    KeyCreate,
    KeyCreatedOut,
    KeyOut,
    KeyPatch,
    KeysOut,
    RotatedSecretOut,
)

router = APIRouter(
    prefix="/api/v1/admin", tags=["admin"], responses=errors(401, 403, 422, 429, 503)
)


@router.get("/keys", summary="Every API key with its usage this month", response_model=KeysOut)
def list_keys(admin: AdminDep, state: StateDep) -> JSONResponse:
    """Revoked keys included (`active` false). Spend = billed cost of the key's jobs completed
    this UTC calendar month."""
    with read_session(state) as session:
        data = [key_dict(k) for k in ops.list_keys(session)]
    return JSONResponse({"data": data})


@router.post(
    "/keys",
    status_code=201,
    summary="Create an API key (shown once)",
    response_model=KeyCreatedOut,
    responses=errors(400, 409),
    dependencies=[Depends(write_slot, scope="function")],
)
def create(body: KeyCreate, admin: AdminDep, session: SessionDep, state: StateDep) -> JSONResponse:
    """The key is in this response only (only its keyed hash is stored). 409
    `duplicate_name` if an active key already has the name."""
    row, key = create_key(
        session,
        secret=state.secret,
        name=body.name,
        admin=body.admin,
        monthly_budget_usd=body.monthly_budget_usd,
        rate_limit_per_minute=body.rate_limit_per_minute,
        priority=body.priority,
    )
    out = key_dict(ops.get_key(session, row.id))
    out["key"] = key
    out["webhook_secret"] = ops.key_webhook_secret(session, row.id, server_secret=state.secret)
    return JSONResponse(out, status_code=201, headers={"Location": f"/api/v1/admin/keys/{row.id}"})


@router.get(
    "/keys/{key_id}", summary="One key with its usage", response_model=KeyOut, responses=errors(404)
)
def get_key(key_id: str, admin: AdminDep, state: StateDep) -> JSONResponse:
    with read_session(state) as session:
        return JSONResponse(key_dict(ops.get_key(session, key_id)))


@router.patch(
    "/keys/{key_id}",
    summary="Change a key's name, rate limit, monthly budget, priority or active flag",
    response_model=KeyOut,
    responses=errors(400, 404, 409),
    dependencies=[Depends(write_slot, scope="function")],
)
def update_key(
    key_id: str, body: KeyPatch, admin: AdminDep, session: SessionDep, state: StateDep
) -> JSONResponse:
    """Only the fields sent change; `null` removes the budget or the per-key rate limit (and
    changes nothing for the other fields).
    `active: false` revokes the key. Other API processes apply it within
    `AIPROD_API_KEY_CACHE_SECONDS` (this one at once). A name an active key already has: 409
    `duplicate_name`."""
    out = key_dict(ops.update_key(session, key_id, body.changes()))
    state.key_cache.clear()  # this process: the new limits and flag from the next request
    return JSONResponse(out)


@router.post(
    "/keys/{key_id}/rotate-webhook-secret",
    summary="Give a key a new webhook signing secret (shown once)",
    response_model=RotatedSecretOut,
    responses=errors(404),
    dependencies=[Depends(write_slot, scope="function")],
)
def rotate_webhook_secret(
    key_id: str, admin: AdminDep, session: SessionDep, state: StateDep
) -> JSONResponse:
    """Deliveries sent from now on (retries of older ones too) are signed with the new
    secret; give it to the client's receiver."""
    new = ops.rotate_webhook_secret(session, key_id, server_secret=state.secret)
    return JSONResponse({"key_id": key_id, "webhook_secret": new})
