"""admin console: key webhook-secret salt, updated_at; jobs.retry_of; jobs time indexes

Revision ID: 0004_admin
Revises: 0003_jobs_deleted_events
Create Date: 2026-12-07 13:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_admin"
down_revision: str | None = "0003_jobs_deleted_events"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        # NULL: the secret derived from the key id alone (as before); set by a rotation.
        batch.add_column(sa.Column("webhook_secret_salt", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        # The failed or canceled job an admin retried as this new job (the old row stays).
        batch.add_column(sa.Column("retry_of", sa.String(length=36), nullable=True))
    # every key's jobs newest first (admin lists), and the jobs that ended in a period (money)
    op.create_index("ix_jobs_created_at", "jobs", ["created_at"])
    op.create_index("ix_jobs_completed_at", "jobs", ["completed_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_completed_at", table_name="jobs")
    op.drop_index("ix_jobs_created_at", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("retry_of")
    if op.get_bind().dialect.name == "sqlite":
        # SQLite's own DROP COLUMN (3.35+): a batch copy would DROP TABLE api_keys, which the
        # jobs' foreign keys refuse once any job exists
        op.execute("ALTER TABLE api_keys DROP COLUMN updated_at")
        op.execute("ALTER TABLE api_keys DROP COLUMN webhook_secret_salt")
    else:
        op.drop_column("api_keys", "updated_at")
        op.drop_column("api_keys", "webhook_secret_salt")
