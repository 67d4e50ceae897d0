"""Box-mask mixing: CutMix, for 1-D, 2-D and 3-D inputs, one box per sample, no batch loop."""

from __future__ import annotations

import torch

from pipelines.mixing.base import Draws, Mixer, MixOutput, register


def random_boxes(
    lam: torch.Tensor, spatial: tuple[int, ...], generator: torch.Generator
) -> torch.Tensor:
    """Boolean masks ``[B, *spatial]``, True inside one random axis-aligned box per sample.

    Each box side is ``floor(size * (1 - lam) ** (1 / ndim))``, so before clipping the box covers a
    fraction ``1 - lam`` of the input; its centre is uniform over positions and the box is
    clipped at the borders (the caller recomputes λ from the mask).
    """
    batch, ndim = lam.shape[0], len(spatial)
    device = generator.device
    ratio = (1 - lam.to(device=device, dtype=torch.float64)).clamp(0, 1) ** (1.0 / ndim)
    inside = torch.ones((batch, *spatial), dtype=torch.bool, device=device)
    for axis, size in enumerate(spatial):  # over at most 3 axes, never over the batch
        side = torch.floor(ratio * size).long()
        centre = torch.floor(torch.rand(batch, generator=generator, dtype=torch.float64, device=device) * size)
        low = (centre.long() - side // 2).clamp(0, size)
        high = (centre.long() - side // 2 + side).clamp(0, size)
        positions = torch.arange(size, device=device)
        along = (positions >= low[:, None]) & (positions < high[:, None])  # [B, size]
        view = [batch] + [1] * ndim
        view[axis + 1] = size
        inside &= along.reshape(view)
    return inside


@register("cutmix")
class CutMix(Mixer):
    """CutMix (Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with
    Localizable Features", ICCV 2019).

    A box of area ``1 - lam`` is pasted from the partner; ``lam`` is then corrected to the exact
    fraction of the sample's own elements left after clipping.
    """

    def combine(self, x: torch.Tensor, draws: Draws, generator: torch.Generator) -> MixOutput:
        spatial = tuple(x.shape[2:])
        if not 1 <= len(spatial) <= 3:
            raise ValueError(f"cutmix takes (B, C, *spatial) inputs with 1-3 spatial axes, got {tuple(x.shape)}")
        if self.mode == "batch":
            boxes = random_boxes(draws.lam[:1], spatial, generator).expand(x.shape[0], *spatial)
        else:
            boxes = random_boxes(draws.lam, spatial, generator)
        boxes = boxes.to(x.device) & draws.mixed.reshape(-1, *([1] * len(spatial)))
        own = 1.0 - boxes.flatten(1).sum(1, dtype=torch.float64) / boxes[0].numel()
        mixed_x = torch.where(boxes.unsqueeze(1), x[draws.index], x)
        return MixOutput(x=mixed_x, index=draws.index, lam=own.to(torch.float32))
