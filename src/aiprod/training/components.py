"""The model parts the trainer works on, in the diffusers LTX-Video layout.

A model folder (what ``aiprod models register`` installs and the engine's ``builtin`` backend
loads) holds ``transformer/`` (LTXVideoTransformer3DModel), ``vae/`` (AutoencoderKLLTXVideo),
``text_encoder/`` (T5EncoderModel), ``tokenizer/`` (a word-level fast tokenizer built here,
never downloaded), ``latent_upsampler/`` (LTXLatentUpsamplerModel), ``scheduler/`` and
``model_index.json``, plus ``aiprod.json`` (training facts: steps, data, fps). An optional
``refiner/`` (another LTXVideoTransformer3DModel, trained by ``target: refiner`` phases) runs
the two-stage refinement in place of ``transformer/``: stage 1 (half size, from pure noise) and
stage 2 (full size, from noise level ~0.4) then need not share one set of weights.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from aiprod.core.errors import ConfigError
from aiprod.core.model_files import DEFAULT_TEXT_LENGTH, tokenizer_length
from aiprod.training.config import BuiltinArch, ModelConfig, UpsamplerArch, VerifierArch

log = logging.getLogger(__name__)

PAD, UNK, EOS = "<pad>", "<unk>", "</s>"
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def caption_words(text: str) -> list[str]:
    """Lower-cased words and punctuation, the tokenizer's unit."""
    return _WORD.findall(text.lower())


def build_tokenizer(words: set[str] | list[str], *, max_length: int) -> Any:
    """A deterministic word-level tokenizer over ``words`` (plus pad/unk/eos), built locally."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, EOS: 1, UNK: 2}
    for w in sorted(set(words)):
        if w not in vocab:
            vocab[w] = len(vocab)
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Split(pattern=Regex(_WORD.pattern), behavior="isolated"),
        ]
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", special_tokens=[(EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        unk_token=UNK,
        eos_token=EOS,
        model_max_length=max_length,
        padding_side="right",
    )


@dataclass
class Components:
    """Everything needed to train and sample; ``trainable`` names what this run may update."""

    tokenizer: Any
    text_encoder: torch.nn.Module
    transformer: torch.nn.Module
    vae: torch.nn.Module
    upsampler: torch.nn.Module | None
    scheduler_config: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    refiner: torch.nn.Module | None = None  # stage-2 denoiser; None = the transformer refines
    # ranks the drafts of a clip (aiprod.builtin.verifier); None = one draft per prompt
    verifier: torch.nn.Module | None = None
    # prompt tokens per caption (see text_length()); None = the tokenizer's own, if sane
    text_length: int | None = None

    @property
    def stage2(self) -> torch.nn.Module:
        """The denoiser of the two-stage refinement."""
        return self.refiner if self.refiner is not None else self.transformer

    def ensure_refiner(self) -> torch.nn.Module:
        """The refiner, first made as a copy of the transformer when the model has none."""
        if self.refiner is None:
            self.refiner = copy.deepcopy(self.transformer)
        return self.refiner

    def trained_by(self, target: str, *, text_encoder: bool) -> list[torch.nn.Module]:
        """The modules a phase trains, in the order of its optimizer's (and EMA's) params."""
        mods = [self.modules()[target]]
        return mods + [self.text_encoder] if text_encoder else mods

    @property
    def max_length(self) -> int:
        """Prompt tokens per caption: padded and truncated to this."""
        return text_length(self.text_length, self.tokenizer)

    def to(self, device: torch.device) -> Components:
        for m in self.modules().values():
            m.to(device)
        return self

    def modules(self) -> dict[str, torch.nn.Module]:
        mods = {
            "text_encoder": self.text_encoder,
            "transformer": self.transformer,
            "vae": self.vae,
        }
        if self.upsampler is not None:
            mods["upsampler"] = self.upsampler
        if self.refiner is not None:
            mods["refiner"] = self.refiner
        if self.verifier is not None:
            mods["verifier"] = self.verifier
        return mods

    def ensure_upsampler(self, arch: UpsamplerArch) -> torch.nn.Module:
        """The latent upsampler, first made (random, ``arch``-sized) for this autoencoder's
        latents when the model has none."""
        if self.upsampler is None:
            from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel

            self.upsampler = LTXLatentUpsamplerModel(
                in_channels=self.vae.config.latent_channels,
                mid_channels=arch.mid_channels,
                num_blocks_per_stage=arch.num_blocks_per_stage,
            )
        return self.upsampler

    def ensure_verifier(self, arch: VerifierArch | None = None) -> torch.nn.Module:
        """The prompt verifier a config's ``model.architecture.verifier`` asks for: first made
        (random) for this autoencoder's latents; a loaded one that ranks another ``stage``
        (None: any) is replaced by a new one; ``attributes`` (None: as it is) sets what it
        ranks drafts by."""
        arch = arch or VerifierArch()
        stage, attributes = arch.stage, arch.attributes
        if self.verifier is not None and stage not in (None, self.verifier.config.stage):
            log.info(
                "replacing the loaded stage-%d prompt verifier by a new stage-%d one",
                self.verifier.config.stage,
                stage,
            )
            self.verifier = None
        if self.verifier is None:
            from aiprod.builtin.verifier import PromptVerifier

            kw = {} if attributes is None else {"attributes": tuple(attributes)}
            self.verifier = PromptVerifier(
                in_channels=self.vae.config.latent_channels,
                channels=arch.channels,
                stage=stage or 1,
                **kw,
            )
        elif attributes is not None:
            self.verifier.rank_by(attributes)
        return self.verifier


def text_length(configured: int | None, tokenizer: Any, family: str = "ltxv") -> int:
    """The prompt length a model trains with, by the rule the load-time checks state
    (``core.model_files.resolve_text_length``): ``configured`` (the registry entry's
    ``options.max_sequence_length``), else the tokenizer's ``model_max_length`` when it is a
    real limit (a tokenizer saved without one reports 1e30), else the family's default (128,
    diffusers' ``LTXPipeline`` default, for LTX-Video)."""
    if configured is not None:
        return int(configured)
    own = tokenizer_length(getattr(tokenizer, "model_max_length", None))
    return own if own is not None else DEFAULT_TEXT_LENGTH.get(family, DEFAULT_TEXT_LENGTH["ltxv"])


