"""Loading helpers every backend shares: one-line ``ConfigError``s naming the entry, the
entry's memory/speed options, folder components, the text encoder and the latent upsampler.

Everything loads from local files (``local_files_only``); a wrong entry fails here with one
line naming the entry and the fix, never halfway through a job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from aiprod.core.errors import ConfigError
from aiprod.core.model_files import component_path, upsampler_dir
from aiprod.core.registry import ModelEntry

log = logging.getLogger(__name__)


def check_call_kwargs(entry: ModelEntry, fn: Any) -> None:
    """``options.call_kwargs`` must name parameters the pipeline call accepts."""
    import inspect

    allowed = set(inspect.signature(fn).parameters) - {"self"}
    bad = sorted(set(entry.options.call_kwargs) - allowed)
    if bad:
        raise ConfigError(
            f"model '{entry.id}': options.call_kwargs has unknown key(s) {', '.join(bad)}; "
            "use parameters of diffusers' pipeline call (e.g. guidance_rescale, stg_scale)"
        )


def load_or_fail(entry: ModelEntry, what: str, fn: Callable[[], Any]) -> Any:
    """Run a loader; turn any error into a one-line ConfigError naming the entry."""
    try:
        return fn()
    except ConfigError:
        raise
    except torch.OutOfMemoryError as exc:
        raise ConfigError(
            f"model '{entry.id}': out of memory loading the {what}; enable options.cpu_offload "
            "or use a smaller dtype"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - any loader failure is a bad entry/file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"model '{entry.id}': cannot load the {what}: {first}") from exc


def apply_options(entry: ModelEntry, pipe: Any, device: torch.device) -> None:
    """Memory/speed options from the entry: VAE tiling, CPU offload, attention, compile."""
    opts = entry.options
    if opts.vae_tiling:
        pipe.vae.enable_tiling()
    set_attention_backend(entry, pipe.transformer)
    if opts.cpu_offload and device.type == "cuda":
        pipe.enable_model_cpu_offload(device=device)
    else:
        if opts.cpu_offload:
            log.info("model '%s': cpu_offload ignored on %s", entry.id, device)
        pipe.to(device)
    if opts.compile:
        pipe.transformer.compile(dynamic=False)


def set_attention_backend(entry: ModelEntry, transformer: Any) -> None:
    """The entry's ``attention_backend`` on ``transformer``, or a ConfigError naming the fix."""
    backend = entry.options.attention_backend
    if not backend:
        return
    try:
        transformer.set_attention_backend(backend)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(
            f"model '{entry.id}': attention_backend '{backend}' is not usable "
            f"here ({str(exc).splitlines()[0]}); remove it or install its kernel package"
        ) from exc


def prepare_refiner(entry: ModelEntry, refiner: Any, device: torch.device) -> Any:
    """The stage-2 transformer gets the entry's attention backend and compile option; it stays
    on ``device`` (CPU offload covers the pipeline's own parts only)."""
    set_attention_backend(entry, refiner)
    refiner.to(device)
    if entry.options.compile:
        refiner.compile(dynamic=False)
    return refiner


def load_folder_model(
    entry: ModelEntry, name: str, cls: Any, *, what: str, dtype: torch.dtype
) -> Any:
    """``cls.from_pretrained`` on the entry's ``name`` folder, failing as ``load_or_fail``."""
    path = component_path(entry, name)
    return load_or_fail(
        entry, what, lambda: cls.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
    )


def load_text_and_upsampler(
    entry: ModelEntry,
    comps: dict[str, Any],
    *,
    text_encoder_cls: Any,
    upsampler_cls: Any,
    dtype: torch.dtype,
) -> None:
    """Add text_encoder, tokenizer, scheduler and (if present) latent_upsampler to ``comps``."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import AutoTokenizer

    te = component_path(entry, "text_encoder")
    assert te is not None
    comps["text_encoder"] = load_or_fail(
        entry,
        "text encoder",
        lambda: text_encoder_cls.from_pretrained(te, dtype=dtype, local_files_only=True).eval(),
    )
    tok = component_path(entry, "tokenizer")
    comps["tokenizer"] = load_or_fail(
        entry, "tokenizer", lambda: AutoTokenizer.from_pretrained(tok, local_files_only=True)
    )
    sdir = component_path(entry, "scheduler", required=False)
    comps["scheduler"] = (
        FlowMatchEulerDiscreteScheduler.from_pretrained(sdir, local_files_only=True)
        if sdir is not None
        else FlowMatchEulerDiscreteScheduler()
    )
    up = upsampler_dir(entry)
    if up is not None:
        comps["latent_upsampler"] = load_or_fail(
            entry,
            "latent upsampler",
            lambda: upsampler_cls.from_pretrained(up, torch_dtype=dtype, local_files_only=True),
        )


def modules_to(comps: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """``comps`` with every torch module cast to ``dtype`` (components built in float32)."""
    if dtype == torch.float32:
        return comps
    return {k: (v.to(dtype) if isinstance(v, torch.nn.Module) else v) for k, v in comps.items()}
