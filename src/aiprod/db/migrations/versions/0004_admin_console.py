"""admin console: a key's webhook-secret rotation salt and update time; a job's retry_of

Revision ID: 0004_admin
Revises: 0002
Create Date: 2026-12-07 13:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_admin"
down_revision: str | None = "0002"
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


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("retry_of")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("updated_at")
        batch.drop_column("webhook_secret_salt")
