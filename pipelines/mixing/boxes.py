"""Box-mask mixing: CutMix and ResizeMix, for 1-D, 2-D and 3-D inputs, one box per sample, no batch loop."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pipelines.errors import ConfigError

from pipelines.mixing import kernels, native
from pipelines.mixing.base import Draws, Mixer, MixOutput, register
from pipelines.mixing.kernels import Fuse


def box_sides(lam: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """Integer side lengths ``[B, ndim]`` of boxes covering a fraction ``1 - lam`` before clipping:
    each side is ``floor(size * (1 - lam) ** (1 / ndim))``."""
    ratio = (1 - lam.double()).clamp(0, 1) ** (1.0 / len(spatial))
    sizes = torch.tensor(spatial, dtype=torch.float64, device=lam.device)
    return torch.floor(ratio.unsqueeze(1) * sizes).long()


def uniform_centres(spots: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """Box centres ``[B, ndim]``, uniform over positions, from uniform draws ``spots`` ``[B, ndim]``:
    ``floor(spot * size)`` (as native.c's ``box_corners``)."""
    return torch.floor(spots * torch.tensor(spatial, dtype=torch.float64, device=spots.device)).long()


def fitting_starts(room: torch.Tensor, sides: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """First corners ``[B, ndim]`` of boxes of ``sides`` that fit in ``spatial``, placed by uniform
    draws ``room`` in [0, 1): ``floor(room * (size - side + 1))`` (as native.c's resize kernel)."""
    sizes = torch.tensor(spatial, dtype=torch.float64, device=room.device)
    return torch.floor(room * (sizes - sides.to(room.device) + 1)).long()


def inside_boxes(sides: torch.Tensor, spatial: tuple[int, ...], room: torch.Tensor) -> torch.Tensor:
    """Centres ``[B, ndim]`` of boxes of ``sides`` placed by the uniform draws ``room`` so that they
    fit in ``spatial`` (for :func:`box_masks`, which centres a box at ``start + side // 2``)."""
    return fitting_starts(room, sides, spatial) + sides.to(room.device) // 2


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
    ``x`` elsewhere, in one pass (:mod:`pipelines.mixing.kernels`); λ is the own fraction.

    ``sides`` and ``centres`` are ``[B, ndim]``, or ``[1, ndim]`` for one box shared by the batch.
    An unmixed sample gets an empty box.
    """
    if kernels.native_ready(x, fuse):  # the box corners and λ are computed in the kernel's loop
        pasted, own = native.paste_boxes(x, draws.index, draws.mixed, sides=sides, centres=centres)
        return MixOutput(x=pasted, index=draws.index, lam=own)
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

    def extra_draws(self, shape: torch.Size) -> int:
        """A uniform per box and axis for its place, and as many for its sides with ``cutmix_minmax``."""
        per_box = max(len(shape) - 2, 0) * (1 if self.cutmix_minmax is None else 2)
        return self.draw_count(shape[0]) * per_box

    def fused_call(self, x: torch.Tensor, generator: torch.Generator) -> MixOutput | None:
        if self.cutmix_minmax is None and 3 <= x.ndim <= 4 and kernels.native_ready(x, self.fuse):
            return self.native_mix(native.CUTMIX, x, generator)
        return None

    def combine(self, x: torch.Tensor, draws: Draws, generator: torch.Generator) -> MixOutput:
        spatial = check_spatial("cutmix", x)
        count = self.draw_count(x.shape[0])
        places = draws.uniforms.view(-1, count, len(spatial))  # [2 with cutmix_minmax: sides, places | 1, count, n]
        if self.cutmix_minmax is None and len(spatial) < 3 and kernels.native_ready(x, self.fuse):
            # the kernel computes the boxes from λ and the place draws itself: no small ops in between
            pasted, own = native.paste_boxes(x, draws.index, draws.mixed, lam=draws.lam[:count], spots=places[0])
            return MixOutput(x=pasted, index=draws.index, lam=own)
        if self.cutmix_minmax is None:
            sides = box_sides(draws.lam[:count].to(places.device), spatial)
            centres = uniform_centres(places[0], spatial)
        else:
            sizes = torch.tensor(spatial, dtype=torch.float64, device=places.device)
            low, high = (torch.floor(sizes * f).long() for f in self.cutmix_minmax)
            sides = (low + torch.floor(places[0] * (high - low + 1)).long()).clamp(max=sizes.long())
            centres = inside_boxes(sides, spatial, places[1])
        return paste_boxes(x, draws, sides, centres, self.fuse)


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

    def extra_draws(self, shape: torch.Size) -> int:
        """A uniform per box and axis for its place."""
        return self.draw_count(shape[0]) * max(len(shape) - 2, 0)

    def fused_call(self, x: torch.Tensor, generator: torch.Generator) -> MixOutput | None:
        if x.dtype in (torch.float32, torch.uint8) and 3 <= x.ndim <= 4 and kernels.native_ready(x, self.fuse):
            low, high = self.scope
            return self.native_mix(native.RESIZEMIX, x, generator, low=float(low), span=float(high - low))
        return None

    def combine(self, x: torch.Tensor, draws: Draws, generator: torch.Generator) -> MixOutput:
        spatial = check_spatial("resizemix", x)
        low, high = self.scope
        count = self.draw_count(x.shape[0])
        room = draws.uniforms.view(count, len(spatial))
        if x.dtype in (torch.float32, torch.uint8) and len(spatial) < 3 and kernels.native_ready(x, self.fuse):
            # the kernel computes the sides and places the boxes from the same draws
            pasted, lam = native.resize_paste(x, draws.index, draws.lam[:count], self.scope, room, draws.mixed)
            return MixOutput(x=pasted, index=draws.index, lam=lam)
        tau = low + (high - low) * draws.lam[:count].double().to(room.device)
        sizes = torch.tensor(spatial, dtype=torch.float64, device=room.device)
        sides = torch.round(tau.unsqueeze(1) * sizes).long().clamp(min=1)
        batch = x.shape[0]
        starts = fitting_starts(room, sides, spatial).expand(batch, -1).to(x.device)  # the box fits: nothing to clip
        mixed = draws.mixed.to(x.device)
        sides = torch.where(mixed.unsqueeze(1), sides.expand(batch, -1).to(x.device), 0)  # unmixed: an empty box
        covered = sides.prod(1).to(torch.float64)
        lam = (1.0 - covered / math.prod(spatial)).to(torch.float32)
        pasted = kernels.resize_paste(x, draws.index, starts, sides)
        return MixOutput(x=pasted, index=draws.index, lam=lam.to(x.device))
