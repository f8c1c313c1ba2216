from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from aiprod.core.errors import ConfigError
from aiprod.training.config import TrainConfig, load_config

from .conftest import tiny_config


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


CONFIGS = Path(__file__).parents[2] / "configs"
TRAINING_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if p.name != "data.yaml")


@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=lambda p: p.name)
def test_every_training_config_loads(path: Path) -> None:
    load_config(path)


def test_builtin_recipe_is_a_chain_from_scratch() -> None:
    """Each step starts from the previous step's output, the first from nothing."""
    steps = [load_config(p) for p in sorted(CONFIGS.glob("builtin-step*.yaml"))]
    assert len(steps) == 5
    assert steps[0].model.init_from is None
    for before, after in zip(steps, steps[1:], strict=False):
        assert after.model.init_from == before.output_dir / "final"
    first = steps[0]
    denoiser = [p.name for p in first.phases if p.target == "transformer"]
    # the five curriculum phases, in order (then a short full-size phase)
    assert [n[:3] for n in denoiser[:5]] == ["p1-", "p2-", "p3-", "p4-", "p5-"]
    assert first.phases[0].target == "vae" and first.phases[-1].target == "upsampler"
    # the shipped model's parts: a refiner, a trained text encoder, a verifier
    targets = {p.target for s in steps for p in s.phases}
    assert targets == {"vae", "transformer", "refiner", "upsampler", "verifier"}


def test_unknown_field_is_named(tmp_path: Path) -> None:
    data = tiny_config(tmp_path / "o")
    data["phases"][1]["stepz"] = 3
    with pytest.raises(ConfigError, match=r"phases\.1\.stepz"):
        load_config(_write(tmp_path, data))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"buckets": [[30, 32, 9]]}, "multiples of 16"),
        ({"buckets": [[32, 32, 10]]}, "8k\\+1"),
        ({"epochs": 1}, "exactly one of steps or epochs"),
    ],
)
def test_bad_phase_rejected(tmp_path: Path, change: dict, message: str) -> None:
    data = tiny_config(tmp_path / "o")
    data["phases"][1].update(change)
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, data))


