"""Tiny random LTX-Video / LTX-2 components, built locally with a fixed seed (no hub).

Served by a ``builtin`` entry with ``options.tiny_seed`` (tests, benchmarks), saved to a tmp
folder in the diffusers layout and loaded back through the registry by the tests, and used by
the GPU benchmark's ``--tiny`` smoke mode. The tokenizer is ByT5's byte tokenizer: it needs
no vocabulary file, so it can be built anywhere and handles any prompt.
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


def _tiny_video_vae(cls: Any, *, latent_channels: int, scaling: tuple[bool, ...], **kw: Any) -> Any:
    """A tiny LTX-style video VAE: one block of 8 channels per entry of ``scaling`` (which
    blocks halve F/H/W), one layer each, no patching, causal encoder, whole-video coding."""
    n = len(scaling)
    vae = cls(
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        block_out_channels=(8,) * n,
        decoder_block_out_channels=(8,) * n,
        layers_per_block=(1,) * (n + 1),
        decoder_layers_per_block=(1,) * (n + 1),
        spatio_temporal_scaling=scaling,
        decoder_spatio_temporal_scaling=scaling,
        decoder_inject_noise=(False,) * (n + 1),
        upsample_residual=(False,) * n,
        upsample_factor=(1,) * n,
        timestep_conditioning=False,
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
        **kw,
    )
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    return vae


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
        vae = _tiny_video_vae(
            AutoencoderKLLTXVideo, latent_channels=8, scaling=(True, True, True, False)
        )
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


def tiny_gemma_encoder(*, hidden: int = 32, layers: int = 2, seed: int = 0) -> Any:
    """A tiny Gemma-3 text model (the LTX-2 text encoder family), byte vocabulary."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=BYTE_VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=512,
        sliding_window=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    torch.manual_seed(seed)
    return Gemma3ForCausalLM(config).eval()


def tiny_ltx2_components(*, seed: int = 0) -> dict[str, Any]:
    """A complete tiny LTX-2 model (video + audio, 8x VAE) plus an x2 latent upsampler."""
    from diffusers import (
        AutoencoderKLLTX2Audio,
        AutoencoderKLLTX2Video,
        FlowMatchEulerDiscreteScheduler,
        LTX2VideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx2 import LTX2LatentUpsamplerModel, LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    with torch.random.fork_rng(devices=[]):
        text_encoder = tiny_gemma_encoder(seed=seed)
        text_cfg = text_encoder.config
        torch.manual_seed(seed + 1)
        transformer = LTX2VideoTransformer3DModel(
            in_channels=4,
            out_channels=4,
            patch_size=1,
            patch_size_t=1,
            num_attention_heads=2,
            attention_head_dim=8,
            cross_attention_dim=16,
            vae_scale_factors=(8, 8, 8),
            audio_in_channels=4,
            audio_out_channels=4,
            audio_num_attention_heads=2,
            audio_attention_head_dim=4,
            audio_cross_attention_dim=8,
            num_layers=2,
            qk_norm="rms_norm_across_heads",
            caption_channels=text_cfg.hidden_size,
            rope_double_precision=False,
            rope_type="split",
        )
        torch.manual_seed(seed + 2)
        connectors = LTX2TextConnectors(
            caption_channels=text_cfg.hidden_size,
            text_proj_in_factor=text_cfg.num_hidden_layers + 1,
            video_connector_num_attention_heads=4,
            video_connector_attention_head_dim=8,
            video_connector_num_layers=1,
            video_connector_num_learnable_registers=None,
            audio_connector_num_attention_heads=4,
            audio_connector_attention_head_dim=8,
            audio_connector_num_layers=1,
            audio_connector_num_learnable_registers=None,
            connector_rope_base_seq_len=32,
            rope_theta=10000.0,
            rope_double_precision=False,
            causal_temporal_positioning=False,
            rope_type="split",
        )
        torch.manual_seed(seed + 3)
        vae = _tiny_video_vae(
            AutoencoderKLLTX2Video,
            latent_channels=4,
            scaling=(True, True, True),
            downsample_type=("spatiotemporal", "spatiotemporal", "spatiotemporal"),
            upsample_type=("spatiotemporal", "spatiotemporal", "spatiotemporal"),
        )
        torch.manual_seed(seed + 4)
        audio_vae = AutoencoderKLLTX2Audio(
            base_channels=4,
            output_channels=2,
            ch_mult=(1,),
            num_res_blocks=1,
            attn_resolutions=None,
            in_channels=2,
            resolution=32,
            latent_channels=2,
            norm_type="pixel",
            causality_axis="height",
            dropout=0.0,
            mid_block_add_attention=False,
            sample_rate=16000,
            mel_hop_length=160,
            is_causal=True,
            mel_bins=8,
        )
        torch.manual_seed(seed + 5)
        vocoder = LTX2Vocoder(
            in_channels=audio_vae.config.output_channels * audio_vae.config.mel_bins,
            hidden_channels=32,
            out_channels=2,
            upsample_kernel_sizes=[4, 4],
            upsample_factors=[2, 2],
            resnet_kernel_sizes=[3],
            resnet_dilations=[[1, 3, 5]],
            leaky_relu_negative_slope=0.1,
            output_sampling_rate=16000,
        )
        torch.manual_seed(seed + 6)
        upsampler = LTX2LatentUpsamplerModel(
            in_channels=4, mid_channels=32, num_blocks_per_stage=1, use_rational_resampler=False
        )
    return {
        "transformer": transformer.eval(),
        "vae": vae.eval(),
        "audio_vae": audio_vae.eval(),
        "text_encoder": text_encoder,
        "tokenizer": tiny_tokenizer(max_length=64),
        "connectors": connectors.eval(),
        "vocoder": vocoder.eval(),
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "latent_upsampler": upsampler.eval(),
    }
