"""FMix: masks cut from low-frequency Fourier noise, one per sample, built in one batch."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from pipelines.errors import ConfigError
from pipelines.mixing import kernels, native
from pipelines.mixing.base import Draws, Mixer, MixOutput, partners_of, register
from pipelines.mixing.boxes import check_spatial
from pipelines.seeding import derive_seed, torch_generator


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


def descending_ranks(noise: torch.Tensor) -> torch.Tensor:
    """Per row of ``noise`` ``[B, N]``, each entry's rank from the largest (0) down (ties by position)."""
    batch, size = noise.shape
    order = noise.argsort(dim=1, descending=True, stable=True)
    positions = torch.arange(size, device=noise.device).expand(batch, size)
    return torch.empty_like(order).scatter_(1, order, positions)


def rank_masks(noise: torch.Tensor, own: torch.Tensor, soft: torch.Tensor, rank: torch.Tensor | None = None) -> torch.Tensor:
    """Per row of ``noise`` ``[B, N]``: 1 on its ``own[b]`` largest entries, 0 elsewhere.

    With ``soft[b] = s > 0`` the ``2s`` entries ranked around the cut ramp linearly from 1 to 0
    (as FMix's ``max_soft``); the row still sums to ``own[b]`` exactly. ``rank``: the rows' ranks
    (:func:`descending_ranks`) when already known, ``noise`` then unused.
    """
    rank = descending_ranks(noise) if rank is None else rank
    low, high = (own - soft).unsqueeze(1), (own + soft).unsqueeze(1)
    ramp = 1 - (rank - low).double() / (2 * soft.unsqueeze(1) - 1).clamp(min=1)
    return torch.where(rank < low, 1.0, torch.where(rank >= high, 0.0, ramp))


# a bank's fields are drawn once per process from this seed: the same bank everywhere
BANK_SEED = 20_200_212
# at most this many bytes of ranks per bank (int32): 334 fields of 224x224; capped at 1024 (32x32), at least 64
BANK_BYTES = 64 * 2**20


@functools.lru_cache(maxsize=8)
def rank_bank(spatial: tuple[int, ...], decay_power: float, fields: int, device: str = "cpu") -> torch.Tensor:
    """``fields`` low-frequency noise fields of shape ``spatial`` as descending ranks (int32
    ``[fields, N]``) on ``device``, drawn once per process from :data:`BANK_SEED` (on the CPU, so
    every device holds the same bank)."""
    if device != "cpu":
        return rank_bank(spatial, decay_power, fields).to(device)
    generator = torch_generator(derive_seed(BANK_SEED, "fmix", *spatial, decay_power))
    ranks = []
    for start in range(0, fields, 256):  # bounded working memory for large fields
        noise = low_frequency_noise(min(256, fields - start), spatial, decay_power, generator)
        ranks.append(descending_ranks(noise.reshape(noise.shape[0], -1)).to(torch.int32))
    return torch.cat(ranks)


@functools.lru_cache(maxsize=8)
def kernel_bank(spatial: tuple[int, ...], decay_power: float, fields: int) -> torch.Tensor:
    """:func:`rank_bank` as the CPU kernel reads it: uint16 where the ranks fit (``N <= 65536``: up
    to 256 x 256), which halves the bytes a mask reads, else the int32 bank itself. Same ranks."""
    bank = rank_bank(spatial, decay_power, fields)
    return bank.to(torch.uint16) if math.prod(spatial) <= 2**16 else bank


