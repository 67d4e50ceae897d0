"""Input interpolation: MixUp, and the identity."""

from __future__ import annotations

import torch

from pipelines.mixing.base import Draws, Mixer, MixOutput, interpolate, partners_of, register


@register("mixup")
class MixUp(Mixer):
    """mixup (Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018).

    ``x_i = lam_i * x_i + (1 - lam_i) * x_index[i]`` with ``lam ~ Beta(alpha, alpha)``.
    """

    def combine(self, x: torch.Tensor, draws: Draws, generator: torch.Generator) -> MixOutput:
        mixed = interpolate(x, partners_of(x, draws.index), draws.lam)
        return MixOutput(x=mixed, index=draws.index, lam=draws.lam)


@register("none")
class NoMixing(Mixer):
    """The identity: every sample is its own partner and ``lam == 1``. Draws nothing."""

    def __call__(self, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator) -> MixOutput:
        batch = x.shape[0]
        index = torch.arange(batch, device=x.device)
        return MixOutput(x=x, index=index, lam=torch.ones(batch, device=x.device))

    def combine(self, x: torch.Tensor, draws: Draws, generator: torch.Generator) -> MixOutput:
        """Inside a mixture: keep every input (the shared partner is irrelevant at ``lam == 1``)."""
        return MixOutput(x=x, index=draws.index, lam=torch.ones(x.shape[0], device=x.device))
