"""Settings (pydantic-settings): environment variables with the AIPROD_ prefix, or a .env file.

``Settings`` is the one place aiprod reads its own configuration: every ``AIPROD_*`` variable
is a field here (``AIPROD_DATA_DIR`` is ``data_dir``, and so on). What stays outside, and why:

- ``CUDA_VISIBLE_DEVICES`` and ``PROMETHEUS_MULTIPROC_DIR`` (read in ``service/metrics.py``):
  they belong to CUDA and prometheus_client, which read them themselves; aiprod reads them
  as those libraries see them, not as settings of its own.
- ``AIPROD_URL`` and ``AIPROD_API_KEY`` (read in ``aiprod/client/``): the Python client is a
  light package for integrators that imports nothing else from aiprod (nor pydantic-settings).
- The AWS chain (``AWS_ACCESS_KEY_ID``, ...) is boto3's, read by boto3.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from aiprod.core.errors import ConfigError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AIPROD_", env_file=".env", extra="ignore")

    data_dir: Path = Path("./aiprod-data")
    database_url: str | None = None  # default: sqlite file in data_dir
    storage_url: str | None = None  # default: data_dir/outputs; s3://bucket/prefix for S3
    # S3-compatible storage: endpoint for MinIO/R2/etc. (unset: AWS); credentials come from the
    # standard AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws, instance role).
    s3_endpoint_url: str | None = None
    s3_region: str | None = None  # default: AWS_DEFAULT_REGION / AWS config
    models_file: Path | None = None  # default: the models.toml shipped in the package
    # The API checks each model's files (core/model_files.py) for GET /models, /readyz and
    # submit. None = yes, except `aiprod serve --no-worker` (the files live on the workers'
    # hosts; their failed loads still show). Set false on an API-only host without the files.
    check_model_files: bool | None = None
    secret_key: str | None = None  # default: generated into data_dir/secret_key on first use
    rate_limit_per_minute: int = Field(default=100, ge=1)
    # How long an API process trusts a key's row before reading it again: a revoked key is
    # refused, and a new rate limit, priority or monthly budget applies, within this many
    # seconds (0 = read it on every request).
    api_key_cache_seconds: float = Field(default=1.0, ge=0)
    device: str | None = None  # worker device; default cuda if available else cpu

    # Service and queue (see docs/api.md). Short intervals are for tests; defaults suit production.
    public_url: str | None = None  # base URL used in webhook payloads, e.g. https://video.example
    max_request_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    # The cap of `Prefer: wait=N` (and what a bare `Prefer: wait` waits), in seconds
    max_wait_seconds: int = Field(default=60, ge=1, le=3600)
    lease_seconds: float = Field(default=30.0, gt=0)  # a running job's lease, renewed by heartbeat
    heartbeat_interval: float = Field(default=5.0, gt=0)
    worker_poll_interval: float = Field(default=1.0, gt=0)  # idle worker's claim interval
    reaper_interval: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)  # a job is tried this many times before failing
    retry_backoff_seconds: float = Field(default=5.0, ge=0)  # doubled after every failed try
    webhook_timeout: float = Field(default=5.0, gt=0)
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_backoff_seconds: float = Field(default=2.0, ge=0)
    webhook_poll_interval: float = Field(default=1.0, gt=0)
    # Networks webhooks may reach although they are not public (loopback, private, link-local):
    # CIDRs separated by commas or spaces, e.g. "10.20.0.0/16, 127.0.0.0/8". Empty: public only.
    webhook_allow_networks: str = ""
    gpu_cost_per_hour: float = Field(default=0.0, ge=0)  # what a GPU-hour costs you (margin)
    # Benchmarks/tests only: sleep this long after every denoising step so a tiny model's job
    # lasts long enough to cancel or kill it mid-run. The real pipeline still runs.
    worker_step_delay: float = Field(default=0.0, ge=0)
    # CPU-only box shared with the API: run each generation (denoising and MP4 encoding) at
    # this nice value (0-19), in a thread of its own, so the API's requests get the CPU first.
    # The worker's database writes stay at its normal priority (see worker/runner.py).
    worker_nice: int = Field(default=0, ge=0, le=19)

    # Operations (see docs/OPERATIONS.md): readiness, retention, logs.
    min_free_disk_mb: float = Field(default=1024.0, ge=0)  # /readyz fails below this
    ready_requires_worker: bool = True  # /readyz fails with no live worker
    worker_live_seconds: float | None = Field(default=None, gt=0)  # default: 2 x lease_seconds
    retention_days: float | None = Field(default=None, gt=0)  # delete outputs older than this
    retention_interval_seconds: float = Field(default=3600.0, gt=0)  # how often the API checks
    log_requests: bool = True  # one structured log line per request
    # json | text | auto (text on a terminal) and DEBUG | INFO | ...: checked by
    # core/logging.py, which names the bad value (`--log-level` overrides the level).
    log_format: str = "auto"
    log_level: str = "INFO"

    @field_validator("webhook_allow_networks")
    @classmethod
    def _check_networks(cls, value: str) -> str:
        _networks(value)
        return value

    @property
    def webhook_allowed_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return _networks(self.webhook_allow_networks)

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_data_dir / 'aiprod.db'}"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or str(self.resolved_data_dir / "outputs")

    def resolved_secret_key(self) -> str:
        """The configured secret, or one generated once into the data dir (mode 0600)."""
        if self.secret_key:
            if self.secret_key in {"changeme", "secret", "change-me"} or len(self.secret_key) < 16:
                raise ConfigError(
                    "AIPROD_SECRET_KEY is too weak: use at least 16 random characters "
                    "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
                )
            return self.secret_key
        path = self.resolved_data_dir / "secret_key"
        if path.exists():
            return path.read_text().strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(secrets.token_urlsafe(32))
        tmp.chmod(0o600)
        try:
            # link() fails if another process won the race; then both use the winner's key.
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        return path.read_text().strip()


def _networks(value: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(v) for v in value.replace(",", " ").split())
    except ValueError as exc:
        raise ValueError(f"AIPROD_WEBHOOK_ALLOW_NETWORKS: {exc} (expected CIDRs)") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
