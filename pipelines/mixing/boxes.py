"""Box-mask mixing: CutMix and ResizeMix, for 1-D, 2-D and 3-D inputs, one box per sample, no batch loop."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipelines.errors import ConfigError

from pipelines.mixing import kernels
from pipelines.mixing.base import Draws, Mixer, MixOutput, partners_of, register
from pipelines.mixing.kernels import Fuse


def box_sides(lam: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """Integer side lengths ``[B, ndim]`` of boxes covering a fraction ``1 - lam`` before clipping:
    each side is ``floor(size * (1 - lam) ** (1 / ndim))``."""
    ratio = (1 - lam.double()).clamp(0, 1) ** (1.0 / len(spatial))
    sizes = torch.tensor(spatial, dtype=torch.float64, device=lam.device)
    return torch.floor(ratio.unsqueeze(1) * sizes).long()


def uniform_centres(batch: int, spatial: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Box centres ``[B, ndim]``, uniform over positions."""
    draws = torch.rand(batch, len(spatial), generator=generator, dtype=torch.float64, device=generator.device)
    return torch.floor(draws * torch.tensor(spatial, dtype=torch.float64, device=generator.device)).long()


def inside_boxes(sides: torch.Tensor, spatial: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Centres ``[B, ndim]`` of boxes of ``sides`` placed uniformly so that they fit in ``spatial``
    (for :func:`box_masks`, which centres a box at ``start + side // 2``)."""
    sizes = torch.tensor(spatial, dtype=torch.float64, device=generator.device)
    room = torch.rand(sides.shape, generator=generator, dtype=torch.float64, device=generator.device)
    starts = torch.floor(room * (sizes - sides.to(generator.device) + 1)).long()
    return starts + sides.to(generator.device) // 2


def box_bounds(sides: torch.Tensor, centres: torch.Tensor, spatial: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped ``[low, high)`` corners ``[B, ndim]`` of boxes of ``sides`` around ``centres``."""
    sizes = torch.tensor(spatial, device=sides.device)
    low = centres - sides // 2
    return low.clamp(min=0).minimum(sizes), (low + sides).clamp(min=0).minimum(sizes)


def box_masks(sides: torch.Tensor, centres: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """Boolean masks ``[B, *spatial]``, True inside the box of ``sides`` around ``centres``,
    clipped at the borders (the caller recomputes λ from the mask)."""
    batch = sides.shape[0]
    low, high = box_bounds(sides, centres, spatial)
    return kernels.box_mask(low, high, (batch, 1, *spatial)).squeeze(1).expand(batch, *spatial)


def box_volumes(sides: torch.Tensor, centres: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """Number of elements ``[B]`` inside each clipped box: what :func:`box_masks` marks, counted
    from the corners instead of summing the masks."""
    low, high = box_bounds(sides, centres, spatial)
    return (high - low).prod(1)


def paste_boxes(x: torch.Tensor, draws: Draws, sides: torch.Tensor, centres: torch.Tensor, fuse: Fuse = "auto") -> MixOutput:
    """Take the partner ``x[draws.index]`` inside each mixed sample's box (at the same place) and
    ``x`` elsewhere, in one fused pass (:func:`pipelines.mixing.kernels.paste_boxes`); λ is the own fraction.

    ``sides`` and ``centres`` are ``[B, ndim]``, or ``[1, ndim]`` for one box shared by the batch.
    An unmixed sample gets an empty box.
    """
    spatial, batch = tuple(x.shape[2:]), x.shape[0]
    mixed = draws.mixed[: sides.shape[0]].to(sides.device)
    sides = torch.where(mixed.unsqueeze(1), sides, 0)
    low, high = box_bounds(sides, centres, spatial)
    pasted = kernels.paste_boxes(x, draws.index, low.expand(batch, -1), high.expand(batch, -1), fuse)
    own = 1.0 - (high - low).prod(1).to(torch.float64).expand(batch) / math.prod(spatial)
    return MixOutput(x=pasted, index=draws.index, lam=own.to(x.device, torch.float32))


def check_spatial(name: str, x: torch.Tensor) -> tuple[int, ...]:
    spatial = tuple(x.shape[2:])
    if not 1 <= len(spatial) <= 3:
        raise ValueError(f"{name} takes (B, C, *spatial) inputs with 1-3 spatial axes, got {tuple(x.shape)}")
    return spatial


@register("cutmix")
@dataclass(frozen=True)
class CutMix(Mixer):
    """CutMix (Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with
    Localizable Features", ICCV 2019).

    A box of area ``1 - lam`` is pasted from the partner; ``lam`` is then corrected to the exact
    fraction of the sample's own elements left after clipping.

    Args:
        cutmix_minmax: as timm's option: each box side is drawn uniformly between these fractions
            of its axis (ignoring the Beta draw) and the box is kept inside the input.
    """

    cutmix_minmax: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cutmix_minmax is not None and not 0 < self.cutmix_minmax[0] <= self.cutmix_minmax[1] <= 1:
            raise ConfigError(f"mixing.cutmix_minmax must satisfy 0 < min <= max <= 1, got {tuple(self.cutmix_minmax)!r}")

    def combine(self, x: torch.Tensor, draws: Draws, generator: torch.Generator) -> MixOutput:
        spatial = check_spatial("cutmix", x)
        count = 1 if self.mode == "batch" else x.shape[0]
        if self.cutmix_minmax is None:
            sides = box_sides(draws.lam[:count].to(generator.device), spatial)
            centres = uniform_centres(count, spatial, generator)
        else:
            sizes = torch.tensor(spatial, dtype=torch.float64, device=generator.device)
            low, high = (torch.floor(sizes * f).long() for f in self.cutmix_minmax)
            pick = torch.rand(count, len(spatial), generator=generator, dtype=torch.float64, device=generator.device)
            sides = (low + torch.floor(pick * (high - low + 1)).long()).clamp(max=sizes.long())
            centres = inside_boxes(sides, spatial, generator)
        return paste_boxes(x, draws, sides, centres, self.fuse)


def resize_into_boxes(source: torch.Tensor, starts: torch.Tensor, sides: torch.Tensor) -> torch.Tensor:
    """Each ``source[b]`` shrunk (bilinear) into the box ``starts[b] .. starts[b] + sides[b]``.

    One batched ``affine_grid`` + ``grid_sample``: inside its box, output position u samples the
    source at ``(u - centre) / half_width`` (normalised coordinates), which is a resize with the
    half-pixel convention of ``F.interpolate(..., align_corners=False)``. Outside the box the
    values are meaningless; callers paste only the box.
    """
    batch, channels, *spatial = source.shape
    if len(spatial) == 1:  # grid_sample is 2-D or 3-D: a 1-D signal is an image of height 1
        one = torch.zeros_like(starts[:, :1])
        out = resize_into_boxes(source.unsqueeze(2), torch.cat([one, starts], 1), torch.cat([one + 1, sides], 1))
        return out.squeeze(2)
    sizes = torch.tensor(spatial, dtype=torch.float64, device=source.device)
    low = -1 + 2 * starts.double().to(source.device) / sizes
    high = -1 + 2 * (starts + sides).double().to(source.device) / sizes
    centre, half = (low + high) / 2, (high - low) / 2
    ndim = len(spatial)
    theta = torch.zeros(batch, ndim, ndim + 1, dtype=torch.float64, device=source.device)
    for row, axis in enumerate(reversed(range(ndim))):  # grid coordinates run (x, y[, z]): last axis first
        theta[:, row, row] = 1 / half[:, axis]
        theta[:, row, ndim] = -centre[:, axis] / half[:, axis]
    work = source if source.is_floating_point() and source.dtype != torch.bfloat16 else source.float()
    grid = F.affine_grid(theta.to(work.dtype), [batch, channels, *spatial], align_corners=False)
    return F.grid_sample(work, grid, mode="bilinear", padding_mode="border", align_corners=False).to(source.dtype)


@register("resizemix")
@dataclass(frozen=True)
class ResizeMix(Mixer):
    """ResizeMix (Qin et al., "ResizeMix: Mixing Data with Preserved Object Information and True
    Labels", arXiv:2012.11101, 2020).

    The whole partner, shrunk by a factor ``tau`` on every axis, is pasted at a uniform random
    position; ``lam`` is the exact fraction of the sample's own elements left. ``tau`` lies in
    ``scope``: ``tau = scope[0] + (scope[1] - scope[0]) * b`` with ``b ~ Beta(alpha, alpha)``, so
    ``alpha = 1`` gives the paper's uniform scale.

    Args:
        scope: smallest and largest scale of the pasted partner, in (0, 1].
    """

    alpha: float = 1.0
    scope: tuple[float, float] = (0.1, 0.8)

    def __post_init__(self) -> None:
        super().__post_init__()
        low, high = self.scope
        if not 0 < low <= high <= 1:
            raise ConfigError(f"mixing.scope must satisfy 0 < low <= high <= 1, got {tuple(self.scope)!r}")

    def combine(self, x: torch.Tensor, draws: Draws, generator: torch.Generator) -> MixOutput:
        spatial = check_spatial("resizemix", x)
        low, high = self.scope
        count = 1 if self.mode == "batch" else x.shape[0]
        tau = low + (high - low) * draws.lam[:count].double().to(generator.device)
        sizes = torch.tensor(spatial, dtype=torch.float64, device=generator.device)
        sides = torch.round(tau.unsqueeze(1) * sizes).long().clamp(min=1)
        centres = inside_boxes(sides, spatial, generator)
        batch = x.shape[0]
        sides, centres = sides.expand(batch, -1).to(x.device), centres.expand(batch, -1).to(x.device)
        mixed = draws.mixed.to(x.device)
        starts = centres - sides // 2  # the box fits: nothing to clip
        ends = starts + torch.where(mixed.unsqueeze(1), sides, 0)  # an unmixed sample: an empty box
        covered = (ends - starts).prod(1).to(torch.float64)
        lam = (1.0 - covered / math.prod(spatial)).to(torch.float32)
        # grid_sample resizes fastest: written out as bilinear gathers for torch.compile, the
        # resize ran 10x slower (Inductor's indirect loads do not vectorise)
        resized = resize_into_boxes(partners_of(x, draws.index), starts, sides)
        pasted = torch.where(kernels.box_mask(starts, ends, x.shape), resized, x)
        return MixOutput(x=pasted, index=draws.index, lam=lam.to(x.device))
