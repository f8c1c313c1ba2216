"""LTX-2 backend (family ``ltx2``): loads an LTX-2 folder or single-file checkpoint (+ the
distilled LoRA) and assembles the engine (``aiprod.engine.ltx2_engine``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from aiprod.core.errors import ConfigError
from aiprod.core.model_files import (
    check_family,
    check_model_path,
    component_path,
    single_file_config,
)
from aiprod.core.registry import LTX2Entry
from aiprod.engine.loading import (
    apply_options,
    check_call_kwargs,
    load_folder_model,
    load_or_fail,
    load_text_and_upsampler,
)
from aiprod.engine.ltx2_engine import LORA_ADAPTER, LTX2Engine


# -- loading ----------------------------------------------------------------------------------
def load(entry: LTX2Entry, device: torch.device, dtype: torch.dtype) -> LTX2Engine:
    """An ``ltx2`` entry's files -> engine."""
    return build(entry, load_components(entry, dtype), device=device, dtype=dtype)


def build(
    entry: LTX2Entry, comps: dict[str, Any], *, device: torch.device, dtype: torch.dtype
) -> LTX2Engine:
    """Assemble an LTX-2 engine from components (in their own dtype); loads
    ``components.distilled_lora`` if set."""
    from diffusers import LTX2ImageToVideoPipeline, LTX2LatentUpsamplePipeline, LTX2Pipeline

    comps = dict(comps)
    upsampler = comps.pop("latent_upsampler", None)
    pipe = LTX2Pipeline(**comps)
    check_call_kwargs(entry, LTX2Pipeline.__call__)
    # A transformer that already carries the adapter (built in memory) counts as having it.
    has_lora = LORA_ADAPTER in (getattr(pipe.transformer, "peft_config", None) or {})
    lora = entry.components.distilled_lora
    if lora is not None:
        if not lora.exists():
            raise ConfigError(
                f"model '{entry.id}': components.distilled_lora = {lora} does not exist; "
                "fix the path in models.toml or remove it"
            )
        kw: dict[str, Any] = {"adapter_name": LORA_ADAPTER, "local_files_only": True}
        if lora.is_file():
            kw["weight_name"] = lora.name
            lora = lora.parent
        load_or_fail(entry, "distilled LoRA", lambda: pipe.load_lora_weights(str(lora), **kw))
        has_lora = True
    apply_options(entry, pipe, device)
    i2v = LTX2ImageToVideoPipeline.from_pipe(pipe)
    upsample_pipe = None
    if upsampler is not None:
        upsample_pipe = LTX2LatentUpsamplePipeline(vae=pipe.vae, latent_upsampler=upsampler)
        upsampler.to(device)
    elif entry.defaults.two_stage:
        raise ConfigError(
            f"model '{entry.id}': defaults.two_stage is true but there is no latent upsampler; "
            "add a latent_upsampler/ folder (or components.upsampler) or set two_stage = false"
        )
    engine = LTX2Engine(
        entry,
        pipe=pipe,
        i2v_pipe=i2v,
        upsample_pipe=upsample_pipe,
        has_lora=has_lora,
        device=device,
        max_sequence_length=entry.options.max_sequence_length or 1024,
    )
    engine._set_lora(False)
    return engine


def _text_encoder_class(path: Path) -> Any:
    import transformers

    arch = (json.loads((path / "config.json").read_text()).get("architectures") or [""])[0]
    cls = getattr(transformers, arch, None)
    if cls is None:
        return transformers.AutoModel
    return cls


def load_components(entry: LTX2Entry, dtype: torch.dtype) -> dict[str, Any]:
    """An LTX-2 folder (or single file + config folder) and its text encoder, connectors,
    vocoder and optional latent upsampler."""
    from diffusers import (
        AutoencoderKLLTX2Audio,
        AutoencoderKLLTX2Video,
        LTX2VideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx2 import LTX2LatentUpsamplerModel, LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder, LTX2VocoderWithBWE

    root = check_model_path(entry)
    local = {"torch_dtype": dtype, "local_files_only": True}
    comps: dict[str, Any] = {}

    def folder_model(name: str, cls: Any, what: str) -> Any:
        return load_folder_model(entry, name, cls, what=what, dtype=dtype)

    if root.is_file():
        config = single_file_config(
            entry, root, family="ltx2", configs="transformer/, vae/, audio_vae/ configs"
        )
        single = {"config": str(config), **local}
        comps["transformer"] = load_or_fail(
            entry,
            "transformer",
            lambda: LTX2VideoTransformer3DModel.from_single_file(
                str(root), subfolder="transformer", **single
            ),
        )
        for name, cls in (("vae", AutoencoderKLLTX2Video), ("audio_vae", AutoencoderKLLTX2Audio)):
            if getattr(entry.components, name, None) is not None:
                comps[name] = folder_model(name, cls, name)
            else:
                comps[name] = load_or_fail(
                    entry,
                    name,
                    lambda c=cls, n=name: c.from_single_file(str(root), subfolder=n, **single),
                )
    else:
        tdir = component_path(entry, "transformer")
        assert tdir is not None
        check_family(entry, tdir, "ltx2")
        comps["transformer"] = folder_model(
            "transformer", LTX2VideoTransformer3DModel, "transformer"
        )
        comps["vae"] = folder_model("vae", AutoencoderKLLTX2Video, "VAE")
        comps["audio_vae"] = folder_model("audio_vae", AutoencoderKLLTX2Audio, "audio VAE")

    comps["connectors"] = folder_model("connectors", LTX2TextConnectors, "text connectors")
    vdir = component_path(entry, "vocoder")
    assert vdir is not None
    vcls_name = json.loads((vdir / "config.json").read_text()).get("_class_name", "")
    vcls = LTX2VocoderWithBWE if vcls_name == "LTX2VocoderWithBWE" else LTX2Vocoder
    comps["vocoder"] = folder_model("vocoder", vcls, "vocoder")
    te = component_path(entry, "text_encoder")
    assert te is not None
    load_text_and_upsampler(
        entry,
        comps,
        text_encoder_cls=_text_encoder_class(te),
        upsampler_cls=LTX2LatentUpsamplerModel,
        dtype=dtype,
    )
    return comps
