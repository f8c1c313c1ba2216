"""The engine: model backends -> ti2vid pipeline -> frames (+audio) -> MP4.

Importing this package (or ``aiprod.engine.types``) does not import torch: the API process
imports the types, only the worker and the CLI load a pipeline. Everything that needs torch is
imported inside the functions below.

```python
from aiprod.core.registry import load_registry
from aiprod import engine

entry = load_registry().default_entry
pipe = engine.load_pipeline(entry)           # once per process
video = pipe(request, on_progress=print)     # many times
```
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiprod.engine.types import CancelFn, GenerationRequest, Pipeline, ProgressFn, Video

if TYPE_CHECKING:
    from aiprod.core.registry import ModelEntry

__all__ = [
    "GenerationRequest",
    "Pipeline",
    "Video",
    "build_request",
    "check_model_files",
    "clear_cache",
    "generate_to_file",
    "load_pipeline",
    "pipeline_from_components",
]


def load_pipeline(entry: ModelEntry, device: str | None = None) -> Pipeline:
    """Load the model ``entry`` names onto ``device`` (default: cuda if available, else cpu).

    Raises ``ConfigError`` (one line naming the entry and the fix) when the entry's files are
    missing or of the wrong kind.
    """
    from aiprod.engine.backends import load_pipeline as _load

    return _load(entry, device)


def pipeline_from_components(
    entry: ModelEntry, components: dict[str, Any], device: str | None = None
) -> Pipeline:
    """Wrap components built in memory (e.g. random weights for a benchmark) as a Pipeline."""
    from aiprod.engine.backends import pipeline_from_components as _build

    return _build(entry, components, device)


def check_model_files(entry: ModelEntry) -> None:
    """Torch-free pre-flight: raise ``ConfigError`` if the entry's files cannot load."""
    from aiprod.core.model_files import check_model_files as _check

    _check(entry)


def build_request(entry: ModelEntry, params: dict[str, Any]) -> GenerationRequest:
    """Fill ``params`` (generate-request fields, None = default) from the entry and check them.

    A missing seed becomes a random one, so the returned request is fully reproducible.
    """
    from aiprod.engine.checks import build_request as _build

    return _build(entry, params)


def generate_to_file(
    entry: ModelEntry,
    request: GenerationRequest,
    path: str | os.PathLike[str],
    *,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    device: str | None = None,
    pipeline: Pipeline | None = None,
) -> Video:
    """Generate one video and write it as an MP4 at ``path`` (atomically). Used by the CLI."""
    from aiprod.core.media import write_mp4

    pipe = pipeline if pipeline is not None else load_pipeline(entry, device)
    video = pipe(request, on_progress=on_progress, should_cancel=should_cancel)
    write_mp4(
        Path(path),
        video.frames,
        video.fps,
        audio=video.audio,
        sample_rate=video.audio_sample_rate,
    )
    return video


def clear_cache() -> None:
    """Free cached accelerator memory held by torch (no-op without torch or CUDA)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        return
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()
