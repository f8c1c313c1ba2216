"""The served built-in model draws exactly the frames it drew before the restructure.

The checksums in ``served_frames.json`` were recorded with the packaged model and its served
settings (models.toml: 160x160, 25 frames, two-stage, two drafts) on one CPU thread; torch's
CPU kernels sum in another order with other thread counts, so the test pins one thread. A
change that moves code without changing behaviour keeps them; a change that means to change
what the model draws re-records them and says so in its commit.

The kernels also differ between CPUs: the same code drew other bytes on an AMD EPYC than on
the Intel machine it was recorded on, and other bytes again on a later Intel Xeon (family 6,
model 207) with the same vendor and instruction set, while the chosen draft and the verifier's
scores stayed equal. So a digest is kept per CPU model (``cpu_key``); on a CPU with none,
the frames must match the recorded 8x8 block means to within 1.2 levels (forcing torch's AVX2
kernels instead of AVX-512 moves pixels by at most one level), which any change to what
the model draws breaks by far.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

RECORD = json.loads((Path(__file__).with_name("served_frames.json")).read_text())
BLOCK = 8  # pixels per side of a block mean
BLOCKS = np.load(Path(__file__).with_name("served_frames_blocks.npz"))  # per seed (float16)


def cpu_key() -> str:
    """The CPU's vendor, family/model and the instruction set torch's kernels use, e.g.
    'GenuineIntel 6/207 AVX512'."""
    import torch

    info = {"vendor_id": "unknown", "cpu family": "?", "model": "?"}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() in info and info[name.strip()] in ("unknown", "?"):
                info[name.strip()] = value.strip()
            if not line.strip():  # the first processor's block is enough
                break
    except OSError:
        pass
    return (
        f"{info['vendor_id']} {info['cpu family']}/{info['model']} "
        f"{torch.backends.cpu.get_cpu_capability()}"
    )


def block_means(frames: np.ndarray) -> np.ndarray:
    """(frames, H/BLOCK, W/BLOCK, channels) means of BLOCK x BLOCK pixel blocks."""
    f, h, w, c = frames.shape
    blocks = frames.reshape(f, h // BLOCK, BLOCK, w // BLOCK, BLOCK, c).astype(np.float64)
    return blocks.mean(axis=(2, 4))


@pytest.fixture(scope="module")
def served():  # noqa: ANN201
    torch = pytest.importorskip("torch")
    from aiprod import engine
    from aiprod.core.registry import load_registry

    threads = torch.get_num_threads()
    torch.set_num_threads(RECORD["threads"])
    try:
        entry = load_registry().default_entry
        yield entry, engine.load_pipeline(entry, "cpu")
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("clip", RECORD["clips"], ids=lambda c: str(c["seed"]))
def test_served_frames_are_unchanged(served, clip: dict, tmp_path: Path) -> None:  # noqa: ANN001
    import av

    from aiprod import engine

    entry, pipe = served
    request = engine.build_request(entry, {"prompt": clip["prompt"], "seed": clip["seed"]})
    out = tmp_path / "clip.mp4"
    video = engine.generate_to_file(entry, request, out, pipeline=pipe)
    assert video.info["chosen_candidate"] == clip["chosen_candidate"]
    assert video.info["verifier_scores"] == clip["verifier_scores"]
    digest = hashlib.sha256(np.ascontiguousarray(video.frames).tobytes()).hexdigest()
    recorded = clip["sha256"].get(cpu_key())
    if recorded is not None:
        assert digest == recorded
    else:  # a CPU without a digest: the frames, to within the kernels' rounding
        diff = np.abs(block_means(video.frames) - BLOCKS[str(clip["seed"])].astype(np.float64))
        assert diff.max() <= 1.2, (cpu_key(), float(diff.max()))  # float16: 0.125 at 255
    # and the MP4 holds those frames (H.264 is lossy: close, not equal)
    with av.open(str(out)) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert decoded.shape == video.frames.shape
    assert np.abs(decoded.astype(int) - video.frames.astype(int)).mean() < 3.0
