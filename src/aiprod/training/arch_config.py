"""The built-in model's architecture settings (``model.arch`` of a training config)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextEncoderArch(_Strict):
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    d_ff: int = 128
    max_length: int = 32


class TransformerArch(_Strict):
    num_layers: int = 4
    num_attention_heads: int = 4
    attention_head_dim: int = 16


class VaeArch(_Strict):
    latent_channels: int = 16
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    spatio_temporal_scaling: tuple[bool, ...] = (True, True, False)
    layers_per_block: tuple[int, ...] = (1, 1, 1, 1)
    patch_size: int = 4


class UpsamplerArch(_Strict):
    mid_channels: int = 32
    num_blocks_per_stage: int = 1


class VerifierArch(_Strict):
    """The prompt verifier a verifier phase trains (``aiprod.builtin.verifier``)."""

    # 1: ranks stage-1 drafts (train it on half-size buckets); 2: ranks the drafts refined at
    # full size (train it on full-size buckets). None: a loaded model's verifier as it is,
    # else 1. A loaded verifier of the other stage is replaced by a new one.
    stage: Literal[1, 2] | None = None
    channels: int = Field(default=48, ge=8, multiple_of=8)
    # what a draft is ranked by: the summed log likelihood of these stated attributes (all
    # four heads are trained either way). None: a loaded verifier's own, else count only.
    attributes: list[Literal["count", "shape", "color", "direction"]] | None = Field(
        default=None, min_length=1
    )


class BuiltinArch(_Strict):
    text_encoder: TextEncoderArch = Field(default_factory=TextEncoderArch)
    transformer: TransformerArch = Field(default_factory=TransformerArch)
    vae: VaeArch = Field(default_factory=VaeArch)
    upsampler: UpsamplerArch = Field(default_factory=UpsamplerArch)
    verifier: VerifierArch = Field(default_factory=VerifierArch)
