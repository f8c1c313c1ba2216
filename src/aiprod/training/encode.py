"""What the trainer's targets and the built-in model's sampler share: prompt tokens and
embeddings, latent normalisation with the VAE's statistics, and the transformer's velocity
prediction, in diffusers' ``LTXPipeline`` conventions (see ``aiprod.builtin.sample``)."""

from __future__ import annotations

import torch

from aiprod.training.components import Components


def tokenize(comp: Components, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (token ids (B, L), attention mask (B, L)), padded to the tokenizer's max length."""
    tok = comp.tokenizer(
        prompts,
        padding="max_length",
        max_length=comp.max_length,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    )
    return tok.input_ids, tok.attention_mask


def encode_prompts(
    comp: Components, prompts: list[str], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (embeddings (B, L, D), attention mask (B, L)) as LTXPipeline computes them."""
    ids, mask = tokenize(comp, prompts)
    return embed_ids(comp, ids, device), mask.to(device)


@torch.no_grad()
def embed_ids(
    comp: Components, ids: torch.Tensor, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Token ids (B, L) -> text-encoder embeddings (B, L, D), float32."""
    return comp.text_encoder(ids.to(device))[0].float()


def normalize_latents(vae: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    mean = vae.latents_mean.view(1, -1, 1, 1, 1).to(z)
    std = vae.latents_std.view(1, -1, 1, 1, 1).to(z)
    return (z - mean) * vae.config.scaling_factor / std


def denormalize_latents(vae: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    mean = vae.latents_mean.view(1, -1, 1, 1, 1).to(z)
    std = vae.latents_std.view(1, -1, 1, 1, 1).to(z)
    return z * std / vae.config.scaling_factor + mean


def latent_shape(vae: torch.nn.Module, *, width: int, height: int, num_frames: int) -> tuple:
    sr, tr = vae.spatial_compression_ratio, vae.temporal_compression_ratio
    c = vae.config.latent_channels
    return (c, (num_frames - 1) // tr + 1, height // sr, width // sr)


def velocity(
    transformer: torch.nn.Module,
    vae: torch.nn.Module,
    x: torch.Tensor,  # (B, C, f, h, w) normalised latents
    sigmas: torch.Tensor,  # (B,)
    emb: torch.Tensor,  # (B, L, D)
    mask: torch.Tensor,  # (B, L)
    *,
    fps: float,
) -> torch.Tensor:
    """The transformer's velocity prediction, unpacked back to (B, C, f, h, w)."""
    b, c, f, h, w = x.shape
    tokens = x.flatten(2).transpose(1, 2)  # (B, f*h*w, C), LTX packing with patch size 1
    scale = (
        vae.temporal_compression_ratio / fps,
        vae.spatial_compression_ratio,
        vae.spatial_compression_ratio,
    )
    out = transformer(
        hidden_states=tokens,
        encoder_hidden_states=emb,
        timestep=(sigmas * 1000.0).view(b, 1),
        encoder_attention_mask=mask,
        num_frames=f,
        height=h,
        width=w,
        rope_interpolation_scale=scale,
        return_dict=False,
    )[0]
    return out.transpose(1, 2).reshape(b, c, f, h, w)
