"""Fixtures shared by the service/worker/db/cli tests (see tests/service/harness.py)."""

from tests.service.harness import db_url, pg_url  # noqa: F401
