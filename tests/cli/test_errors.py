"""cli_errors: every command's errors become one stderr line and the documented exit status."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from aiprod.cli.errors import EXIT_CONFIG, EXIT_FAILED, cli_errors
from aiprod.cli.main import app
from aiprod.core.errors import ConfigError, NotFound

runner = CliRunner()


def _one_line(res) -> str:  # noqa: ANN001
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_bad_setting_is_a_config_error(tmp_path: Path) -> None:
    env = {"AIPROD_DATA_DIR": str(tmp_path), "AIPROD_RATE_LIMIT_PER_MINUTE": "lots"}
    res = runner.invoke(app, ["keys", "list"], env=env)
    assert res.exit_code == EXIT_CONFIG == 2
    assert "setting AIPROD_RATE_LIMIT_PER_MINUTE" in _one_line(res)


def test_a_config_file_argument_is_bad_input(tmp_path: Path) -> None:
    # train/eval and data take their config as a file argument: a bad one exits 1, not 2
    res = runner.invoke(app, ["train", str(tmp_path / "missing.yaml")])
    assert res.exit_code == EXIT_FAILED == 1
    assert "does not exist" in _one_line(res)
    (tmp_path / "ds").mkdir()
    res = runner.invoke(app, ["data", "validate", str(tmp_path / "ds"), "-c", "nope.yaml"])
    assert res.exit_code == 1 and "data config" in _one_line(res)


def _run(fn, **kw):  # noqa: ANN001, ANN003
    sub = typer.Typer()
    sub.command()(cli_errors(**kw)(fn) if kw else cli_errors(fn))
    return runner.invoke(sub, [])


def test_the_mapping() -> None:
    def not_found() -> None:
        raise NotFound("no model 'x': see `aiprod models list` [s3]")

    def config() -> None:
        raise ConfigError("models.toml: bad")

    def missing_file() -> None:
        open("/nonexistent/file")  # noqa: SIM115

    def value() -> None:
        raise ValueError("bad width")

    def bug() -> None:
        raise RuntimeError("a bug")

    def exits() -> None:
        raise typer.Exit(3)

    res = _run(not_found)
    assert res.exit_code == 1 and "[s3]" in _one_line(res)  # messages are not rich markup
    assert _run(config).exit_code == 2
    assert _run(config, config_status=1).exit_code == 1
    res = _run(missing_file)
    assert res.exit_code == 1 and "/nonexistent/file" in _one_line(res)
    assert _run(value, expected=(ValueError,)).exit_code == 1
    # anything else (a bug, a backend's exception): one line, exit 1; --debug re-raises it
    res = _run(value)
    assert res.exit_code == 1 and "ValueError: bad width" in _one_line(res)
    res = _run(bug)
    assert (
        res.exit_code == 1 and "RuntimeError: a bug" in _one_line(res) and "--debug" in res.stderr
    )
    assert "Traceback" not in res.stderr
    sub = typer.Typer()
    sub.command()(cli_errors(bug))
    res = runner.invoke(sub, [], env={"AIPROD_DEBUG": "1"})
    assert isinstance(res.exception, RuntimeError)
    assert _run(exits).exit_code == 3


def test_debug_flag_sets_the_switch(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("AIPROD_DEBUG", "0")  # restored after the test
    res = runner.invoke(app, ["--debug", "models", "list"])
    assert res.exit_code == 0, res.stderr
    import os

    assert os.environ.get("AIPROD_DEBUG") == "1"


def _commands(group, prefix: str = ""):  # noqa: ANN001, ANN202
    ctx = typer.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        path = f"{prefix}{name}"
        if hasattr(cmd, "list_commands"):  # a group (typer's click is its own copy)
            yield from _commands(cmd, path + " ")
        else:
            yield path, cmd


def test_every_command_goes_through_cli_errors() -> None:
    commands = dict(_commands(typer.main.get_command(app)))
    assert {"serve", "worker", "generate", "keys create", "models register", "db upgrade",
            "data synth", "train", "eval"} <= set(commands)  # fmt: skip
    unwrapped = [
        path for path, cmd in commands.items() if not getattr(cmd.callback, "cli_errors", False)
    ]
    assert unwrapped == []
