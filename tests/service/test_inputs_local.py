"""In-process checks (no server) that no input gives a 500: invalid unicode in any string field
and images that are too large, truncated or too small are 422s naming the field (issue 32)."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from aiprod.db.session import make_engine, make_sessionmaker, session_scope
from aiprod.service.app import create_app
from aiprod.service.keys import create_key
from tests.service.harness import sqlite_settings


@pytest.fixture(scope="module")
def app_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict]]:
    tmp = tmp_path_factory.mktemp("inputs")
    settings = sqlite_settings(tmp)
    engine = make_engine(settings.resolved_database_url)
    with session_scope(make_sessionmaker(engine)) as s:
        _, key = create_key(s, secret=settings.resolved_secret_key(), name="t")
    engine.dispose()
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c, {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


def _post(client: tuple[TestClient, dict], route: str, raw_json: str):  # type: ignore[no-untyped-def]
    c, headers = client
    return c.post(f"/api/v1/{route}", content=raw_json.encode(), headers=headers)


# The bodies as sent on the wire: JSON's \ud800 escape is valid JSON and parses to a lone
# surrogate, which cannot be encoded as UTF-8.
LONE = "\\ud800"
BAD_BODIES = [
    ("prompt", f'{{"prompt": "a fox {LONE}"}}'),
    ("negative_prompt", f'{{"prompt": "a fox", "negative_prompt": "{LONE}"}}'),
    ("model", f'{{"prompt": "a fox", "model": "x{LONE}"}}'),
    ("image", f'{{"prompt": "a fox", "image": "{LONE}"}}'),
    ("webhook_url", f'{{"prompt": "a fox", "webhook_url": "https://example.com/{LONE}"}}'),
    ("metadata", f'{{"prompt": "a fox", "metadata": {{"k": "{LONE}"}}}}'),
    ("metadata", f'{{"prompt": "a fox", "metadata": {{"{LONE}": 1}}}}'),
    ("metadata", f'{{"prompt": "a fox", "metadata": {{"a": [1, {{"b": "{LONE}"}}]}}}}'),
    ("metadata", f'{{"prompt": "a fox", "metadata": {{"a": {{"{LONE}x": 2}}}}}}'),
]


@pytest.mark.parametrize("route", ["generate", "estimate-cost"])
@pytest.mark.parametrize(("field", "body"), BAD_BODIES)
def test_invalid_unicode_is_a_422_naming_the_field(
    app_client: tuple[TestClient, dict], route: str, field: str, body: str
) -> None:
    r = _post(app_client, route, body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request" and err["field"] == field
    assert "unicode" in err["message"]


@pytest.mark.parametrize("route", ["generate", "estimate-cost"])
def test_invalid_unicode_in_an_unknown_field_name_is_a_422(
    app_client: tuple[TestClient, dict], route: str
) -> None:
    r = _post(app_client, route, f'{{"prompt": "a fox", "x{LONE}": 1}}')
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    assert r.json()["error"]["field"] == "body"  # the field's own name cannot be shown


def test_valid_non_ascii_text_is_accepted(app_client: tuple[TestClient, dict]) -> None:
    body = json.dumps({"prompt": "un renard \U0001f98a", "metadata": {"clé": ["ü", {"b": "😀"}]}})
    assert _post(app_client, "estimate-cost", body).status_code == 200


# --- Images -----------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _gray_png(width: int, height: int, *, rows: int | None = None) -> bytes:
    """A grayscale PNG declaring width x height, written row by row (never allocating the
    picture); ``rows`` < height writes only that many rows and stops the file there."""
    comp = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + black pixels
    idat = b"".join(comp.compress(row) for _ in range(height if rows is None else rows))
    idat += comp.flush() if rows is None else comp.flush(zlib.Z_SYNC_FLUSH)
    head = b"\x89PNG\r\n\x1a\n" + _chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    )
    if rows is not None:
        return head + _chunk(b"IDAT", idat)  # no IEND: cut short
    return head + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _rgb_png(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def _submit_image(client: tuple[TestClient, dict], raw: bytes, route: str = "generate"):  # type: ignore[no-untyped-def]
    body = json.dumps({"prompt": "a fox", "image": base64.b64encode(raw).decode()})
    return _post(client, route, body)


def _assert_image_422(r, words: str) -> None:  # type: ignore[no-untyped-def]
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["field"] == "image" and err["code"] == "invalid_request"
    assert words in err["message"], err["message"]


@pytest.mark.parametrize(
    ("size", "what"),
    [
        ((12000, 12000), "megapixels"),  # a complete 12000x12000 PNG: ~140 KB, 144 MP decoded
        ((30000, 30000), "megapixels"),  # header + first rows only: Pillow's bomb error
        ((9500, 9500), "megapixels"),  # 90 MP: Pillow's bomb *warning* range
    ],
)
def test_huge_declared_images_are_refused_from_the_header(
    app_client: tuple[TestClient, dict], size: tuple[int, int], what: str
) -> None:
    complete = size == (12000, 12000)
    raw = _gray_png(*size, rows=None if complete else 2)
    for route in ("generate", "estimate-cost"):
        _assert_image_422(_submit_image(app_client, raw, route), what)


def test_truncated_and_header_only_images_are_refused(app_client: tuple[TestClient, dict]) -> None:
    full = _rgb_png(48, 48)
    _assert_image_422(_submit_image(app_client, _gray_png(48, 48, rows=3)), "truncated")
    _assert_image_422(_submit_image(app_client, full[: len(full) // 2]), "truncated")
    _assert_image_422(_submit_image(app_client, full[:33]), "not a readable")  # IHDR only


def test_images_smaller_than_the_models_minimum_are_refused(
    app_client: tuple[TestClient, dict],
) -> None:
    # The test model's minimum is the registry default, 32x32.
    for w, h in [(1, 1), (31, 64), (64, 16)]:
        _assert_image_422(_submit_image(app_client, _rgb_png(w, h)), f"{w}x{h}")
    r = _submit_image(app_client, _rgb_png(32, 32))
    assert r.status_code == 202, r.text
