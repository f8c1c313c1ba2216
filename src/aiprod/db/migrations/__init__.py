"""Alembic migration environment (one history for SQLite and PostgreSQL)."""
