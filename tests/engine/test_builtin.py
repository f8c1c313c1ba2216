"""The built-in model: loads with no files, deterministic, progress/cancel, MP4 out."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from aiprod.core.errors import GenerationCanceled, InvalidRequest
from aiprod.core.media import probe, read_video
from aiprod.engine import build_request, generate_to_file
from aiprod.engine.types import GenerationRequest

from .conftest import png_bytes, tiny_builtin

SMALL = {"width": 32, "height": 32, "num_frames": 9, "num_inference_steps": 2, "two_stage": False}


def _req(entry, **kw) -> GenerationRequest:  # noqa: ANN001
    params = {"prompt": "a red ball bouncing", "seed": 7, **SMALL, **kw}
    return build_request(entry, params)


def test_engine_types_import_without_torch() -> None:
    code = (
        "import sys, aiprod.engine, aiprod.engine.types, aiprod.engine.checks,"
        " aiprod.engine.drafts, aiprod.core.model_files, aiprod.core.media;"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_small_job_shape_progress_and_speed(builtin_entry, builtin_pipe) -> None:  # noqa: ANN001
    progress: list[float] = []
    builtin_pipe(_req(builtin_entry))  # warm-up
    t0 = time.perf_counter()
    video = builtin_pipe(_req(builtin_entry), on_progress=progress.append)
    elapsed = time.perf_counter() - t0
    assert video.frames.shape == (9, 32, 32, 3) and video.frames.dtype == np.uint8
    assert video.fps == 24
    assert progress == sorted(progress) and len(progress) == 2 and progress[-1] == 1.0
    assert video.info["steps"] == 2
    # The service's tests run hundreds of these; ~0.05 s measured, generous bound for CI load.
    assert elapsed < 1.5


def test_same_seed_same_frames_other_seed_differs(builtin_entry, builtin_pipe) -> None:  # noqa: ANN001
    a = builtin_pipe(_req(builtin_entry, seed=3)).frames
    b = builtin_pipe(_req(builtin_entry, seed=3)).frames
    c = builtin_pipe(_req(builtin_entry, seed=4)).frames
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_two_stage_weighted_progress(builtin_entry, builtin_pipe) -> None:  # noqa: ANN001
    progress: list[float] = []
    video = builtin_pipe(
        _req(builtin_entry, two_stage=True, width=64, height=32), on_progress=progress.append
    )
    assert video.frames.shape == (9, 32, 64, 3)
    refine = builtin_entry.options.refine_steps
    assert len(progress) == 2 + refine and progress[-1] == pytest.approx(1.0)
    # Full-size refinement steps cost more than half-size stage-1 steps.
    assert progress[-1] - progress[-2] > progress[0]
    assert {"stage1_s", "upsample_s", "stage2_s", "decode_s"} <= set(video.info)
    again = builtin_pipe(_req(builtin_entry, two_stage=True, width=64, height=32))
    assert np.array_equal(video.frames, again.frames)


def test_cancel_stops_within_one_step(builtin_entry, builtin_pipe) -> None:  # noqa: ANN001
    progress: list[float] = []

    def should_cancel() -> bool:
        return len(progress) >= 2  # cancel is requested once step 2 has finished

    with pytest.raises(GenerationCanceled):
        builtin_pipe(
            _req(builtin_entry, num_inference_steps=6),
            on_progress=progress.append,
            should_cancel=should_cancel,
        )
    assert len(progress) == 2


def test_cancel_before_start_runs_no_step(builtin_entry, builtin_pipe) -> None:  # noqa: ANN001
    progress: list[float] = []
    with pytest.raises(GenerationCanceled):
        builtin_pipe(_req(builtin_entry), on_progress=progress.append, should_cancel=lambda: True)
    assert progress == []


@pytest.mark.parametrize("two_stage", [False, True])
def test_image_to_video(builtin_entry, builtin_pipe, two_stage: bool) -> None:  # noqa: ANN001
    video = builtin_pipe(_req(builtin_entry, image=png_bytes(), two_stage=two_stage))
    assert video.frames.shape == (9, 32, 32, 3)
    plain = builtin_pipe(_req(builtin_entry, two_stage=two_stage))
    assert not np.array_equal(video.frames, plain.frames)


def test_builtin_uses_the_trainers_sampler(builtin_pipe) -> None:  # noqa: ANN001
    # LTXPipeline coordinates/schedule (what aiprod's trainer samples with), and a refinement
    # scheduler that runs the pipeline's [1 .. 1/n] schedule as [strength .. strength/n].
    assert builtin_pipe.mode == "classic"
    sched = builtin_pipe.refine_scheduler
    sched.set_timesteps(3, sigmas=[1.0, 2 / 3, 1 / 3])
    strength = builtin_pipe.entry.options.refine_strength
    expected = [strength, strength * 2 / 3, strength / 3, 0.0]
    assert sched.sigmas.tolist() == pytest.approx(expected)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"width": 33}, "width"),
        ({"num_frames": 10}, "num_frames"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"image": b"definitely not a png"}, "image"),
    ],
)
def test_bad_requests_fail_before_tensor_work(
    builtin_entry,  # noqa: ANN001
    builtin_pipe,  # noqa: ANN001
    change: dict,
    field: str,
) -> None:
    good = _req(builtin_entry)
    bad = GenerationRequest(**{**good.__dict__, **change})
    with pytest.raises(InvalidRequest) as err:
        builtin_pipe(bad, should_cancel=lambda: pytest.fail("reached the denoising loop"))
    assert err.value.field == field


def test_generate_to_file_writes_decodable_mp4(
    builtin_entry,  # noqa: ANN001
    builtin_pipe,  # noqa: ANN001
    tmp_path: Path,
) -> None:
    out = tmp_path / "v.mp4"
    req = _req(builtin_entry, width=64, height=32, num_frames=17, fps=12)
    video = generate_to_file(builtin_entry, req, out, pipeline=builtin_pipe)
    info = probe(out)
    assert (info.width, info.height, info.num_frames, info.fps) == (64, 32, 17, 12)
    frames, fps = read_video(out)
    assert frames.shape == video.frames.shape and fps == 12


def test_builtin_loads_the_same_model_from_a_folder(
    builtin_entry,  # noqa: ANN001
    builtin_pipe,  # noqa: ANN001
    tmp_path: Path,
) -> None:
    from aiprod.engine import load_pipeline
    from aiprod.engine.tiny import save_components, tiny_ltxv_components

    # builtin_pipe is the tiny random model of options.tiny_seed = 0
    folder = save_components(tiny_ltxv_components(seed=0), tmp_path / "builtin")
    pipe = load_pipeline(builtin_entry.model_copy(update={"path": folder}), "cpu")
    req = _req(builtin_entry)  # one stage (SMALL): refinement settings play no part
    assert np.array_equal(pipe(req).frames, builtin_pipe(req).frames)


def test_out_of_memory_fails_the_job_and_the_next_job_runs(builtin_entry, builtin_pipe) -> None:  # noqa: ANN001
    import torch

    from aiprod.core.errors import GenerationFailed

    def oom_in_the_loop(_: float) -> None:  # raised where a real CUDA OOM surfaces: mid-loop
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(GenerationFailed, match="out of memory while generating 32x32x9") as err:
        builtin_pipe(_req(builtin_entry), on_progress=oom_in_the_loop)
    assert "vae_tiling" in err.value.message
    assert builtin_pipe(_req(builtin_entry)).frames.shape == (9, 32, 32, 3)


@pytest.mark.parametrize(
    ("two_stage", "shift", "refiner", "size", "min_sigma"),
    [
        (False, 1.0, False, 64, 0.0),
        (True, 1.0, False, 64, 0.0),
        (False, 2.5, False, 64, 0.0),
        (True, 1.0, True, 96, 0.0),
        (True, 2.5, True, 64, 0.7),  # noise levels 1, 0.83, 0.56: the last step unguided
    ],
)
def test_engine_matches_the_trainers_sampler(
    builtin_entry,  # noqa: ANN001
    tmp_path_factory: pytest.TempPathFactory,
    two_stage: bool,
    shift: float,
    refiner: bool,
    size: int,
    min_sigma: float,
) -> None:
    """A model saved by aiprod's trainer generates, through the engine, exactly the frames the
    trainer's own sampler (used for its evals) produces: same coordinates, schedule (with the
    model's scheduler shift), CFG (only at the noise levels ``options.guidance_min_sigma``
    leaves guided), and the refiner (refiner/) for stage 2 when it has one.
    At 96x96 two-stage, stage 1 runs at 48x48 (6x6 latents: the autoencoder's 8-px grid, not
    diffusers' multiple of 32), as the trainer's sampler and ``aiprod eval`` do."""
    import torch

    sample = pytest.importorskip("aiprod.builtin.sample")
    components = pytest.importorskip("aiprod.training.components")
    config = pytest.importorskip("aiprod.training.config")
    from aiprod.engine import load_pipeline

    folder = tmp_path_factory.mktemp("trained") / "m"
    words = {"a", "red", "ball", "bouncing"}
    comp = components.build_builtin(config.BuiltinArch(), vocab=words, seed=0)
    comp.scheduler_config["shift"] = shift
    if refiner:  # another denoiser: a perturbed copy of the stage-1 transformer
        torch.manual_seed(3)
        with torch.no_grad():
            for p in comp.ensure_refiner().parameters():
                p.add_(0.05 * torch.randn_like(p))
    components.save_folder(comp, folder)
    entry = builtin_entry.model_copy(
        update={
            "path": folder,
            "options": builtin_entry.options.model_copy(
                update={"refine_steps": 2, "guidance_min_sigma": min_sigma}
            ),
        }
    )
    pipe = load_pipeline(entry, "cpu")
    loaded = components.load_folder(folder)
    kw = {
        "width": size,
        "height": size,
        "num_frames": 9,
        "fps": 24.0,
        "steps": 3,
        "guidance": 3.0,
        "seed": 5,
        "two_stage": two_stage,
        "refine_steps": 2,
        "refine_sigma": builtin_entry.options.refine_strength,
        "refine_guidance": builtin_entry.options.refine_guidance_scale,
        "guidance_min_sigma": min_sigma,
    }
    ref = sample.generate(loaded, ["a red ball bouncing"], **kw)[0]  # (3, F, H, W) in [-1, 1]
    if shift != 1.0:  # the shift must matter for this to test anything
        unshifted = sample.generate(loaded, ["a red ball bouncing"], shift=1.0, **kw)[0]
        assert (unshifted - ref).abs().max() > 0.05
    if refiner:  # ... and so must the refiner
        assert loaded.refiner is not None
        no_refiner = components.Components(**{**loaded.__dict__, "refiner": None})
        other = sample.generate(no_refiner, ["a red ball bouncing"], **kw)[0]
        assert (other - ref).abs().max() > 0.05
    if min_sigma:  # ... and so must the unguided steps
        guided = sample.generate(loaded, ["a red ball bouncing"], **{**kw, "guidance_min_sigma": 0})
        assert (guided[0] - ref).abs().max() > 0.05
    ref = ((ref.permute(1, 2, 3, 0) + 1) / 2 * 255).round().clamp(0, 255).to(torch.uint8)
    req = build_request(
        entry,
        {
            "prompt": "a red ball bouncing",
            "width": size,
            "height": size,
            "num_frames": 9,
            "num_inference_steps": 3,
            "guidance_scale": 3.0,
            "seed": 5,
            "two_stage": two_stage,
        },
    )
    video = pipe(req)
    if two_stage:
        assert video.info["stages"] == [(size // 2, size // 2, 3), (size, size, 2)]
    diff = np.abs(video.frames.astype(int) - ref.numpy().astype(int))
    assert pipe.pipe.transformer is not pipe.refiner  # stage 1's transformer is back
    assert not pipe.pipe.transformer._forward_pre_hooks  # and the guidance interval is off
    # Equal up to the last rounding step (diffusers scales by x/2+0.5, the trainer by (x+1)/2).
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())


def test_model_geometry_is_checked_even_when_the_entry_allows_more(builtin_entry) -> None:  # noqa: ANN001
    # An entry whose limits are looser than the model (16-pixel sizes, any frame count)
    # still gets a clear 422-style error, not a diffusers ValueError mid-job.
    from aiprod.engine import load_pipeline

    loose = tiny_builtin(builtin_entry).model_copy(
        update={
            "limits": builtin_entry.limits.model_copy(
                update={"size_multiple": 16, "frames_multiple": 1}
            ),
        }
    )
    pipe = load_pipeline(loose, "cpu")
    for change, field, hint in [
        ({"width": 48}, "width", "multiple of 32"),
        ({"num_frames": 12}, "num_frames", r"8\*k\+1"),
    ]:
        req = build_request(loose, {"prompt": "x", "seed": 1, **SMALL, **change})
        with pytest.raises(InvalidRequest, match=hint) as err:
            pipe(req, should_cancel=lambda: pytest.fail("reached the denoising loop"))
        assert err.value.field == field
