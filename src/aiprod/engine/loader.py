"""``load_pipeline(entry, device)``: check the entry's files, load its components, apply options.

Everything loads from local files (``local_files_only``); a wrong entry fails here with one
line naming the entry and the fix, never halfway through a job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from aiprod.core.errors import ConfigError
from aiprod.core.registry import ModelEntry
from aiprod.engine.common import check_attention_backend, resolve_device, resolve_dtype
from aiprod.engine.files import (  # noqa: F401 - re-exported for the backends
    check_family,
    check_model_files,
    check_model_path,
    component_path,
    single_file_config,
)
from aiprod.engine.types import Pipeline

log = logging.getLogger(__name__)

BUILTIN_SEED = 0


def load_pipeline(entry: ModelEntry, device: str | None = None) -> Pipeline:
    """Load ``entry`` onto ``device``; see ``aiprod.engine.load_pipeline``."""
    check_model_files(entry)  # every file problem, before any (slow) loading
    dev = resolve_device(device)
    dtype = resolve_dtype(entry.dtype, dev)
    check_attention_backend(entry.id, entry.options.attention_backend)
    if entry.family == "ltx2":
        from aiprod.engine.ltx2 import load_ltx2

        return load_ltx2(entry, dev, dtype)
    if entry.family in ("ltxv", "builtin"):
        return load_ltxv(entry, dev, dtype)
    raise ConfigError(
        f"model '{entry.id}': unknown family '{entry.family}' (use ltx2, ltxv, builtin)"
    )


def pipeline_from_components(
    entry: ModelEntry, components: dict[str, Any], device: str | None = None
) -> Pipeline:
    """An engine pipeline around components built in memory (benchmarks, tests, notebooks).

    ``components`` holds diffusers modules keyed like the folder layout (transformer, vae,
    text_encoder, tokenizer, scheduler, latent_upsampler; LTX-2 adds audio_vae, connectors,
    vocoder). The entry supplies family, options, limits and defaults; its paths are unused.
    """
    dev = resolve_device(device)
    dtype = resolve_dtype(entry.dtype, dev)
    check_attention_backend(entry.id, entry.options.attention_backend)
    if entry.family == "ltx2":
        from aiprod.engine.ltx2 import build_ltx2_engine

        return build_ltx2_engine(entry, components, device=dev)
    return build_ltxv_engine(entry, components, device=dev, dtype=dtype)


# -- helpers shared by the backends -----------------------------------------------------------
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
    up = component_path(entry, "latent_upsampler", required=False)
    if up is not None:
        if (up / "latent_upsampler").is_dir():
            up = up / "latent_upsampler"
        comps["latent_upsampler"] = load_or_fail(
            entry,
            "latent upsampler",
            lambda: upsampler_cls.from_pretrained(up, torch_dtype=dtype, local_files_only=True),
        )


# -- LTX-Video / builtin ----------------------------------------------------------------------
def load_ltxv(entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> Pipeline:
    if entry.family == "builtin" and (entry.path is None or not entry.path.exists()):
        from aiprod.engine.tiny import tiny_ltxv_components

        log.warning(
            "model '%s': no trained weights at %s; using the tiny random built-in model "
            "(seed %d): outputs are deterministic noise",
            entry.id,
            entry.path,
            BUILTIN_SEED,
        )
        comps = tiny_ltxv_components(seed=BUILTIN_SEED)
        if dtype != torch.float32:
            comps = {
                k: (v.to(dtype) if isinstance(v, torch.nn.Module) else v) for k, v in comps.items()
            }
    else:
        comps = _load_ltxv_files(entry, dtype)
    return build_ltxv_engine(entry, comps, device=device, dtype=dtype)


def build_ltxv_engine(
    entry: ModelEntry, comps: dict[str, Any], *, device: torch.device, dtype: torch.dtype
) -> Pipeline:
    """Assemble an LTX-Video engine from already-built components (see ``tiny.py``)."""
    from diffusers import (
        LTXConditionPipeline,
        LTXImageToVideoPipeline,
        LTXLatentUpsamplePipeline,
        LTXPipeline,
    )

    from aiprod.engine.ltxv import LTXVideoEngine, on_vae_grid

    comps = dict(comps)
    mode = entry.options.ltxv_pipeline
    if mode == "auto":
        mode = "classic" if entry.family == "builtin" else "condition"
    sched = comps["scheduler"]
    if mode == "condition" and sched.config.get("use_dynamic_shifting", False):
        # LTXConditionPipeline passes its own explicit schedule; dynamic shifting would need mu.
        sched = type(sched).from_config(sched.config, use_dynamic_shifting=False)
    upsampler = comps.pop("latent_upsampler", None)
    cls = LTXConditionPipeline if mode == "condition" else LTXPipeline
    check_call_kwargs(entry, cls.__call__)
    # The built-in model's stage 1 runs on its autoencoder's 8-px grid (80x80 for 160x160).
    on_grid = entry.family == "builtin"
    if on_grid:
        cls = on_vae_grid(cls)
    pipe = cls(
        scheduler=sched,
        vae=comps["vae"],
        text_encoder=comps["text_encoder"],
        tokenizer=comps["tokenizer"],
        transformer=comps["transformer"],
    )
    apply_options(entry, pipe, device)
    refiner = comps.get("refiner")
    if refiner is not None:
        prepare_refiner(entry, refiner, device)
    verifier = comps.get("verifier")
    if verifier is not None:
        verifier.to(device).eval()
    i2v_cls = on_vae_grid(LTXImageToVideoPipeline) if on_grid else LTXImageToVideoPipeline
    i2v = i2v_cls.from_pipe(pipe) if mode == "classic" else None
    upsample_pipe = None
    if upsampler is not None:
        upsample_pipe = LTXLatentUpsamplePipeline(vae=pipe.vae, latent_upsampler=upsampler)
        upsampler.to(device)
    elif entry.defaults.two_stage:
        raise ConfigError(
            f"model '{entry.id}': defaults.two_stage is true but there is no latent upsampler; "
            "add a latent_upsampler/ folder (or components.upsampler) or set two_stage = false"
        )
    # The diffusers defaults: 256 tokens for LTXConditionPipeline, 128 for LTXPipeline.
    max_len = entry.options.max_sequence_length or (256 if mode == "condition" else 128)
    if entry.options.max_sequence_length is None and entry.family == "builtin":
        # The built-in model is trained with prompts padded to its tokenizer's length.
        tok_len = getattr(pipe.tokenizer, "model_max_length", 0)
        max_len = int(tok_len) if 0 < tok_len <= 1024 else 128
    return LTXVideoEngine(
        entry,
        pipe=pipe,
        upsample_pipe=upsample_pipe,
        device=device,
        dtype=dtype,
        max_sequence_length=max_len,
        mode=mode,
        i2v_pipe=i2v,
        refiner=refiner,
        verifier=verifier,
    )


def _load_ltxv_files(entry: ModelEntry, dtype: torch.dtype) -> dict[str, Any]:
    from diffusers import AutoencoderKLLTXVideo, LTXVideoTransformer3DModel
    from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel
    from transformers import T5EncoderModel

    root = check_model_path(entry)
    single = root.is_file()
    comps: dict[str, Any] = {}
    if single:
        config = single_file_config(
            entry, root, family="ltxv", configs="with transformer/ and vae/ configs"
        )
        kw = {"config": str(config), "local_files_only": True, "torch_dtype": dtype}
        comps["transformer"] = load_or_fail(
            entry,
            "transformer",
            lambda: LTXVideoTransformer3DModel.from_single_file(
                str(root), subfolder="transformer", **kw
            ),
        )
        if entry.components.vae is not None:
            comps["vae"] = load_folder_model(
                entry, "vae", AutoencoderKLLTXVideo, what="VAE", dtype=dtype
            )
        else:
            comps["vae"] = load_or_fail(
                entry,
                "VAE",
                lambda: AutoencoderKLLTXVideo.from_single_file(str(root), subfolder="vae", **kw),
            )
    else:
        tdir = component_path(entry, "transformer")
        assert tdir is not None
        check_family(entry, tdir, "ltxv")
        comps["transformer"] = load_folder_model(
            entry, "transformer", LTXVideoTransformer3DModel, what="transformer", dtype=dtype
        )
        comps["vae"] = load_folder_model(
            entry, "vae", AutoencoderKLLTXVideo, what="VAE", dtype=dtype
        )
    load_text_and_upsampler(
        entry,
        comps,
        text_encoder_cls=T5EncoderModel,
        upsampler_cls=LTXLatentUpsamplerModel,
        dtype=dtype,
    )
    ref = component_path(entry, "refiner", required=False)
    if ref is not None:
        comps["refiner"] = load_or_fail(
            entry,
            "refiner",
            lambda: LTXVideoTransformer3DModel.from_pretrained(
                ref, torch_dtype=dtype, local_files_only=True
            ),
        )
    # Drafts need the verifier (only builtin entries may ask: the registry refuses the rest);
    # it is an optional part, like refiner/: without it, serve one draft.
    if entry.options.candidates > 1:
        ver = component_path(entry, "verifier", required=False)
        if ver is not None:
            from aiprod.builtin.verifier import PromptVerifier

            comps["verifier"] = load_or_fail(
                entry, "prompt verifier", lambda: PromptVerifier.from_pretrained(ver)
            )
        else:
            log.warning(
                "model '%s': options.candidates = %d, but %s has no prompt verifier "
                "(verifier/, trained by a verifier phase of `aiprod train`) to rank drafts: "
                "serving one stage-1 draft per clip (set candidates = 1 to silence this)",
                entry.id,
                entry.options.candidates,
                entry.path,
            )
    return comps
