"""``aiprod jobs ...``: the operator's view of every key's jobs (list, show, cancel, retry,
delete), straight on the database like ``aiprod keys``. The rules are ``aiprod.jobs.admin``'s."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Column, Table

from aiprod.cli.common import load_settings, open_db, out, table_console
from aiprod.cli.errors import cli_errors, err

app = typer.Typer(
    help="Every key's jobs: list, show, cancel, retry, delete.\n\n"
    "Example: aiprod jobs list --status failed",
    no_args_is_help=True,
)


def _when(value: str | None, option: str) -> datetime | None:
    from aiprod.core.errors import InvalidRequest

    if value is None:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            f"{option} must be an ISO 8601 date or datetime, e.g. 2026-12-01"
        ) from None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def _fmt(dt: datetime | None) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S") if dt else "-"


def _money(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


@app.command("list")
@cli_errors
def jobs_list(
    status: Annotated[
        list[str] | None,
        typer.Option("--status", help="queued|running|succeeded|failed|canceled|expired (repeat)."),
    ] = None,
    key: Annotated[str | None, typer.Option("--key", help="Key id or unique prefix.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model id.")] = None,
    since: Annotated[str | None, typer.Option("--since", help="Created at/after (ISO).")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Created before (ISO).")] = None,
    search: Annotated[str | None, typer.Option("--search", help="Text in the prompt.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="Rows per page (1..200).")] = 50,
    cursor: Annotated[str | None, typer.Option("--cursor", help="From the previous page.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the ids, one a line.")] = False,
) -> None:
    """List every key's jobs, newest first.

    Example: aiprod jobs list --status failed --since 2026-12-01
    """
    from aiprod.db.repositories import ApiKeyRepository
    from aiprod.db.session import session_scope
    from aiprod.jobs import admin

    sessions = open_db(load_settings())
    with session_scope(sessions) as s:
        key_id = ApiKeyRepository(s).find(key).id if key else None
        filters = admin.JobFilter(
            statuses=tuple(status or ()),
            key_id=key_id,
            model=model,
            created_after=_when(since, "--since"),
            created_before=_when(until, "--until"),
            text=search,
        )
        page = admin.list_jobs(s, filters=filters, limit=limit, cursor=cursor)
        names = admin.key_names(s)
        if quiet:
            for j in page.items:
                typer.echo(j.id)
        elif as_json:
            for j in page.items:
                typer.echo(json.dumps(_job_json(j, names)))
        else:
            table = Table(
                Column("id", no_wrap=True, min_width=36),
                "key",
                "model",
                "status",
                "created (UTC)",
                Column("GPU-s", justify="right"),
                Column("price $", justify="right"),
                "prompt",
            )
            for j in page.items:
                table.add_row(
                    j.id,
                    escape(names.get(j.api_key_id, j.api_key_id[:8])),
                    j.model,
                    j.status,
                    _fmt(j.created_at),
                    "-" if j.gpu_seconds is None else f"{j.gpu_seconds:.2f}",
                    _money(j.cost_usd),
                    escape(j.prompt[:60] + ("..." if len(j.prompt) > 60 else "")),
                )
            table_console().print(table)
    if page.next_cursor:
        err.print(f"more: aiprod jobs list --cursor {page.next_cursor} (same filters)")


def _job_json(j: Any, names: dict[str, str]) -> dict[str, Any]:
    from aiprod.jobs.views import job_to_dict

    d = job_to_dict(j, base_url=None)
    d.update(
        api_key_id=j.api_key_id,
        key_name=names.get(j.api_key_id),
        last_error=(
            {"code": j.error_code, "message": j.error_message}
            if j.error_code or j.error_message
            else None
        ),
        webhook_url=j.webhook_url,
        retry_of=j.retry_of,
    )
    return d


@app.command("show")
@cli_errors
def jobs_show(
    job_id: Annotated[str, typer.Argument(help="The job id.")],
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of text.")] = False,
) -> None:
    """Show one job of any key: parameters, timings, cost, error, webhook deliveries.

    Example: aiprod jobs show 0b7e6a9e-3f0c-4a51-9a53-6c1a2f1e9d42
    """
    from aiprod.db.session import session_scope
    from aiprod.jobs import admin

    sessions = open_db(load_settings())
    with session_scope(sessions) as s:
        j = admin.get_job(s, job_id)
        d = _job_json(j, admin.key_names(s))
        deliveries = admin.job_deliveries(s, j.id)
        d["webhook_deliveries"] = [
            {
                "id": w.id,
                "status": w.status,
                "attempts": w.attempts,
                "last_status_code": w.last_status_code,
                "last_error": w.last_error,
            }
            for w in deliveries
        ]
    if as_json:
        typer.echo(json.dumps(d, indent=2))
        return
    table = Table("field", "value", show_header=False)
    for k in (
        "id",
        "key_name",
        "api_key_id",
        "status",
        "model",
        "model_version",
        "attempts",
        "created_at",
        "started_at",
        "completed_at",
        "gpu_seconds",
        "estimated_cost_usd",
        "cost_usd",
        "retry_of",
        "webhook_url",
    ):
        table.add_row(k, escape(str(d[k])) if d[k] is not None else "-")
    table.add_row("params", escape(json.dumps(d["params"])))
    if d["last_error"]:
        table.add_row("error", escape(f"{d['last_error']['code']}: {d['last_error']['message']}"))
    if d["metadata"]:
        table.add_row("metadata", escape(json.dumps(d["metadata"])))
    for w in d["webhook_deliveries"]:
        line = f"{w['id']} {w['status']} after {w['attempts']} attempt(s)"
        if w["last_error"]:
            line += f": {w['last_error']}"
        table.add_row("webhook", escape(line))
    table_console().print(table)


@app.command("cancel")
@cli_errors
def jobs_cancel(job_id: Annotated[str, typer.Argument(help="The job id.")]) -> None:
    """Cancel any key's queued or running job (a running one stops within a step).

    Example: aiprod jobs cancel 0b7e6a9e-3f0c-4a51-9a53-6c1a2f1e9d42
    """
    from aiprod.db.session import session_scope
    from aiprod.jobs import admin

    settings = load_settings()
    with session_scope(open_db(settings)) as s:
        j = admin.cancel_job(s, job_id, settings=settings)
        note = " (stopping at its next step)" if j.status == "running" else ""
        out.print(f"job {j.id}: {j.status}{note}")


@app.command("retry")
@cli_errors
def jobs_retry(
    job_id: Annotated[str, typer.Argument(help="A failed or canceled job's id.")],
) -> None:
    """Submit a failed or canceled job again as a new job; prints the new id last.

    Example: aiprod jobs retry 0b7e6a9e-3f0c-4a51-9a53-6c1a2f1e9d42
    """
    from aiprod.core.registry import load_registry
    from aiprod.db.session import session_scope
    from aiprod.jobs import admin
    from aiprod.jobs.storage import open_storage

    settings = load_settings()
    registry = load_registry(settings.models_file)
    with session_scope(open_db(settings)) as s:
        new = admin.retry_job(
            s, job_id, registry=registry, storage=open_storage(settings), settings=settings
        )
        new_id = new.id
    err.print(f"job {job_id} queued again as a new job (retry_of {job_id}):")
    typer.echo(new_id)


@app.command("delete")
@cli_errors
def jobs_delete(job_id: Annotated[str, typer.Argument(help="The job id.")]) -> None:
    """Delete a job's video, as its client's DELETE would (the row and cost stay, with deleted_at;
    a queued or running job is canceled first).

    Example: aiprod jobs delete 0b7e6a9e-3f0c-4a51-9a53-6c1a2f1e9d42
    """
    from aiprod.db.session import session_scope
    from aiprod.jobs import admin
    from aiprod.jobs.storage import open_storage

    settings = load_settings()
    with session_scope(open_db(settings)) as s:
        j = admin.delete_job_output(s, job_id, storage=open_storage(settings), settings=settings)
        out.print(f"job {j.id}: {j.status}, output deleted")
