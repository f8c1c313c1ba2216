"""model.grow_layers: deepening a loaded denoiser by zero-initialised block copies."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import LTXVideoTransformer3DModel
from pydantic import ValidationError

from aiprod.core.errors import ConfigError
from aiprod.training.components import grow_transformer
from aiprod.training.config import TrainConfig
from aiprod.training.trainer import Trainer

from .conftest import finetune_config, tiny_base_folder

OUT_PROJ = ("attn1.to_out.0", "attn2.to_out.0", "ff.net.2")


def _tiny(num_layers: int) -> LTXVideoTransformer3DModel:
    torch.manual_seed(0)
    m = LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        num_attention_heads=2,
        attention_head_dim=8,
        cross_attention_dim=16,
        num_layers=num_layers,
        caption_channels=16,
    )
    # random init zeroes nothing that matters here, but make every block non-trivial anyway
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def _run(m: LTXVideoTransformer3DModel) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3 * 4 * 4, 8, generator=g)
    ctx = torch.randn(2, 5, 16, generator=g)
    with torch.no_grad():
        return m(
            hidden_states=x,
            encoder_hidden_states=ctx,
            timestep=torch.tensor([100.0, 900.0]),
            encoder_attention_mask=torch.ones(2, 5),
            num_frames=3,
            height=4,
            width=4,
            return_dict=False,
        )[0]


@pytest.mark.parametrize(("have", "want"), [(2, 4), (3, 5), (2, 7)])
def test_grown_model_computes_the_same_and_keeps_the_original(have: int, want: int) -> None:
    base = _tiny(have)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    grown = grow_transformer(base, want)
    assert grown.config.num_layers == want and len(grown.transformer_blocks) == want
    torch.testing.assert_close(_run(grown), _run(base), rtol=0, atol=0)
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())

    # Every original block appears once, in order, with its weights; the others are copies of
    # their predecessor with the three output projections zeroed.
    originals = [
        j
        for j, blk in enumerate(grown.transformer_blocks)
        if blk.attn1.to_out[0].weight.abs().sum() > 0
    ]
    assert len(originals) == have and originals[0] == 0
    for i, j in enumerate(originals):
        for k, v in base.transformer_blocks[i].state_dict().items():
            assert torch.equal(grown.transformer_blocks[j].state_dict()[k], v)
    copies = [j for j in range(want) if j not in originals]
    for j in copies:
        blk = grown.transformer_blocks[j].state_dict()
        src = grown.transformer_blocks[max(o for o in originals if o < j)].state_dict()
        for k, v in blk.items():
            if k.startswith(OUT_PROJ):
                assert not v.any(), k
            else:
                assert torch.equal(v, src[k]), k
    assert copies[-1] == want - 1  # the last original block gets a copy

    assert grow_transformer(base, have) is base


def test_growing_to_fewer_blocks_names_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"grow_layers=2 is less than .* 3 blocks"):
        grow_transformer(_tiny(3), 2)


def test_grow_layers_needs_a_loaded_model() -> None:
    with pytest.raises(ValidationError, match="architecture.transformer.num_layers instead"):
        TrainConfig.model_validate(
            {
                "model": {"grow_layers": 4},
                "phases": [{"name": "p", "data": {"synth": {"phase": 1}}, "steps": 1}],
            }
        )


def _grow_config(base_dir: Path, out: Path) -> TrainConfig:
    return TrainConfig.model_validate(
        finetune_config(
            base_dir, out, name="grow", model={"grow_layers": 3}, checkpoint={"every": 1}
        )
    )


def test_trainer_grows_trains_the_new_blocks_and_resumes_exactly(tmp_path: Path) -> None:
    _, base_dir = tiny_base_folder(tmp_path / "base")
    Trainer(_grow_config(base_dir, tmp_path / "a")).train()
    out = LTXVideoTransformer3DModel.from_pretrained(tmp_path / "a" / "final" / "transformer")
    assert out.config.num_layers == 3
    # the zeroed copies' output projections moved: the new blocks are being trained
    for j in (1, 2):
        assert out.transformer_blocks[j].ff.net[2].weight.abs().sum() > 0

    # stopped after one step, resumed by a fresh trainer: the grown model's checkpoint loads
    # into a model grown the same way and the run ends bit for bit where the unbroken one did
    Trainer(_grow_config(base_dir, tmp_path / "b")).train(stop_after=1)
    Trainer(_grow_config(base_dir, tmp_path / "b")).train(resume=True)
    resumed = LTXVideoTransformer3DModel.from_pretrained(tmp_path / "b" / "final" / "transformer")
    a, b = out.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