def bank_fields(spatial: tuple[int, ...], bank_size: int) -> int:
    """How many fields a bank of ``bank_size`` (0: none; -1: as many as fit :data:`BANK_BYTES`) holds."""
    if bank_size >= 0:
        return bank_size
    return max(64, min(1024, BANK_BYTES // (4 * math.prod(spatial))))


def draw_shifts(fields: int, spatial: tuple[int, ...], picks: torch.Tensor
                ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """For ``B`` masks, from uniform draws ``picks`` ``[B, 1 + 2n]``: a bank field each
    (``floor(u * fields)``, int32 ``[B]``), then for every axis a circular shift (``floor(u * size)``,
    int32 ``[B, 1]``), then for every axis whether to mirror (``u < 0.5``, bool ``[B, 1]``), as
    native.c's ``mp_keep_below`` reads them."""
    n = len(spatial)
    field = (picks[:, 0] * fields).floor_().to(torch.int32)
    shifts = [(picks[:, 1 + axis : 2 + axis] * size).floor_().to(torch.int32) for axis, size in enumerate(spatial)]
    flips = [picks[:, 1 + n + axis : 2 + n + axis] < 0.5 for axis in range(n)]
    return field, shifts, flips


def shifted_ranks(bank: torch.Tensor, spatial: tuple[int, ...], field: torch.Tensor, shifts: list[torch.Tensor],
                  flips: list[torch.Tensor]) -> torch.Tensor:
    """Rank maps ``[B, N]``: each the bank ``field`` circularly shifted by ``shifts`` and mirrored
    where ``flips`` on every axis (see :func:`draw_shifts`); position ``u`` of an axis of ``size``
    reads ``((size - 1 - u if flip else u) + shift) % size``.

    The noise is periodic (an inverse FFT) with independent, circularly symmetric coefficients, so a
    shifted or mirrored field has the same distribution as a fresh one: each mask is an exact FMix
    draw. Two samples of a batch share a field with probability 1/fields (then with different shifts
    in all but 1/N of cases), the one way a bank departs from fresh noise per sample.
    """
    batch, device = field.shape[0], field.device
    # int32 positions and index_select: a third of the time of int64 advanced indexing on CPU
    flat = field.view(batch, *([1] * len(spatial))) * math.prod(spatial)
    stride = math.prod(spatial)
    for axis, size in enumerate(spatial):
        stride //= size
        along = torch.arange(size, device=device, dtype=torch.int32).view(1, size)
        along = torch.where(flips[axis], size - 1 - along, along)
        position = (along + shifts[axis]) % size
        view = [batch] + [1] * len(spatial)
        view[axis + 1] = size
        flat = flat + (position * stride).view(view)
    return bank.reshape(-1).index_select(0, flat.reshape(-1).to(bank.device)).view(batch, -1).to(device)


@register("fmix")
@dataclass(frozen=True)
class FMix(Mixer):
    """FMix (Harris et al., "FMix: Enhancing Mixed Sample Data Augmentation", arXiv:2002.12047, 2020).

    Each sample gets its own mask from low-frequency noise, binarised so that exactly
    ``round(lam * N)`` of its ``N`` positions keep its own values; ``out.lam`` is that exact
    fraction. Works on ``(B, C, L)``, ``(B, C, H, W)`` and ``(B, C, D, H, W)`` inputs.

    A fresh noise field per sample costs an FFT and a sort, over 50 times the batch copy; by
    default the fields come from a bank drawn once per process, each shifted and mirrored at random
    (:func:`shifted_ranks`: every mask is still an exact FMix draw).

    Args:
        decay_power: spectral decay; higher gives smoother, blob-like masks (paper default 3).
        max_soft: soft edges, in [0, 0.5]: up to ``max_soft * N`` positions on each side of the cut
            blend linearly (0 gives hard masks, where every element is its own or its partner's).
        bank_size: fields in the bank; -1 (default) as many as fit 64 MiB of ranks (1024 at 32x32,
            capped there, at least 64); 0 draws fresh noise for every mask.
    """

    decay_power: float = 3.0
    max_soft: float = 0.0
    bank_size: int = -1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.decay_power > 0:
            raise ConfigError(f"mixing.decay_power must be > 0, got {self.decay_power!r}")
        if not 0 <= self.max_soft <= 0.5:
            raise ConfigError(f"mixing.max_soft must be in [0, 0.5], got {self.max_soft!r}")
        if not (isinstance(self.bank_size, int) and self.bank_size >= -1):
            raise ConfigError(f"mixing.bank_size must be -1 (sized to memory), 0 (no bank) or a count, got {self.bank_size!r}")

    def extra_draws(self, shape: torch.Size) -> int:
        """With a bank, per mask a uniform for its field and two per axis (shift, mirror)."""
        spatial = tuple(shape[2:])
        if not spatial or not bank_fields(spatial, self.bank_size):
            return 0
        return self.draw_count(shape[0]) * (1 + 2 * len(spatial))

    def fused_call(self, x: torch.Tensor, generator: torch.Generator) -> MixOutput | None:
        if self.mode != "elem" or self.max_soft != 0 or self.bank_size == 0 or not 3 <= x.ndim <= 5:
            return None
        if not kernels.native_ready(x, self.fuse):
            return None
        spatial = tuple(x.shape[2:])
        bank = kernel_bank(spatial, float(self.decay_power), bank_fields(spatial, self.bank_size))
        return self.native_mix(native.FMIX, x, generator, bank=bank)

    def combine(self, x: torch.Tensor, draws: Draws, generator: torch.Generator) -> MixOutput:
        spatial = check_spatial("fmix", x)
        batch, size = x.shape[0], math.prod(spatial)
        masks = self.draw_count(batch)
        fields = bank_fields(spatial, self.bank_size)
        rank = noise = bank = None
        if fields:
            bank = rank_bank(spatial, float(self.decay_power), fields, str(generator.device))
        else:
            noise = low_frequency_noise(masks, spatial, self.decay_power, generator).reshape(masks, size)
            rank = descending_ranks(noise)
        hard = self.max_soft == 0
        if hard and bank is not None and masks == batch and kernels.native_ready(x, self.fuse):
            # the kernel reads the bank shifted in place (no [B, N] ranks) and derives own and λ
            picks = draws.uniforms.view(masks, -1)
            bank = kernel_bank(spatial, float(self.decay_power), fields)
            mixed_x, own_lam = native.keep_below(x, draws.index, lam=draws.lam, mixed=draws.mixed, bank=bank, picks=picks)
            return MixOutput(x=mixed_x, index=draws.index, lam=own_lam)
        lam = draws.lam[:masks].to(generator.device, torch.float64)
        unmixed = ~draws.mixed.to(generator.device)
        # an unmixed sample keeps all of its own elements
        own = torch.where(unmixed[:masks], size, torch.round(lam * size).long())
        if bank is not None:
            rank = shifted_ranks(bank, spatial, *draw_shifts(fields, spatial, draws.uniforms.view(masks, -1)))
        if hard:  # rank < own: the own[b] largest noise values keep the sample's own
            ranks = rank.expand(batch, size).reshape(batch, *spatial)
            mixed_x = kernels.keep_below(x, draws.index, ranks, own.expand(batch).to(x.device), self.fuse)
        else:
            soft = torch.floor(size * torch.minimum(torch.full_like(lam, self.max_soft), torch.minimum(lam, 1 - lam))).long()
            soft = torch.where(unmixed[:masks], 0, soft)
            mask = rank_masks(noise, own, soft, rank).expand(batch, size).to(x.device)
            mixed_x = partners_of(x, draws.index).lerp_(x, mask.reshape(batch, 1, *spatial).to(x.dtype))
        own = own.expand(batch).to(x.device)
        return MixOutput(x=mixed_x, index=draws.index, lam=(own.double() / size).float())