def scheduler_config() -> dict[str, Any]:
    return {
        "_class_name": "FlowMatchEulerDiscreteScheduler",
        "num_train_timesteps": 1000,
        "shift": 1.0,
        "use_dynamic_shifting": False,
    }


def build_builtin(
    arch: BuiltinArch, *, vocab: set[str], seed: int, tokenizer: Any = None
) -> Components:
    """A fresh, randomly initialised small LTX-Video model (deterministic for ``seed``).

    ``tokenizer`` replaces the one built from ``vocab`` (when rebuilding a checkpoint).
    """
    from diffusers import AutoencoderKLLTXVideo, LTXVideoTransformer3DModel
    from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel
    from transformers import T5Config, T5EncoderModel

    te, tr, va, up = arch.text_encoder, arch.transformer, arch.vae, arch.upsampler
    if len(va.layers_per_block) != len(va.block_out_channels) + 1:
        raise ConfigError("model.architecture.vae.layers_per_block needs len(block_out_channels)+1")
    if len(va.spatio_temporal_scaling) != len(va.block_out_channels):
        raise ConfigError("vae.spatio_temporal_scaling needs one entry per block_out_channels")
    if up.mid_channels % 32:
        raise ConfigError("model.architecture.upsampler.mid_channels must be a multiple of 32")
    if tokenizer is None:
        tokenizer = build_tokenizer(vocab, max_length=te.max_length)
    torch.manual_seed(seed)
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=te.d_model,
            d_kv=te.d_model // te.num_heads,
            d_ff=te.d_ff,
            num_layers=te.num_layers,
            num_heads=te.num_heads,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=32,
            dropout_rate=0.0,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    text_encoder.requires_grad_(False).eval()
    n = len(va.block_out_channels)
    vae = AutoencoderKLLTXVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=va.latent_channels,
        block_out_channels=va.block_out_channels,
        decoder_block_out_channels=va.block_out_channels,
        down_block_types=("LTXVideoDownBlock3D",) * n,
        layers_per_block=va.layers_per_block,
        decoder_layers_per_block=va.layers_per_block,
        spatio_temporal_scaling=va.spatio_temporal_scaling,
        decoder_spatio_temporal_scaling=va.spatio_temporal_scaling,
        decoder_inject_noise=(False,) * (n + 1),
        downsample_type=("conv",) * n,
        upsample_residual=(False,) * n,
        upsample_factor=(1,) * n,
        patch_size=va.patch_size,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )
    transformer = LTXVideoTransformer3DModel(
        in_channels=va.latent_channels,
        out_channels=va.latent_channels,
        num_attention_heads=tr.num_attention_heads,
        attention_head_dim=tr.attention_head_dim,
        cross_attention_dim=tr.num_attention_heads * tr.attention_head_dim,
        num_layers=tr.num_layers,
        caption_channels=te.d_model,
    )
    upsampler = LTXLatentUpsamplerModel(
        in_channels=va.latent_channels,
        mid_channels=up.mid_channels,
        num_blocks_per_stage=up.num_blocks_per_stage,
        dims=3,
        spatial_upsample=True,
        temporal_upsample=False,
    )
    return Components(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        transformer=transformer,
        vae=vae,
        upsampler=upsampler,
        scheduler_config=scheduler_config(),
    )


