"""Sparsifiers for task vectors: which entries of a task vector survive before merging.

Each returns a new tensor (the kept entries, possibly rescaled) and leaves its input alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch

Rescale = Literal["inverse_density", "l1"] | None


def keep_count(numel: int, fraction: float) -> int:
    """How many of ``numel`` entries a density ``fraction`` keeps: ``int(fraction * numel)``, as
    mergekit rounds (TIES' 20% of 8 entries keeps 1), but at least one of a non-empty tensor.

    Rounding down to none would leave every tensor of fewer than ``1 / fraction`` entries (biases,
    a classifier's few outputs) at the base whatever the fine-tunes learned; mergekit refuses a
    density that keeps nothing, and keeping the largest entry is what its top-k would do at the
    smallest density it accepts.
    """
    return max(1, int(fraction * numel)) if fraction > 0 and numel > 0 else 0


def _largest(magnitude: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean mask of the ``count`` largest entries; among equal magnitudes the earlier index wins,
    so results do not depend on the sort kernel.

    One ``topk`` for the cut value, then the entries at the cut are admitted in index order (a
    stable sort of the whole tensor was 10x slower on million-entry tensors).
    """
    flat = magnitude.flatten()
    if count <= 0:
        return torch.zeros_like(magnitude, dtype=torch.bool)
    if count >= flat.numel():
        return torch.ones_like(magnitude, dtype=torch.bool)
    cut = torch.topk(flat, count, sorted=False).values.min()
    above = flat > cut
    at_cut = flat == cut
    room = count - int(above.sum())
    keep = above | (at_cut & (torch.cumsum(at_cut, 0) <= room))
    return keep.view_as(magnitude)


def magnitude(task_vector: torch.Tensor, density: float, threshold: float | None = None) -> torch.Tensor:
    """Keep the largest-magnitude ``density`` fraction of entries (TIES' trim step).

    Args:
        density: fraction kept, in (0, 1].
        threshold: keep entries with ``|x| >= threshold`` instead: the model-wide cut that
            :func:`model_threshold` computes (``topk_scope="model"``, as in the TIES paper and
            FusionBench); without it the cut is per tensor (mergekit's default).
    """
    if threshold is not None:  # compared in float32, the precision model_threshold ranks in
        return torch.where(task_vector.abs().float() >= threshold, task_vector, torch.zeros_like(task_vector))
    keep = _largest(task_vector.abs(), keep_count(task_vector.numel(), density))
    return torch.where(keep, task_vector, torch.zeros_like(task_vector))


def model_threshold(task_vectors: Iterable[torch.Tensor], density: float) -> float:
    """The magnitude that the top ``density`` fraction of one model's entries (all its tensors
    together) reaches: the cut for ``topk_scope="model"``. Entries tied at the cut are all kept."""
    # float32: one model's magnitudes at a time, at half the memory of float64
    values = torch.cat([t.detach().abs().flatten().float() for t in task_vectors])
    count = keep_count(values.numel(), density)
    if count == 0:
        return float("inf")
    return float(torch.topk(values, count, sorted=False).values.min())


def random_drop(
    task_vector: torch.Tensor, density: float, generator: torch.Generator, rescale: Rescale = "inverse_density"
) -> torch.Tensor:
    """DARE (Yu et al., "Language Models are Super Mario", ICML 2024, https://arxiv.org/abs/2311.03099):
    keep each entry with probability ``density`` (drawn from ``generator``), then rescale.

    Args:
        rescale: ``"inverse_density"`` divides the kept entries by ``density`` (the paper; the
            merged task vector is unbiased); ``"l1"`` scales them so the L1 norm matches the
            original (mergekit's ``rescale_norm``); None keeps them as they are.
    """
    keep = torch.rand(task_vector.shape, generator=generator, device=generator.device).to(task_vector.device) < density
    kept = torch.where(keep, task_vector, torch.zeros_like(task_vector))
    return _rescaled(kept, task_vector, density, rescale)


def della_keep_probabilities(task_vector: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """DELLA's MagPrune probabilities (Deep et al., "DELLA-Merging: Reducing Interference in Model
    Merging through Magnitude-Based Sampling", 2024, https://arxiv.org/abs/2406.11617), per row
    (a 1-D tensor is one row): the entries ranked by magnitude (ties by index) keep with
    probabilities spaced evenly from ``density - epsilon`` (smallest) to ``density + epsilon``
    (largest), so a row keeps ``density`` of its entries in expectation. A row of one entry
    keeps it with probability ``density``."""
    rows = task_vector.reshape(task_vector.shape[0] if task_vector.ndim > 1 else 1, -1)
    count = rows.shape[1]
    order = torch.argsort(rows.abs(), dim=1, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(count, device=rows.device).expand_as(order))
    spread = rank.double() / (count - 1) if count > 1 else torch.full(rows.shape, 0.5, dtype=torch.float64)
    return ((density - epsilon) + 2 * epsilon * spread).reshape(task_vector.shape)


def della(
    task_vector: torch.Tensor, density: float, epsilon: float, generator: torch.Generator,
    rescale: Rescale = "inverse_density",
) -> torch.Tensor:
    """DELLA's MagPrune: keep each entry with its :func:`della_keep_probabilities` probability
    (drawn from ``generator`` as :func:`random_drop` draws, so ``epsilon = 0`` is DARE), then
    rescale: ``"inverse_density"`` divides each kept entry by its own keep probability (the
    paper's rescaling; unbiased), ``"l1"`` matches the L1 norm, None leaves the entries."""
    probability = della_keep_probabilities(task_vector, density, epsilon)
    keep = torch.rand(task_vector.shape, generator=generator, device=generator.device).to(task_vector.device) < probability
    kept = torch.where(keep, task_vector, torch.zeros_like(task_vector))
    if rescale == "inverse_density":
        return (kept.double() / probability).to(task_vector.dtype)
    return _rescaled(kept, task_vector, density, rescale)


def breadcrumbs(task_vector: torch.Tensor, density: float, gamma: float, rescale: Rescale = None) -> torch.Tensor:
    """Model Breadcrumbs (Davari & Belilovsky, ECCV 2024, https://arxiv.org/abs/2312.06795): drop
    the largest ``gamma`` fraction of entries (outliers) and everything below the next ``density``
    fraction, per tensor, as mergekit's ``magnitude_outliers`` does.

    Of ``n`` entries, the ``int(gamma * n)`` largest are dropped and the following
    :func:`keep_count` ``(n, density)`` kept.
    """
    n = task_vector.numel()
    top = int(gamma * n)  # outliers dropped: none when gamma * n < 1
    outliers = _largest(task_vector.abs(), top)
    kept = _largest(task_vector.abs(), top + keep_count(n, density)) & ~outliers
    out = torch.where(kept, task_vector, torch.zeros_like(task_vector))
    return _rescaled(out, task_vector, density, rescale)


def _rescaled(kept: torch.Tensor, original: torch.Tensor, density: float, rescale: Rescale) -> torch.Tensor:
    if rescale is None:
        return kept
    if rescale == "inverse_density":
        return kept / density
    if rescale == "l1":
        norm = kept.abs().sum()
        return kept * (original.abs().sum() / norm) if norm > 0 else kept
    raise ValueError(f"merge: rescale must be 'inverse_density', 'l1' or None, got {rescale!r}")
