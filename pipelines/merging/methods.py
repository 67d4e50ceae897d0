"""The task-vector, interpolation and geometry methods as functions with explicit parameters.

Each takes ``states`` (and ``base`` where it merges task vectors) and returns the merged state
dict with the indices of the models it used; :mod:`pipelines.merging.registry` names them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pipelines.errors import ConfigError
from pipelines.merging.state import StateDict, check_compatible, weighted_average
from pipelines.merging.task_vectors import TaskVectorOptions, merge_task_vectors, model_stock_ratio, slerp

Merged = tuple[StateDict, list[int]]


def _all(states: Sequence[StateDict]) -> list[int]:
    return list(range(len(states)))


def _weights(weights: Sequence[float] | None) -> tuple[float, ...] | None:
    return None if weights is None else tuple(float(w) for w in weights)


def linear(states: Sequence[StateDict], weights: Sequence[float] | None = None) -> Merged:
    """Weighted average of the models (weights normalised to sum 1)."""
    return weighted_average(states, weights), _all(states)


def task_arithmetic(
    states: Sequence[StateDict], base: StateDict, weights: Sequence[float] | None = None, scale: float = 1.0
) -> Merged:
    """``base + scale * sum_i w_i (model_i - base)`` (Ilharco et al., ICLR 2023)."""
    options = TaskVectorOptions(weights=_weights(weights), scale=scale, combine="sum")
    return merge_task_vectors(states, base, "none", False, options), _all(states)


def ties(
    states: Sequence[StateDict], base: StateDict, weights: Sequence[float] | None = None, scale: float = 1.0,
    density: float = 0.2, topk_scope: str = "tensor", election: str = "weighted", zero_sum: str = "positive",
    combine: str = "mean",
) -> Merged:
    """TIES-Merging (Yadav et al., NeurIPS 2023): trim each task vector to its top ``density``
    by magnitude (paper: 0.2, over the whole model; default here per tensor, as mergekit), elect
    a sign per entry, average the agreeing entries."""
    options = TaskVectorOptions(_weights(weights), scale, density, topk_scope, election, zero_sum, combine)
    return merge_task_vectors(states, base, "magnitude", True, options), _all(states)


def dare_linear(
    states: Sequence[StateDict], base: StateDict, weights: Sequence[float] | None = None, scale: float = 1.0,
    density: float = 0.5, rescale: str | None = "inverse_density", seed: int = 0,
) -> Merged:
    """DARE (Yu et al., ICML 2024) then task arithmetic: drop entries at random, keep
    ``density`` of them rescaled by ``1 / density`` (the paper; ``rescale="l1"`` as mergekit)."""
    options = TaskVectorOptions(_weights(weights), scale, density, rescale=rescale, seed=seed, combine="sum")
    return merge_task_vectors(states, base, "random", False, options), _all(states)


def dare_ties(
    states: Sequence[StateDict], base: StateDict, weights: Sequence[float] | None = None, scale: float = 1.0,
    density: float = 0.5, rescale: str | None = "inverse_density", seed: int = 0, election: str = "weighted",
    zero_sum: str = "positive", combine: str = "mean",
) -> Merged:
    """DARE's random drop, then TIES' sign election and disjoint mean."""
    options = TaskVectorOptions(
        _weights(weights), scale, density, election=election, zero_sum=zero_sum, combine=combine, rescale=rescale, seed=seed
    )
    return merge_task_vectors(states, base, "random", True, options), _all(states)


def breadcrumbs(
    states: Sequence[StateDict], base: StateDict, weights: Sequence[float] | None = None, scale: float = 1.0,
    density: float = 0.9, gamma: float = 0.01, rescale: str | None = None,
) -> Merged:
    """Model Breadcrumbs (Davari & Belilovsky, ECCV 2024): per tensor, drop the top ``gamma``
    outliers and keep the next ``density`` by magnitude, then task arithmetic."""
    options = TaskVectorOptions(_weights(weights), scale, density, rescale=rescale, gamma=gamma, combine="sum")
    return merge_task_vectors(states, base, "breadcrumbs", False, options), _all(states)


def breadcrumbs_ties(
    states: Sequence[StateDict], base: StateDict, weights: Sequence[float] | None = None, scale: float = 1.0,
    density: float = 0.9, gamma: float = 0.01, rescale: str | None = None, election: str = "weighted",
    zero_sum: str = "positive", combine: str = "mean",
) -> Merged:
    """Breadcrumbs' outlier-trimmed sparsification, then TIES' sign election and disjoint mean."""
    options = TaskVectorOptions(
        _weights(weights), scale, density, election=election, zero_sum=zero_sum, combine=combine, rescale=rescale, gamma=gamma
    )
    return merge_task_vectors(states, base, "breadcrumbs", True, options), _all(states)


def slerp_merge(states: Sequence[StateDict], t: float = 0.5) -> Merged:
    """SLERP of exactly two models, tensor by tensor (``t = 0`` gives the first)."""
    if len(states) != 2:
        raise ConfigError(f"merge: slerp merges exactly 2 models, got {len(states)}")
    if not 0 <= t <= 1:
        raise ConfigError(f"merge: t must be in [0, 1], got {t!r}")
    check_compatible(states)
    first, second = states
    merged = {n: slerp(a, second[n], t) if a.is_floating_point() else a.clone() for n, a in first.items()}
    return merged, [0, 1]


def model_stock(states: Sequence[StateDict], base: StateDict) -> Merged:
    """Model Stock (Jang et al., ECCV 2024): per tensor, move from the base towards the average of
    the fine-tunes by the ratio that the angle between their task vectors implies
    (:func:`~pipelines.merging.task_vectors.model_stock_ratio`)."""
    if len(states) < 2:
        raise ConfigError(f"merge: model_stock needs at least 2 fine-tuned models, got {len(states)}")
    check_compatible([base, *states])
    merged: StateDict = {}
    for name, reference in base.items():
        if not reference.is_floating_point():
            merged[name] = reference.clone()
            continue
        stacked = torch.stack([s[name].double() for s in states])
        ratio = model_stock_ratio(stacked - reference.double())
        merged[name] = (ratio * stacked.mean(0) + (1 - ratio) * reference.double()).to(reference.dtype)
    return merged, _all(states)
