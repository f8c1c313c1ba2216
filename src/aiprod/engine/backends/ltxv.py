"""LTX-Video backend (family ``ltxv``): loads an LTX-Video folder or single-file checkpoint and
assembles the engine (``aiprod.engine.ltxv_engine``). The built-in model's backend
(``aiprod.builtin.backend``) loads and assembles the same engine with its own parts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from aiprod.core.errors import ConfigError
from aiprod.core.model_files import (
    check_family,
    check_model_path,
    component_path,
    single_file_config,
)
from aiprod.core.registry import LTXVEntry
from aiprod.engine.drafts import DraftRanker
from aiprod.engine.loading import (
    apply_options,
    check_call_kwargs,
    load_folder_model,
    load_or_fail,
    load_text_and_upsampler,
    prepare_refiner,
)
from aiprod.engine.ltxv_engine import LTXVideoEngine, LTXVideoEntry


# -- loading ----------------------------------------------------------------------------------
def load(entry: LTXVEntry, device: torch.device, dtype: torch.dtype) -> LTXVideoEngine:
    """An ``ltxv`` entry's files -> engine."""
    return build(entry, load_components(entry, dtype), device=device, dtype=dtype)


def build(
    entry: LTXVEntry, comps: dict[str, Any], *, device: torch.device, dtype: torch.dtype
) -> LTXVideoEngine:
    """An ``ltxv`` engine from already-built components (see ``aiprod.engine.tiny``)."""
    return assemble(entry, comps, device=device, dtype=dtype, auto_mode="condition")


def assemble(
    entry: LTXVideoEntry,
    comps: dict[str, Any],
    *,
    device: torch.device,
    dtype: torch.dtype,
    auto_mode: str,
    pipeline_class: Callable[[type], type] | None = None,
    max_sequence_length: int | None = None,
    ranker: DraftRanker | None = None,
    candidates: int = 1,
) -> LTXVideoEngine:
    """Assemble an LTX-Video engine from components: ``auto_mode`` is the pipeline
    ``options.ltxv_pipeline = "auto"`` picks; ``pipeline_class`` adapts the diffusers pipeline
    classes (the built-in model checks sizes on its autoencoder's grid); ``max_sequence_length``
    the text length when the entry sets none; ``ranker`` keeps the best of ``candidates``
    drafts."""
    from diffusers import (
        LTXConditionPipeline,
        LTXImageToVideoPipeline,
        LTXLatentUpsamplePipeline,
        LTXPipeline,
    )

    comps = dict(comps)
    mode = entry.options.ltxv_pipeline
    if mode == "auto":
        mode = auto_mode
    sched = comps["scheduler"]
    if mode == "condition" and sched.config.get("use_dynamic_shifting", False):
        # LTXConditionPipeline passes its own explicit schedule; dynamic shifting would need mu.
        sched = type(sched).from_config(sched.config, use_dynamic_shifting=False)
    upsampler = comps.pop("latent_upsampler", None)
    cls = LTXConditionPipeline if mode == "condition" else LTXPipeline
    check_call_kwargs(entry, cls.__call__)
    adapt = pipeline_class or (lambda c: c)
    pipe = adapt(cls)(
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
    if ranker is not None:
        ranker.to(device)
    i2v = adapt(LTXImageToVideoPipeline).from_pipe(pipe) if mode == "classic" else None
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
    max_len = entry.options.max_sequence_length or max_sequence_length
    if max_len is None:
        max_len = 256 if mode == "condition" else 128
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
        ranker=ranker,
        candidates=candidates,
    )


def load_components(entry: LTXVideoEntry, dtype: torch.dtype) -> dict[str, Any]:
    """An LTX-Video folder (or single file + config folder): transformer, VAE, text encoder,
    tokenizer, scheduler, and the optional latent_upsampler/ and refiner/."""
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
    return comps
