"""The `aiprod` CLI: help with examples, keys, db upgrade, models list, direct generate, and
one-line errors with a non-zero exit."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from aiprod.cli.main import app
from aiprod.core.media import read_video
from tests.service.harness import write_models_toml

runner = CliRunner()

COMMANDS = [
    [],
    ["serve"],
    ["worker"],
    ["generate"],
    ["keys"],
    ["keys", "create"],
    ["keys", "list"],
    ["keys", "revoke"],
    ["keys", "webhook-secret"],
    ["keys", "update"],
    ["keys", "rotate-webhook-secret"],
    ["jobs"],
    ["jobs", "list"],
    ["jobs", "show"],
    ["jobs", "cancel"],
    ["jobs", "retry"],
    ["jobs", "delete"],
    ["billing"],
    ["billing", "statement"],
    ["db"],
    ["db", "upgrade"],
    ["models"],
    ["models", "list"],
    ["models", "register"],
    ["data"],
    ["train"],
    ["eval"],
]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "AIPROD_DATA_DIR": str(tmp_path / "data"),
        "AIPROD_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "AIPROD_MODELS_FILE": str(write_models_toml(tmp_path)),
        "AIPROD_SECRET_KEY": "",
    }


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "aiprod")
def test_every_command_has_help_with_an_example(cmd: list[str]) -> None:
    res = runner.invoke(app, [*cmd, "--help"])
    assert res.exit_code == 0, res.output
    assert "Example" in res.output and "aiprod" in res.output


def test_keys_create_list_revoke(env: dict[str, str]) -> None:
    res = runner.invoke(app, ["keys", "create", "--name", "acme", "--budget", "25"], env=env)
    assert res.exit_code == 0, res.output
    key = res.stdout.strip().splitlines()[-1]
    assert key.startswith("aiprod_sk_") and len(key) > 40
    assert "whsec_" in res.stderr
    admin = runner.invoke(app, ["keys", "create", "--name", "ops", "--admin"], env=env)
    assert admin.exit_code == 0
    listing = runner.invoke(app, ["keys", "list"], env=env, terminal_width=200)
    assert listing.exit_code == 0
    assert "acme" in listing.stdout and "admin" in listing.stdout and key not in listing.stdout
    key_id = next(line.split()[1] for line in listing.stdout.splitlines() if "acme" in line)
    assert runner.invoke(app, ["keys", "revoke", key_id], env=env).exit_code == 0
    after = runner.invoke(app, ["keys", "list"], env=env, terminal_width=200)
    assert "revoked" in next(line for line in after.stdout.splitlines() if "acme" in line)
    # only a keyed hash is stored
    db = Path(env["AIPROD_DATABASE_URL"].removeprefix("sqlite:///")).read_bytes()
    assert key.encode() not in db


def test_errors_are_one_line_and_non_zero(env: dict[str, str]) -> None:
    res = runner.invoke(app, ["keys", "revoke", "nonexistent-id"], env=env)
    assert res.exit_code == 1
    assert len(res.stderr.strip().splitlines()) == 1 and "no API key" in res.stderr
    bad = runner.invoke(app, ["db", "upgrade"], env={**env, "AIPROD_DATABASE_URL": "nosuchdb://x"})
    assert bad.exit_code == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "AIPROD_DATABASE_URL" in bad.stderr or "unsupported database" in bad.stderr
    down = runner.invoke(
        app,
        ["db", "upgrade"],
        env={**env, "AIPROD_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none"},
    )
    assert down.exit_code == 1 and len(down.stderr.strip().splitlines()) == 1
    assert "database error" in down.stderr and "AIPROD_DATABASE_URL" in down.stderr
    res = runner.invoke(app, ["keys", "create", "--name", " "], env=env)
    assert res.exit_code == 1 and len(res.stderr.strip().splitlines()) == 1
    weak = runner.invoke(
        app, ["keys", "create", "--name", "x"], env={**env, "AIPROD_SECRET_KEY": "changeme"}
    )
    assert weak.exit_code == 2 and "AIPROD_SECRET_KEY" in weak.stderr


def test_db_upgrade_sqlite_and_postgres(env: dict[str, str], pg_url: str) -> None:
    for url in (env["AIPROD_DATABASE_URL"], pg_url):
        res = runner.invoke(app, ["db", "upgrade"], env={**env, "AIPROD_DATABASE_URL": url})
        assert res.exit_code == 0, res.output
        assert "revision" in res.stdout


def test_models_list(env: dict[str, str]) -> None:
    res = runner.invoke(app, ["models", "list"], env=env, terminal_width=200)
    assert res.exit_code == 0 and "builtin" in res.stdout and "builtin-test" in res.stdout


def test_generate_direct_writes_a_playable_mp4(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "fox.mp4"
    res = runner.invoke(
        app, ["generate", "a red fox", "-o", str(out), "--seed", "3", "--frames", "17"], env=env
    )
    assert res.exit_code == 0, res.output
    frames, fps = read_video(out)
    assert frames.shape == (17, 32, 32, 3) and fps == 8
    bad = runner.invoke(
        app, ["generate", "x", "-o", str(tmp_path / "y.mp4"), "--width", "33"], env=env
    )
    assert bad.exit_code == 1 and "multiple of 32" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "y.mp4").exists()
    wrong = runner.invoke(app, ["generate", "x", "-o", str(tmp_path / "y.gif")], env=env)
    assert wrong.exit_code == 1 and ".mp4" in wrong.stderr
    # image-to-video, and a file that is not an image
    from PIL import Image

    Image.new("RGB", (32, 32), (10, 200, 10)).save(tmp_path / "green.png")
    i2v = tmp_path / "i2v.mp4"
    res = runner.invoke(
        app, ["generate", "grass", "-o", str(i2v), "--image", str(tmp_path / "green.png")], env=env
    )
    assert res.exit_code == 0, res.output
    assert read_video(i2v)[0].shape == (9, 32, 32, 3)
    (tmp_path / "fake.png").write_bytes(b"not an image")
    bad_img = runner.invoke(
        app, ["generate", "x", "-o", str(i2v), "--image", str(tmp_path / "fake.png")], env=env
    )
    assert bad_img.exit_code == 1 and "image" in bad_img.stderr
