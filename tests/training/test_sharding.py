"""Which parts a run shards (``training.sharding.sharded_parts``) and what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiprod.core.errors import ConfigError
from aiprod.training.config import TrainConfig
from aiprod.training.sharding import launched_with_fsdp, sharded_parts

from .conftest import tiny_config


def _cfg(tmp_path: Path, strategy: str, **phase: object) -> TrainConfig:
    raw = tiny_config(tmp_path, distributed={"strategy": strategy})
    raw["phases"][1].update(phase)
    return TrainConfig.model_validate(raw)


def test_fsdp_shards_the_denoisers_only_under_several_processes(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "fsdp")
    assert sharded_parts(cfg, launcher_fsdp=False, world=2) == ["transformer"]
    assert sharded_parts(cfg, launcher_fsdp=False, world=1) == []  # one process: nothing to shard
    assert sharded_parts(_cfg(tmp_path, "ddp"), launcher_fsdp=False, world=2) == []
    auto = _cfg(tmp_path, "auto")
    assert sharded_parts(auto, launcher_fsdp=True, world=2) == ["transformer"]
    assert sharded_parts(auto, launcher_fsdp=False, world=2) == []


def test_the_strategy_is_not_part_of_the_fingerprint(tmp_path: Path) -> None:
    # a run may resume under another strategy (the checkpoint format is the same)
    assert _cfg(tmp_path, "fsdp").fingerprint() == _cfg(tmp_path, "ddp").fingerprint()


def test_contradictions_and_unsupported_settings_are_refused_with_the_fix(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match="launch without --use_fsdp"):
        sharded_parts(_cfg(tmp_path, "ddp"), launcher_fsdp=True, world=2)
    with pytest.raises(ConfigError, match="remove ema_decay or use strategy ddp"):
        sharded_parts(_cfg(tmp_path, "fsdp", ema_decay=0.9), launcher_fsdp=False, world=2)


def test_the_launcher_flag_is_read_once_and_taken_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert launched_with_fsdp() is True
    assert launched_with_fsdp() is False  # accelerate then sets up plain DDP / MULTI_CPU
