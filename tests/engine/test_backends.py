"""LTX-Video and LTX-2 backends on tiny random models saved locally, through the registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from aiprod.core.errors import GenerationCanceled
from aiprod.core.media import probe, read_video
from aiprod.core.registry import Registry
from aiprod.engine import build_request, generate_to_file

from .conftest import DEFAULTS_TOML, png_bytes, write_models_toml

FAMILIES = ["tiny-ltxv", "tiny-ltx2"]


@pytest.mark.parametrize("model", FAMILIES)
@pytest.mark.parametrize(
    "case",
    [
        {"two_stage": False},
        {"two_stage": True},
        {"two_stage": True, "image": True},
        {"two_stage": False, "image": True, "width": 32, "num_frames": 17, "fps": 8},
    ],
    ids=["one-stage", "two-stage", "i2v-two-stage", "i2v-one-stage"],
)
def test_generate_mp4_through_registry(
    registry: Registry, pipes: dict, tmp_path: Path, model: str, case: dict
) -> None:
    entry = registry.get(model)
    params = {"prompt": "a boat on a lake", "seed": 11, **case}
    if params.pop("image", False):
        params["image"] = png_bytes()
    req = build_request(entry, params)
    progress: list[float] = []
    out = tmp_path / "v.mp4"
    video = generate_to_file(entry, req, out, pipeline=pipes[model], on_progress=progress.append)
    info = probe(out)
    assert (info.width, info.height) == (req.width, req.height)
    assert info.num_frames == req.num_frames and info.fps == req.fps
    frames, fps = read_video(out)
    assert frames.shape == (req.num_frames, req.height, req.width, 3) and fps == req.fps
    steps = req.num_inference_steps + (video.info["stages"][1][2] if req.two_stage else 0)
    assert len(progress) == steps == video.info["steps"]
    assert progress == sorted(progress) and progress[-1] == pytest.approx(1.0)
    if model == "tiny-ltx2":
        assert info.has_audio and video.audio is not None
        assert video.audio_sample_rate == info.audio_sample_rate == 16000
    else:
        assert not info.has_audio and video.audio is None


@pytest.mark.parametrize("model", FAMILIES)
def test_same_seed_same_video(registry: Registry, pipes: dict, model: str) -> None:
    entry = registry.get(model)
    a = pipes[model](build_request(entry, {"prompt": "fog", "seed": 5}))
    b = pipes[model](build_request(entry, {"prompt": "fog", "seed": 5}))
    c = pipes[model](build_request(entry, {"prompt": "fog", "seed": 6}))
    assert np.array_equal(a.frames, b.frames)
    assert not np.array_equal(a.frames, c.frames)
    if a.audio is not None:
        assert np.array_equal(a.audio, b.audio)


@pytest.mark.parametrize("model", FAMILIES)
def test_cancel_in_refinement_stops_within_one_step(
    registry: Registry, pipes: dict, model: str
) -> None:
    entry = registry.get(model)
    req = build_request(entry, {"prompt": "rain", "seed": 1, "num_inference_steps": 3})
    progress: list[float] = []
    with pytest.raises(GenerationCanceled):
        pipes[model](req, on_progress=progress.append, should_cancel=lambda: len(progress) >= 4)
    assert len(progress) == 4  # 3 stage-1 steps + 1 refinement step, then stop


def test_ltx2_distilled_lora_only_in_refinement(registry: Registry, pipes: dict) -> None:
    # Same schedule (options.distilled) with and without the LoRA: stage 1 identical,
    # the refined video differs only because the adapter is on in stage 2.
    with_lora, without = pipes["tiny-ltx2-lora"], pipes["tiny-ltx2-nolora"]
    one = {"prompt": "a fox", "seed": 2, "two_stage": False, "guidance_scale": 1.0}
    a = with_lora(build_request(registry.get("tiny-ltx2-lora"), one))
    b = without(build_request(registry.get("tiny-ltx2-nolora"), one))
    assert np.array_equal(a.frames, b.frames)
    two = {**one, "two_stage": True}
    a2 = with_lora(build_request(registry.get("tiny-ltx2-lora"), two))
    b2 = without(build_request(registry.get("tiny-ltx2-nolora"), two))
    assert a2.info["distilled_lora"] is True and b2.info["distilled_lora"] is False
    assert a2.info["stages"] == b2.info["stages"]
    assert not np.array_equal(a2.frames, b2.frames)


def _single_file_registry(
    tmp_path: Path, original: dict, *, family: str, folder: Path, components: str = ""
) -> Registry:
    """Save ``original`` as one checkpoint file; entry "m" loads it with ``folder``'s configs."""
    from safetensors.torch import save_file

    ckpt = tmp_path / f"{family}-tiny.safetensors"
    save_file(original, str(ckpt))
    return write_models_toml(
        tmp_path / "models.toml",
        f'[[models]]\nid = "m"\nfamily = "{family}"\npath = "{ckpt}"\n'
        f'[models.components]\nconfig = "{folder}"\nvae = "{folder / "vae"}"\n{components}'
        f"{DEFAULTS_TOML}guidance_scale = 3.0\n",
        default="m",
    )


