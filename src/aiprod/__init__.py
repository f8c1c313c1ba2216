"""aiprod: a self-hosted video model engine (engine, service, training pipeline)."""

__version__ = "0.1.0"
