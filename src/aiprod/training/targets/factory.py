"""The table from a phase's ``target`` to its :class:`~aiprod.training.targets.base.Target`.

Its order is the order targets set up the model (the upsampler before the refiner, whose
``refine_from`` needs it). The built-in model's own targets are imported from
``aiprod.builtin`` here and nowhere else in training.
"""

from __future__ import annotations

from collections.abc import Callable

from aiprod.training.targets.autoencoder import UpsamplerTarget, VaeTarget
from aiprod.training.targets.base import Target, TrainContext
from aiprod.training.targets.denoiser import RefinerTarget, TransformerTarget


def _verifier() -> type[Target]:
    from aiprod.builtin.targets import VerifierTarget

    return VerifierTarget


TARGETS: dict[str, Callable[[], type[Target]]] = {
    "vae": lambda: VaeTarget,
    "transformer": lambda: TransformerTarget,
    "upsampler": lambda: UpsamplerTarget,
    "refiner": lambda: RefinerTarget,
    "verifier": _verifier,
}


def make_targets(ctx: TrainContext) -> dict[str, Target]:
    """One target per kind of phase in ``ctx.cfg``, each having set up the model's parts it
    trains, in the table's order."""
    phases = ctx.cfg.phases
    out: dict[str, Target] = {}
    for name, cls in TARGETS.items():
        own = [p for p in phases if p.target == name]
        if own:
            out[name] = cls()(ctx)
            out[name].setup_model(own)
    return out
