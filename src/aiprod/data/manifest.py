"""The clip manifest: one row per clip, written as Parquet (for code) and CSV (for people).

Every stage of the data pipeline reads and writes the same row type, :class:`ClipRecord`.
Paths are stored relative to the manifest's folder so a dataset folder can be moved or
copied as a whole; :func:`read_manifest` gives them back as absolute paths.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiprod.core.errors import AiprodError
from aiprod.data._fs import atomic_write

MANIFEST_PARQUET = "manifest.parquet"
MANIFEST_CSV = "manifest.csv"

ACCEPTED = "accepted"
REJECTED = "rejected"
PENDING = "pending"


@dataclass
class ClipRecord:
    """One clip and everything known about it."""

    clip_id: str
    path: str
    caption: str = ""
    phase: int | None = None
    status: str = PENDING
    reject_reason: str = ""
    source: str = ""
    source_url: str = ""
    license: str = ""
    attribution: str = ""
    sha256: str = ""
    fps: float = 0.0
    width: int = 0
    height: int = 0
    num_frames: int = 0
    duration_s: float = 0.0
    codec: str = ""
    pix_fmt: str = ""
    has_audio: bool = False
    motion_score: float | None = None
    checks: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    params: dict[str, Any] | None = None
    parent_id: str = ""
    start_s: float | None = None
    end_s: float | None = None

    def replace(self, **changes: Any) -> ClipRecord:
        return dataclasses.replace(self, **changes)


_JSON_FIELDS = ("checks", "tags", "params")
FIELDS = tuple(f.name for f in dataclasses.fields(ClipRecord))


def _to_row(rec: ClipRecord, root: Path) -> dict[str, Any]:
    row = dataclasses.asdict(rec)
    p = Path(rec.path)
    if p.is_absolute():
        try:
            row["path"] = p.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            row["path"] = str(p)
    for name in _JSON_FIELDS:
        row[name] = json.dumps(row[name], sort_keys=True)
    return row


def _from_row(row: dict[str, Any], root: Path) -> ClipRecord:
    kwargs: dict[str, Any] = {}
    for name in FIELDS:
        if name not in row:
            continue
        value = row[name]
        if name in _JSON_FIELDS:
            value = json.loads(value) if isinstance(value, str) and value else None
            if name == "checks" and value is None:
                value = {}
            if name == "tags" and value is None:
                value = []
        kwargs[name] = value
    p = Path(kwargs.get("path", ""))
    if not p.is_absolute():
        kwargs["path"] = str(root / p)
    # Parquet/CSV round-trips lose Python types for nullable ints; restore them.
    phase = kwargs.get("phase")
    kwargs["phase"] = None if phase in (None, "") or phase != phase else int(phase)
    for name in ("width", "height", "num_frames"):
        if name in kwargs:
            kwargs[name] = int(kwargs[name] or 0)
    for name in ("fps", "duration_s"):
        if name in kwargs:
            kwargs[name] = float(kwargs[name] or 0.0)
    for name in ("motion_score", "start_s", "end_s"):
        v = kwargs.get(name)
        kwargs[name] = None if v in (None, "") or v != v else float(v)
    if "has_audio" in kwargs:
        v = kwargs["has_audio"]
        kwargs["has_audio"] = v if isinstance(v, bool) else str(v).lower() == "true"
    for name in (
        "clip_id",
        "caption",
        "status",
        "reject_reason",
        "source",
        "source_url",
        "license",
        "attribution",
        "sha256",
        "codec",
        "pix_fmt",
        "parent_id",
    ):
        if name in kwargs:
            v = kwargs[name]
            kwargs[name] = "" if v is None or v != v else str(v)
    return ClipRecord(**kwargs)


def write_manifest(records: Sequence[ClipRecord], out_dir: str | Path) -> Path:
    """Write ``manifest.parquet`` and ``manifest.csv`` into ``out_dir`` atomically.

    Returns the Parquet path.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    rows = [_to_row(r, root) for r in records]
    schema = pa.schema(
        [
            ("clip_id", pa.string()),
            ("path", pa.string()),
            ("caption", pa.string()),
            ("phase", pa.int64()),
            ("status", pa.string()),
            ("reject_reason", pa.string()),
            ("source", pa.string()),
            ("source_url", pa.string()),
            ("license", pa.string()),
            ("attribution", pa.string()),
            ("sha256", pa.string()),
            ("fps", pa.float64()),
            ("width", pa.int64()),
            ("height", pa.int64()),
            ("num_frames", pa.int64()),
            ("duration_s", pa.float64()),
            ("codec", pa.string()),
            ("pix_fmt", pa.string()),
            ("has_audio", pa.bool_()),
            ("motion_score", pa.float64()),
            ("checks", pa.string()),
            ("tags", pa.string()),
            ("params", pa.string()),
            ("parent_id", pa.string()),
            ("start_s", pa.float64()),
            ("end_s", pa.float64()),
        ]
    )
    table = pa.Table.from_pylist(rows, schema=schema)
    parquet_path = root / MANIFEST_PARQUET
    atomic_write(parquet_path, lambda tmp: pq.write_table(table, tmp))

    def _csv(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(FIELDS))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: "" if row[k] is None else row[k] for k in FIELDS})

    atomic_write(root / MANIFEST_CSV, _csv)
    return parquet_path


def manifest_path(path: str | Path) -> Path:
    """Accept a dataset folder or a manifest file and return the manifest file to read."""
    p = Path(path)
    if p.is_dir():
        for name in (MANIFEST_PARQUET, MANIFEST_CSV):
            if (p / name).exists():
                return p / name
        raise AiprodError(
            f"no manifest in {p}: expected {MANIFEST_PARQUET} or {MANIFEST_CSV} "
            "(create one with `aiprod data synth` or `aiprod data ingest`)",
            code="manifest_missing",
        )
    if not p.exists():
        raise AiprodError(
            f"manifest {p} does not exist: pass a dataset folder or its manifest.parquet",
            code="manifest_missing",
        )
    return p


def read_manifest(path: str | Path) -> list[ClipRecord]:
    """Read a manifest (Parquet or CSV, or a folder holding one); paths come back absolute."""
    p = manifest_path(path)
    root = p.parent.resolve()
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(p).to_pylist()
    elif p.suffix == ".csv":
        with p.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    else:
        raise AiprodError(f"unknown manifest format {p.suffix!r}: use .parquet or .csv")
    return [_from_row(r, root) for r in rows]


def accepted(records: Iterable[ClipRecord]) -> list[ClipRecord]:
    return [r for r in records if r.status == ACCEPTED]
