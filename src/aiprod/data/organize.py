"""Assign curriculum phases 1-5 by the rules in ``configs/data.yaml``, plus manual overrides.

A rule's condition looks at the clip's tags (``subjects:N``, ``camera:pan``, ``speed:fast``,
``edge:lighting`` ... as synth writes them, or any given at ingest), keywords in its caption,
its motion score and brightness (from ``validate``), and the subject count a
caption states ("two dogs" -> 2). Rules are tried in order and the first match wins; a clip
matching the rules of ``mix_min_phases`` or more of phases 2-4 goes to phase 5, the mix.
An overrides CSV (``clip_id,phase``) wins over everything and is tagged ``phase:manual``.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Sequence
from pathlib import Path

from aiprod.core.errors import ConfigError
from aiprod.data.config import Condition, OrganizeConfig
from aiprod.data.manifest import ACCEPTED, ClipRecord

log = logging.getLogger(__name__)

_NUMBER_WORDS = {
    "two": 2, "three": 3, "four": 4, "five": 5, "several": 3, "many": 4, "pair": 2,
    "couple": 2, "group": 3, "crowd": 5,
}  # fmt: skip


def subjects(rec: ClipRecord) -> int | None:
    """How many subjects a clip shows, from a ``subjects:N`` tag or its caption's words."""
    for tag in rec.tags:
        if tag.startswith("subjects:"):
            try:
                return int(tag.split(":", 1)[1])
            except ValueError:
                continue
    words = re.findall(r"[a-z]+|\d+", rec.caption.lower())
    counts = [int(w) for w in words if w.isdigit() and 1 < int(w) < 100]
    counts += [_NUMBER_WORDS[w] for w in words if w in _NUMBER_WORDS]
    if counts:
        return max(counts)
    return 1 if re.match(r"^(a|an|one)\b", rec.caption.lower().strip()) else None


def _keyword_hit(caption: str, keywords: Sequence[str]) -> bool:
    text = " " + " ".join(re.findall(r"[a-z0-9]+", caption.lower())) + " "
    return any(f" {k.lower()} " in text for k in keywords)


def matches(rec: ClipRecord, cond: Condition) -> bool:
    """True when every field set in ``cond`` holds for ``rec``."""
    if cond.tags_any and not set(cond.tags_any) & set(rec.tags):
        return False
    if cond.keywords_any and not _keyword_hit(rec.caption, cond.keywords_any):
        return False
    motion = rec.motion_score
    if cond.min_motion is not None and (motion is None or motion < cond.min_motion):
        return False
    if cond.max_motion is not None and (motion is None or motion > cond.max_motion):
        return False
    if cond.min_subjects is not None:
        n = subjects(rec)
        if n is None or n < cond.min_subjects:
            return False
    p98 = rec.checks.get("p98_luma")
    if cond.max_p98_luma is not None and (p98 is None or float(p98) > cond.max_p98_luma):
        return False
    mean = rec.checks.get("mean_luma")
    if cond.min_mean_luma is not None and (mean is None or float(mean) < cond.min_mean_luma):
        return False
    return True


def read_overrides(path: str | Path) -> dict[str, int]:
    """``clip_id,phase`` CSV -> {clip_id: phase}."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"overrides file {p} does not exist (CSV with columns clip_id,phase)")
    out: dict[str, int] = {}
    with p.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not {"clip_id", "phase"} <= set(reader.fieldnames or []):
            raise ConfigError(f"{p}: needs the columns clip_id,phase (has {reader.fieldnames})")
        for n, row in enumerate(reader, start=2):
            try:
                phase = int(row["phase"])
            except (TypeError, ValueError):
                phase = 0
            if not 1 <= phase <= 5:
                raise ConfigError(f"{p}:{n}: phase must be 1..5, got {row['phase']!r}")
            out[row["clip_id"].strip()] = phase
    return out


def assign_phase(rec: ClipRecord, cfg: OrganizeConfig) -> tuple[int, str]:
    """The phase for one clip and why (the rule index that matched)."""
    matched = [rule.phase for rule in cfg.rules if any(matches(rec, c) for c in rule.any_of)]
    if len({p for p in matched if p in (2, 3, 4)}) >= cfg.mix_min_phases:
        return 5, f"mix of phases {sorted({p for p in matched if p in (2, 3, 4)})}"
    if not matched:
        return 1, "no rule matched (default phase 1)"
    return matched[0], f"rule for phase {matched[0]}"


def organize(
    records: Sequence[ClipRecord],
    cfg: OrganizeConfig,
    *,
    overrides: dict[str, int] | None = None,
    reassign: bool = False,
) -> list[ClipRecord]:
    """Give every accepted clip a phase; rejected clips get none."""
    if overrides is None and cfg.overrides_file is not None:
        overrides = read_overrides(cfg.overrides_file)
    overrides = overrides or {}
    unknown = set(overrides) - {r.clip_id for r in records}
    if unknown:
        log.warning("overrides name %d unknown clip ids, e.g. %s", len(unknown), sorted(unknown)[0])
    out = []
    for rec in records:
        if rec.status != ACCEPTED:
            out.append(rec.replace(phase=None))
            continue
        checks = dict(rec.checks)
        tags = [t for t in rec.tags if t != "phase:manual"]
        if rec.clip_id in overrides:
            phase, why = overrides[rec.clip_id], "manual override"
            tags.append("phase:manual")
        elif rec.phase is not None and cfg.keep_existing and not reassign:
            phase, why = rec.phase, str(checks.get("phase_reason") or "kept")
        else:
            phase, why = assign_phase(rec, cfg)
        checks["phase_reason"] = why
        out.append(rec.replace(phase=phase, tags=tags, checks=checks))
    return out
