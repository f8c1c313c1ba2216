"""Ingest from folders, lists and a real loopback HTTP server (retries, resume, checksums)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from aiprod.data.ingest import download, ingest, read_sources
from aiprod.data.manifest import REJECTED, read_manifest


class _Server:
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.log: list[tuple[str, str | None]] = []  # (path, Range header)
        self.fail_first: dict[str, int] = {}  # path -> how many 503s before serving
        self.cut_first: set[str] = set()  # paths whose first answer stops half way
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                rng = self.headers.get("Range")
                server.log.append((self.path, rng))
                if server.fail_first.get(self.path, 0) > 0:
                    server.fail_first[self.path] -= 1
                    self.send_error(503)
                    return
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                body = data[start:]
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path in server.cut_first:
                    server.cut_first.discard(self.path)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(videos) -> Iterator[_Server]:
    files = {
        "/good.mp4": videos["good"].read_bytes(),
        "/scenes.mp4": videos["two_scenes"].read_bytes(),
    }
    s = _Server(files)
    yield s
    s.close()


def test_download_retries_and_resumes(server: _Server, tmp_path: Path) -> None:
    server.fail_first["/good.mp4"] = 2
    server.cut_first.add("/good.mp4")
    dest = download(f"{server.url}/good.mp4", tmp_path / "g.mp4", retries=4, backoff_s=0.01)
    assert dest.read_bytes() == server.files["/good.mp4"]
    ranges = [r for p, r in server.log if p == "/good.mp4"]
    assert ranges[:3] == [None, None, None]  # two 503s, then the cut-off answer
    assert ranges[3] is not None and ranges[3].startswith("bytes=") and ranges[3] != "bytes=0-"


def test_download_gives_up_with_a_clear_error(server: _Server, tmp_path: Path) -> None:
    from aiprod.data.ingest import IngestError

    server.fail_first["/good.mp4"] = 10
    with pytest.raises(IngestError, match="after 3 attempts.*HTTP 503"):
        download(f"{server.url}/good.mp4", tmp_path / "g.mp4", retries=2, backoff_s=0.01)
    with pytest.raises(IngestError, match="HTTP 404"):
        download(f"{server.url}/nope.mp4", tmp_path / "n.mp4", retries=2, backoff_s=0.01)


def test_ingest_url_list_keeps_license_and_checksums(server: _Server, tmp_path: Path) -> None:
    good_sha = hashlib.sha256(server.files["/good.mp4"]).hexdigest()
    lst = tmp_path / "list.csv"
    lst.write_text(
        "url,license,attribution,caption,sha256\n"
        f"{server.url}/good.mp4,CC-BY-4.0,Jane Doe,a red circle,{good_sha}\n"
        f"{server.url}/scenes.mp4,CC0-1.0,,two scenes,{'0' * 64}\n"
        f"{server.url}/missing.mp4,CC0-1.0,,,\n"
    )
    ds = tmp_path / "ds"
    recs = ingest([lst], ds, retries=1)
    by_url = {r.source_url.rsplit("/", 1)[1]: r for r in recs}
    good = by_url["good.mp4"]
    assert good.status == "pending" and good.sha256 == good_sha
    assert (good.license, good.attribution, good.caption) == (
        "CC-BY-4.0",
        "Jane Doe",
        "a red circle",
    )
    assert Path(good.path).read_bytes() == server.files["/good.mp4"]
    assert by_url["scenes.mp4"].status == REJECTED
    assert "checksum mismatch" in by_url["scenes.mp4"].reject_reason
    assert by_url["missing.mp4"].reject_reason.startswith("download_failed")
    # re-running skips what is already there
    before = len(server.log)
    again = ingest([lst], ds, retries=1)
    assert len(again) == 3
    assert not any(p == "/good.mp4" for p, _ in server.log[before:])
    assert {r.clip_id for r in read_manifest(ds)} == {r.clip_id for r in recs}


def test_ingest_folder_and_txt_list(videos, tmp_path: Path) -> None:
    folder = videos["good"].parent
    rows = read_sources(folder)
    assert {Path(r.location).name for r in rows} >= {"good.mp4", "black.mp4"}
    txt = tmp_path / "files.txt"
    txt.write_text(f"# comment\n{videos['good']}\n{videos['good']}\n{tmp_path / 'nope.mp4'}\n")
    recs = ingest([txt], tmp_path / "ds", license="CC0-1.0", copy=True)
    ok = [r for r in recs if r.status != REJECTED]
    assert len(ok) == 1  # the same content twice is one clip
    assert Path(ok[0].path).parent == tmp_path / "ds" / "raw"
    assert ok[0].license == "CC0-1.0"
    missing = [r for r in recs if r.status == REJECTED]
    assert len(missing) == 1 and missing[0].reject_reason.startswith("missing")
