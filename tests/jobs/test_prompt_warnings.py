"""The built-in model ignores words outside its vocabulary: the job says so (a `warnings` list
stored with the job, in the API's job object and in `aiprod generate`), and
docs/model_card.md#vocabulary lists that vocabulary (kept equal to the grammar's here)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from aiprod.builtin import grammar
from aiprod.core.registry import default_models_file, load_registry
from aiprod.core.settings import Settings
from aiprod.core.vocabulary import prompt_warnings, word_vocabulary
from aiprod.db.migrate import upgrade
from aiprod.db.session import make_engine, make_sessionmaker, session_scope
from aiprod.service.app import create_app
from aiprod.service.keys import create_key

DOCS = Path(__file__).resolve().parents[2] / "docs" / "model_card.md"


def test_the_docs_list_the_grammars_vocabulary() -> None:
    text = DOCS.read_text()
    block = text.split("<!-- vocabulary:start -->")[1].split("<!-- vocabulary:end -->")[0]
    listed = re.findall(r"`([^`]+)`", block)
    assert listed == list(grammar.vocabulary())
    assert "## Vocabulary" in text
    # ... and the shipped model's tokenizer knows exactly these words.
    tok = default_models_file().parent / "builtin_model" / "tokenizer" / "tokenizer.json"
    vocab = set(json.loads(tok.read_text())["model"]["vocab"]) - {"<pad>", "</s>", "<unk>"}
    assert vocab == set(grammar.vocabulary())


def test_prompt_warnings_name_the_ignored_words() -> None:
    entry = load_registry().default_entry  # the shipped built-in model
    assert word_vocabulary(entry) is not None
    warns = prompt_warnings(entry, "a crimson disc drifting to the right", "Blurry, crimson")
    assert warns == [
        "ignored words not in the built-in model's vocabulary: crimson, disc, drifting, "
        "blurry; see docs/model_card.md#vocabulary"
    ]
    assert prompt_warnings(entry, "a red circle moving to the right", None) == []


@pytest.fixture()
def api(tmp_path: Path):  # noqa: ANN201
    url = f"sqlite:///{tmp_path / 'a.db'}"
    upgrade(url)
    settings = Settings(data_dir=tmp_path, database_url=url)  # the shipped models.toml
    with session_scope(make_sessionmaker(make_engine(url))) as s:
        _, key = create_key(s, secret=settings.resolved_secret_key(), name="k")
    with TestClient(create_app(settings)) as c:
        c.headers["Authorization"] = f"Bearer {key}"
        yield c


def test_the_job_object_carries_the_warning(api) -> None:  # noqa: ANN001
    r = api.post("/api/v1/generate", json={"prompt": "a crimson disc drifting to the right"})
    assert r.status_code == 202, r.text
    warns = r.json()["warnings"]
    assert len(warns) == 1 and "crimson, disc, drifting" in warns[0]
    again = api.get(f"/api/v1/jobs/{r.json()['id']}").json()  # stored with the job
    assert again["warnings"] == warns
    listed = api.get("/api/v1/jobs").json()["data"][0]
    assert listed["warnings"] == warns
    clean = api.post("/api/v1/generate", json={"prompt": "a red circle moving to the right"})
    assert clean.json()["warnings"] == []


@pytest.mark.slow
def test_generate_prints_the_warning(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from aiprod.cli.main import app

    out = tmp_path / "o.mp4"
    args = ["generate", "a crimson circle", "-o", str(out), "--width", "64", "--height", "64"]
    args += ["--frames", "9", "--steps", "1", "--one-stage", "--seed", "1"]
    res = CliRunner().invoke(app, args, env={"AIPROD_DATA_DIR": str(tmp_path)})
    assert res.exit_code == 0, res.stderr
    assert "warning: ignored words not in the built-in model's vocabulary: crimson" in res.stderr
    assert out.is_file()
