"""Ingest: gather clips from local folders, file lists and http(s) URL lists into a dataset.

A dataset is a folder with ``manifest.parquet`` (+ ``.csv``) and, for downloads, ``raw/``.
Each clip gets a content address (``clip_id`` = first 16 hex digits of its SHA-256), so the
same file listed twice is kept once and re-running an ingest skips what is already there.

Downloads are resumable (a ``.part`` file continued with an HTTP ``Range`` request), retried
with backoff on network errors and 5xx answers, and checked against an expected SHA-256
when the list gives one. Every source row may carry ``license``, ``source_url``,
``attribution``, ``caption`` and ``tags``; they are kept in the manifest.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from aiprod.core.errors import AiprodError
from aiprod.data._fs import atomic_write
from aiprod.data.manifest import (
    MANIFEST_CSV,
    MANIFEST_PARQUET,
    PENDING,
    REJECTED,
    ClipRecord,
    read_manifest,
    write_manifest,
)

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts"}
_ROW_FIELDS = ("license", "source_url", "attribution", "caption", "sha256", "tags")


@dataclass(frozen=True)
class SourceRow:
    """One thing to ingest: a local path or an http(s) URL, plus what is known about it."""

    location: str
    license: str = ""
    source_url: str = ""
    attribution: str = ""
    caption: str = ""
    sha256: str = ""  # expected checksum (downloads are verified against it)
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_url(self) -> bool:
        return self.location.startswith(("http://", "https://"))


class IngestError(AiprodError):
    code = "ingest_error"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _row_from_dict(d: dict[str, str], base: Path) -> SourceRow:
    loc = (d.get("url") or d.get("path") or d.get("location") or "").strip()
    if not loc:
        raise IngestError("a list row has no url/path column value: give every row one")
    if not loc.startswith(("http://", "https://")) and not Path(loc).is_absolute():
        loc = str(base / loc)
    tags = tuple(t.strip() for t in (d.get("tags") or "").replace(";", ",").split(",") if t.strip())
    return SourceRow(
        location=loc,
        license=(d.get("license") or "").strip(),
        source_url=(d.get("source_url") or "").strip(),
        attribution=(d.get("attribution") or "").strip(),
        caption=(d.get("caption") or "").strip(),
        sha256=(d.get("sha256") or "").strip().lower(),
        tags=tags,
    )


def read_sources(spec: str | Path) -> list[SourceRow]:
    """Expand one source: a folder (its videos, recursively), a ``.txt`` list (one path or URL
    a line, ``#`` comments), a ``.csv`` list (a ``path`` or ``url`` column plus optional
    ``license, source_url, attribution, caption, sha256, tags``), a video file or a URL."""
    s = str(spec)
    if s.startswith(("http://", "https://")):
        return [SourceRow(location=s)]
    p = Path(s)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in VIDEO_EXTENSIONS)
        return [SourceRow(location=str(f.resolve())) for f in files if f.is_file()]
    if not p.exists():
        raise IngestError(f"source {p} does not exist: give a folder, a .txt/.csv list or a URL")
    if p.suffix.lower() == ".csv":
        with p.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            cols = set(reader.fieldnames or [])
            if not cols & {"url", "path", "location"}:
                raise IngestError(
                    f"{p}: a CSV list needs a 'url' or 'path' column (has {sorted(cols)})"
                )
            return [_row_from_dict(d, p.parent.resolve()) for d in reader]
    if p.suffix.lower() == ".txt":
        rows = []
        for line in p.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                rows.append(_row_from_dict({"location": line}, p.parent.resolve()))
        return rows
    return [SourceRow(location=str(p.resolve()))]


def download(
    url: str,
    dest: Path,
    *,
    retries: int = 3,
    timeout: float = 30.0,
    backoff_s: float = 0.25,
    expected_sha256: str = "",
) -> Path:
    """Download ``url`` to ``dest`` via ``dest.part``, resuming a partial file, with retries.

    Raises :class:`IngestError` after ``retries`` failed attempts or on a checksum mismatch.
    """
    import httpx

    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    last_error = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with httpx.stream(
                "GET", url, headers=headers, timeout=timeout, follow_redirects=True
            ) as resp:
                if resp.status_code == 416 and have:
                    # Asked past the end: the part file is already complete.
                    pass
                elif resp.status_code >= 500 or resp.status_code == 429:
                    last_error = f"HTTP {resp.status_code}"
                    continue
                elif resp.status_code >= 400:
                    raise IngestError(f"{url}: HTTP {resp.status_code} (check the URL)")
                else:
                    mode = "ab" if resp.status_code == 206 and have else "wb"
                    with part.open(mode) as fh:
                        for chunk in resp.iter_bytes():
                            fh.write(chunk)
                    expected_len = resp.headers.get("content-length")
                    if expected_len is not None and resp.status_code in (200, 206):
                        want = int(expected_len) + (have if mode == "ab" else 0)
                        if part.stat().st_size < want:
                            last_error = "connection closed early"
                            continue
        except httpx.HTTPError as exc:
            last_error = f"{type(exc).__name__}: {exc}"
            continue
        if expected_sha256:
            got = sha256_file(part)
            if got != expected_sha256:
                part.unlink(missing_ok=True)
                raise IngestError(
                    f"{url}: checksum mismatch (expected {expected_sha256[:12]}..., got "
                    f"{got[:12]}...): the file changed or the list is wrong"
                )
        os.replace(part, dest)
        return dest
    raise IngestError(f"{url}: download failed after {retries + 1} attempts ({last_error})")


def _url_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def _ingest_one(
    row: SourceRow,
    out_dir: Path,
    *,
    copy: bool,
    retries: int,
    timeout: float,
    defaults: dict[str, str],
) -> ClipRecord:
    meta = {
        "license": row.license or defaults.get("license", ""),
        "attribution": row.attribution or defaults.get("attribution", ""),
        "caption": row.caption,
        "tags": list(row.tags),
    }
    if row.is_url:
        record = functools.partial(
            ClipRecord, source="http", source_url=row.source_url or row.location, **meta
        )
        suffix = Path(row.location.split("?", 1)[0]).suffix.lower() or ".mp4"
        tmp_dest = out_dir / "raw" / f"url-{_url_key(row.location)}{suffix}"
        try:
            if not tmp_dest.exists():
                download(
                    row.location,
                    tmp_dest,
                    retries=retries,
                    timeout=timeout,
                    expected_sha256=row.sha256,
                )
        except IngestError as exc:
            return record(
                clip_id=f"url-{_url_key(row.location)}",
                path=str(tmp_dest),
                status=REJECTED,
                reject_reason=f"download_failed: {exc.message}",
            )
        digest = sha256_file(tmp_dest)
        final = out_dir / "raw" / f"{digest[:16]}{suffix}"
        if final.exists():
            tmp_dest.unlink()
        else:
            os.replace(tmp_dest, final)
        return record(clip_id=digest[:16], path=str(final), sha256=digest)
    record = functools.partial(ClipRecord, source="local", **meta)
    src = Path(row.location)
    if not src.is_file():
        return record(
            clip_id=f"missing-{_url_key(str(src))}",
            path=str(src),
            status=REJECTED,
            reject_reason=f"missing: {src} does not exist",
            source_url=row.source_url or src.as_uri(),
        )
    source_url = row.source_url or src.resolve().as_uri()
    digest = sha256_file(src)
    if row.sha256 and row.sha256 != digest:
        return record(
            clip_id=digest[:16],
            path=str(src),
            sha256=digest,
            status=REJECTED,
            reject_reason=f"checksum_mismatch: expected {row.sha256[:12]}..., got {digest[:12]}...",
            source_url=source_url,
        )
    path = src.resolve()
    if copy:
        path = out_dir / "raw" / f"{digest[:16]}{src.suffix.lower()}"
        if not path.exists():
            atomic_write(path, lambda tmp: shutil.copyfile(src, tmp))
    return record(clip_id=digest[:16], path=str(path), sha256=digest, source_url=source_url)


def load_dataset(out_dir: str | Path) -> list[ClipRecord]:
    """The dataset's manifest rows, or [] for a new dataset folder."""
    d = Path(out_dir)
    if (d / MANIFEST_PARQUET).exists() or (d / MANIFEST_CSV).exists():
        return read_manifest(d)
    return []