def load_folder(path: Path, *, need_upsampler: bool = False) -> Components:
    """Load a diffusers-layout LTX-Video folder (local files only)."""
    from diffusers import AutoencoderKLLTXVideo, LTXVideoTransformer3DModel
    from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel
    from transformers import AutoTokenizer, T5EncoderModel

    from aiprod.builtin.verifier import PromptVerifier

    path = Path(path)
    for sub in ("transformer", "vae", "text_encoder", "tokenizer"):
        if not (path / sub).is_dir():
            raise ConfigError(
                f"{path} is not an LTX-Video model folder: {sub}/ is missing "
                "(expected transformer/, vae/, text_encoder/, tokenizer/)"
            )
    up_dir, ref_dir, ver_dir = path / "latent_upsampler", path / "refiner", path / "verifier"
    if need_upsampler and not up_dir.is_dir():
        raise ConfigError(f"{path}: latent_upsampler/ is missing but an upsampler phase needs it")
    info_file = path / "aiprod.json"
    sched_file = path / "scheduler" / "scheduler_config.json"
    return Components(
        tokenizer=AutoTokenizer.from_pretrained(path / "tokenizer", local_files_only=True),
        text_encoder=T5EncoderModel.from_pretrained(path / "text_encoder", local_files_only=True)
        .requires_grad_(False)
        .eval(),
        transformer=LTXVideoTransformer3DModel.from_pretrained(path / "transformer"),
        vae=AutoencoderKLLTXVideo.from_pretrained(path / "vae"),
        upsampler=LTXLatentUpsamplerModel.from_pretrained(up_dir) if up_dir.is_dir() else None,
        refiner=LTXVideoTransformer3DModel.from_pretrained(ref_dir) if ref_dir.is_dir() else None,
        verifier=PromptVerifier.from_pretrained(ver_dir) if ver_dir.is_dir() else None,
        scheduler_config=json.loads(sched_file.read_text())
        if sched_file.is_file()
        else scheduler_config(),
        info=json.loads(info_file.read_text()) if info_file.is_file() else {},
    )


def build_components(
    cfg: ModelConfig, *, vocab: set[str], seed: int, tokenizer: Any = None
) -> Components:
    """Build (``builtin``) or load (``init_from`` / ``registry``) the model parts, with the
    config's ``scheduler_shift`` applied to the sampling schedule."""
    comp = _build_or_load(cfg, vocab=vocab, seed=seed, tokenizer=tokenizer)
    if cfg.grow_layers is not None:
        comp.transformer = grow_transformer(comp.transformer, cfg.grow_layers)
    if cfg.scheduler_shift is not None:
        comp.scheduler_config = {
            **comp.scheduler_config,
            "shift": cfg.scheduler_shift,
            "use_dynamic_shifting": False,
        }
    return comp


