"""Synthetic curriculum clips: captions round-trip, pixels match the parameters, MP4s decode."""

from __future__ import annotations

import av
import numpy as np
import pytest

from aiprod.builtin import grammar, render, synth
from aiprod.data.manifest import read_manifest


def test_caption_round_trips_for_every_phase() -> None:
    rng = np.random.default_rng(0)
    seen_phases = set()
    for phase in grammar.PHASES:
        for _ in range(40):
            p = grammar.sample_params(phase, rng)
            assert p.phase == phase
            seen_phases.add(p.phase)
            assert grammar.parse_caption(grammar.caption(p)) == grammar.facts(p)
    assert seen_phases == set(grammar.PHASES)


def test_phase_rules() -> None:
    rng = np.random.default_rng(1)
    for _ in range(30):
        p1 = grammar.sample_params(1, rng)
        assert p1.count == 1 and p1.camera_pan == "none" and not p1.edge_cases
        p2 = grammar.sample_params(2, rng)
        assert p2.count in (2, 3) and p2.camera_pan != "none" and p2.speed != "fast"
        p3 = grammar.sample_params(3, rng)
        assert p3.count in (2, 3) and p3.speed == "fast"
        p4 = grammar.sample_params(4, rng)
        assert 1 <= len(p4.edge_cases) <= 2


def test_parse_free_prompt() -> None:
    f = grammar.parse_caption("Two red circles moving left on a black background")
    assert (f.color, f.shape, f.count, f.direction, f.background) == (
        "red",
        "circle",
        2,
        "left",
        "black",
    )
    g = grammar.parse_caption("a blue square")
    assert (g.color, g.shape, g.count, g.direction) == ("blue", "square", 1, None)


def test_bad_params_are_rejected_with_the_fix() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        grammar.SynthParams(phase=1, shape="hexagon", color="red", count=1, direction="left")
    with pytest.raises(ValueError, match="out of frame"):
        grammar.SynthParams(
            phase=2, shape="circle", color="red", count=2, direction="left", camera_pan="right"
        )
    with pytest.raises(ValueError, match="phase"):
        grammar.sample_params(6, 0)


def _centroid(frame: np.ndarray, rgb: tuple[int, int, int]) -> tuple[float, float]:
    dist = np.abs(frame.astype(int) - np.array(rgb)).sum(-1)
    ys, xs = np.nonzero(dist < 60)
    assert len(xs) > 5, "subject color not found in frame"
    return float(xs.mean()), float(ys.mean())


@pytest.mark.parametrize("direction", grammar.DIRECTIONS)
def test_render_shows_the_caption(direction: str) -> None:
    p = grammar.SynthParams(
        phase=1, shape="circle", color="red", count=1, direction=direction, speed="fast"
    )
    frames = render.render(p, width=48, height=40, num_frames=9, fps=24, seed=3)
    assert frames.shape == (9, 40, 48, 3) and frames.dtype == np.uint8
    x0, y0 = _centroid(frames[0], grammar.COLORS["red"])
    x1, y1 = _centroid(frames[-1], grammar.COLORS["red"])
    dx, dy = x1 - x0, y1 - y0
    ux, uy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[direction]
    along = dx * ux + dy * uy
    assert along > 0.4 * 0.6 * (48 if ux else 40), (dx, dy)
    # deterministic per seed, different across seeds
    assert np.array_equal(frames, render.render(p, width=48, height=40, num_frames=9, seed=3))
    assert not np.array_equal(frames, render.render(p, width=48, height=40, num_frames=9, seed=4))


def test_count_of_subjects_is_visible() -> None:
    import cv2

    p = grammar.SynthParams(
        phase=2, shape="square", color="yellow", count=3, direction="right", camera_pan="up"
    )
    frame = render.render(p, width=64, height=64, num_frames=3, seed=0)[1]
    mask = (np.abs(frame.astype(int) - np.array(grammar.COLORS["yellow"])).sum(-1) < 60).astype(
        np.uint8
    )
    n, _ = cv2.connectedComponents(mask)
    assert n - 1 == 3


def test_write_synth_dataset_decodes_and_resumes(tmp_path) -> None:
    out = tmp_path / "ds"
    manifest = synth.write_synth_dataset(
        out, n_per_phase=1, width=32, height=32, num_frames=6, fps=24, seed=7
    )
    rows = read_manifest(manifest)
    assert [r.phase for r in rows] == [1, 2, 3, 4, 5]
    for r in rows:
        assert grammar.parse_caption(r.caption) == grammar.facts(
            grammar.SynthParams.from_dict(r.params)
        )
        assert r.license == "CC0-1.0" and r.status == "accepted" and len(r.sha256) == 64
        with av.open(r.path) as c:
            s = c.streams.video[0]
            assert s.codec_context.name == "h264" and s.codec_context.pix_fmt == "yuv420p"
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert len(frames) == 6 and frames[0].shape == (32, 32, 3)
    assert (out / "manifest.csv").exists()
    mtimes = {r.path: (out / r.path).stat().st_mtime_ns for r in rows}
    again = read_manifest(
        synth.write_synth_dataset(
            out, n_per_phase=1, width=32, height=32, num_frames=6, fps=24, seed=7
        )
    )
    assert [r.sha256 for r in again] == [r.sha256 for r in rows]
    assert {r.path: (out / r.path).stat().st_mtime_ns for r in again} == mtimes


