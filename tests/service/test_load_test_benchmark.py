"""benchmarks/load_test.py: a short real run (server, worker, clients) whose JSON keeps the
warm-up's requests apart as the ramp, and a clear error when the server cannot be set up."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.engine.conftest import load_benchmark


def _load():  # noqa: ANN202
    return load_benchmark("load_test")


def test_requests_before_measure_from_go_to_the_ramp() -> None:
    mod = _load()
    tally = mod.Tally(measure_from=100.0)
    tally.latency("submit", 99.9, 500.0)  # sent during the warm-up
    tally.latency("status", 99.0, 80.0)
    tally.error("status:503", 99.5)
    tally.count("submits", 99.9)
    tally.latency("submit", 100.0, 20.0)  # from measure_from on
    tally.latency("status", 101.0, 5.0)
    tally.error("status:503", 101.0)
    tally.count("submits", 100.0)
    assert (tally.ramp_submit_ms, tally.ramp_status_ms, tally.ramp_errors) == ([500.0], [80.0], 1)
    assert (tally.submit_ms, tally.status_ms) == ([20.0], [5.0])
    assert tally.counts == {"requests": 2, "submits": 1}
    assert tally.errors == {"status:503": 1}


@pytest.mark.integration
def test_a_short_run_reports_the_ramp_apart(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    argv = ["--clients", "3", "--duration", "3", "--warmup", "2", "--workers", "1"]
    argv += ["--api-processes", "1", "--poll-interval", "0.5", "--out", str(out)]
    assert _load().main(argv) == 0
    report = json.loads(out.read_text())
    (phase,) = report["phases"]
    assert phase["clients"] == 3 and phase["warmup_s"] == 2 and phase["errors"] == 0
    ramp = phase["ramp"]
    # every client's first submit is in the ramp; the steady state still has status calls
    assert ramp["errors"] == 0 and ramp["submit_ms"]["p50"] is not None
    assert ramp["requests"] >= 3
    assert phase["status_calls"] > 0 and phase["status_ms"]["p99"] is not None
    assert phase["requests"] >= phase["status_calls"]
    ((run,),) = report["runs"]  # one run of one phase: the same samples
    assert run["ramp"] == ramp and run["status_ms"] == phase["status_ms"]


def test_a_server_that_cannot_be_set_up_names_the_command(tmp_path: Path) -> None:
    mod = _load()
    env = dict(os.environ, AIPROD_DATA_DIR=str(tmp_path), HF_HUB_OFFLINE="1")
    env.pop("AIPROD_DATABASE_URL", None)
    mod._cli(env, "db", "upgrade")
    mod._cli(env, "keys", "create", "--name", "load-test")
    with pytest.raises(SystemExit) as exc:  # as when --database-url names a used database
        mod._cli(env, "keys", "create", "--name", "load-test")
    message = str(exc.value)
    assert "`aiprod keys create --name load-test` failed" in message
    assert "must name an empty database" in message and "already named 'load-test'" in message
