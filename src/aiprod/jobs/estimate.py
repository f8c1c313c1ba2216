"""Predicted GPU-seconds and cost of a request: measured by workers, or a heuristic."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from aiprod.core.registry import ModelEntry
from aiprod.db.repositories import TimingRepository
from aiprod.jobs.schema import JobParams, Validated

# Used by /estimate-cost only until a worker has measured this model: seconds = 1 + rate * work.
HEURISTIC_SECONDS_PER_UNIT = 2e-8


def estimate_seconds(session: Session, entry: ModelEntry, params: JobParams) -> tuple[float, str]:
    """(predicted seconds, basis): basis is 'measured' when workers have timed this model."""
    shape = params.shape()
    measured = TimingRepository(session).estimate(
        model=entry.id, model_version=entry.version, **shape
    )
    if measured is not None:
        return measured, "measured"
    work = shape["width"] * shape["height"] * shape["num_frames"] * shape["steps"]
    return 1.0 + HEURISTIC_SECONDS_PER_UNIT * work, "heuristic"


def estimate(session: Session, v: Validated, *, seed_given: bool) -> dict[str, Any]:
    """The body of /estimate-cost; ``params.seed`` only if the client gave one (otherwise it
    would be a random number the job would not use)."""
    seconds, basis = estimate_seconds(session, v.entry, v.params)
    params = v.params.as_dict()
    if not seed_given:
        del params["seed"]
    return {
        "model": v.entry.id,
        "model_version": v.entry.version,
        "params": params,
        "estimated_gpu_seconds": round(seconds, 4),
        "price_per_gpu_second": v.entry.price_per_gpu_second,
        "estimated_cost_usd": round(seconds * v.entry.price_per_gpu_second, 6),
        "basis": basis,
    }
