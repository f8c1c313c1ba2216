"""The GPU stats (NVML) a worker reads and stores with its heartbeat, for /metrics and /readyz.

A worker calls ``report_gpu_stats`` inside its heartbeat's transaction; the API reads them back
with ``load_gpu_stats``. Stored in ``service_state`` under ``gpu:<worker id>``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from aiprod.db.repositories import StateRepository

log = logging.getLogger(__name__)

GPU_STATE_PREFIX = "gpu:"


@dataclass(frozen=True)
class GpuStat:
    """One GPU as NVML reports it."""

    index: int
    name: str
    memory_used_bytes: int
    memory_total_bytes: int
    utilization_percent: float
    temperature_celsius: float

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GpuStat:
        return cls(
            index=int(data["index"]),
            name=str(data["name"]),
            memory_used_bytes=int(data["memory_used_bytes"]),
            memory_total_bytes=int(data["memory_total_bytes"]),
            utilization_percent=float(data["utilization_percent"]),
            temperature_celsius=float(data["temperature_celsius"]),
        )


def read_gpu_stats(indices: Sequence[int] | None = None) -> list[GpuStat]:
    """The visible NVIDIA GPUs' memory, utilization and temperature via NVML.

    Returns ``[]`` when there is no NVIDIA driver/GPU or ``nvidia-ml-py`` is not installed:
    the series are then absent, never invented.
    """
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    stats: list[GpuStat] = []
    try:
        count = pynvml.nvmlDeviceGetCount()
        for i in indices if indices is not None else range(count):
            if i >= count:
                continue
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            util = pynvml.nvmlDeviceGetUtilizationRates(handle)
            temp = pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
            stats.append(
                GpuStat(
                    index=i,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    memory_used_bytes=int(mem.used),
                    memory_total_bytes=int(mem.total),
                    utilization_percent=float(util.gpu),
                    temperature_celsius=float(temp),
                )
            )
    except pynvml.NVMLError as exc:
        log.warning("reading GPU stats through NVML failed: %s", exc)
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
    return stats


def publish_gpu_stats(session: Session, worker_id: str, stats: Sequence[GpuStat]) -> None:
    """Store a worker's GPU stats (call with its heartbeat; the caller commits)."""
    StateRepository(session).put_worker_value(
        GPU_STATE_PREFIX, worker_id, {"gpus": [asdict(s) for s in stats]}
    )


_NVML_MISSING = False


def visible_gpu_indices() -> list[int] | None:
    """NVML indices of the GPUs this process may use (CUDA_VISIBLE_DEVICES), None for all."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None or not env.strip():
        return None
    parts = [p.strip() for p in env.split(",")]
    if not all(p.isdigit() for p in parts):
        return None  # UUIDs / MIG names: report every GPU rather than guess
    return [int(p) for p in parts]


def report_gpu_stats(session: Session, worker_id: str) -> list[GpuStat]:
    """Read this worker's GPUs and store them (call inside the heartbeat's transaction).

    Without an NVIDIA GPU nothing is written (and NVML is not probed again).
    """
    global _NVML_MISSING
    if _NVML_MISSING:
        return []
    stats = read_gpu_stats(visible_gpu_indices())
    if not stats:
        _NVML_MISSING = True
        return []
    publish_gpu_stats(session, worker_id, stats)
    return stats


def load_gpu_stats(session: Session, *, since: datetime) -> dict[str, list[GpuStat]]:
    """GPU stats published since ``since``, by worker id."""
    out: dict[str, list[GpuStat]] = {}
    for key, data in StateRepository(session).worker_values(GPU_STATE_PREFIX, since=since):
        try:
            out[str(data["worker"])] = [GpuStat.from_dict(g) for g in data["gpus"]]
        except (KeyError, TypeError):
            log.warning("ignoring malformed GPU stats in service_state[%s]", key)
    return out
