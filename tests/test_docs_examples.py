"""Every shell and Python block of README.md and docs/API.md runs, as written, against a live
server (``aiprod serve``: real uvicorn and a worker, on a tiny random model with the built-in
model's limits), and exits 0.

How the blocks run, in document order, like a reader typing them:
- a fresh working folder per document, holding ``.venv`` (a link to this interpreter's
  environment, as in a clone after ``make serve``) and ``fox.png`` (the picture the
  image-to-video examples send);
- the environment has ``AIPROD_URL``, ``AIPROD_API_KEY`` and ``AIPROD_ADMIN_KEY`` exported, the
  server's ``AIPROD_DATA_DIR`` / ``AIPROD_DATABASE_URL`` (so ``aiprod keys ...`` reach its
  database), and the environment's ``bin`` first on ``PATH`` (an activated venv);
- shell blocks run under ``bash -euo pipefail``; the variables one block sets are there in the
  next (``JOB_ID=...`` then ``curl .../$JOB_ID``);
- Python blocks share one namespace per document (``client`` from the first is used later).

A block that cannot run here (``make serve`` itself, docker, hours of training) has a visible
marker on the line before it: ``<!-- not-run: why -->``. The test lists them; every other block
must pass. Blocks added later (any ``bash``/``sh``/``shell``/``python`` fence) are picked up.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.service.harness import Stack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "docs/API.md"]
SHELL = {"bash", "sh", "shell", "console"}
PYTHON = {"python", "py", "python3"}
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(.+?)\s*-->")
FENCE = re.compile(r"^```\s*([A-Za-z0-9_+-]*)\s*$")

# The built-in model's limits (src/aiprod/models.toml) with the tiny random weights and small
# defaults: the examples meet the limits a reader's server has, and each job takes a second.
DOCS_MODELS_TOML = """
default = "builtin"

[[models]]
id = "builtin"
family = "builtin"
version = "builtin-docs"
dtype = "float32"
price_per_gpu_second = 0.0005

[models.limits]
min_width = 32
max_width = 512
min_height = 32
max_height = 512
size_multiple = 32
min_frames = 9
max_frames = 121
frames_multiple = 8
max_steps = 50

[models.defaults]
width = 32
height = 32
num_frames = 9
fps = 24
num_inference_steps = 2
guidance_scale = 2.0
two_stage = false

[models.options]
tiny_seed = 0
"""


@dataclass(frozen=True)
class Block:
    doc: str
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    not_run: str | None  # the marker's reason

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def blocks(doc: str) -> list[Block]:
    """The shell and Python blocks of ``doc``, with the not-run marker of each, if any."""
    lines = (ROOT / doc).read_text().splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        lang, start = m.group(1).lower(), i
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        prev = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = NOT_RUN.search(prev)
        if lang in SHELL | PYTHON:
            code = "\n".join(lines[start + 1 : end]) + "\n"
            out.append(Block(doc, start + 1, lang, code, marker.group(1) if marker else None))
        i = end + 1
    return out


def test_the_docs_have_blocks_and_every_not_run_marker_says_why() -> None:
    found = {doc: blocks(doc) for doc in DOCS}
    assert all(found.values())
    skipped = [b for bs in found.values() for b in bs if b.not_run]
    print("\nblocks marked not-run:")
    for b in skipped:
        print(f"  {b.where} ({b.lang}): {b.not_run}")
        assert len(b.not_run or "") >= 10, f"{b.where}: say why it does not run"
    runnable = [b for bs in found.values() for b in bs if not b.not_run]
    assert len(runnable) > 2 * len(skipped)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("docs-stack")
    s = Stack(tmp, f"sqlite:///{tmp / 'aiprod.db'}", workers=1, models_toml=DOCS_MODELS_TOML)
    try:
        yield s
    finally:
        s.stop()


def _workdir(tmp: Path) -> Path:
    from PIL import Image

    (tmp / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    Image.new("RGB", (96, 96), (200, 80, 20)).save(tmp / "fox.png")
    return tmp


def _env(stack: Stack, *, key: str, admin_key: str) -> dict[str, str]:
    env = dict(stack.env)
    env.update(
        AIPROD_URL=stack.url,
        AIPROD_API_KEY=key,
        AIPROD_ADMIN_KEY=admin_key,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


_UNSAVED = {"PWD", "OLDPWD", "SHLVL", "_", "BASHOPTS", "SHELLOPTS", "BASH_EXECUTION_STRING"}


def _run_shell(block: Block, cwd: Path, env: dict[str, str], state: Path) -> str | None:
    """Run one shell block (after the variables of the previous ones); None when it exits 0."""
    keep = "|".join(sorted(_UNSAVED))
    script = (
        f"set -a\n[ -f {state} ] && . {state}\nset -euo pipefail\n"
        f'trap \'export -p | grep -vE "^declare -[a-zA-Z]*r|^declare -x ({keep})=" '
        f"> {state}' EXIT\n" + block.code
    )
    res = subprocess.run(
        ["bash", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if res.returncode == 0:
        return None
    out, err = res.stdout[-3000:], res.stderr[-3000:]
    return f"exit {res.returncode}\n--- stdout\n{out}\n--- stderr\n{err}"


def _run_python(block: Block, namespace: dict[str, Any]) -> str | None:
    out = io.StringIO()
    try:
        with redirect_stdout(out):
            exec(compile(block.code, block.where, "exec"), namespace)
    except BaseException as exc:  # a failing example, whatever it raised
        return f"{type(exc).__name__}: {exc}\n--- stdout\n{out.getvalue()[-3000:]}"
    return None


@pytest.mark.parametrize("doc", DOCS)
def test_every_block_runs_against_a_live_server(
    doc: str, stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = _workdir(tmp_path)
    env = _env(stack, key=stack.create_key(f"docs-{Path(doc).stem}"), admin_key=stack.admin_key)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(cwd)
    state = tmp_path / ".shell-state"
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    failures: list[str] = []
    ran = 0
    for block in blocks(doc):
        if block.not_run:
            continue
        ran += 1
        if block.lang in SHELL:
            problem = _run_shell(block, cwd, env, state)
        else:
            problem = _run_python(block, namespace)
        if problem:
            failures.append(f"{block.where} ({block.lang}):\n{block.code}{problem}")
    assert ran > 0
    assert not failures, "\n\n".join(failures)