def test_ltxv_single_file_checkpoint(
    registry: Registry, pipes: dict, model_dir: Path, tmp_path: Path
) -> None:
    """An original-format transformer checkpoint + a local config folder loads the same model."""
    from safetensors.torch import load_file

    from aiprod.engine import load_pipeline

    folder = model_dir / "ltxv"
    state = {}
    for f in (folder / "transformer").glob("*.safetensors"):
        state.update(load_file(f))
    # Undo diffusers' renames (loaders/single_file_utils.py: convert_ltx_transformer_...).
    renames = {"proj_in": "patchify_proj", "time_embed": "adaln_single"}
    renames |= {"norm_q": "q_norm", "norm_k": "k_norm"}
    original = {}
    for key, value in state.items():
        for new, old in renames.items():
            key = key.replace(new, old)
        original[f"model.diffusion_model.{key}"] = value
    reg = _single_file_registry(tmp_path, original, family="ltxv", folder=folder)
    single = load_pipeline(reg.get("m"), "cpu")
    params = {"prompt": "a lighthouse", "seed": 3, "two_stage": False}
    a = single(build_request(reg.get("m"), params)).frames
    b = pipes["tiny-ltxv"](build_request(registry.get("tiny-ltxv"), params)).frames
    assert np.array_equal(a, b)


# diffusers -> original LTX-2 key names (the inverse of single_file_utils'
# convert_ltx2_transformer_to_diffusers), longest names first.
LTX2_ORIGINAL_NAMES = [
    ("video_a2v_cross_attn_scale_shift_table", "scale_shift_table_a2v_ca_video"),
    ("audio_a2v_cross_attn_scale_shift_table", "scale_shift_table_a2v_ca_audio"),
    ("av_cross_attn_video_scale_shift", "av_ca_video_scale_shift_adaln_single"),
    ("av_cross_attn_video_a2v_gate", "av_ca_a2v_gate_adaln_single"),
    ("av_cross_attn_audio_scale_shift", "av_ca_audio_scale_shift_adaln_single"),
    ("av_cross_attn_audio_v2a_gate", "av_ca_v2a_gate_adaln_single"),
    ("proj_in", "patchify_proj"),
    ("norm_q", "q_norm"),
    ("norm_k", "k_norm"),
]


def test_ltx2_single_file_checkpoint(
    registry: Registry, pipes: dict, model_dir: Path, tmp_path: Path
) -> None:
    """An original-format LTX-2 transformer file + a local config folder: the same model."""
    from safetensors.torch import load_file

    from aiprod.engine import load_pipeline

    folder = model_dir / "ltx2"
    original = {}
    for f in (folder / "transformer").glob("*.safetensors"):
        for key, value in load_file(f).items():
            for new, old in LTX2_ORIGINAL_NAMES:
                key = key.replace(new, old)
            for new, old in (
                ("time_embed.", "adaln_single."),
                ("audio_time_embed.", "audio_adaln_single."),
            ):
                if key.startswith(new):
                    key = old + key[len(new) :]
            original[f"model.diffusion_model.{key}"] = value
    reg = _single_file_registry(
        tmp_path,
        original,
        family="ltx2",
        folder=folder,
        components=f'audio_vae = "{folder / "audio_vae"}"\n',
    )
    single = load_pipeline(reg.get("m"), "cpu")
    ref = pipes["tiny-ltx2"]
    assert all(
        torch.equal(x, y)
        for x, y in zip(
            single.pipe.transformer.state_dict().values(),
            ref.pipe.transformer.state_dict().values(),
            strict=True,
        )
    )
    params = {"prompt": "a lighthouse", "seed": 3, "two_stage": False}
    a = single(build_request(reg.get("m"), params))
    b = ref(build_request(registry.get("tiny-ltx2"), params))
    # Same weights; converted tensors may differ in memory layout, so allow float rounding.
    assert np.abs(a.frames.astype(int) - b.frames.astype(int)).max() <= 2
    assert np.allclose(a.audio, b.audio, atol=1e-4)


