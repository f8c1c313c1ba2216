"""operator console: index jobs by completion time (day/hour/month reports, statements)

Revision ID: 0005_dashboard
Revises: 0004_admin
Create Date: 2026-12-07 14:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005_dashboard"
down_revision: str | None = "0004_admin"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The overview (last 24 h), the costs page and the statements select jobs by completed_at:
    # without it each was a scan of the whole jobs table (126 ms at 10,000 jobs on SQLite,
    # benchmarks/dashboard_pages.py).
    op.create_index("ix_jobs_completed", "jobs", ["completed_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_completed", table_name="jobs")
