"""The served built-in model draws exactly the frames it drew before the restructure.

The checksums in ``served_frames.json`` were recorded with the packaged model and its served
settings (models.toml: 160x160, 25 frames, two-stage, two drafts) on one CPU thread; torch's
CPU kernels sum in another order with other thread counts, so the test pins one thread. A
change that moves code without changing behaviour keeps them; a change that means to change
what the model draws re-records them and says so in its commit.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

RECORD = json.loads((Path(__file__).with_name("served_frames.json")).read_text())


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
    assert digest == clip["sha256"]
    # and the MP4 holds those frames (H.264 is lossy: close, not equal)
    with av.open(str(out)) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert decoded.shape == video.frames.shape
    assert np.abs(decoded.astype(int) - video.frames.astype(int)).mean() < 3.0
