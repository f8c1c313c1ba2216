"""The backends: family -> the module that loads and assembles its engine.

Each backend has ``load(entry, device, dtype)`` (the entry's files -> ``Pipeline``) and
``build(entry, components, *, device, dtype)`` (components built in memory -> ``Pipeline``).
``ltx2`` and ``ltxv`` live here; the built-in model's lives with the rest of it, in
``aiprod.builtin.backend``: this table is the only place the engine reaches it. The backends
are imported on first use (each pulls in its diffusers pipelines).
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

from aiprod.core.errors import ConfigError
from aiprod.core.model_files import check_model_files
from aiprod.core.registry import ModelEntry
from aiprod.engine.common import check_attention_backend, resolve_device, resolve_dtype
from aiprod.engine.types import Pipeline


def _ltx2() -> ModuleType:
    from aiprod.engine.backends import ltx2

    return ltx2


def _ltxv() -> ModuleType:
    from aiprod.engine.backends import ltxv

    return ltxv


def _builtin() -> ModuleType:
    from aiprod.builtin import backend

    return backend


BACKENDS: dict[str, Callable[[], ModuleType]] = {
    "ltx2": _ltx2,
    "ltxv": _ltxv,
    "builtin": _builtin,
}


def backend_for(entry: ModelEntry) -> Any:
    """The backend module of the entry's family."""
    get = BACKENDS.get(entry.family)
    if get is None:
        raise ConfigError(
            f"model '{entry.id}': unknown family '{entry.family}' (use {', '.join(BACKENDS)})"
        )
    return get()


def load_pipeline(entry: ModelEntry, device: str | None = None) -> Pipeline:
    """Load ``entry`` onto ``device``; see ``aiprod.engine.load_pipeline``."""
    check_model_files(entry)  # every file problem, before any (slow) loading
    dev = resolve_device(device)
    dtype = resolve_dtype(entry.dtype, dev)
    check_attention_backend(entry.id, entry.options.attention_backend)
    pipe: Pipeline = backend_for(entry).load(entry, dev, dtype)
    return pipe


def pipeline_from_components(
    entry: ModelEntry, components: dict[str, Any], device: str | None = None
) -> Pipeline:
    """An engine pipeline around components built in memory (benchmarks, tests, notebooks).

    ``components`` holds diffusers modules keyed like the folder layout (transformer, vae,
    text_encoder, tokenizer, scheduler, latent_upsampler; LTX-2 adds audio_vae, connectors,
    vocoder; the built-in model may add its verifier). The entry supplies family, options,
    limits and defaults; its paths are unused.
    """
    dev = resolve_device(device)
    dtype = resolve_dtype(entry.dtype, dev)
    check_attention_backend(entry.id, entry.options.attention_backend)
    pipe: Pipeline = backend_for(entry).build(entry, components, device=dev, dtype=dtype)
    return pipe
