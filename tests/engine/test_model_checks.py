"""Issue 33: a user's LTX-Video / LTX-2 folders (saved by diffusers' save_pretrained) are
checked when models load (`aiprod models list`, the API's /models, /readyz and submit), and
requests a model cannot do are refused at submit (422 naming the field, or 503 naming the
model) and by `aiprod generate` before it loads anything."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from aiprod.cli.main import app as cli_app
from aiprod.core.model_files import entry_problems, resolve_text_length
from aiprod.core.registry import default_models_file, load_registry
from aiprod.core.settings import Settings
from aiprod.db.migrate import upgrade
from aiprod.db.session import make_engine, make_sessionmaker, session_scope
from aiprod.service.app import create_app
from aiprod.service.keys import create_key

BUILTIN_UPSAMPLER = default_models_file().parent / "builtin_model" / "latent_upsampler"
DEFAULTS = """[models.defaults]
width = 64
height = 32
num_frames = 9
fps = 12
num_inference_steps = 2
"""


def _variant(src: Path, dst: Path, *, drop: tuple[str, ...] = ()) -> Path:
    """``src``'s components linked into ``dst``, less ``drop``."""
    dst.mkdir()
    for part in src.iterdir():
        if part.name not in drop:
            os.symlink(part, dst / part.name)
    return dst


@pytest.fixture(scope="module")
def folders(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import ByT5Tokenizer

    root = tmp_path_factory.mktemp("checks")
    for name in ("ltxv", "ltx2"):
        os.symlink(model_dir / name, root / name)
    _variant(model_dir / "ltxv", root / "no-transformer", drop=("transformer",))
    _variant(model_dir / "ltxv", root / "no-upsampler", drop=("latent_upsampler",))
    # A tokenizer saved with no length limit (transformers writes model_max_length = 1e30).
    _variant(model_dir / "ltxv", root / "no-len-tok", drop=("tokenizer",))
    ByT5Tokenizer().save_pretrained(root / "no-len-tok" / "tokenizer")
    _variant(model_dir / "ltxv", root / "no-vae-config", drop=("vae",))
    (root / "no-vae-config" / "vae").mkdir()
    shutil.copy(
        next((model_dir / "ltxv" / "vae").glob("*.safetensors")), root / "no-vae-config" / "vae"
    )
    return root


MODELS = f"""default = "good-ltxv"

[[models]]
id = "good-ltxv"
family = "ltxv"
path = "ltxv"
{DEFAULTS}two_stage = true

[[models]]
id = "good-ltx2"
family = "ltx2"
path = "ltx2"
{DEFAULTS}two_stage = true

[[models]]
id = "no-upsampler"
family = "ltxv"
path = "no-upsampler"
[models.limits]
size_multiple = 16
frames_multiple = 4
{DEFAULTS}two_stage = false

[[models]]
id = "no-len-tok"
family = "ltxv"
path = "no-len-tok"
{DEFAULTS}two_stage = true

[[models]]
id = "missing"
family = "ltxv"
path = "no-such-folder"

[[models]]
id = "no-transformer"
family = "ltxv"
path = "no-transformer"
{DEFAULTS}two_stage = true

[[models]]
id = "wrong-family"
family = "ltxv"
path = "ltx2"
{DEFAULTS}two_stage = true

[[models]]
id = "bad-option"
family = "ltxv"
path = "ltxv"
[models.options]
distilled = true

[[models]]
id = "bad-upsampler"
family = "ltxv"
path = "ltxv"
[models.components]
upsampler = "{BUILTIN_UPSAMPLER}"
{DEFAULTS}two_stage = true

[[models]]
id = "lost-upsampler"
family = "ltxv"
path = "ltxv"
[models.components]
upsampler = "no-such-upsampler"
{DEFAULTS}two_stage = true

[[models]]
id = "no-vae-config"
family = "ltxv"
path = "no-vae-config"
{DEFAULTS}two_stage = true
"""

# entry -> what its one line says (each also names the entry and a fix)
EXPECTED = {
    "missing": ["path", "no-such-folder does not exist", "fix `path` in models.toml"],
    "no-transformer": ["no transformer found", "set components.transformer"],
    "wrong-family": ["holds an ltx2 model (LTX2VideoTransformer3DModel)", "family = 'ltx2'"],
    "bad-option": ["options.distilled", "selects LTX-2's distilled schedule", "remove it"],
    "bad-upsampler": [
        "components.upsampler",
        "takes 16-channel latents but this model's VAE makes 8-channel ones",
        "aiprod train",
    ],
    "lost-upsampler": ["components.upsampler = ", "does not exist", "fix the path"],
    "no-vae-config": ["vae/config.json is missing", "diffusers layout"],
}


@pytest.fixture(scope="module")
def models_file(folders: Path) -> Path:
    path = folders / "models.toml"
    path.write_text(MODELS)
    return path


def test_models_list_names_each_problem_and_the_fix(models_file: Path, tmp_path: Path) -> None:
    env = {"AIPROD_MODELS_FILE": str(models_file), "AIPROD_DATA_DIR": str(tmp_path)}
    res = CliRunner().invoke(cli_app, ["models", "list"], env=env)
    assert res.exit_code == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    lines = [x for x in res.stderr.splitlines() if x.startswith("error: ")]
    for model_id, parts in EXPECTED.items():
        mine = [x for x in lines if f"'{model_id}'" in x or f"({model_id})" in x]
        assert len(mine) == 1, (model_id, lines)
        for part in parts:
            assert part in mine[0], (model_id, part, mine[0])
    for ok in ("good-ltxv", "good-ltx2", "no-upsampler", "no-len-tok"):
        assert not any(f"'{ok}'" in x for x in lines), (ok, lines)
    assert "components.latent_upsampler" not in res.stderr  # the user's key: components.upsampler
    table = res.stdout
    assert "invalid entry" in table and "1 problem" in table


def test_text_length_resolves(models_file: Path) -> None:
    reg = load_registry(models_file)
    # the tokenizer has no length limit: the family's documented default, not 1e30
    assert resolve_text_length(reg.get("no-len-tok")) == (128, "default for family 'ltxv'")
    assert resolve_text_length(reg.get("good-ltxv")) == (128, "tokenizer model_max_length")
    assert resolve_text_length(reg.get("good-ltx2"))[0] > 0
    opts = reg.get("no-len-tok").options.model_copy(update={"max_sequence_length": 64})
    entry = reg.get("no-len-tok").model_copy(update={"options": opts})
    assert resolve_text_length(entry) == (64, "options.max_sequence_length")
    assert entry_problems(reg.get("no-len-tok")) == []


@pytest.fixture()
def api(models_file: Path, tmp_path: Path):  # noqa: ANN201
    url = f"sqlite:///{tmp_path / 'a.db'}"
    upgrade(url)
    settings = Settings(
        data_dir=tmp_path, models_file=models_file, database_url=url, ready_requires_worker=False
    )
    with session_scope(make_sessionmaker(make_engine(url))) as s:
        _, key = create_key(s, secret=settings.resolved_secret_key(), name="k")
    with TestClient(create_app(settings)) as c:
        c.headers["Authorization"] = f"Bearer {key}"
        yield c


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"model": "no-upsampler", "two_stage": True}, "two_stage", "send two_stage=false"),
        ({"model": "no-upsampler", "width": 48}, "width", "multiple of 32"),
        ({"model": "no-upsampler", "num_frames": 13}, "num_frames", "must be 8*k+1"),
    ],
)
def test_submit_refuses_what_the_model_cannot_do(api, body: dict, field: str, says: str) -> None:  # noqa: ANN001
    r = api.post("/api/v1/generate", json={"prompt": "a red circle", **body})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["field"] == field and says in err["message"], err
    assert api.get("/api/v1/jobs").json()["data"] == []  # nothing queued


