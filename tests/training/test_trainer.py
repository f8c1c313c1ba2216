"""A tiny run through every phase, exact resume, and the outputs a run leaves behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from aiprod.builtin.sample import model_shift
from aiprod.core.errors import ConfigError
from aiprod.training import trainer as trainer_mod
from aiprod.training.config import TrainConfig
from aiprod.training.deploy import load_checkpoint
from aiprod.training.trainer import Trainer

from .conftest import finetune_config, tiny_base_folder, tiny_config


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ck = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    out = {}
    for f in ck.glob("*.safetensors"):
        out.update({f"{f.stem}.{k}": v for k, v in load_file(f).items()})
    return out


def test_all_phases_then_resume_is_bit_exact(tmp_path: Path) -> None:
    events: list[tuple[str, dict]] = []
    cfg = TrainConfig.model_validate(
        tiny_config(
            tmp_path / "a",
            monitor={
                "log_every": 1,
                "heldout_every": 3,
                "heldout_clips": 2,
                "video_every": 4,
                "video_prompts": ["a red circle moving left"],
                "video_steps": 2,
            },
        )
    )
    result = Trainer(cfg, on_event=lambda k, d: events.append((k, d))).train()
    assert result["steps"] == 2 + 5 * 2 + 1
    phases = [d["phase"] for k, d in events if k == "phase"]
    assert phases == ["vae", "p1", "p2", "p3", "p4", "p5", "up"]
    logs = [d for k, d in events if k == "log"]
    assert all(torch.isfinite(torch.tensor(d["loss"])) for d in logs)
    assert any(k.startswith("loss_sigma/") for d in logs for k in d)
    assert any(k == "heldout" and "mean" in d for k, d in events)
    videos = [d["path"] for k, d in events if k == "video"]
    assert videos and all(Path(v).is_file() for v in videos)
    assert list(Path(videos[0]).parent.glob("sample-00.mp4"))
    # keep_last=2 plus the best one
    ckpts = sorted(p.name for p in (tmp_path / "a" / "checkpoints").glob("step-*"))
    best = json.loads((tmp_path / "a" / "checkpoints" / "best.json").read_text())
    assert len(ckpts) <= 3 and best["dir"] in ckpts and ckpts[-1] == "step-00000013"
    final = tmp_path / "a" / "final"
    for sub in ("transformer", "vae", "text_encoder", "tokenizer", "latent_upsampler"):
        assert (final / sub).is_dir()
    assert list((tmp_path / "a" / "tb").iterdir()), "TensorBoard event file missing"

    # Interrupted mid-phase (step 5 is inside p2), then resumed with a fresh process state.
    # b also sets the sampling schedule's shift, which changes no weight: same fingerprint.
    model_b = {**cfg.model.model_dump(mode="json"), "scheduler_shift": 2.5}
    cfg_b = TrainConfig.model_validate(
        tiny_config(tmp_path / "b", monitor=cfg.monitor.model_dump(), model=model_b)
    )
    assert cfg_b.fingerprint() == cfg.fingerprint()
    stopped = Trainer(cfg_b).train(stop_after=5)
    assert stopped["stopped"] and stopped["steps"] == 5
    torch.manual_seed(999)  # the resumed run must not depend on the caller's RNG
    Trainer(cfg_b).train(resume=True)
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    # The exported model and a rebuilt checkpoint sample with b's shift (the engine reads it).
    for run, want in (("a", 1.0), ("b", 2.5)):
        sched = json.loads((tmp_path / run / "final/scheduler/scheduler_config.json").read_text())
        assert sched["shift"] == want and not sched["use_dynamic_shifting"]
    assert model_shift(load_checkpoint(tmp_path / "b" / "checkpoints")[0]) == 2.5


def test_resume_refuses_other_config(tmp_path: Path) -> None:
    cfg = TrainConfig.model_validate(tiny_config(tmp_path / "r"))
    Trainer(cfg).train(stop_after=3)
    other = TrainConfig.model_validate(tiny_config(tmp_path / "r", seed=5))
    with pytest.raises(ConfigError, match="different config"):
        Trainer(other).train(resume=True)


def test_resume_without_checkpoint_is_clear(tmp_path: Path) -> None:
    cfg = TrainConfig.model_validate(tiny_config(tmp_path / "none"))
    with pytest.raises(ConfigError, match="no checkpoint"):
        Trainer(cfg).train(resume=True)


def test_dry_run_one_batch_per_phase(tmp_path: Path) -> None:
    cfg = TrainConfig.model_validate(tiny_config(tmp_path / "d"))
    report = Trainer(cfg).dry_run()
    assert [r["phase"] for r in report] == ["vae", "p1", "p2", "p3", "p4", "p5", "up"]
    assert report[0]["batch_shape"] == (2, 3, 9, 32, 32)
    assert report[1]["batch_shape"][1:] == (8, 5, 4, 4)  # 8x spatial, 2x temporal: 9 -> 5
    assert report[-1]["out_shape"][-2:] == (8, 8)  # 32px latents (4x4) upsampled x2
    assert not (tmp_path / "d" / "checkpoints").exists()


def test_bf16_autocast_and_gradient_checkpointing_run(tmp_path: Path) -> None:
    data = tiny_config(tmp_path / "bf", precision="bf16", gradient_checkpointing=True)
    data["phases"] = [data["phases"][0], {**data["phases"][1], "fg_weight": 4.0}]
    losses: list[float] = []
    Trainer(
        TrainConfig.model_validate(data),
        on_event=lambda k, d: losses.append(d["loss"]) if k == "log" else None,
    ).train()
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.parametrize(
    ("precision", "native", "warned"),
    [("bf16", False, True), ("bf16", True, False), ("fp32", False, False)],
)
def test_bf16_on_a_cpu_without_bf16_hardware_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, precision: str, native: bool, warned: bool
) -> None:
    # which CPU CI lands on varies (AVX2 only, or AVX-512 BF16), so the probe is fixed here;
    # the probe itself runs for real below
    assert isinstance(trainer_mod.cpu_has_native_bf16(), bool)
    monkeypatch.setattr(trainer_mod, "cpu_has_native_bf16", lambda: native)
    events: list[tuple[str, dict]] = []
    Trainer(
        TrainConfig.model_validate(tiny_config(tmp_path / "p", precision=precision)),
        on_event=lambda k, d: events.append((k, d)),
    )
    got = [d for k, d in events if k == "precision_warning"]
    assert bool(got) is warned
    if warned:
        assert "precision: fp32" in got[0]["hint"]


def _ema_config(out: Path, ema_decay: float | None) -> TrainConfig:
    data = tiny_config(out)
    p1 = {**data["phases"][1], "steps": 3, "ema_decay": ema_decay}
    data["phases"] = [data["phases"][0], p1]
    return TrainConfig.model_validate(data)


def test_ema_phase_ends_with_the_average_and_resumes_exactly(tmp_path: Path) -> None:
    from diffusers.training_utils import EMAModel

    from aiprod.training.deploy import load_checkpoint

    # The same run without EMA gives the raw weights after each p1 step (EMA draws no RNG):
    # the vae phase takes 2 steps, so p1's step n is global step 2 + n.
    raw = []
    for n in (1, 2, 3):
        Trainer(_ema_config(tmp_path / f"raw{n}", None)).train(stop_after=2 + n)
        raw.append(_weights(tmp_path / f"raw{n}"))
    w1, w2, w3 = raw
    decay = EMAModel([torch.nn.Parameter(torch.zeros(1))], decay=0.5).get_decay
    d2, d3 = decay(2), decay(3)  # step 1 copies the weights (decay 0)
    assert 0 < d2 < 1 and 0 < d3 < 1

    Trainer(_ema_config(tmp_path / "ema", 0.5)).train()
    we = _weights(tmp_path / "ema")
    tr = [k for k in we if k.startswith("transformer.")]
    assert tr and any(not torch.equal(w2[k], w3[k]) for k in tr)
    e2 = {k: d2 * w1[k] + (1 - d2) * w2[k] for k in tr}
    for k in tr:
        torch.testing.assert_close(we[k], d3 * e2[k] + (1 - d3) * w3[k], rtol=0, atol=1e-6)
    assert all(torch.equal(we[k], w3[k]) for k in we if k.startswith("vae."))

    # Stopped inside the EMA phase, then resumed: bit-exact with the unbroken run.
    cfg = _ema_config(tmp_path / "cut", 0.5)
    Trainer(cfg).train(stop_after=4)
    mid = sorted((tmp_path / "cut" / "checkpoints").glob("step-*"))[-1]
    # The mid-phase checkpoint holds the raw weights (for resume) but evaluates the average.
    wm = _weights(tmp_path / "cut")
    assert all(torch.equal(wm[k], w2[k]) for k in tr)
    comp, _, _ = load_checkpoint(mid)
    for k, v in comp.transformer.state_dict().items():
        torch.testing.assert_close(v, e2[f"transformer.{k}"], rtol=0, atol=1e-6)
    Trainer(cfg).train(resume=True)
    wc = _weights(tmp_path / "cut")
    for k in we:
        assert torch.equal(we[k], wc[k]), k


def test_phase_flow_overrides_the_runs_noise_levels(tmp_path: Path) -> None:
    data = tiny_config(tmp_path / "pf", flow={"num_sigma_buckets": 4})
    p1 = {**data["phases"][1], "steps": 3, "flow": {"sampler": "uniform", "max_sigma": 0.25}}
    p2 = {**data["phases"][2], "steps": 3}
    p3 = {**data["phases"][3], "steps": 2, "flow": {"num_sigma_buckets": 1}}
    data["phases"] = [data["phases"][0], p1, p2, p3]
    seen: dict[str, set[str]] = {"p1": set(), "p2": set(), "p3": set()}
    Trainer(
        TrainConfig.model_validate(data),
        on_event=lambda k, d: (
            seen[d["phase"]].update(x for x in d if x.startswith("loss_sigma/"))
            if k == "log" and d["phase"] in seen
            else None
        ),
    ).train()
    assert seen["p1"] == {"loss_sigma/0.00-0.25"}
    assert len(seen["p2"]) > 1  # the run's logit-normal flow
    assert seen["p3"] == {"loss_sigma/0.00-1.00"}  # the phase's loss-curve buckets


def test_refiner_phase_trains_a_copy_and_stage_one_stays(tmp_path: Path) -> None:
    from aiprod.builtin.sample import generate
    from aiprod.training.components import load_folder

    data = tiny_config(tmp_path / "r")
    vae, p1, up = data["phases"][0], data["phases"][1], data["phases"][-1]
    ref = {
        **p1,
        "name": "ref",
        "target": "refiner",
        "buckets": [[64, 64, 9]],
        "flow": {"sampler": "uniform", "max_sigma": 0.5},
        "lr": {"peak": 1e-5, "schedule": "constant"},  # Adam moves each weight <= ~lr a step
    }
    data["phases"] = [vae, p1, ref, up]
    cfg = TrainConfig.model_validate(data)
    Trainer(cfg).train(stop_after=2)  # after the vae phase: the untrained transformer
    w0 = _weights(tmp_path / "r")
    Trainer(cfg).train(resume=True, stop_after=4)  # after p1's 2 steps
    w1 = _weights(tmp_path / "r")
    Trainer(cfg).train(resume=True)
    tr = [k for k in w1 if k.startswith("transformer.")]
    assert tr and max((w0[k] - w1[k]).abs().max().item() for k in tr) > 1e-4

    comp = load_folder(tmp_path / "r" / "final")
    assert comp.refiner is not None and comp.stage2 is comp.refiner
    for k, v in comp.transformer.state_dict().items():  # stage 1 untouched by the refiner
        assert torch.equal(v, w1[f"transformer.{k}"]), k
    # The refiner started from p1's transformer (not the untrained one), then trained 2 steps.
    moved = [
        (v - w1[f"transformer.{k}"]).abs().max().item()
        for k, v in comp.refiner.state_dict().items()
    ]
    assert 0 < max(moved) < 3e-5, max(moved)

    kw = {"width": 64, "height": 64, "num_frames": 9, "steps": 2, "seed": 1}
    prompt = ["a red circle moving right"]
    two = generate(comp, prompt, two_stage=True, refine_steps=2, **kw)
    one = generate(comp, prompt, **kw)
    comp.refiner = None
    assert not torch.equal(generate(comp, prompt, two_stage=True, refine_steps=2, **kw), two)
    assert torch.equal(generate(comp, prompt, **kw), one)  # stage 1 never uses the refiner


def test_refine_from_trains_the_refiner_on_the_upsampled_latents(tmp_path: Path) -> None:
    data = tiny_config(tmp_path / "rf")
    vae, p1, up = data["phases"][0], data["phases"][1], data["phases"][-1]
    ref = {**p1, "name": "ref", "target": "refiner", "refine_from": 0.4}
    ref["buckets"] = up["buckets"]
    # a loaded model without a latent upsampler (e.g. a checkpoint saved without one)
    _, base = tiny_base_folder(tmp_path / "base")
    shutil.rmtree(base / "latent_upsampler")
    ft = finetune_config(base, tmp_path / "ft")
    ft["phases"][0].update(target="refiner", refine_from=0.4, buckets=[[64, 64, 9]])
    with pytest.raises(ConfigError, match="this model has none: add an upsampler phase"):
        Trainer(TrainConfig.model_validate(ft))
    data["phases"] = [vae, p1, up, ref]
    cfg = TrainConfig.model_validate(data)
    trainer = Trainer(cfg)
    trainer.train()
    w = _weights(tmp_path / "rf")
    # the refiner started as a copy of p1's transformer, and its own phase moved it
    moved = [
        k
        for k in w
        if k.startswith("refiner.") and not torch.equal(w[k], w["transformer." + k[8:]])
    ]
    assert moved
    prepared = trainer.cache.prepare(cfg.phases[-1])
    assert len(prepared.start) == len(prepared.latents) > 0
    for s, x0 in zip(prepared.start, prepared.latents, strict=True):
        assert s.shape == x0.shape and not torch.equal(s, x0)
    # the cached start latents are the upsampler's: another upsampler, another cache entry
    phase = cfg.phases[-1]
    key = trainer.cache.key(phase, heldout=False)
    assert key != trainer.cache.key(phase.model_copy(update={"refine_from": None}), heldout=False)
    assert trainer.comp.upsampler is not None
    with torch.no_grad():
        next(trainer.comp.upsampler.parameters()).add_(1.0)
    assert trainer.cache.key(phase, heldout=False) != key


def _te_config(out: Path) -> TrainConfig:
    data = tiny_config(out)
    vae, p1, p2 = data["phases"][0], data["phases"][1], data["phases"][2]
    lr = {"peak": 1e-5, "warmup_steps": 0, "schedule": "constant"}
    p1 = {**p1, "steps": 3, "lr": lr, "text_encoder_lr": 1e-3, "ema_decay": 0.5}
    data["phases"] = [vae, p1, {**p2, "lr": lr}]
    return TrainConfig.model_validate(data)


def test_text_encoder_lr_trains_the_encoder_with_the_denoiser(tmp_path: Path) -> None:
    cfg = _te_config(tmp_path / "te")
    Trainer(cfg).train(stop_after=2)  # after the vae phase
    w0 = _weights(tmp_path / "te")
    Trainer(cfg).train(resume=True, stop_after=3)  # one p1 step
    w1 = _weights(tmp_path / "te")
    te = [k for k in w0 if k.startswith("text_encoder.")]
    tr = [k for k in w0 if k.startswith("transformer.")]
    assert te and tr

    def moved(keys: list[str], a: dict, b: dict) -> float:
        return max((a[k] - b[k]).abs().max().item() for k in keys)

    # Adam's first step moves each weight by about its lr: the encoder by its own 1e-3, the
    # denoiser by the phase's 1e-5.
    assert 5e-4 < moved(te, w0, w1) <= 1.1e-3
    assert 0 < moved(tr, w0, w1) <= 1.1e-5
    # A mid-phase checkpoint evaluates the average of both (one EMA over their params).
    mid = sorted((tmp_path / "te" / "checkpoints").glob("step-*"))[-1]
    comp, _, _ = load_checkpoint(mid)  # (the average of one step is that step's weights)
    for k, v in comp.text_encoder.state_dict().items():
        torch.testing.assert_close(v, w1[f"text_encoder.{k}"], rtol=0, atol=1e-7)

    Trainer(cfg).train(resume=True, stop_after=5)  # the end of p1 (its EMA average)
    w5 = _weights(tmp_path / "te")
    Trainer(cfg).train(resume=True)
    Trainer(_te_config(tmp_path / "whole")).train()
    wr, ww = _weights(tmp_path / "te"), _weights(tmp_path / "whole")
    for k in ww:  # stopped three times and resumed: bit-exact with the unbroken run
        assert torch.equal(wr[k], ww[k]), k
    assert moved(te, w1, w5) > 1e-4
    # p2 has no text_encoder_lr: it trains the denoiser and leaves the encoder as p1 left it.
    assert moved(tr, w5, ww) > 0
    assert all(torch.equal(w5[k], ww[k]) for k in te)


def test_latent_foreground_covers_the_subject_cells_only() -> None:
    from aiprod.training.data import latent_foreground

    frames = np.full((9, 32, 32, 3), 40, np.uint8)  # a dark background
    frames[0, 8:16, 8:16] = 230  # frame 0: a subject filling latent cell (1, 1) of 4x4
    frames[1:5, 0:8, 24:32] = 230  # frames 1-4 (latent frame 1): cell (0, 3)
    frames[5:, 16:20, 0:8] = 230  # frames 5-8 (latent frame 2): half of cell (2, 0)
    fg = latent_foreground(frames, (3, 4, 4))
    assert fg.shape == (1, 3, 4, 4)
    want = torch.zeros(1, 3, 4, 4)
    want[0, 0, 1, 1] = want[0, 1, 0, 3] = 1.0
    want[0, 2, 2, 0] = 0.5
    # (the 3x3 blur widens a subject by a pixel: 1/8 of a neighbouring cell)
    assert torch.allclose(fg, want, atol=0.13), fg
    # the edge-case grain (std 0.1 of full scale) is not a subject
    rng = np.random.default_rng(0)
    grainy = (128 + rng.normal(0, 25.5, frames.shape)).clip(0, 255).astype(np.uint8)
    assert float(latent_foreground(grainy, (3, 4, 4)).max()) < 0.1
    with pytest.raises(ValueError, match="does not tile"):
        latent_foreground(frames, (4, 4, 4))


def test_fg_weight_weights_the_denoiser_loss_by_subject_cells(tmp_path: Path) -> None:
    data = tiny_config(tmp_path / "fg")
    vae, p1 = data["phases"][0], data["phases"][1]
    data["phases"] = [vae, {**p1, "fg_weight": 4.0}]
    cfg = TrainConfig.model_validate(data)
    trainer = Trainer(cfg)
    trainer.train()
    phase = cfg.phases[1]
    prepared = trainer.cache.prepare(phase)
    assert len(prepared.fg) == len(prepared.latents) > 0
    for fg, x0 in zip(prepared.fg, prepared.latents, strict=True):
        assert fg.shape == (1, *x0.shape[1:])
        assert 0 < float(fg.max()) <= 1  # every phase-1 clip has a subject
    plain = phase.model_copy(update={"fg_weight": 0.0})
    assert trainer.cache.key(phase, heldout=False) != trainer.cache.key(plain, heldout=False)
    # one batch with the same noise: subject cells weighted, not weighted, and a map that
    # weights every cell alike (the per-clip normalisation makes that the plain loss)
    run = trainer._setup_phase(1)
    maps = list(run.data.fg)

    def loss(weight: float, fg: list[torch.Tensor]) -> torch.Tensor:
        trainer.noise.manual_seed(7)
        run.cfg = phase.model_copy(update={"fg_weight": weight})
        run.data.fg = fg
        with torch.no_grad():
            return run.target.loss(run, [0, 1])[1]["per_sample"]

    plain = loss(0.0, maps)
    assert plain.shape == (2,)
    assert torch.allclose(loss(4.0, [torch.ones_like(m) for m in maps]), plain, rtol=1e-5)
    assert not torch.allclose(loss(4.0, maps), plain, rtol=1e-3)


def test_verifier_phase_trains_the_verifier_only_and_ships_it(tmp_path: Path) -> None:
    from aiprod.builtin.verifier import IGNORE
    from aiprod.training.components import load_folder
    from aiprod.training.data import synth_clips

    base_comp, base = tiny_base_folder(tmp_path / "base")
    assert base_comp.verifier is None
    ft = finetune_config(base, tmp_path / "v")
    ft["phases"][0].update(
        name="ver",
        target="verifier",
        data={"synth": {"phase": 5, "count": 6, "seed": 4}},
        flow={"sampler": "uniform", "shift": 2.5},
    )
    cfg = TrainConfig.model_validate(ft)
    trainer = Trainer(cfg)
    assert trainer.comp.verifier is not None
    before = {k: v.clone() for k, v in trainer.comp.verifier.state_dict().items()}
    trainer.train()
    # its items: each clip's normalised latent and what its caption states
    prepared = trainer.cache.prepare(cfg.phases[0])
    clips = synth_clips(phase=5, count=6, seed=4, buckets=[(32, 32, 9)])
    assert trainer.comp.verifier is not None
    want = trainer.comp.verifier.labels([c.caption for c in clips])
    assert torch.equal(torch.stack(prepared.labels), want)
    assert (want != IGNORE).all()  # synthetic captions state all four
    assert len(prepared.latents) == 6 and prepared.latents[0].shape[-2:] == (4, 4)
    final = load_folder(tmp_path / "v" / "final")
    assert final.verifier is not None
    after = final.verifier.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # its phase moved it
    # nothing else was trained
    for name in ("transformer", "vae", "text_encoder"):
        for k, v in getattr(base_comp, name).state_dict().items():
            assert torch.equal(v, getattr(final, name).state_dict()[k]), (name, k)
    # a checkpoint of the run holds it too, so `aiprod eval --candidates 2` can rank with it
    comp, _, _ = load_checkpoint(tmp_path / "v")
    assert comp.verifier is not None


def test_verifier_arch_stage_keeps_or_replaces_a_loaded_verifier(tmp_path: Path) -> None:
    """A verifier phase on a model that has a verifier goes on training it, unless
    ``model.architecture.verifier.stage`` asks for the other stage: then a new one."""
    from aiprod.builtin.verifier import PromptVerifier
    from aiprod.training.components import load_folder, save_folder

    base_comp, base = tiny_base_folder(tmp_path / "base")
    base_comp.verifier = PromptVerifier(in_channels=base_comp.vae.config.latent_channels)
    folder = save_folder(base_comp, tmp_path / "with-verifier")
    assert load_folder(folder).verifier.config.stage == 1  # type: ignore[union-attr]

    def run(arch: dict, out: Path) -> Trainer:
        ft = finetune_config(folder, out)
        ft["model"]["architecture"] = {"verifier": arch}
        ft["phases"][0].update(
            name="ver", target="verifier", data={"synth": {"phase": 5, "count": 2, "seed": 4}}
        )
        return Trainer(TrainConfig.model_validate(ft))

    kept = run({}, tmp_path / "kept").comp.verifier
    assert kept is not None and kept.config.stage == 1
    assert list(kept.config.attributes) == ["count"]  # the default ranking
    loaded = base_comp.verifier.state_dict()
    assert all(torch.equal(v, kept.state_dict()[k]) for k, v in loaded.items())
    # what drafts are ranked by can change without a new verifier
    both = run({"attributes": ["count", "shape"]}, tmp_path / "both").comp.verifier
    assert both is not None and list(both.config.attributes) == ["count", "shape"]
    assert all(torch.equal(v, both.state_dict()[k]) for k, v in loaded.items())
    trainer = run({"stage": 2, "channels": 16}, tmp_path / "new")
    new = trainer.comp.verifier
    assert new is not None and new.config.stage == 2 and new.config.channels == 16
    trainer.train()  # and the checkpoint and the exported folder hold the stage-2 one
    comp, _, _ = load_checkpoint(tmp_path / "new")
    shipped = load_folder(tmp_path / "new" / "final")
    for v in (comp.verifier, shipped.verifier):
        assert v is not None and v.config.stage == 2 and v.config.channels == 16
    bad = finetune_config(folder, tmp_path / "x")
    bad["model"]["architecture"] = {"verifier": {"channels": 12}}  # its GroupNorms take 8s
    with pytest.raises(ValueError, match="multiple of 8"):
        TrainConfig.model_validate(bad)


def test_debug_config_trains_every_target(tmp_path: Path) -> None:
    """configs/debug.yaml goes through every target and exports a whole model folder."""
    from aiprod.training.components import load_folder
    from aiprod.training.config import load_config

    cfg = load_config(Path(__file__).parents[2] / "configs" / "debug.yaml")
    assert {p.target for p in cfg.phases} == {
        "vae",
        "transformer",
        "upsampler",
        "refiner",
        "verifier",
    }
    result = Trainer(cfg.model_copy(update={"output_dir": tmp_path / "debug"})).train()
    assert result["steps"] == sum(p.steps or 0 for p in cfg.phases)
    final = load_folder(Path(result["final"]))
    assert final.refiner is not None and final.verifier is not None
    assert final.upsampler is not None
