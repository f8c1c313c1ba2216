"""The ``vae`` and ``upsampler`` targets: the autoencoder and the two-stage x2 latent upsampler."""

from __future__ import annotations

import torch

from aiprod.training.config import UpsamplerPhase, VaePhase
from aiprod.training.data import Clip, frames_to_tensor
from aiprod.training.encode import latent_shape, normalize_latents
from aiprod.training.targets.base import Loss, PhaseData, PhaseRun, Target, encode_video, half


def encode_decode(
    vae: torch.nn.Module, x: torch.Tensor, eps: torch.Tensor, posterior_noise: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clips -> (reconstruction, the sampled latent, each clip's KL to the prior); ``eps`` is
    the posterior's standard noise, drawn by the caller (its shape is the latent's)."""
    dist = vae.encode(x).latent_dist
    assert eps.shape == dist.mean.shape, (eps.shape, dist.mean.shape)
    z = dist.mean + posterior_noise * dist.std * eps
    return vae.decode(z).sample, z, dist.kl()


class AutoencoderPass(torch.nn.Module):
    """:func:`encode_decode` as a module's forward, so DDP (which syncs gradients only
    through its module's forward) can wrap the autoencoder's training pass."""

    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(
        self, x: torch.Tensor, eps: torch.Tensor, posterior_noise: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return encode_decode(self.vae, x, eps, posterior_noise)


class VaeTarget(Target):
    """Reconstruction (MSE + L1, subjects weighted by ``fg_weight``) + KL on raw clips; the
    phase ends by fitting the per-channel latent statistics, so the flow sees unit scale."""

    name = "vae"
    cached = False  # its items are the clips' pixels, and its own latents change as it trains

    def items(self, phase: VaePhase, clips: list[Clip], *, heldout: bool) -> PhaseData:
        data = PhaseData.of(clips)
        data.pixels = [c.frames for c in clips]
        return data

    def ddp_module(self) -> torch.nn.Module:
        return AutoencoderPass(self.module())

    def loss(self, run: PhaseRun, idx: list[int]) -> Loss:
        phase, dev, ranks = run.cfg, self.ctx.device, self.ctx.ranks
        assert isinstance(phase, VaePhase)
        b = len(idx)
        pos = ranks.local(b)  # this rank's rows of the global batch (all in one process)
        x = torch.stack([frames_to_tensor(run.data.pixels[idx[p]]) for p in pos]).to(dev)
        _, _, f, h, w = x.shape
        vae = self.comp.vae
        shape = (b, *latent_shape(vae, width=w, height=h, num_frames=f))
        eps = ranks.pick(torch.randn(shape, generator=self.ctx.noise), pos).to(dev)
        if ranks.world > 1:  # DDP(AutoencoderPass): DDP syncs gradients through a forward
            rec, z, kl_per = run.module(x, eps, phase.posterior_noise)
        else:
            rec, z, kl_per = encode_decode(run.module, x, eps, phase.posterior_noise)
        wgt = torch.ones_like(x[:, :1])
        if phase.fg_weight:
            med = x.flatten(3).median(dim=-1).values[..., None, None]  # (B, 3, F, 1, 1)
            fg = (x - med).abs().amax(dim=1, keepdim=True) > 0.2
            wgt = wgt + phase.fg_weight * fg.float()
        err = rec.float() - x
        mse = (err.pow(2) * wgt).mean() / wgt.mean()
        l1 = (err.abs() * wgt).mean() / wgt.mean()
        kl = kl_per.mean() / z[0].numel()
        loss = mse + phase.l1_weight * l1 + phase.kl_weight * kl
        return loss, {
            "shape": tuple(x.shape),
            "latent_shape": tuple(z.shape),
            "mse": float(mse.detach()),
        }

    @torch.no_grad()
    def end(self, run: PhaseRun) -> None:
        """Per-channel latent mean/std over the phase's clips."""
        vae = self.comp.vae
        vae.eval()
        zs = [
            encode_video(self.comp, px, self.ctx.device).flatten(1) for px in run.data.pixels[:256]
        ]
        z = torch.cat(zs, dim=1)  # (C, N)
        vae.latents_mean.copy_(z.mean(dim=1))
        vae.latents_std.copy_(z.std(dim=1).clamp_min(1e-4))
        vae.train()


class UpsamplerTarget(Target):
    """Latent MSE (normalised) between the upsampled half-size latent and the full-size one."""

    name = "upsampler"

    def setup_model(self, phases: list[UpsamplerPhase]) -> None:
        self.comp.ensure_upsampler(self.ctx.cfg.model.architecture.upsampler)

    def items(self, phase: UpsamplerPhase, clips: list[Clip], *, heldout: bool) -> PhaseData:
        data = PhaseData.of(clips)  # (half-size latent, full-size latent) pairs
        for c in clips:
            data.high.append(encode_video(self.comp, c.frames, self.ctx.device))
            data.low.append(encode_video(self.comp, half(c), self.ctx.device))
        return data

    def loss(self, run: PhaseRun, idx: list[int]) -> Loss:
        dev = self.ctx.device
        mine = [idx[p] for p in self.ctx.ranks.local(len(idx))]  # this rank's rows
        lo = torch.stack([run.data.low[i] for i in mine]).to(dev)
        hi = torch.stack([run.data.high[i] for i in mine]).to(dev)
        pred = run.module(lo)
        vae = self.comp.vae
        loss = (normalize_latents(vae, pred.float()) - normalize_latents(vae, hi)).pow(2).mean()
        return loss, {"shape": tuple(lo.shape), "out_shape": tuple(pred.shape)}
