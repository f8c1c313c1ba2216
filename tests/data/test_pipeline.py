"""probe/validate -> split -> normalize -> organize -> report on real videos."""

from __future__ import annotations

import json
from pathlib import Path

import av
import pytest

from aiprod.data.config import DataConfig, NormalizeConfig, SplitConfig, ValidateConfig, load_config
from aiprod.data.ingest import ingest
from aiprod.data.manifest import ACCEPTED, REJECTED, read_manifest
from aiprod.data.normalize import normalize
from aiprod.data.organize import organize
from aiprod.data.report import write_report
from aiprod.data.split import split
from aiprod.data.validate import reason_codes, validate

VCFG = ValidateConfig(min_duration_s=0.5)


def test_shipped_config_is_the_default() -> None:
    assert load_config(Path(__file__).parents[2] / "configs" / "data.yaml") == DataConfig()


def test_bad_config_names_the_key(tmp_path) -> None:
    from aiprod.core.errors import ConfigError

    p = tmp_path / "d.yaml"
    p.write_text("validate:\n  min_fsp: 24\n")
    with pytest.raises(ConfigError, match="validate.min_fsp"):
        load_config(p)


def test_each_video_lands_where_it_should(videos, tmp_path) -> None:
    recs = ingest([videos[k] for k in sorted(videos)], tmp_path / "ds", license="CC-BY-4.0")
    assert len(recs) == len(videos)
    out = {Path(r.path).stem: r for r in validate(recs, VCFG, workers=1)}
    expected = {
        "good": None,
        "slow": None,
        "two_scenes": None,
        "fps15": "fps_too_low",
        "p200": "resolution_too_low",
        "truncated": "truncated",
        "truncated_tail_index": "truncated",
        "not_video": "not_a_video",
        "black": "black",
        "frozen": "frozen",
    }
    for name, code in expected.items():
        rec = out[name]
        if code is None:
            assert rec.status == ACCEPTED, (name, rec.reject_reason)
            assert rec.motion_score is not None and rec.motion_score > 0.01
        else:
            assert rec.status == REJECTED, name
            assert reason_codes(rec.reject_reason) == [code], (name, rec.reject_reason)
        assert rec.license == "CC-BY-4.0"
    assert out["fps15"].fps == 15 and out["p200"].height == 200
    # The reason names the setting that rejected the clip, its value and the fix.
    assert (
        "15 fps (below validate.min_fps=24, lower `validate.min_fps`" in out["fps15"].reject_reason
    )
    assert out["p200"].reject_reason.startswith(
        "resolution_too_low: 356x200 (short side 200px) (below validate.min_short_side=256, "
        "lower `validate.min_short_side` in your data config to keep it)"
    )
    assert out["frozen"].checks["changed_fraction"] == 0.0
    assert out["slow"].checks["changed_fraction"] > 3 * VCFG.frozen_max_changed


def test_rejected_clips_are_checked_again_when_the_thresholds_change(videos, tmp_path) -> None:
    names = ("p200", "fps15", "not_video")
    recs = ingest([videos[k] for k in names], tmp_path / "ds", license="CC0-1.0")
    first = validate(recs, VCFG, workers=1)
    assert all(r.status == REJECTED for r in first)
    assert first[0].checks["thresholds"]["min_short_side"] == 256
    # The same thresholds: the rejected clips are not decoded again.
    seen: list[int] = []
    again = validate(first, VCFG, workers=1, on_progress=lambda d, t: seen.append(t))
    assert [r.reject_reason for r in again] == [r.reject_reason for r in first]
    assert not seen or seen[-1] == 0
    # Relaxed: the 356x200 clip passes now; the others stay rejected, with the new values.
    relaxed = VCFG.model_copy(update={"min_short_side": 200})
    out = {Path(r.path).stem: r for r in validate(first, relaxed, workers=1)}
    assert out["p200"].status == ACCEPTED, out["p200"].reject_reason
    assert out["fps15"].status == REJECTED and out["not_video"].status == REJECTED
    assert out["fps15"].checks["thresholds"]["min_short_side"] == 200
    # --recheck checks them again with unchanged thresholds too.
    seen.clear()
    validate(
        list(out.values()),
        relaxed,
        workers=1,
        recheck=True,
        on_progress=lambda d, t: seen.append(t),
    )
    assert seen and seen[-1] == 3


