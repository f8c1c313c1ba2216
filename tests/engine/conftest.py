"""Engine test fixtures: models are built once per session (they are the slow part)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from aiprod.core.registry import ModelEntry, Registry, load_registry


def write_models_toml(path: Path, body: str, default: str) -> Registry:
    path.write_text(f'default = "{default}"\n\n{body}')
    return load_registry(path)


def png_bytes(width: int = 48, height: int = 40) -> bytes:
    from PIL import Image

    yy, xx = np.mgrid[0:height, 0:width]
    arr = np.stack([xx * 5 % 256, yy * 6 % 256, np.full_like(xx, 200)], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def builtin_entry() -> ModelEntry:
    """The shipped registry's default entry (no trained weights -> tiny random model)."""
    entry = load_registry().default_entry
    assert entry.family == "builtin"
    return entry


@pytest.fixture(scope="session")
def builtin_pipe(builtin_entry: ModelEntry):  # noqa: ANN201
    from aiprod.engine import load_pipeline

    if builtin_entry.path is not None and builtin_entry.path.exists():
        # The trained model has landed; tests about the random fallback use a pathless copy.
        builtin_entry = builtin_entry.model_copy(update={"path": None})
    return load_pipeline(builtin_entry, "cpu")