def test_missing_file_names_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_fingerprint_ignores_logging_but_not_training(tmp_path: Path) -> None:
    a = TrainConfig.model_validate(tiny_config(tmp_path / "a"))
    b = TrainConfig.model_validate(tiny_config(tmp_path / "b", monitor={"log_every": 7}))
    c = TrainConfig.model_validate(tiny_config(tmp_path / "a", seed=1))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_lora_refuses_vae_phase(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode=lora"):
        TrainConfig.model_validate(tiny_config(tmp_path, mode="lora"))


def test_phase_lr_warmup_then_cosine_to_floor() -> None:
    from aiprod.training.config import TransformerPhase
    from aiprod.training.schedule import PhaseLR

    phase = TransformerPhase.model_validate(
        {
            "name": "p",
            "data": {"synth": {"phase": 1, "count": 1}},
            "steps": 110,
            "buckets": [[32, 32, 9]],
            "lr": {"peak": 1.0, "warmup_steps": 10, "schedule": "cosine", "min_ratio": 0.1},
        }
    )
    lr = PhaseLR(phase, 110)
    assert lr.lr(0) == pytest.approx(0.1) and lr.lr(9) == pytest.approx(1.0)
    assert lr.lr(10) == pytest.approx(1.0) and lr.lr(60) == pytest.approx(0.55)
    assert lr.lr(110) == pytest.approx(0.1)


def test_flow_max_sigma_bounds_the_noise_levels() -> None:
    import torch

    from aiprod.training.config import FlowConfig
    from aiprod.training.flow import sample_sigmas

    gen = torch.Generator().manual_seed(0)
    full = sample_sigmas(4000, FlowConfig(sampler="uniform"), generator=gen)
    low = sample_sigmas(4000, FlowConfig(sampler="uniform", max_sigma=0.5), generator=gen)
    assert full.max() > 0.9 and 0.45 < low.max() <= 0.5 and low.min() > 0
    # the scaling keeps the sampler's shape: a uniform draw stays uniform on (0, 0.5]
    assert abs(float(low.mean()) - 0.25) < 0.02


def test_phase_flow_is_for_transformer_phases_and_in_the_fingerprint(tmp_path: Path) -> None:
    base = TrainConfig.model_validate(tiny_config(tmp_path / "f"))
    data = tiny_config(tmp_path / "f")
    data["phases"][1]["flow"] = {"max_sigma": 0.5}
    assert TrainConfig.model_validate(data).fingerprint() != base.fingerprint()
    data["phases"][0]["flow"] = {"max_sigma": 0.5}  # the vae phase
    with pytest.raises(ConfigError, match="transformer, refiner and verifier phases only"):
        load_config(_write(tmp_path, data))
    data["phases"][0].pop("flow")
    data["phases"][1]["target"] = "refiner"  # a refiner phase takes a flow too
    TrainConfig.model_validate(data)
    data["mode"], data["phases"] = "lora", [data["phases"][1]]  # LoRA adapts stage 1 only
    with pytest.raises(ConfigError, match="remove vae/upsampler/refiner phases"):
        load_config(_write(tmp_path, data))


def test_text_encoder_lr_is_for_full_transformer_phases(tmp_path: Path) -> None:
    data = tiny_config(tmp_path / "t")
    data["phases"][1]["text_encoder_lr"] = 1e-3
    TrainConfig.model_validate(data)
    data["phases"][1]["target"] = "refiner"  # the refiner shares stage 1's encoder
    with pytest.raises(ConfigError, match="text_encoder_lr applies to transformer phases"):
        load_config(_write(tmp_path, data))
    data["phases"][1]["target"] = "transformer"
    data["mode"], data["phases"] = "lora", [data["phases"][1]]
    with pytest.raises(ConfigError, match="remove text_encoder_lr"):
        load_config(_write(tmp_path, data))


def test_fg_weight_is_not_for_upsampler_phases(tmp_path: Path) -> None:
    data = tiny_config(tmp_path / "f")
    data["phases"][1]["fg_weight"] = 4.0  # a transformer phase (the vae phase has one too)
    TrainConfig.model_validate(data)
    data["phases"][-1]["fg_weight"] = 4.0  # the upsampler phase
    with pytest.raises(ConfigError, match="fg_weight applies to vae, transformer and refiner"):
        load_config(_write(tmp_path, data))


def test_synth_mix_is_checked(tmp_path: Path) -> None:
    data = tiny_config(tmp_path / "m")
    synth = data["phases"][1]["data"]["synth"]
    synth.update(phase=5, mix={2: 2, 3: 2, 1: 1})
    assert load_config(_write(tmp_path, data)).phases[1].data.synth.mix == {1: 1, 2: 2, 3: 2}
    synth["mix"] = {6: 1}
    with pytest.raises(ConfigError, match="phases 1-4"):
        load_config(_write(tmp_path, data))
    synth.update(phase=2, mix={2: 1})
    with pytest.raises(ConfigError, match="only phase 5 mixes phases"):
        load_config(_write(tmp_path, data))


def test_synth_min_gap_is_checked(tmp_path: Path) -> None:
    data = tiny_config(tmp_path / "g")
    synth = data["phases"][1]["data"]["synth"]
    synth["min_gap"] = 0.1
    assert load_config(_write(tmp_path, data)).phases[1].data.synth.min_gap == 0.1
    synth["min_gap"] = 0.4
    with pytest.raises(ConfigError, match="min_gap"):
        load_config(_write(tmp_path, data))


def test_refine_path_is_the_flow_path_for_a_perfect_upsampler_and_lands_on_the_clip() -> None:
    import torch

    from aiprod.training.flow import add_noise, refine_path, velocity_target

    g = torch.Generator().manual_seed(0)
    x0, start, noise = (torch.randn(3, 4, 2, 3, 3, generator=g) for _ in range(3))
    sig = torch.tensor([0.4, 0.25, 0.01])
    # start == x0: exactly the usual flow path and velocity target
    xt, v = refine_path(x0, x0, noise, sig, 0.4)
    assert torch.allclose(xt, add_noise(x0, noise, sig), atol=1e-6)
    assert torch.allclose(v, velocity_target(x0, noise), atol=1e-5)
    # otherwise: at s0 it is where the two-stage path starts (the upsampled latent noised to
    # s0), and Euler steps along its target from there (the sampler's schedule) reach x0
    xt, v = refine_path(x0, start, noise, torch.full((3,), 0.4), 0.4)
    assert torch.allclose(xt, 0.6 * start + 0.4 * noise, atol=1e-6)
    x, sigmas = xt, [0.4, 0.4 * 2 / 3, 0.4 / 3, 0.0]
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        xs, vs = refine_path(x0, start, noise, torch.full((3,), s), 0.4)
        assert torch.allclose(xs, x, atol=1e-5)  # the sampler stays on the path
        x = x + (s_next - s) * vs
    assert torch.allclose(x, x0, atol=1e-5)
    assert not torch.allclose(start, x0, atol=1e-2)


def test_refine_from_is_for_refiner_phases(tmp_path: Path) -> None:
    data = tiny_config(tmp_path / "rf")
    data["phases"][1].update(target="refiner", refine_from=0.4)
    cfg = TrainConfig.model_validate(data)
    assert (
        cfg.fingerprint() != TrainConfig.model_validate(tiny_config(tmp_path / "rf")).fingerprint()
    )
    data["phases"][1]["flow"] = {"sampler": "uniform", "max_sigma": 0.5}
    with pytest.raises(ConfigError, match="remove flow.max_sigma=0.5"):
        load_config(_write(tmp_path, data))
    data["phases"][1]["flow"]["max_sigma"] = 0.4  # the same range twice is fine
    TrainConfig.model_validate(data)
    data["phases"][1]["target"] = "transformer"
    with pytest.raises(ConfigError, match="refine_from applies to refiner phases only"):
        load_config(_write(tmp_path, data))


def test_bucket_the_autoencoder_cannot_divide_is_named_before_training(tmp_path: Path) -> None:
    """Multiples of 16 pass the config (a 32-multiple's two-stage half); the model then checks
    them against its own autoencoder, here one that packs 32 px into a latent."""
    from aiprod.training.trainer import Trainer

    from .conftest import TINY_ARCH

    data = tiny_config(tmp_path / "o")
    data["model"]["architecture"] = {
        **TINY_ARCH,
        "vae": {**TINY_ARCH["vae"], "patch_size": 8, "spatio_temporal_scaling": [True, True]},
    }
    data["phases"][2]["buckets"] = [[48, 64, 9]]
    cfg = load_config(_write(tmp_path, data))
    with pytest.raises(ConfigError, match=r"phase 'p2': bucket 48x64 .* divisible by 32"):
        Trainer(cfg)
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_verifier_phases_take_flow_but_not_fg_weight(tmp_path: Path) -> None:
    data = tiny_config(tmp_path / "v")
    ver = {**data["phases"][1], "name": "ver", "target": "verifier"}
    ver["flow"] = {"sampler": "uniform", "shift": 2.5}  # the noise levels it is trained at
    data["phases"] = [ver]
    TrainConfig.model_validate(data)
    data["phases"] = [{**ver, "fg_weight": 2.0}]
    with pytest.raises(ConfigError, match="remove it from this verifier phase"):
        load_config(_write(tmp_path, data))
    data["phases"] = [ver]
    data["model"] = {"source": "registry", "registry_id": "ltxv"}
    with pytest.raises(ConfigError, match="a verifier phase is only for the built-in"):
        load_config(_write(tmp_path, data))


@pytest.mark.parametrize(
    ("target", "field", "fix"),
    [
        ("transformer", {"kl_weight": 1e-4}, "kl_weight applies to vae phases only"),
        ("upsampler", {"caption_dropout": 0.0}, "caption_dropout applies to transformer and "),
        ("vae", {"text_encoder_lr": 1e-3}, "text_encoder_lr applies to transformer phases only"),
        ("verifier", {"posterior_noise": 0.0}, "posterior_noise applies to vae phases only"),
    ],
)
def test_a_field_of_another_target_is_refused_with_the_fix(
    tmp_path: Path, target: str, field: dict, fix: str
) -> None:
    """Each kind of phase is its own model: a field it does not use (which the flat phase
    config of before took and ignored) names the phases it belongs to and the fix."""
    data = tiny_config(tmp_path / "x")
    data["phases"] = [{**data["phases"][1], "target": target, **field}]
    with pytest.raises(ConfigError, match=rf"phases\.0: .*{fix}.*remove it from this {target}"):
        load_config(_write(tmp_path, data))


def test_unknown_target_is_named(tmp_path: Path) -> None:
    data = tiny_config(tmp_path / "x")
    data["phases"][1]["target"] = "decoder"
    with pytest.raises(ConfigError, match="target must be one of transformer, refiner, vae"):
        load_config(_write(tmp_path, data))


def test_checkpoint_configs_of_the_flat_phase_config_still_load(tmp_path: Path) -> None:
    """Checkpoints written before the phase union hold every field in every phase; they
    load (aiprod eval, models register) with the same fingerprint."""
    from aiprod.training.config import drop_other_targets_fields

    cfg = TrainConfig.model_validate(tiny_config(tmp_path / "o"))
    flat_defaults = {
        "caption_dropout": 0.1,
        "flow": None,
        "text_encoder_lr": None,
        "refine_from": None,
        "kl_weight": 1e-6,
        "posterior_noise": 1.0,
        "fg_weight": 0.0,
        "l1_weight": 0.5,
    }
    raw = cfg.model_dump(mode="json")
    raw["phases"] = [{**flat_defaults, **p} for p in raw["phases"]]
    with pytest.raises(ValueError, match="applies to"):
        TrainConfig.model_validate(raw)
    old = TrainConfig.model_validate(drop_other_targets_fields(raw))
    assert old.fingerprint() == cfg.fingerprint()
    assert old.phases[0].posterior_noise == 0.5  # type: ignore[union-attr]


def test_the_phase_union_keeps_the_flat_configs_fingerprint() -> None:
    """Checkpoints of runs made before the union resume: the fingerprint of a config with every
    kind of phase is the one the flat phase config gave (recorded on commit 2ad001a)."""
    data = tiny_config(Path("/x"))
    p1 = data["phases"][1]
    data["phases"][1] = {**p1, "text_encoder_lr": 1e-3}
    refiner = {"name": "r", "target": "refiner", "refine_from": 0.4, "flow": {"sampler": "uniform"}}
    verifier = {"name": "v", "target": "verifier", "flow": {"sampler": "uniform", "shift": 2.5}}
    data["phases"] += [{**p1, **refiner}, {**p1, **verifier, "weight_decay": 0.01}]
    assert TrainConfig.model_validate(data).fingerprint() == "84552d14f6979083"
