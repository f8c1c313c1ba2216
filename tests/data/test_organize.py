"""Phase rules, the mix, overrides files (no videos needed: rows carry the measurements)."""

from __future__ import annotations

import pytest

from aiprod.core.errors import ConfigError
from aiprod.data.config import DataConfig, load_config
from aiprod.data.manifest import ClipRecord
from aiprod.data.organize import organize, read_overrides, subjects


def _rec(cid: str, caption: str = "", **kw: object) -> ClipRecord:
    kw.setdefault("status", "accepted")
    return ClipRecord(clip_id=cid, path=f"/x/{cid}.mp4", caption=caption, **kw)  # type: ignore[arg-type]


def test_rules_in_order() -> None:
    cfg = DataConfig().organize
    rows = [
        _rec("a", "a cat sitting on a sofa", motion_score=0.5, checks={"p98_luma": 150.0}),
        _rec("b", "a car at night", motion_score=0.5, checks={"p98_luma": 150.0}),
        _rec("c", "a dog", motion_score=20.0, checks={"p98_luma": 150.0}),
        _rec("d", "a dog", motion_score=1.0, checks={"p98_luma": 20.0}),  # nothing lit
        _rec("e", "", tags=["subjects:3"], checks={"p98_luma": 150.0}),
        _rec("f", "three kids running", checks={"p98_luma": 150.0}),  # 2 subjects + fast: mix
        _rec("g", "x", status="rejected"),
    ]
    out = {r.clip_id: r for r in organize(rows, cfg)}
    assert {k: r.phase for k, r in out.items()} == {
        "a": 1, "b": 4, "c": 3, "d": 4, "e": 2, "f": 5, "g": None,
    }  # fmt: skip
    assert out["f"].checks["phase_reason"] == "mix of phases [2, 3]"


def test_existing_phase_is_kept_unless_reassigned() -> None:
    cfg = DataConfig().organize
    row = _rec("s", "a red circle moving left", phase=5, tags=["synth"])
    assert organize([row], cfg)[0].phase == 5
    assert organize([row], cfg, reassign=True)[0].phase == 1


def test_subject_count_from_tags_and_caption() -> None:
    assert subjects(_rec("a", "two red circles")) == 2
    assert subjects(_rec("a", "a crowd of 12 people")) == 12
    assert subjects(_rec("a", "a dog")) == 1
    assert subjects(_rec("a", "", tags=["subjects:3"])) == 3
    assert subjects(_rec("a", "sunset over water")) is None


def test_overrides_file(tmp_path) -> None:
    f = tmp_path / "fix.csv"
    f.write_text("clip_id,phase\na,4\n")
    cfg_file = tmp_path / "data.yaml"
    cfg_file.write_text("organize:\n  overrides_file: fix.csv\n")
    cfg = load_config(cfg_file).organize
    assert cfg.overrides_file == f
    out = organize([_rec("a", "a cat"), _rec("b", "a cat")], cfg)
    assert [r.phase for r in out] == [4, 1] and "phase:manual" in out[0].tags
    bad = tmp_path / "bad.csv"
    bad.write_text("clip_id,phase\na,7\n")
    with pytest.raises(ConfigError, match=r"bad.csv:2: phase must be 1..5"):
        read_overrides(bad)
    with pytest.raises(ConfigError, match="clip_id,phase"):
        read_overrides(cfg_file)
