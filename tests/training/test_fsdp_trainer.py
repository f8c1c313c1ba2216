"""The trainer sharding the denoiser with FSDP2 (``distributed.strategy: fsdp``) under 2
processes on CPU (gloo, loopback): full fine-tuning with gradient checkpointing and LoRA,
one writer, the same result as one process with the same global batch, kill-and-resume
bit-exact, an FSDP checkpoint resumed in one process, ``accelerate launch --use_fsdp``.

One spawn of 2 ranks (``torch.multiprocessing``) runs, in order: a full fine-tune of a
2-block transformer (each block one FSDP unit), the same run stopped after step 3 with that
step's checkpoint deleted (a kill before it was written) and resumed from step 2, and a
LoRA fine-tune. The test process runs the same configs in one process.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.training.conftest import TINY_ARCH, finetune_config, tiny_base_folder

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]


def _full(out: Path) -> dict[str, Any]:
    """A full fine-tune of the denoiser: 4 steps of an odd global batch (2 + 1 per rank),
    held-out loss and checkpoints every 2 steps, gradient checkpointing."""
    arch = {**TINY_ARCH, "transformer": {**TINY_ARCH["transformer"], "num_layers": 2}}
    return {
        "name": "fsdp",
        "output_dir": str(out),
        "device": "cpu",
        "num_threads": 1,
        "gradient_checkpointing": True,
        "distributed": {"strategy": "fsdp"},
        "model": {"source": "builtin", "architecture": arch},
        "monitor": {"log_every": 1, "heldout_every": 2, "heldout_clips": 2, "tensorboard": True},
        "checkpoint": {"every": 2, "keep_last": 5},
        "phases": [
            {
                "name": "p5",
                "data": {"synth": {"phase": 5, "count": 4, "seed": 5}},
                "steps": 4,
                "batch_size": 3,
                "buckets": [[32, 32, 9]],
            }
        ],
    }


def _lora(base: Path, out: Path) -> dict[str, Any]:
    cfg = finetune_config(base, out, mode="lora", lora={"rank": 4, "alpha": 4})
    cfg.update(num_threads=1, distributed={"strategy": "fsdp"}, gradient_checkpointing=True)
    return cfg


def _ckpt(run: Path, step: int) -> dict[str, torch.Tensor]:
    """The weights a checkpoint holds (every part, one dict)."""
    folder = run / "checkpoints" / f"step-{step:08d}"
    return {
        f"{f.stem}.{k}": v
        for f in sorted(folder.glob("*.safetensors"))
        for k, v in load_file(f).items()
    }


def _digest(weights: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(weights):
        h.update(k.encode())
        h.update(weights[k].float().numpy().tobytes())
    return h.hexdigest()


def _worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    from aiprod.training import checkpoint as ckpt
    from aiprod.training.config import TrainConfig
    from aiprod.training.distributed import Ranks, barrier
    from aiprod.training.trainer import Trainer

    writes: list[int] = []
    save = ckpt.save_checkpoint

    def counted(*a: Any, **kw: Any) -> Path:
        writes.append(kw["step"])
        return save(*a, **kw)

    ckpt.save_checkpoint = counted  # type: ignore[assignment]
    base = Path(root)
    events: list[str] = []
    losses: list[float] = []

    def on_event(kind: str, data: dict[str, Any]) -> None:
        events.append(kind)
        if kind == "log":
            losses.append(data["loss"])

    trainer = Trainer(TrainConfig.model_validate(_full(base / "full")), on_event=on_event)
    tr = trainer.comp.transformer
    local = sum(p.to_local().numel() for p in tr.parameters())  # type: ignore[attr-defined]
    out: dict[str, Any] = {
        "result": trainer.train(),
        "events": events,
        "losses": losses,
        "writes": list(writes),
        "local": local,
        "whole": sum(p.numel() for p in tr.parameters()),
    }
    cut = TrainConfig.model_validate(_full(base / "cut"))
    Trainer(cut).train(stop_after=3)
    if rank == 0:  # killed after step 3, before its checkpoint was written
        shutil.rmtree(base / "cut" / "checkpoints" / "step-00000003")
        shutil.copytree(base / "cut", base / "cut-for-one")
    barrier(Ranks(rank, world))
    Trainer(cut).train(resume=True)
    lora = Trainer(TrainConfig.model_validate(_lora(base / "base", base / "lora")))
    out["lora"] = lora.train()
    torch.save(out, base / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import torch.multiprocessing as mp

    from aiprod.training.config import TrainConfig
    from aiprod.training.trainer import Trainer

    root = tmp_path_factory.mktemp("fsdp")
    tiny_base_folder(root / "base")
    mp.spawn(_worker, args=(2, _free_port(), str(root)), nprocs=2, join=True)
    ranks = [torch.load(root / f"rank{r}.pt", weights_only=False) for r in range(2)]
    losses: list[float] = []
    Trainer(
        TrainConfig.model_validate(_full(root / "one")),
        on_event=lambda kind, data: losses.append(data["loss"]) if kind == "log" else None,
    ).train()
    # the 2-process FSDP checkpoint of step 2, resumed by one process
    Trainer(TrainConfig.model_validate(_full(root / "cut-for-one"))).train(resume=True)
    Trainer(TrainConfig.model_validate(_lora(root / "base", root / "lora-one"))).train()
    return {"root": root, "ranks": ranks, "one_losses": losses}


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-4, msg=k)


def test_fsdp_shards_the_denoiser_and_one_process_writes(runs: dict[str, Any]) -> None:
    main, other = runs["ranks"]
    for r in (main, other):
        assert r["result"]["sharded"] == ["transformer"] and r["result"]["processes"] == 2
        assert r["local"] < 0.6 * r["whole"]  # each rank holds about half the weights
    assert main["result"]["steps"] == 4
    assert main["writes"] == [2, 4] and other["writes"] == []  # exactly one set of checkpoints
    assert main["events"].count("log") == 4 and main["events"].count("heldout") == 2
    assert other["events"] == []
    full = runs["root"] / "full"
    assert len(list((full / "tb").glob("events.out.tfevents.*"))) == 1
    assert (full / "final" / "transformer" / "config.json").is_file()


def test_fsdp_equals_one_process_with_the_same_global_batch(runs: dict[str, Any]) -> None:
    root = runs["root"]
    torch.testing.assert_close(
        torch.tensor(runs["ranks"][0]["losses"]),
        torch.tensor(runs["one_losses"]),
        rtol=1e-4,
        atol=0,
    )
    _assert_close(_ckpt(root / "full", 4), _ckpt(root / "one", 4))
    # the exported model is the gathered one, the same folder one process writes
    from diffusers import LTXVideoTransformer3DModel

    two, one = (
        LTXVideoTransformer3DModel.from_pretrained(root / r / "final" / "transformer").state_dict()
        for r in ("full", "one")
    )
    _assert_close(two, one)
    trained = _ckpt(root / "full", 4)
    assert not torch.equal(
        trained["transformer.proj_out.weight"],
        _ckpt(root / "full", 2)["transformer.proj_out.weight"],
    )


def test_fsdp_kill_and_resume_is_bit_exact(runs: dict[str, Any]) -> None:
    root = runs["root"]
    assert _digest(_ckpt(root / "cut", 4)) == _digest(_ckpt(root / "full", 4))
    state = torch.load(
        root / "cut" / "checkpoints" / "step-00000002" / "state.pt", weights_only=False
    )
    # the optimizer state is whole (not sharded): what one process's optimizer holds
    shapes = {tuple(s["exp_avg"].shape) for s in state["optimizer"]["state"].values()}
    assert (32, 32) in shapes


def test_an_fsdp_checkpoint_resumes_in_one_process(runs: dict[str, Any]) -> None:
    root = runs["root"]
    _assert_close(_ckpt(root / "cut-for-one", 4), _ckpt(root / "full", 4))


def test_lora_under_fsdp_trains_the_adapters_like_one_process(runs: dict[str, Any]) -> None:
    root = runs["root"]
    assert runs["ranks"][0]["lora"]["sharded"] == ["transformer"]
    two, one = _ckpt(root / "lora", 3), _ckpt(root / "lora-one", 3)
    assert two and all("lora_" in k for k in two)
    _assert_close(two, one)
    base = load_file(root / "base" / "transformer" / "diffusion_pytorch_model.safetensors")
    merged = load_file(
        root / "lora" / "final" / "transformer" / "diffusion_pytorch_model.safetensors"
    )
    assert merged.keys() == base.keys()
    assert any(not torch.equal(merged[k], base[k]) for k in merged)  # the adapters merged in


def test_accelerate_launch_use_fsdp_shards_on_cpu(tmp_path: Path) -> None:
    raw = _full(tmp_path / "run")
    raw["distributed"] = {"strategy": "auto"}  # sharded because of --use_fsdp
    raw["phases"][0]["steps"] = 2
    raw["monitor"]["tensorboard"] = False
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--num_processes", "2"]
    cmd += ["--main_process_port", str(_free_port()), "-m", "aiprod.cli.main", "train", str(cfg)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "COLUMNS": "400"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(proc.stdout[proc.stdout.index("{\n") :])  # printed once, by rank 0
    assert result["processes"] == 2 and result["sharded"] == ["transformer"]
    assert proc.stdout.count("checkpoint {") == 1
