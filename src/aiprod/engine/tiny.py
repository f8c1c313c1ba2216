"""Tiny random LTX-Video / LTX-2 components, built locally with a fixed seed (no hub).

Used by the built-in model when it has no trained weights yet, by the tests (saved to a tmp
folder in the diffusers layout and loaded back through the registry) and by the benchmark's
``--tiny`` smoke mode. The tokenizer is ByT5's byte tokenizer: it needs no vocabulary file,
so it can be built anywhere and handles any prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# ByT5 = 256 byte ids + 3 specials + 125 sentinel ids.
BYTE_VOCAB = 384


def tiny_tokenizer(max_length: int = 128) -> Any:
    from transformers import ByT5Tokenizer

    return ByT5Tokenizer(model_max_length=max_length)


def tiny_t5_encoder(*, d_model: int = 32, seed: int = 0) -> Any:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=BYTE_VOCAB,
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=1,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
    )
    torch.manual_seed(seed)
    return T5EncoderModel(config).eval()


def tiny_ltxv_components(*, seed: int = 0, text_dim: int = 32) -> dict[str, Any]:
    """A complete tiny LTX-Video model (8x spatial, 8x temporal VAE) plus an x2 latent upsampler.

    The same seed always gives the same weights.
    """
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXVideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = LTXVideoTransformer3DModel(
            in_channels=8,
            out_channels=8,
            patch_size=1,
            patch_size_t=1,
            num_attention_heads=4,
            attention_head_dim=8,
            cross_attention_dim=32,
            num_layers=1,
            caption_channels=text_dim,
        )
        torch.manual_seed(seed + 1)
        vae = AutoencoderKLLTXVideo(
            in_channels=3,
            out_channels=3,
            latent_channels=8,
            block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8),
            layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1, 1),
            spatio_temporal_scaling=(True, True, True, False),
            decoder_spatio_temporal_scaling=(True, True, True, False),
            decoder_inject_noise=(False, False, False, False, False),
            upsample_residual=(False, False, False, False),
            upsample_factor=(1, 1, 1, 1),
            timestep_conditioning=False,
            patch_size=1,
            patch_size_t=1,
            encoder_causal=True,
            decoder_causal=False,
        )
        vae.use_framewise_encoding = False
        vae.use_framewise_decoding = False
        torch.manual_seed(seed + 2)
        upsampler = LTXLatentUpsamplerModel(
            in_channels=8, mid_channels=32, num_blocks_per_stage=1, dims=3
        )
        text_encoder = tiny_t5_encoder(d_model=text_dim, seed=seed + 3)
    return {
        "transformer": transformer.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder,
        "tokenizer": tiny_tokenizer(),
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "latent_upsampler": upsampler.eval(),
    }


def save_components(components: dict[str, Any], folder: str | Path) -> Path:
    """Save components in the diffusers folder layout (one subfolder per component)."""
    folder = Path(folder)
    for name, comp in components.items():
        if comp is None:
            continue
        comp.save_pretrained(folder / name)
    return folder
