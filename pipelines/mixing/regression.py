"""Mixing for regression: C-Mixup."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from pipelines.errors import ConfigError
from pipelines.mixing.base import Mixer, MixOutput, interpolate, partners_of, register


def label_kernel_partners(y: torch.Tensor, bandwidth: float, generator: torch.Generator) -> torch.Tensor:
    """For each row ``i``, a partner ``j != i`` drawn with probability ∝ exp(-|y_i - y_j|² / 2σ²).

    One ``[B, B]`` kernel and one batched ``torch.multinomial``; a batch of one pairs with itself.
    """
    batch = y.shape[0]
    targets = y.reshape(batch, -1).to(generator.device, torch.float64)
    logits = -torch.cdist(targets, targets).pow(2) / (2 * bandwidth**2)
    if batch > 1:
        logits.fill_diagonal_(float("-inf"))
    probabilities = torch.softmax(logits, dim=1)  # stable even when every kernel value underflows
    return torch.multinomial(probabilities, 1, generator=generator).squeeze(1)


@register("cmixup")
@dataclass(frozen=True)
class CMixup(Mixer):
    """C-Mixup (Yao et al., "C-Mixup: Improving Generalization in Regression", NeurIPS 2022).

    Partners are sampled within the batch by label similarity (a Gaussian kernel of bandwidth
    ``bandwidth`` on the targets), then inputs and targets are mixed with ``lam ~ Beta(alpha,
    alpha)``: ``x = lam x_i + (1 - lam) x_j`` and ``out.y = lam y_i + (1 - lam) y_j``.
    """

    bandwidth: float = 1.0
    partners_are_a_permutation: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.bandwidth > 0:
            raise ConfigError(f"mixing.bandwidth must be > 0, got {self.bandwidth!r}")

    def __call__(self, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator) -> MixOutput:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x must be (B, ...) with B = len(y); got x {tuple(x.shape)}, y {tuple(y.shape)}")
        index = label_kernel_partners(y, self.bandwidth, generator)
        draws = self.draw(x.shape[0], generator, x.device, index=index)
        targets = y.to(torch.float32) if not y.is_floating_point() else y
        return MixOutput(
            x=interpolate(x, partners_of(x, draws.index), draws.lam),
            index=draws.index,
            lam=draws.lam,
            y=interpolate(targets, partners_of(targets, draws.index), draws.lam),
        )