def grow_transformer(transformer: Any, num_layers: int) -> Any:
    """Deepen an LTX-Video transformer to ``num_layers`` blocks without changing its output.

    Block expansion as in LLaMA Pro (Wu et al., 2024): after evenly spread original blocks a
    copy of that block is inserted with its three output projections (self-attention,
    cross-attention, feed-forward) zeroed, so each new block adds nothing to the residual
    stream until training moves those projections. Returns a new model; the input is not
    modified. A model already that deep is returned as is.
    """
    from diffusers import LTXVideoTransformer3DModel

    have = int(transformer.config.num_layers)
    if num_layers == have:
        return transformer
    if num_layers < have:
        raise ConfigError(
            f"model.grow_layers={num_layers} is less than the loaded denoiser's {have} blocks; "
            f"growing only adds blocks: set model.grow_layers above {have} or remove it"
        )
    extra = num_layers - have
    # each block gets extra // have copies; the remainder goes to evenly spread blocks,
    # the last one included
    rem = extra % have
    more = {have - 1 - (k * have) // rem for k in range(rem)}
    grown = LTXVideoTransformer3DModel.from_config({**transformer.config, "num_layers": num_layers})
    state = {
        k: v for k, v in transformer.state_dict().items() if not k.startswith("transformer_blocks.")
    }
    order: list[tuple[int, bool]] = []  # (original block, is a zeroed copy)
    for i in range(have):
        order.append((i, False))
        order.extend((i, True) for _ in range(extra // have + (i in more)))
    src_blocks = transformer.transformer_blocks
    for j, (i, zeroed) in enumerate(order):
        for k, v in src_blocks[i].state_dict().items():
            state[f"transformer_blocks.{j}.{k}"] = v.clone()
        if zeroed:
            for proj in ("attn1.to_out.0", "attn2.to_out.0", "ff.net.2"):
                for part in ("weight", "bias"):
                    key = f"transformer_blocks.{j}.{proj}.{part}"
                    state[key] = torch.zeros_like(state[key])
    grown.load_state_dict(state)
    log.info("denoiser grown from %d to %d blocks (zero-initialised copies)", have, num_layers)
    return grown


def _build_or_load(cfg: ModelConfig, *, vocab: set[str], seed: int, tokenizer: Any) -> Components:
    if cfg.source == "builtin" and cfg.init_from is None:
        return build_builtin(cfg.architecture, vocab=vocab, seed=seed, tokenizer=tokenizer)
    if cfg.source == "builtin":
        return load_folder(cfg.init_from)  # type: ignore[arg-type]
    entry = base_entry(cfg)
    if entry.family not in ("ltxv", "builtin") or entry.path is None or not entry.path.is_dir():
        why = (
            "LTX-2 is served but not trained by aiprod train (docs/training.md, 'LTX-2')"
            if entry.family == "ltx2"
            else "the trainer needs an ltxv/builtin entry whose path is a diffusers folder"
        )
        raise ConfigError(f"model '{entry.id}' ({entry.family}) cannot be trained here: {why}")
    comp = load_folder(entry.path)
    comp.text_length = entry.options.max_sequence_length
    return comp


def base_models_file(cfg: ModelConfig) -> Path | None:
    """The models.toml a ``registry`` run reads: ``model.models_file``, else
    ``AIPROD_MODELS_FILE``, else (None) the packaged one."""
    from aiprod.core.settings import Settings

    return cfg.models_file or Settings().models_file


def base_entry(cfg: ModelConfig) -> Any:
    """The registry entry a ``registry`` run fine-tunes (``ModelEntry``)."""
    from aiprod.core.registry import load_registry

    return load_registry(base_models_file(cfg)).get(cfg.registry_id)


def _atomic_dir(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))


def _swap_in(tmp: Path, final: Path) -> None:
    if final.exists():
        old = final.with_name(f".{final.name}.old.{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def save_folder(comp: Components, dest: Path, *, info: dict[str, Any] | None = None) -> Path:
    """Write the diffusers-layout model folder atomically (temp dir + rename)."""
    dest = Path(dest)
    tmp = _atomic_dir(dest)
    try:
        comp.transformer.save_pretrained(tmp / "transformer")
        comp.vae.save_pretrained(tmp / "vae")
        comp.text_encoder.save_pretrained(tmp / "text_encoder")
        comp.tokenizer.save_pretrained(tmp / "tokenizer")
        if comp.upsampler is not None:
            comp.upsampler.save_pretrained(tmp / "latent_upsampler")
        if comp.refiner is not None:
            comp.refiner.save_pretrained(tmp / "refiner")
        if comp.verifier is not None:
            comp.verifier.save_pretrained(tmp / "verifier")
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(
            json.dumps(comp.scheduler_config, indent=2)
        )
        index = {
            "_class_name": "LTXPipeline",
            "_diffusers_version": __import__("diffusers").__version__,
            "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
            "text_encoder": ["transformers", type(comp.text_encoder).__name__],
            # the class it has (a fine-tuned LTX-Video keeps its own, e.g. T5TokenizerFast)
            "tokenizer": ["transformers", type(comp.tokenizer).__name__],
            "transformer": ["diffusers", "LTXVideoTransformer3DModel"],
            "vae": ["diffusers", "AutoencoderKLLTXVideo"],
        }
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
        (tmp / "aiprod.json").write_text(json.dumps({**comp.info, **(info or {})}, indent=2))
        _swap_in(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
