"""``aiprod billing statement``: each client's monthly statement (CSV + printable HTML) and the
operator's revenue-against-cost summary (``aiprod.jobs.billing``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Column, Table

from aiprod.cli.common import load_settings, open_db, out, table_console
from aiprod.cli.errors import cli_errors

app = typer.Typer(
    help="Monthly statements per client.\n\nExample: aiprod billing statement --month 2026-12",
    no_args_is_help=True,
)


@app.command("statement")
@cli_errors
def statement(
    month: Annotated[str, typer.Option("--month", help="The UTC month, YYYY-MM.")],
    key: Annotated[
        str | None, typer.Option("--key", help="Only this key (id or unique prefix).")
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the files into.")] = Path(
        "statements"
    ),
    operator: Annotated[
        str, typer.Option("--operator", help="Your business name on the statements.")
    ] = "aiprod",
) -> None:
    """Write each key's statement for a month (jobs, GPU-seconds, price, totals) as CSV and
    HTML, and (without --key) the operator's revenue / GPU cost / margin summary.

    Example: aiprod billing statement --month 2026-12 --out statements/
    """
    from aiprod.db.repositories import ApiKeyRepository
    from aiprod.db.session import session_scope
    from aiprod.jobs.billing import month_range, statements, write_statements

    month_range(month)  # a bad month fails before the database is opened
    settings = load_settings()
    with session_scope(open_db(settings)) as s:
        key_id = ApiKeyRepository(s).find(key).id if key else None
        paths = write_statements(
            s,
            month=month,
            out_dir=out_dir,
            gpu_cost_per_hour=settings.gpu_cost_per_hour,
            key_id=key_id,
            operator=operator,
        )
        table = Table(
            "key",
            Column("jobs", justify="right"),
            Column("GPU-s", justify="right"),
            Column("total $", justify="right"),
        )
        for st in statements(s, month=month, key_id=key_id):
            table.add_row(st.key_name, str(st.jobs), f"{st.gpu_seconds:.2f}", f"{st.total_usd:.2f}")
    table_console().print(table)
    for p in paths:
        out.print(str(p), highlight=False, soft_wrap=True)
