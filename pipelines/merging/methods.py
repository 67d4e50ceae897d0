"""The merge methods that are not rows of the task-vector table (:mod:`pipelines.merging.recipes`):
averages, interpolation and geometry, data-dependent and per-entry rules, as functions with
explicit parameters.

Each takes ``states`` (and ``base`` where it merges task vectors) and returns the merged state
dict with the indices of the models it used; :mod:`pipelines.merging.registry` names them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch

from pipelines.errors import ConfigError
from pipelines.merging import alignment, competition
from pipelines.merging.parameters import Count, Density, Merged, NonNegative, Seed, Unit, Weights
from pipelines.merging.recipes import FUNCTIONS as RECIPE_FUNCTIONS
from pipelines.merging.spherical import spherical_mean
from pipelines.merging.state import StateDict, check_compatible, weighted_average
from pipelines.merging.task_vectors import model_stock_ratio, slerp
from pipelines.registry import check_arguments

def _all(states: Sequence[StateDict]) -> list[int]:
    return list(range(len(states)))


def _tensorwise(base: StateDict, states: Sequence[StateDict], rule: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> StateDict:
    """``rule(reference, stacked)`` for each floating tensor of ``base`` (float64; ``stacked`` the
    models' tensors ``[M, ...]``), cast back; other tensors (counters) come from the base."""
    check_compatible([base, *states])
    merged: StateDict = {}
    for name, reference in base.items():
        if not reference.is_floating_point():
            merged[name] = reference.clone()
            continue
        stacked = torch.stack([s[name].double() for s in states])
        merged[name] = rule(reference.double(), stacked).to(reference.dtype)
    return merged


def linear(states: Sequence[StateDict], weights: Weights = None) -> Merged:
    """Weighted average of the models (weights normalised to sum 1)."""
    return weighted_average(states, weights), _all(states)


def check_lines_params(given: Mapping[str, Any], key: str = "merge.params.lines") -> None:
    """Check LiNeS' ``base_params`` against its ``base_method``'s own signature, as config
    validation checks a method's parameters (it runs this before any stage starts, through the
    registry row's ``check_params``; :func:`lines` runs it too).

    Raises:
        ConfigError: ``<key>.base_params: <method> does not take [...]``, or a bad value's type.
    """
    base_method = given.get("base_method", "task_arithmetic")
    if base_method not in RECIPE_FUNCTIONS:  # the check of base_method's own annotation names it
        return
    merge_first = RECIPE_FUNCTIONS[base_method]
    nested = dict(given.get("base_params") or {})
    unknown = sorted(set(nested) - (set(inspect.signature(merge_first).parameters) - {"states", "base"}))
    if unknown:
        raise ConfigError(f"{key}.base_params: {base_method} does not take {unknown}")
    check_arguments(merge_first, nested, f"{key}.base_params")


def lines(
    states: Sequence[StateDict], base: StateDict, depths: Mapping[str, int],
    base_method: Literal["task_arithmetic", "ties"] = "task_arithmetic", alpha: float = 1.0, beta: float = 0.0,
    base_params: Mapping[str, Any] | None = None,
) -> Merged:
    """LiNeS (Wang et al., "LiNeS: Post-training Layer Scaling Prevents Forgetting and Enhances
    Model Merging", ICLR 2025, https://arxiv.org/abs/2410.17146): merge with ``base_method``
    (``base_params``: its own parameters), then scale the merged task vector of layer ``l`` of
    ``L`` by ``alpha + beta * (l - 1) / (L - 1)``: shallow layers stay near the base, deep ones
    take more of the task. ``depths`` gives each parameter's layer (the model registry's depth
    map, :func:`pipelines.models.zoo.layer_depths`). ``alpha = 1, beta = 0`` is the base method.
    """
    check_lines_params({"base_method": base_method, "base_params": base_params})
    merged_first, members = RECIPE_FUNCTIONS[base_method](states, base, **dict(base_params or {}))
    floating = [n for n, t in base.items() if t.is_floating_point()]
    missing = [n for n in floating if n not in depths]
    if missing:
        raise ConfigError(f"merge: lines has no layer depth for {missing[:3]} (the model's depth map)")
    layers = max((depths[n] for n in floating), default=1)
    merged: StateDict = {}
    for name, reference in base.items():
        if not reference.is_floating_point():
            merged[name] = merged_first[name]
            continue
        factor = alpha + beta * (depths[name] - 1) / (layers - 1) if layers > 1 else alpha
        tau = merged_first[name].double() - reference.double()
        merged[name] = (reference.double() + factor * tau).to(reference.dtype)
    return merged, members


def magmax(states: Sequence[StateDict], base: StateDict, scale: float = 1.0) -> Merged:
    """MagMax (Marczak et al., "MagMax: Leveraging Model Merging for Seamless Continual
    Learning", ECCV 2024, https://arxiv.org/abs/2407.06322): per parameter, the task-vector entry
    of largest magnitude across the models (the earlier model at a tie), ``base + scale * that``."""
    def largest(reference: torch.Tensor, stacked: torch.Tensor) -> torch.Tensor:
        taus = stacked - reference
        pick = taus.abs().argmax(0, keepdim=True)  # the first maximum: the earlier model wins a tie
        return reference + scale * taus.gather(0, pick).squeeze(0)

    return _tensorwise(base, states, largest), _all(states)


def pcb(states: Sequence[StateDict], base: StateDict, ratio: Density = 0.2, scale: float = 1.0) -> Merged:
    """PCB-Merging (Du et al., "Parameter Competition Balancing for Model Merging", NeurIPS 2024,
    https://arxiv.org/abs/2410.02396): each task vector's entries are weighted by intra-balancing
    (their magnitude within the task) times inter-balancing (their agreement with the other
    tasks); per task only the top ``ratio`` of weights survive, and the merged task vector is the
    weighted mean, ``base + scale * that`` (:mod:`pipelines.merging.competition`). Over the whole
    model at once, as the authors' code flattens it. ``ratio`` 0.2 is TIES' density, not the paper's."""
    if len(states) < 2:
        raise ConfigError(f"merge: pcb balances at least 2 fine-tuned models, got {len(states)}")
    check_compatible([base, *states])
    names = [n for n, t in base.items() if t.is_floating_point()]
    taus = torch.stack([torch.cat([(s[n].double() - base[n].double()).flatten() for n in names]) for s in states])
    merged_tau = competition.pcb_merge(taus, ratio)
    merged: StateDict = {n: t.clone() for n, t in base.items() if not t.is_floating_point()}
    start = 0
    for name in names:
        reference = base[name]
        piece = merged_tau[start : start + reference.numel()].reshape(reference.shape)
        merged[name] = (reference.double() + scale * piece).to(reference.dtype)
        start += reference.numel()
    return {n: merged[n] for n in base}, _all(states)


def karcher(
    states: Sequence[StateDict], weights: Weights = None, max_iter: Count = 50,
) -> Merged:
    """Karcher mean (mergekit's ``karcher``; Buss & Fillmore, ACM TOG 2001): tensor by tensor, the
    weighted Riemannian mean of the models' directions on the unit sphere, scaled by their weighted
    mean norm (:func:`pipelines.merging.spherical.spherical_mean`). Of two models of equal norm it
    is their SLERP at t = 0.5."""
    check_compatible(states)
    w = [1.0] * len(states) if weights is None else [float(v) for v in weights]
    if len(w) != len(states) or sum(w) <= 0 or min(w) < 0:
        raise ConfigError(f"merge: karcher takes one non-negative weight per model, not all 0, got {list(w)}")
    merged = {n: spherical_mean([s[n] for s in states], w, max_iter) if t.is_floating_point() else t.clone()
              for n, t in states[0].items()}
    return merged, _all(states)


def slerp_merge(states: Sequence[StateDict], t: Unit = 0.5, weights: Weights = None) -> Merged:
    """SLERP, tensor by tensor: of two models at ``t`` (``t = 0`` gives the first); of more (or
    with ``weights``), the spherical average of their directions with those weights (uniform by
    default) at their weighted mean norm, as :func:`karcher`."""
    if len(states) < 2:
        raise ConfigError(f"merge: slerp merges at least 2 models, got {len(states)}")
    if not 0 <= t <= 1:
        raise ConfigError(f"merge: t must be in [0, 1], got {t!r}")
    if len(states) > 2 or weights is not None:
        return karcher(states, weights)
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

    def towards_the_mean(reference: torch.Tensor, stacked: torch.Tensor) -> torch.Tensor:
        ratio = model_stock_ratio(stacked - reference)
        return ratio * stacked.mean(0) + (1 - ratio) * reference

    return _tensorwise(base, states, towards_the_mean), _all(states)


def fisher(
    states: Sequence[StateDict], fishers: Sequence[StateDict], weights: Weights = None,
    epsilon: NonNegative = 1e-8,
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
    max_passes: Count = 100,
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