def test_split_normalize_organize_report(videos, tmp_path) -> None:
    ds = tmp_path / "ds"
    recs = ingest([videos["good"], videos["two_scenes"], videos["black"]], ds, license="CC0-1.0")
    recs = validate(recs, VCFG, workers=1)
    recs = split(recs, SplitConfig(min_clip_s=0.5, max_clip_s=10.0), workers=1)
    parents = {}
    for r in recs:
        if r.status == ACCEPTED:
            parents.setdefault(r.parent_id, []).append(r)
    by_source = {Path(v[0].path).stem: v for v in parents.values()}
    assert len(by_source["good"]) == 1
    scenes = by_source["two_scenes"]
    assert len(scenes) == 2
    assert scenes[0].start_s == 0.0 and abs(scenes[0].end_s - 1.25) < 0.05
    assert abs(scenes[1].end_s - 2.5) < 0.05

    ncfg = NormalizeConfig(short_side=128, preset="ultrafast")
    normed = normalize(recs, ncfg, ds, workers=2)
    accepted = [r for r in normed if r.status == ACCEPTED]
    assert len(accepted) == 3
    for r in accepted:
        assert Path(r.path).parent == ds / "clips"
        with av.open(r.path) as c:
            s = c.streams.video[0]
            assert s.codec_context.name == "h264" and s.codec_context.pix_fmt == "yuv420p"
            assert float(s.average_rate) == 24.0
            assert (s.codec_context.width, s.codec_context.height) == (160, 128)
            n = sum(1 for _ in c.decode(s))
        assert n == r.num_frames and abs(n - round(r.duration_s * 24)) <= 1
    # re-running is content-addressed: nothing is re-encoded
    mtimes = {r.path: Path(r.path).stat().st_mtime_ns for r in accepted}
    again = normalize(normed, ncfg, ds, workers=1)
    assert [r.path for r in again] == [r.path for r in normed]
    assert {p: Path(p).stat().st_mtime_ns for p in mtimes} == mtimes
    assert len(list((ds / "clips").glob("*.mp4"))) == 3
    assert all(r.start_s is None and r.checks["source_start_s"] is not None for r in accepted)
    # normalized rows validate as files of their own
    revalidated = validate(normed, VCFG.model_copy(update={"min_short_side": 64}), workers=1)
    assert [r.status for r in revalidated] == [r.status for r in normed]
    # other settings start again from the source, not from the normalized copy
    bigger = normalize(normed, ncfg.model_copy(update={"short_side": 192}), ds, workers=1)
    sizes = {(r.width, r.height) for r in bigger if r.status == ACCEPTED}
    assert sizes == {(240, 192)}
    second = next(r for r in bigger if r.checks.get("scene_index") == 1)
    assert abs(second.duration_s - 1.25) < 0.05

    # organize by caption rules, with a manual override
    captioned = []
    for r, cap in zip(
        accepted,
        [
            "a red circle moving left",
            "two dogs running in the rain",
            "three birds, camera panning left",
        ],
        strict=True,
    ):
        captioned.append(r.replace(caption=cap))
    rows = captioned + [r for r in normed if r.status != ACCEPTED]
    cfg = load_config(Path(__file__).parents[2] / "configs" / "data.yaml").organize
    phases = {r.caption: r.phase for r in organize(rows, cfg) if r.status == ACCEPTED}
    assert phases == {
        "a red circle moving left": 1,
        "two dogs running in the rain": 5,  # edge case + fast action + two subjects: the mix
        "three birds, camera panning left": 2,
    }
    overridden = organize(rows, cfg, overrides={captioned[0].clip_id: 3})
    first = next(r for r in overridden if r.clip_id == captioned[0].clip_id)
    assert first.phase == 3 and "phase:manual" in first.tags
    assert all(r.phase is None for r in overridden if r.status == REJECTED)

    info = write_report(organize(rows, cfg), ds)
    assert info["accepted"] == 3 and info["rejected"] == 1
    assert info["rejected_reasons"] == {"black": 1}
    assert info["per_phase"]["1"] == 1 and info["licenses"] == {"CC0-1.0": 3}
    for rel in info["contact_sheets"].values():
        assert (ds / rel).stat().st_size > 1000
    assert json.loads((ds / "report" / "summary.json").read_text())["accepted"] == 3
    # written atomically, but readable like any other file (not mkstemp's 0600)
    for name in ("manifest.parquet", "manifest.csv", "report/summary.json", "report/phase1.png"):
        assert (ds / name).stat().st_mode & 0o044 == 0o044, name
    back = read_manifest(ds)
    assert {r.clip_id for r in back} == {r.clip_id for r in rows}
