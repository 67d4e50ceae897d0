"""The task-vector, interpolation and geometry methods as functions with explicit parameters.

Each takes ``states`` (and ``base`` where it merges task vectors) and returns the merged state
dict with the indices of the models it used; :mod:`pipelines.merging.registry` names them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import torch
from pydantic import Field

from pipelines.errors import ConfigError
from pipelines.merging import alignment
from pipelines.merging.state import StateDict, check_compatible, weighted_average
from pipelines.merging.task_vectors import TaskVectorOptions, merge_task_vectors, model_stock_ratio, slerp

Merged = tuple[StateDict, list[int]]

# The parameters' types and ranges: params.yaml values (merge.params, every merge.search candidate)
# are checked against these signatures before any stage starts Ray (registry.check_arguments).
Density = Annotated[float, Field(gt=0, le=1)]
Gamma = Annotated[float, Field(ge=0, lt=1)]
Unit = Annotated[float, Field(ge=0, le=1)]
TopkScope = Literal["tensor", "model"]
Election = Literal["weighted", "unweighted"]
ZeroSum = Literal["zero", "positive"]
Combine = Literal["mean", "sum"]
Rescale = Literal["inverse_density", "l1"] | None
Seed = Annotated[int, Field(ge=0)]
Weights = Annotated[Sequence[float], Field(min_length=1)] | None


def _all(states: Sequence[StateDict]) -> list[int]:
    return list(range(len(states)))


def _weights(weights: Sequence[float] | None) -> tuple[float, ...] | None:
    return None if weights is None else tuple(float(w) for w in weights)


def linear(states: Sequence[StateDict], weights: Weights = None) -> Merged:
    """Weighted average of the models (weights normalised to sum 1)."""
    return weighted_average(states, weights), _all(states)


def task_arithmetic(
    states: Sequence[StateDict], base: StateDict, weights: Weights = None, scale: float = 1.0
) -> Merged:
    """``base + scale * sum_i w_i (model_i - base)`` (Ilharco et al., ICLR 2023)."""
    options = TaskVectorOptions(weights=_weights(weights), scale=scale, combine="sum")
    return merge_task_vectors(states, base, "none", False, options), _all(states)


def ties(
    states: Sequence[StateDict], base: StateDict, weights: Weights = None, scale: float = 1.0,
    density: Density = 0.2, topk_scope: TopkScope = "tensor", election: Election = "weighted",
    zero_sum: ZeroSum = "positive", combine: Combine = "mean",
) -> Merged:
    """TIES-Merging (Yadav et al., NeurIPS 2023): trim each task vector to its top ``density``
    by magnitude (paper: 0.2, over the whole model; default here per tensor, as mergekit), elect
    a sign per entry, average the agreeing entries."""
    options = TaskVectorOptions(_weights(weights), scale, density, topk_scope, election, zero_sum, combine)
    return merge_task_vectors(states, base, "magnitude", True, options), _all(states)


def dare_linear(
    states: Sequence[StateDict], base: StateDict, weights: Weights = None, scale: float = 1.0,
    density: Density = 0.5, rescale: Rescale = "inverse_density", seed: Seed = 0,
) -> Merged:
    """DARE (Yu et al., ICML 2024) then task arithmetic: drop entries at random, keep
    ``density`` of them rescaled by ``1 / density`` (the paper; ``rescale="l1"`` as mergekit)."""
    options = TaskVectorOptions(_weights(weights), scale, density, rescale=rescale, seed=seed, combine="sum")
    return merge_task_vectors(states, base, "random", False, options), _all(states)


def dare_ties(
    states: Sequence[StateDict], base: StateDict, weights: Weights = None, scale: float = 1.0,
    density: Density = 0.5, rescale: Rescale = "inverse_density", seed: Seed = 0, election: Election = "weighted",
    zero_sum: ZeroSum = "positive", combine: Combine = "mean",
) -> Merged:
    """DARE's random drop, then TIES' sign election and disjoint mean."""
    options = TaskVectorOptions(
        _weights(weights), scale, density, election=election, zero_sum=zero_sum, combine=combine, rescale=rescale, seed=seed
    )
    return merge_task_vectors(states, base, "random", True, options), _all(states)


def breadcrumbs(
    states: Sequence[StateDict], base: StateDict, weights: Weights = None, scale: float = 1.0,
    density: Density = 0.9, gamma: Gamma = 0.01, rescale: Rescale = None,
) -> Merged:
    """Model Breadcrumbs (Davari & Belilovsky, ECCV 2024): per tensor, drop the top ``gamma``
    outliers and keep the next ``density`` by magnitude, then task arithmetic."""
    options = TaskVectorOptions(_weights(weights), scale, density, rescale=rescale, gamma=gamma, combine="sum")
    return merge_task_vectors(states, base, "breadcrumbs", False, options), _all(states)


def breadcrumbs_ties(
    states: Sequence[StateDict], base: StateDict, weights: Weights = None, scale: float = 1.0,
    density: Density = 0.9, gamma: Gamma = 0.01, rescale: Rescale = None, election: Election = "weighted",
    zero_sum: ZeroSum = "positive", combine: Combine = "mean",
) -> Merged:
    """Breadcrumbs' outlier-trimmed sparsification, then TIES' sign election and disjoint mean."""
    options = TaskVectorOptions(
        _weights(weights), scale, density, election=election, zero_sum=zero_sum, combine=combine, rescale=rescale, gamma=gamma
    )
    return merge_task_vectors(states, base, "breadcrumbs", True, options), _all(states)


def slerp_merge(states: Sequence[StateDict], t: Unit = 0.5) -> Merged:
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


def fisher(
    states: Sequence[StateDict], fishers: Sequence[StateDict], weights: Weights = None,
    epsilon: Annotated[float, Field(ge=0)] = 1e-8,
) -> Merged:
    """Fisher merging (Matena & Raffel, "Merging Models with Fisher-Weighted Averaging", NeurIPS
    2022): per entry, ``sum_i w_i F_i theta_i / sum_i w_i F_i`` with ``F_i`` model i's diagonal
    Fisher; ``epsilon`` is added to every ``F_i`` (the reference's ``fisher_floor``), so entries no
    model is sensitive to fall back to the weighted mean. Tensors without a Fisher (buffers) are
    averaged."""
    if len(fishers) != len(states):
        raise ConfigError(f"merge: fisher needs one Fisher per model, got {len(fishers)} for {len(states)}")
    check_compatible(states)
    w = [1.0] * len(states) if weights is None else [float(v) for v in weights]
    plain = weighted_average(states, w)
    merged: StateDict = {}
    for name, reference in plain.items():
        if not reference.is_floating_point() or any(name not in f for f in fishers):
            merged[name] = reference
            continue
        mass = [wi * (f[name].double() + epsilon) for wi, f in zip(w, fishers, strict=True)]
        total = sum(mass)
        value = sum(m * s[name].double() for m, s in zip(mass, states, strict=True)) / total
        merged[name] = value.to(reference.dtype)
    return merged, _all(states)


def regmean(
    states: Sequence[StateDict], grams: Sequence[StateDict], alpha: Unit = 0.9
) -> Merged:
    """RegMean (Jin et al., "Dataless Knowledge Fusion by Merging Weights of Language Models",
    ICLR 2023): for a linear layer ``y = x W^T``, the ``W`` minimising ``sum_i ||X_i W^T - X_i W_i^T||^2``
    is ``(sum_i W_i G_i)(sum_i G_i)^-1`` with ``G_i = X_i^T X_i``. Off-diagonal Gram entries are
    scaled by ``alpha`` (the paper's regularisation; 1 = exact). Other tensors are averaged.

    Input directions no model's data reaches (a dead ReLU, a constant-zero pixel) leave the Gram
    sum singular; there the problem says nothing, and the merge keeps the plain average: it solves
    for the correction to the mean with a pseudo-inverse, whose null-space component is zero.
    """
    if len(grams) != len(states):
        raise ConfigError(f"merge: regmean needs one set of Gram matrices per model, got {len(grams)} for {len(states)}")
    if not 0 <= alpha <= 1:
        raise ConfigError(f"merge: alpha must be in [0, 1], got {alpha!r}")
    check_compatible(states)
    merged = dict(weighted_average(states))
    for name in grams[0]:
        regularised = []
        for gram in (g[name].double() for g in grams):
            diagonal = torch.diag(torch.diagonal(gram))
            regularised.append(alpha * gram + (1 - alpha) * diagonal)
        weights = [s[name].double() for s in states]
        mean = sum(weights) / len(weights)
        residual = sum((w - mean) @ g for w, g in zip(weights, regularised, strict=True))
        correction = residual @ torch.linalg.pinv(sum(regularised), hermitian=True)
        merged[name] = (mean + correction).to(states[0][name].dtype)
    return merged, _all(states)


def weight_matching(
    states: Sequence[StateDict], weights: Weights = None, seed: Seed = 0,
    max_passes: Annotated[int, Field(gt=0)] = 100,
) -> Merged:
    """Git Re-Basin weight matching (Ainsworth et al., ICLR 2023), then a weighted average: every
    model is permuted to the first one's hidden-unit order (:func:`alignment.weight_matching`,
    seeded layer order) before averaging, for models that do not share an initialisation.
    Sequential models only (:func:`alignment.sequential_spec`)."""
    check_compatible(states)
    spec = alignment.sequential_spec(states[0])
    reference = states[0]
    aligned = [reference] + [
        alignment.permute_state(spec, other, alignment.weight_matching(spec, reference, other, seed, max_passes))
        for other in states[1:]
    ]
    return weighted_average(aligned, weights), _all(states)