def ingest(
    sources: Iterable[str | Path | SourceRow],
    out_dir: str | Path,
    *,
    license: str = "",
    attribution: str = "",
    copy: bool = False,
    retries: int = 3,
    timeout: float = 30.0,
    threads: int = 4,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[ClipRecord]:
    """Add the clips of ``sources`` to the dataset in ``out_dir`` and write its manifest.

    Local files are referenced where they are (``copy=True`` copies them into ``raw/``);
    URLs are downloaded into ``raw/``. Rows already in the manifest (same content, or same
    URL already downloaded) are skipped. Returns the whole manifest.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[SourceRow] = []
    for s in sources:
        rows.extend([s] if isinstance(s, SourceRow) else read_sources(s))
    existing = load_dataset(out)
    by_id = {r.clip_id: r for r in existing}
    done_urls = {r.source_url for r in existing if r.source == "http" and r.status != REJECTED}
    todo: list[SourceRow] = []
    seen: set[str] = set()
    for r in rows:
        # The same location twice in one run would race on one .part file: keep the first.
        if r.location in seen or (r.is_url and (r.source_url or r.location) in done_urls):
            continue
        seen.add(r.location)
        todo.append(r)
    defaults = {"license": license, "attribution": attribution}

    def work(row: SourceRow) -> ClipRecord:
        return _ingest_one(row, out, copy=copy, retries=retries, timeout=timeout, defaults=defaults)

    results: list[ClipRecord] = []
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for i, rec in enumerate(pool.map(work, todo), start=1):
            results.append(rec)
            if on_progress is not None:
                on_progress(i, len(todo))
    added = 0
    for rec in results:
        old = by_id.get(rec.clip_id)
        if old is not None and old.status != REJECTED:
            continue  # same content already in the dataset
        by_id[rec.clip_id] = rec
        added += 1
    records = list(by_id.values())
    write_manifest(records, out)
    log.info("ingested %d new clips (%d rows, %d in dataset)", added, len(rows), len(records))
    return records


def summarize(records: Sequence[ClipRecord]) -> dict[str, int]:
    return {
        "total": len(records),
        "pending": sum(r.status == PENDING for r in records),
        "rejected": sum(r.status == REJECTED for r in records),
    }
