"""API key tokens (no FastAPI, no database): shared by the API and the CLI.

A key is ``aiprod_sk_`` + 32 random URL-safe bytes. Only ``HMAC-SHA256(secret_key, key)`` is
stored, so a leaked database does not leak usable keys, and a lookup is one indexed equality.
Webhook signing secrets are derived per API key from the same server secret:
``aiprod.jobs.webhooks.webhook_secret``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "aiprod_sk_"


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str, secret: str) -> str:
    return hmac.new(secret.encode(), key.encode(), hashlib.sha256).hexdigest()


def display_prefix(key: str) -> str:
    """The part of a key that is safe to show in listings (``aiprod_sk_AbCd``)."""
    return key[: len(KEY_PREFIX) + 4]
