"""What jobs cost: the daily cost log and the measured generation timings (for estimates)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aiprod.db.models import CostLog, ModelTiming, utcnow


def _upsert(
    session: Session, table: Any, values: dict[str, Any], keys: list[str], incr: dict[str, Any]
) -> None:
    dialect = session.get_bind().dialect.name
    ins = (postgresql if dialect == "postgresql" else sqlite).insert(table).values(**values)
    set_ = {k: getattr(table.c, k) + v for k, v in incr.items()}
    session.execute(ins.on_conflict_do_update(index_elements=keys, set_=set_))


class CostRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def record(
        self,
        *,
        day: date,
        gpu_seconds: float,
        gpu_cost_usd: float,
        revenue_usd: float,
        succeeded: bool,
        failed: bool,
    ) -> None:
        values = {
            "day": day,
            "total_cost_usd": gpu_cost_usd,
            "videos_generated": int(succeeded),
            "jobs_failed": int(failed),
            "gpu_seconds": gpu_seconds,
            "revenue_usd": revenue_usd,
            "margin_usd": revenue_usd - gpu_cost_usd,
        }
        _upsert(
            self.s,
            CostLog.__table__,
            values,
            ["day"],
            {k: v for k, v in values.items() if k != "day"},
        )

    def days(self, since: date, until: date) -> Sequence[CostLog]:
        q = select(CostLog).where(CostLog.day >= since, CostLog.day <= until).order_by(CostLog.day)
        return self.s.execute(q).scalars().all()


# --------------------------------------------------------------------------- timings

EMA = 0.3  # weight of a new measurement


def _work(width: int, height: int, num_frames: int, steps: int, two_stage: bool) -> float:
    # A two-stage run does its steps at half resolution and a few refinement steps at full.
    scale = 0.25 + 0.25 if two_stage else 1.0
    return width * height * num_frames * steps * scale


class TimingRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def record(
        self,
        *,
        model: str,
        model_version: str,
        width: int,
        height: int,
        num_frames: int,
        steps: int,
        two_stage: bool,
        seconds: float,
    ) -> None:
        shape = dict(
            model=model,
            model_version=model_version,
            width=width,
            height=height,
            num_frames=num_frames,
            steps=steps,
            two_stage=two_stage,
        )
        q = select(ModelTiming).filter_by(**shape).with_for_update()
        row = self.s.execute(q).scalar_one_or_none()
        if row is not None:
            row.seconds = (1 - EMA) * row.seconds + EMA * seconds
            row.samples += 1
            row.updated_at = utcnow()
            return
        try:
            with self.s.begin_nested():
                self.s.add(ModelTiming(**shape, seconds=seconds, samples=1, updated_at=utcnow()))
        except IntegrityError:  # another worker inserted the same shape first; fine
            pass

    def estimate(
        self,
        *,
        model: str,
        model_version: str,
        width: int,
        height: int,
        num_frames: int,
        steps: int,
        two_stage: bool,
    ) -> float | None:
        """Predicted seconds from measurements of this model version, or None if none exist.

        An exact shape match uses its average; otherwise a least-squares fit of
        ``seconds = overhead + rate * work`` over the measured shapes.
        """
        rows = list(
            self.s.execute(
                select(ModelTiming).where(
                    ModelTiming.model == model, ModelTiming.model_version == model_version
                )
            ).scalars()
        )
        if not rows:
            return None
        target = _work(width, height, num_frames, steps, two_stage)
        for r in rows:
            if (r.width, r.height, r.num_frames, r.steps, r.two_stage) == (
                width,
                height,
                num_frames,
                steps,
                two_stage,
            ):
                return r.seconds
        pts = [
            (_work(r.width, r.height, r.num_frames, r.steps, r.two_stage), r.seconds) for r in rows
        ]
        xs = {x for x, _ in pts}
        if len(xs) == 1:
            x0, y0 = pts[0]
            return y0 * target / x0 if x0 else y0
        n = len(pts)
        mx = sum(x for x, _ in pts) / n
        my = sum(y for _, y in pts) / n
        var = sum((x - mx) ** 2 for x, _ in pts)
        rate = max(0.0, sum((x - mx) * (y - my) for x, y in pts) / var)
        overhead = max(0.0, my - rate * mx)
        return overhead + rate * target

    def average_seconds(self) -> float | None:
        v = self.s.execute(select(func.avg(ModelTiming.seconds))).scalar_one()
        return float(v) if v is not None else None
