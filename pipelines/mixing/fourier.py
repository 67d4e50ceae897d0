"""FMix: masks cut from low-frequency Fourier noise, one per sample, built in one batch."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pipelines.errors import ConfigError
from pipelines.mixing.base import Draws, Mixer, MixOutput, partners_of, register
from pipelines.mixing.boxes import check_spatial


def frequency_magnitudes(spatial: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """|f| on the grid ``torch.fft.rfftn`` uses for ``spatial`` (half spectrum on the last axis)."""
    axes = [torch.fft.fftfreq(n, device=device, dtype=torch.float64) for n in spatial[:-1]]
    axes.append(torch.fft.rfftfreq(spatial[-1], device=device, dtype=torch.float64))
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.sqrt(sum(g * g for g in grids))


def low_frequency_noise(
    batch: int, spatial: tuple[int, ...], decay_power: float, generator: torch.Generator
) -> torch.Tensor:
    """``batch`` real images of shape ``spatial`` whose spectrum falls off as 1/|f|**decay_power.

    Complex Gaussian coefficients are scaled by ``1 / max(|f|, 1/max(spatial)) ** decay_power``
    and transformed back with one batched inverse real FFT on ``generator.device``. Float32 is
    enough: only the ranking of the values is used, and ranks stay exact whatever the precision.
    """
    device = generator.device
    freqs = frequency_magnitudes(spatial, device)
    scale = (freqs.clamp(min=1.0 / max(spatial)) ** -decay_power).float()
    shape = (batch, *freqs.shape)
    real = torch.randn(shape, generator=generator, dtype=torch.float32, device=device)
    imag = torch.randn(shape, generator=generator, dtype=torch.float32, device=device)
    spectrum = torch.complex(real * scale, imag * scale)
    return torch.fft.irfftn(spectrum, s=spatial, dim=tuple(range(1, len(spatial) + 1)))


def rank_masks(noise: torch.Tensor, own: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Per row of ``noise`` ``[B, N]``: 1 on its ``own[b]`` largest entries, 0 elsewhere.

    With ``soft[b] = s > 0`` the ``2s`` entries ranked around the cut ramp linearly from 1 to 0
    (as FMix's ``max_soft``); the row still sums to ``own[b]`` exactly.
    """
    batch, size = noise.shape
    order = noise.argsort(dim=1, descending=True, stable=True)
    positions = torch.arange(size, device=noise.device).expand(batch, size)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    low, high = (own - soft).unsqueeze(1), (own + soft).unsqueeze(1)
    ramp = 1 - (rank - low).double() / (2 * soft.unsqueeze(1) - 1).clamp(min=1)
    return torch.where(rank < low, 1.0, torch.where(rank >= high, 0.0, ramp))


@register("fmix")
@dataclass(frozen=True)
class FMix(Mixer):
    """FMix (Harris et al., "FMix: Enhancing Mixed Sample Data Augmentation", arXiv:2002.12047, 2020).

    Each sample gets its own mask from low-frequency noise, binarised so that exactly
    ``round(lam * N)`` of its ``N`` positions keep its own values; ``out.lam`` is that exact
    fraction. Works on ``(B, C, L)``, ``(B, C, H, W)`` and ``(B, C, D, H, W)`` inputs.

    Args:
        decay_power: spectral decay; higher gives smoother, blob-like masks (paper default 3).
        max_soft: soft edges, in [0, 0.5]: up to ``max_soft * N`` positions on each side of the cut
            blend linearly (0 gives hard masks, where every element is its own or its partner's).
    """

    decay_power: float = 3.0
    max_soft: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.decay_power > 0:
            raise ConfigError(f"mixing.decay_power must be > 0, got {self.decay_power!r}")
        if not 0 <= self.max_soft <= 0.5:
            raise ConfigError(f"mixing.max_soft must be in [0, 0.5], got {self.max_soft!r}")

    def combine(self, x: torch.Tensor, draws: Draws, generator: torch.Generator) -> MixOutput:
        spatial = check_spatial("fmix", x)
        batch, size = x.shape[0], math.prod(spatial)
        masks = 1 if self.mode == "batch" else batch
        noise = low_frequency_noise(masks, spatial, self.decay_power, generator).reshape(masks, size)
        lam = draws.lam[:masks].to(noise.device, torch.float64)
        own = torch.round(lam * size).long()
        soft = torch.floor(size * torch.minimum(torch.full_like(lam, self.max_soft), torch.minimum(lam, 1 - lam))).long()
        mask = rank_masks(noise, own, soft).expand(batch, size).to(x.device)
        own = own.expand(batch).to(x.device)
        unmixed = ~draws.mixed
        mask = torch.where(unmixed.unsqueeze(1), 1.0, mask)
        own = torch.where(unmixed, size, own)
        mask = mask.reshape(batch, 1, *spatial)
        if self.max_soft == 0:
            mixed_x = torch.where(mask.bool(), x, partners_of(x, draws.index))
        else:
            mixed_x = partners_of(x, draws.index).lerp_(x, mask.to(x.dtype))
        return MixOutput(x=mixed_x, index=draws.index, lam=(own.double() / size).float())
