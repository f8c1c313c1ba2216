"""The built-in model's own training targets (reached from training only through
``aiprod.training.targets.factory``): the prompt verifier, a classifier of noisy stage-1
latents that ranks the drafts of a clip (``aiprod.builtin.verifier``)."""

from __future__ import annotations

import torch

from aiprod.builtin.verifier import classification_loss
from aiprod.training.config import VerifierPhase
from aiprod.training.data import Clip
from aiprod.training.flow import add_noise, sample_sigmas
from aiprod.training.targets.base import Loss, PhaseData, PhaseRun, Target, latent_items


class VerifierTarget(Target):
    """Cross-entropy of the four attribute heads on latents noised to the phase's ``flow``
    levels; its items are each clip's normalised latent and what its caption states."""

    name = "verifier"
    unused_parameters = True  # a head gets no loss when no caption of the batch states it

    def setup_model(self, phases: list[VerifierPhase]) -> None:
        self.comp.ensure_verifier(self.ctx.cfg.model.architecture.verifier)

    def items(self, phase: VerifierPhase, clips: list[Clip], *, heldout: bool) -> PhaseData:
        data = latent_items(self.comp, clips, self.ctx.device)
        assert self.comp.verifier is not None
        data.labels = list(self.comp.verifier.labels([c.caption for c in clips]))
        return data

    def loss(self, run: PhaseRun, idx: list[int]) -> Loss:
        phase, dev, gen, ranks = run.cfg, self.ctx.device, self.ctx.noise, self.ctx.ranks
        assert isinstance(phase, VerifierPhase)
        b = len(idx)
        pos = ranks.local(b)  # this rank's rows of the global batch (all in one process)
        mine = [idx[p] for p in pos]
        x0 = torch.stack([run.data.latents[i] for i in mine]).to(dev)
        labels = torch.stack([run.data.labels[i] for i in mine]).to(dev)
        sig = sample_sigmas(b, self.ctx.flow(phase.flow), generator=gen)
        sig = ranks.pick(sig, pos).to(dev)
        noise = ranks.pick(torch.randn((b, *x0.shape[1:]), generator=gen), pos).to(dev)
        logits = run.module(add_noise(x0, noise, sig), sig)
        loss = classification_loss(logits, labels)
        return loss, {"shape": tuple(x0.shape), "sigmas": sig.cpu()}