@pytest.mark.parametrize("image", [False, True], ids=["t2v", "i2v"])
def test_ltxv_guidance_interval_skips_the_unconditional_pass_at_low_noise(
    registry: Registry, pipes: dict, image: bool
) -> None:
    # LTX-Video's condition pipeline (and its image conditioning, whose timesteps vary per
    # token): with options.guidance_min_sigma, stage 1 runs guided (batch 2) at high noise and
    # the conditional pass alone (batch 1) below, and the video changes accordingly.
    from aiprod.engine import load_pipeline

    base = registry.get("tiny-ltxv")
    # its 4-step schedule: noise levels 1, 0.99, 0.97, 0.72
    opts = base.options.model_copy(update={"guidance_min_sigma": 0.9})
    pipe = load_pipeline(base.model_copy(update={"options": opts}), "cpu")
    params = {"prompt": "fog", "seed": 5, "num_inference_steps": 4, "two_stage": False}
    if image:
        params["image"] = png_bytes()
    batches: list[int] = []
    hook = pipe.pipe.transformer.proj_in.register_forward_pre_hook(
        lambda m, args: batches.append(args[0].shape[0])
    )
    try:
        video = pipe(build_request(base, params))
    finally:
        hook.remove()
    k = batches.count(2)
    assert 1 <= k < 4 and batches == [2] * k + [1] * (4 - k), batches
    assert not pipe.pipe.transformer._forward_pre_hooks  # the interval is off again
    guided = pipes["tiny-ltxv"](build_request(base, params))
    assert not np.array_equal(video.frames, guided.frames)


def test_every_family_has_a_backend_with_load_and_build() -> None:
    """The backend table covers the registry's families; each backend loads files and builds
    from components, and the built-in model's comes from aiprod.builtin."""
    from typing import get_args

    from aiprod.core.registry import Family, ModelEntry
    from aiprod.engine.backends import BACKENDS, backend_for

    assert set(BACKENDS) == set(get_args(Family))
    for family, get in BACKENDS.items():
        backend = get()
        assert callable(backend.load) and callable(backend.build), family
    entry = ModelEntry.model_validate({"id": "b", "family": "builtin", "options": {"tiny_seed": 0}})
    assert backend_for(entry).__name__ == "aiprod.builtin.backend"


def test_builtin_drafts_reach_the_engine_as_a_ranker(tmp_path: Path) -> None:
    """The engine sees the built-in model's verifier only through the DraftRanker protocol."""
    from aiprod.builtin.backend import VerifierRanker
    from aiprod.builtin.verifier import PromptVerifier
    from aiprod.core.registry import ModelEntry
    from aiprod.engine import pipeline_from_components
    from aiprod.engine.tiny import tiny_ltxv_components

    entry = ModelEntry.model_validate(
        {"id": "b", "family": "builtin", "options": {"candidates": 3}}
    )
    comps = tiny_ltxv_components(seed=0)
    comps["verifier"] = PromptVerifier(in_channels=8, channels=16, stage=2)
    pipe = pipeline_from_components(entry, comps, "cpu")
    assert isinstance(pipe.ranker, VerifierRanker) and pipe.ranker.stage == 2
    assert pipe.candidates == 3 and pipe.mode == "classic"
    assert not hasattr(pipe, "verifier")