def test_submit_refuses_a_broken_model_with_503(api) -> None:  # noqa: ANN001
    for model_id in EXPECTED:
        r = api.post("/api/v1/generate", json={"prompt": "a red circle", "model": model_id})
        assert r.status_code == 503, (model_id, r.text)
        assert int(r.headers["Retry-After"]) >= 1
        err = r.json()["error"]
        assert err["code"] == "model_unavailable" and err["field"] == "model"
        assert f"model '{model_id}' is unavailable" in err["message"]
        assert str(BUILTIN_UPSAMPLER) not in err["message"]  # no server paths
    assert api.post("/api/v1/generate", json={"prompt": "fine"}).status_code == 202
    models = {m["id"]: m for m in api.get("/api/v1/models").json()["data"]}
    assert {m for m, v in models.items() if not v["available"]} == set(EXPECTED) - {"bad-option"}
    ready = api.get("/readyz")
    body = ready.json()
    assert ready.status_code == 200 and body["checks"]["models"] == "degraded", body
    assert set(body["details"]["models"]) == set(EXPECTED)


def test_generate_refuses_before_loading(models_file: Path, tmp_path: Path) -> None:
    env = {"AIPROD_MODELS_FILE": str(models_file), "AIPROD_DATA_DIR": str(tmp_path)}
    out = tmp_path / "o.mp4"
    args = ["generate", "a red circle", "-o", str(out), "--model", "no-upsampler", "--two-stage"]
    res = CliRunner().invoke(cli_app, args, env=env)
    assert res.exit_code == 1, res.stderr
    assert "two_stage=false" in res.stderr and "loading" not in res.stderr
    assert "Traceback" not in res.stderr and not out.exists()
    res = CliRunner().invoke(cli_app, [*args[:-1], "--model", "missing"], env=env)
    assert res.exit_code == 2 and "no-such-folder does not exist" in res.stderr, res.stderr
