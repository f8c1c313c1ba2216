"""The walkthroughs of docs/models.md ("Bring your own checkpoint") and docs/training.md
("Fine-tune on your own videos"), every command as written, on a tiny LTX-Video model that
diffusers saves here (its tokenizer without a length limit); then the fine-tuned model served
through the API (real ``aiprod serve`` with a worker), its MP4 decoded and compared with the
base model's for the same seed.

Figures: the test prints each walkthrough command's wall time (``-s`` shows them).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.service.harness import Stack, wait_job

ROOT = Path(__file__).resolve().parents[2]
MARK = re.compile(r"<!-- walkthrough: (\w+) -->\s*```bash\n(.*?)```", re.S)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def walkthrough(doc: str, name: str) -> str:
    """The bash block after ``<!-- walkthrough: NAME -->`` in ``docs/DOC``."""
    blocks = {k: v for k, v in MARK.findall((ROOT / "docs" / doc).read_text())}
    assert name in blocks, f"docs/{doc} has no walkthrough {name!r}"
    return blocks[name]


def commands(block: str) -> list[str]:
    """The block's commands, a heredoc kept whole with the command that opens it."""
    out: list[str] = []
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip():
            continue
        m = re.search(r"<<'?(\w+)'?", line)
        if m:
            body = [line]
            while i < len(lines) and lines[i] != m.group(1):
                body.append(lines[i])
                i += 1
            body.append(lines[i])
            i += 1
            line = "\n".join(body)
        out.append(line)
    return out


def tiny_ltxv_folder(dest: Path) -> Path:
    """A tiny LTX-Video pipeline saved by diffusers' ``save_pretrained``; its ByT5 tokenizer
    has no ``model_max_length`` (transformers' "no limit")."""
    from diffusers import LTXPipeline
    from transformers import ByT5Tokenizer

    from aiprod.engine.tiny import tiny_ltxv_components

    comps = tiny_ltxv_components(seed=1)
    comps.pop("latent_upsampler")
    comps["tokenizer"] = ByT5Tokenizer()
    assert comps["tokenizer"].model_max_length > 10**20
    LTXPipeline(**comps).save_pretrained(dest)
    return dest


def run_walkthrough(work: Path, env: dict[str, str], cmds: list[str]) -> list[tuple[str, float]]:
    """Run ``cmds`` in one bash session (``export`` carries over), timing each."""
    times = []
    script = work / "walk.sh"
    lines = ["set -euo pipefail"]
    for i, cmd in enumerate(cmds):  # a stamp before and after each command
        lines += [f'echo "T{i} a $(date +%s.%N)"', cmd, f'echo "T{i} b $(date +%s.%N)"']
    script.write_text("\n".join(lines) + "\n")
    res = subprocess.run(
        ["bash", str(script)], cwd=work, env=env, capture_output=True, text=True, timeout=3000
    )
    assert res.returncode == 0, f"walkthrough failed:\n{res.stdout[-4000:]}\n{res.stderr[-6000:]}"
    stamps = {
        (int(i), k): float(t)
        for i, k, t in re.findall(r"^T(\d+) (a|b) ([\d.]+)$", res.stdout, re.M)
    }
    for i, cmd in enumerate(cmds):
        times.append((cmd.splitlines()[0][:90], stamps[i, "b"] - stamps[i, "a"]))
    return times


def decode(path: Path) -> tuple[np.ndarray, float]:
    from aiprod.core.media import read_video

    return read_video(path)


def test_walkthroughs_then_the_api_serves_the_fine_tune(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "configs").symlink_to(ROOT / "configs")
    ltxv = tiny_ltxv_folder(tmp_path / "my-ltxv")
    bindir = Path(sys.executable).parent
    env = {
        **os.environ,
        "LTXV_DIR": str(ltxv),
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "AIPROD_DATA_DIR": str(tmp_path / "data"),
    }
    cmds = commands(walkthrough("models.md", "byoc")) + commands(
        walkthrough("training.md", "finetune")
    )
    t0 = time.perf_counter()
    times = run_walkthrough(work, env, cmds)
    total = time.perf_counter() - t0
    for cmd, s in times:
        print(f"{s:7.1f} s  {cmd}")
    print(f"{total:7.1f} s  walkthrough total")

    # what the walkthrough left: the CLI's videos at the asked sizes, a model that differs
    for name, (w, h) in {
        "base.mp4": (64, 32),
        "lora.mp4": (64, 32),
        "two-stage.mp4": (64, 64),
    }.items():
        frames, fps = decode(work / name)
        assert frames.shape == (9, h, w, 3), name
    text = (work / "models.toml").read_text()
    assert "# my LTX-Video model" in text  # the user's comment survived two registrations
    from aiprod.core.registry import load_registry

    reg = load_registry(work / "models.toml")
    tuned = reg.get("my-ltxv-lora")
    assert tuned.family == "ltxv" and tuned.trained_from["base_model"] == "my-ltxv"
    assert tuned.trained_from["config"].endswith("configs/examples/lora-ltxv.yaml")
    assert tuned.components.upsampler is not None and tuned.components.upsampler.is_dir()
    assert (
        work / "runs" / "lora-ltxv" / "final" / "lora" / "pytorch_lora_weights.safetensors"
    ).is_file()
    assert list((work / "runs" / "lora-ltxv" / "samples").glob("step-*/*.mp4"))

    # the API: one job per model, same seed and request
    stack = Stack(
        work, f"sqlite:///{tmp_path / 'aiprod.db'}", workers=1, models_toml=text
    )  # fmt: skip
    try:
        key = stack.create_key("walkthrough")
        outs = {}
        with stack.client(key) as c:
            for model in ("my-ltxv", "my-ltxv-lora"):
                body = {
                    "prompt": "a red circle moving left",
                    "model": model,
                    "width": 64,
                    "height": 32,
                    "num_frames": 9,
                    "fps": 12,
                    "num_inference_steps": 2,
                    "seed": 7,
                    "two_stage": False,
                }
                r = c.post("/api/v1/generate", json=body)
                assert r.status_code == 202, r.text
                job = wait_job(c, r.json()["id"], {"succeeded", "failed"}, timeout=900)
                assert job["status"] == "succeeded", (job, stack.logs())
                mp4 = tmp_path / f"{model}.mp4"
                got = c.get(f"/api/v1/jobs/{job['id']}/download")
                assert got.status_code == 200
                mp4.write_bytes(got.content)
                outs[model] = decode(mp4)
        for frames, fps in outs.values():
            assert frames.shape == (9, 32, 64, 3) and round(fps) == 12
        diff = np.abs(outs["my-ltxv"][0].astype(int) - outs["my-ltxv-lora"][0].astype(int))
        assert diff.mean() > 0.5, (
            f"the fine-tune's output equals the base's (mean diff {diff.mean()})"
        )
    finally:
        stack.stop()
