"""Flow-matching targets: stage 1's denoiser (``transformer``) and the stage-2 ``refiner``."""

from __future__ import annotations

import torch

from aiprod.core.errors import ConfigError
from aiprod.training.config import RefinerPhase, TransformerPhase, trains_text_encoder
from aiprod.training.data import Clip
from aiprod.training.encode import embed_ids, tokenize, velocity
from aiprod.training.flow import add_noise, refine_path, sample_sigmas, velocity_target
from aiprod.training.targets.base import (
    Loss,
    PhaseData,
    PhaseRun,
    Target,
    embed_captions,
    latent_items,
)

Denoising = TransformerPhase | RefinerPhase


class DenoiserTarget(Target):
    """The flow-matching loss on cached latents and caption embeddings, with caption dropout
    (for guidance), optional subject weighting (``fg_weight``) and, for the refiner, the
    refinement's own path (``refine_from``)."""

    # the empty caption for caption dropout: (embedding, mask, token ids)
    uncond: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @staticmethod
    def weighted(phase: Denoising, *, heldout: bool) -> bool:
        """Whether a phase's items need subject maps (the held-out loss is unweighted)."""
        return bool(phase.fg_weight) and not heldout

    @staticmethod
    def refine_from(phase: Denoising) -> float | None:
        return phase.refine_from if isinstance(phase, RefinerPhase) else None

    def key_parts(self, phase: Denoising, *, heldout: bool) -> dict[str, object]:
        parts: dict[str, object] = {}
        if trains_text_encoder(phase):  # embedded on use, through the encoder being trained
            parts["te"] = None
        if self.refine_from(phase) is not None:  # its items hold the upsampler's output too
            assert self.comp.upsampler is not None
            from aiprod.training.data import tensors_digest

            parts["upsampler"] = tensors_digest(self.comp.upsampler.state_dict())
        if self.weighted(phase, heldout=heldout):  # its items hold the subject maps
            parts["fg"] = 1
        return parts

    def items(self, phase: Denoising, clips: list[Clip], *, heldout: bool) -> PhaseData:
        data = latent_items(
            self.comp,
            clips,
            self.ctx.device,
            foreground=self.weighted(phase, heldout=heldout),
            refine_start=self.refine_from(phase) is not None,
        )
        data.emb, data.mask, data.ids = embed_captions(
            self.comp, [c.caption for c in clips], self.ctx.device
        )
        return data

    def begin(self, index: int, *, phase_step: int) -> None:
        # (again each phase: an earlier phase may have trained the encoder)
        t, m = tokenize(self.comp, [""])
        self.uncond = (embed_ids(self.comp, t, self.ctx.device)[0].cpu(), m[0], t[0])

    def loss(self, run: PhaseRun, idx: list[int]) -> Loss:
        d, dev, gen, phase, ranks = (
            run.data,
            self.ctx.device,
            self.ctx.noise,
            run.cfg,
            self.ctx.ranks,
        )
        assert isinstance(phase, TransformerPhase | RefinerPhase)
        # the whole batch's random numbers (same on every rank), this rank's rows of them
        b = len(idx)
        pos = ranks.local(b)
        mine = [idx[p] for p in pos]
        x0 = torch.stack([d.latents[i] for i in mine]).to(dev)
        mask = torch.stack([d.mask[i] for i in mine])
        drop = ranks.pick(torch.rand(b, generator=gen) < phase.caption_dropout, pos)
        assert self.uncond is not None
        mask[drop] = self.uncond[1]
        if run.text_encoder is not None:  # embed now, through the encoder being trained
            ids = torch.stack([d.ids[i] for i in mine])
            ids[drop] = self.uncond[2]
            emb = run.text_encoder(ids.to(dev))[0].float()
        else:
            emb = torch.stack([d.emb[i] for i in mine])
            emb[drop] = self.uncond[0]
        flow = self.ctx.flow(phase.flow)
        s0 = self.refine_from(phase)
        if s0 is not None:
            flow = flow.model_copy(update={"max_sigma": s0})
        sig = ranks.pick(sample_sigmas(b, flow, generator=gen), pos)
        noise = ranks.pick(torch.randn((b, *x0.shape[1:]), generator=gen), pos).to(dev)
        if s0 is None:
            xt, target = add_noise(x0, noise, sig.to(dev)), velocity_target(x0, noise)
        else:
            # The straight path from where the refinement starts (the upsampled latent noised
            # to s0) to the clip; with a perfect upsampler it is the usual flow path.
            start = torch.stack([d.start[i] for i in mine]).to(dev)
            xt, target = refine_path(x0, start, noise, sig.to(dev), s0)
        v = velocity(
            run.module, self.comp.vae, xt, sig.to(dev), emb.to(dev), mask.to(dev), fps=d.fps[idx[0]]
        )
        err = (v.float() - target).pow(2)
        if phase.fg_weight:  # subjects' cells count 1 + fg_weight times, the mean kept at 1
            w = 1 + phase.fg_weight * torch.stack([d.fg[i] for i in mine]).to(dev)
            err = err * (w / w.mean(dim=(1, 2, 3, 4), keepdim=True))
        per = err.mean(dim=(1, 2, 3, 4))
        return per.mean(), {
            "per_sample": per.detach().cpu(),
            "sigmas": sig,
            "sigma_buckets": flow.num_sigma_buckets,
            "shape": tuple(x0.shape),
        }


class TransformerTarget(DenoiserTarget):
    """Stage 1's denoiser (and the text encoder with it when ``text_encoder_lr`` is set)."""

    name = "transformer"
    validates = True

    def param_groups(self, phase: TransformerPhase) -> list[tuple[torch.nn.Module, float]]:
        groups = [(self.module(), 1.0)]
        if phase.text_encoder_lr is not None:
            groups.append((self.comp.text_encoder, phase.text_encoder_lr / phase.lr.peak))
        return groups

    def trained_parts(self, phase: TransformerPhase) -> set[str]:
        return {"transformer", "text_encoder"} if trains_text_encoder(phase) else {"transformer"}


class RefinerTarget(DenoiserTarget):
    """The stage-2 denoiser. A model without one starts it as a copy of the transformer as it
    is when the first refiner phase begins (the module exists from the start, so checkpoints
    hold it)."""

    name = "refiner"
    copies = False  # whether the first refiner phase starts from the transformer

    def setup_model(self, phases: list[RefinerPhase]) -> None:
        self.copies = self.comp.refiner is None
        self.comp.ensure_refiner()
        if any(p.refine_from is not None for p in phases) and self.comp.upsampler is None:
            raise ConfigError(
                "refine_from trains the refiner on the latent upsampler's output, and this "
                "model has none: add an upsampler phase before it, or load a model with one"
            )

    def begin(self, index: int, *, phase_step: int) -> None:
        first = next(i for i, p in enumerate(self.ctx.cfg.phases) if p.target == self.name)
        if index == first and self.copies and phase_step == 0:
            self.comp.ensure_refiner().load_state_dict(self.comp.transformer.state_dict())
        super().begin(index, phase_step=phase_step)