def test_phase5_mix_weighs_the_phases() -> None:
    # the default draw is unchanged by the option (the clips of earlier runs stay the same)
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    assert [grammar.sample_params(5, a) for _ in range(20)] == [
        grammar.sample_params(5, b, mix=None) for _ in range(20)
    ]
    rng = np.random.default_rng(4)
    counts = [grammar.sample_params(5, rng, mix={2: 1, 3: 1}).count for _ in range(200)]
    assert set(counts) == {2, 3}  # phases left out of the mix are never drawn
    rng = np.random.default_rng(5)
    drawn = [grammar.sample_params(5, rng, mix={1: 3, 2: 1}).count for _ in range(400)]
    assert 0.68 < drawn.count(1) / len(drawn) < 0.82  # 3:1 -> 75 % phase 1
    with pytest.raises(ValueError, match="only phase 5"):
        grammar.sample_params(2, rng, mix={2: 1})
    for bad in ({5: 1}, {1: -1, 2: 1}, {1: 0}):
        with pytest.raises(ValueError, match="weights >= 0 for phases 1-4"):
            grammar.sample_params(5, rng, mix=bad)


def _fewest_subjects_seen(p: grammar.SynthParams, seed: int, min_gap: float) -> int:
    """The fewest separate subjects (4-connected colour blobs) in any frame of a clip."""
    import cv2

    video = render.render(p, width=64, height=64, num_frames=25, seed=seed, min_gap=min_gap)
    fewest = p.count
    for frame in video:
        mask = np.abs(frame.astype(int) - np.array(grammar.COLORS[p.color])).sum(-1) < 200
        n, _ = cv2.connectedComponents(mask.astype(np.uint8), connectivity=4)
        fewest = min(fewest, n - 1)
    return fewest


def test_min_gap_keeps_subjects_apart_for_the_whole_clip() -> None:
    p = grammar.SynthParams(
        phase=2, shape="square", color="red", count=3, direction="right", size=0.11, camera_pan="up"
    )
    seeds = range(40)
    # the default layout lets two of three subjects touch in some clips (a pan across the
    # motion squeezes the lanes to keep them on screen) ...
    assert min(_fewest_subjects_seen(p, s, 0.0) for s in seeds) < 3
    # ... min_gap keeps all three visible as three in every frame of every clip
    assert all(_fewest_subjects_seen(p, s, 0.1) == 3 for s in seeds)
    # min_gap=0 is the default layout, pixel for pixel (earlier runs' clips are unchanged)
    np.testing.assert_array_equal(
        render.render(p, num_frames=4, seed=7, min_gap=0.0), render.render(p, num_frames=4, seed=7)
    )
    with pytest.raises(ValueError, match=r"min_gap=0.5: .*in \[0, 0.25\]"):
        render.render(p, num_frames=4, min_gap=0.5)


def test_synth_dataset_with_min_gap(tmp_path) -> None:
    from typer.testing import CliRunner

    from aiprod.cli.main import app

    kw = {"n_per_phase": 3, "width": 32, "height": 32, "num_frames": 6, "phases": (2,)}
    plain = read_manifest(synth.write_synth_dataset(tmp_path / "a", **kw))
    spaced = read_manifest(synth.write_synth_dataset(tmp_path / "b", **kw, min_gap=0.1))
    # the same clips, keyed apart (a dataset's content address covers the spacing) ...
    assert [r.caption for r in spaced] == [r.caption for r in plain]
    assert all(
        r.params["min_gap"] == 0.1 and "min_gap" not in p.params
        for r, p in zip(spaced, plain, strict=True)
    )
    assert not {r.params["content_key"] for r in spaced} & {r.params["content_key"] for r in plain}
    # ... and the CLI passes it through, refusing a gap out of range with the fix
    res = CliRunner().invoke(
        app, ["data", "synth", str(tmp_path / "c"), "-n", "1", "-p", "2", "--min-gap", "0.1"]
    )
    assert res.exit_code == 0, res.output
    assert read_manifest(tmp_path / "c" / "manifest.parquet")[0].params["min_gap"] == 0.1
    res = CliRunner().invoke(app, ["data", "synth", str(tmp_path / "d"), "--min-gap", "0.5"])
    assert res.exit_code != 0 and "min_gap=0.5" in res.output and "Traceback" not in res.output
