"""Fixtures of the fault suite (see tests/faults/kit.py)."""

from tests.service.harness import db_url, pg_url  # noqa: F401
