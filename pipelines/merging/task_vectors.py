"""Task-vector merging (Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023,
https://arxiv.org/abs/2212.04089) and its sparsified / sign-consensus variants, as one recipe.

A method is a row: a sparsifier (none, magnitude top-k, DARE's random drop, DELLA's
magnitude-ranked drop, breadcrumbs) x sign
consensus (TIES election + disjoint merge, or none) x a combiner, applied tensor by tensor to
``tau_i = model_i - base``; the result is ``base + scale * merged(tau)``. Floating tensors are
merged in float64 and cast back; other tensors (counters) come from the base.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from pipelines.errors import ConfigError
from pipelines.merging import consensus, sparsify
from pipelines.merging.lazy import tensor_spec
from pipelines.merging.state import StateDict, check_compatible
from pipelines.seeding import derive_seed, torch_generator

Sparsifier = Literal["none", "magnitude", "random", "della", "breadcrumbs"]


@dataclass(frozen=True)
class TaskVectorOptions:
    """The shared parameters of task-vector methods (names as in ``params.yaml: merge.params``).

    Attributes:
        weights: per model; default 1 each.
        scale: λ applied to the merged task vector.
        density: fraction of entries the sparsifier keeps.
        topk_scope: magnitude top-k per ``"tensor"`` (mergekit) or over the whole ``"model"``
            (the TIES paper, FusionBench).
        election: TIES sign election by ``"weighted"`` mass (paper) or ``"unweighted"`` sign count.
        zero_sum: what a zero-sum election gives: ``"positive"`` (mergekit) or ``"zero"``.
        combine: ``"mean"`` (TIES' disjoint mean; without consensus the weight-normalised mean)
            or ``"sum"`` (task arithmetic).
        rescale: after a random drop or breadcrumbs: ``"inverse_density"`` (DARE paper; for DELLA
            each entry's own keep probability), ``"l1"`` (mergekit's norm matching) or None.
        gamma: breadcrumbs' fraction of largest entries dropped as outliers.
        epsilon: DELLA's spread of keep probabilities around ``density``.
        seed: random drops draw from a generator seeded by (seed, tensor name, model index).
    """

    weights: tuple[float, ...] | None = None
    scale: float = 1.0
    density: float = 1.0
    topk_scope: Literal["tensor", "model"] = "tensor"
    election: Literal["weighted", "unweighted"] = "weighted"
    zero_sum: Literal["zero", "positive"] = "positive"
    combine: Literal["mean", "sum"] = "sum"
    rescale: sparsify.Rescale = "inverse_density"
    gamma: float = 0.0
    epsilon: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.density <= 1:
            raise ConfigError(f"merge: density must be in (0, 1], got {self.density!r}")
        if not 0 <= self.gamma < 1 or self.gamma + self.density > 1:
            raise ConfigError(f"merge: gamma must be in [0, 1) with gamma + density <= 1, got {self.gamma!r}")
        if not 0 <= self.epsilon < self.density or self.density + self.epsilon > 1:
            raise ConfigError(f"merge: epsilon must satisfy 0 <= epsilon < density and density + epsilon <= 1, "
                              f"got epsilon {self.epsilon!r} with density {self.density!r}")
        for name, value, allowed in (
            ("topk_scope", self.topk_scope, ("tensor", "model")),
            ("election", self.election, ("weighted", "unweighted")),
            ("zero_sum", self.zero_sum, ("zero", "positive")),
            ("combine", self.combine, ("mean", "sum")),
            ("rescale", self.rescale, ("inverse_density", "l1", None)),
        ):
            if value not in allowed:
                raise ConfigError(f"merge: {name} must be one of {list(allowed)}, got {value!r}")


def _sparsified(
    name: str, index: int, tau: torch.Tensor, sparsifier: Sparsifier, options: TaskVectorOptions, threshold: float | None
) -> torch.Tensor:
    if sparsifier == "none":
        return tau
    if sparsifier == "magnitude":
        return sparsify.magnitude(tau, options.density, threshold)
    if sparsifier in ("random", "della"):  # one stream for both: DELLA at epsilon 0 draws DARE's masks
        generator = torch_generator(derive_seed(options.seed, "dare", name, index))
        if sparsifier == "della":
            return sparsify.della(tau, options.density, options.epsilon, generator, options.rescale)
        return sparsify.random_drop(tau, options.density, generator, options.rescale)
    return sparsify.breadcrumbs(tau, options.density, options.gamma, options.rescale)


def merge_task_vectors(
    states: Sequence[StateDict], base: StateDict, sparsifier: Sparsifier, use_consensus: bool, options: TaskVectorOptions
) -> StateDict:
    """``base + scale * combine(sparsify(model_i - base))``, tensor by tensor (see the module doc)."""
    check_compatible([base, *states])
    weights = torch.tensor(options.weights if options.weights is not None else [1.0] * len(states), dtype=torch.float64)
    if len(weights) != len(states):
        raise ConfigError(f"merge: {len(weights)} weights for {len(states)} models")
    names = [n for n in base if tensor_spec(base, n)[1].is_floating_point]
    thresholds: list[float | None] = [None] * len(states)
    if sparsifier == "magnitude" and options.topk_scope == "model":
        thresholds = [
            sparsify.model_threshold((s[n].double() - base[n].double() for n in names), options.density) for s in states
        ]
    merged: StateDict = {}
    for name, reference in base.items():
        if not reference.is_floating_point():
            merged[name] = reference.clone()
            continue
        taus = torch.stack([
            _sparsified(name, i, s[name].double() - reference.double(), sparsifier, options, thresholds[i])
            for i, s in enumerate(states)
        ])
        w = weights.to(taus.device)  # the tensors may be on a GPU (read to it one at a time)
        if use_consensus:
            sign = consensus.elect_sign(taus * w.view(-1, *([1] * reference.ndim)), options.election, options.zero_sum)
            delta = consensus.disjoint_merge(taus, sign, options.combine, w)
        else:
            delta = (taus * w.view(-1, *([1] * reference.ndim))).sum(0)
            if options.combine == "mean":
                delta = delta / w.sum()
        merged[name] = (reference.double() + options.scale * delta).to(reference.dtype)
    return merged


# mergekit's threshold (sin θ < 0.032 past it): near θ = π the spherical weights grow as 1 / sin θ
PARALLEL_COS = 0.9995


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation (Shoemake, SIGGRAPH 1985) of two tensors seen as flat vectors.

    The angle comes from the normalised vectors; the weights ``sin((1-t)θ)/sin θ`` and
    ``sin(tθ)/sin θ`` apply to the original ones (as mergekit does), so ``a = [1,0,0,0]``,
    ``b = [0,2,0,0]``, ``t = 0.5`` give ``[0.7071, 1.4142, 0, 0]``.

    Nearly parallel *or antiparallel* vectors (``|cos θ| > PARALLEL_COS``), and a zero one, fall
    back to linear interpolation, as mergekit and FusionBench do: near θ = π the weights divide by
    ``sin θ ≈ 0`` while both grow, so inputs of norm 64 gave a result of norm 1.3e5.
    """
    va, vb = a.double().flatten(), b.double().flatten()
    na, nb = va.norm(), vb.norm()
    if na < eps or nb < eps:
        return torch.lerp(a.double(), b.double(), t).to(a.dtype)
    cos = torch.clamp(torch.dot(va / na, vb / nb), -1.0, 1.0)
    if cos.abs() > PARALLEL_COS:
        return torch.lerp(a.double(), b.double(), t).to(a.dtype)
    theta = torch.arccos(cos)
    s0 = torch.sin((1 - t) * theta) / torch.sin(theta)
    s1 = torch.sin(t * theta) / torch.sin(theta)
    return (s0 * a.double() + s1 * b.double()).to(a.dtype)


def model_stock_ratio(taus: torch.Tensor, eps: float = 1e-12) -> float:
    """Model Stock's interpolation ratio (Jang et al., ECCV 2024, https://arxiv.org/abs/2403.19522)
    for one layer: with ``cos θ`` the mean pairwise cosine between the ``N`` fine-tunes' task
    vectors (rows of ``taus``), ``t = N cos θ / (1 + (N - 1) cos θ)``.

    The paper's geometry needs ``cos θ > 0``: at ``cos θ <= 0`` the ratio is at most 0 and its
    denominator reaches 0 at ``cos θ = -1 / (N - 1)`` (two opposite task vectors gave a layer of
    9.8e7), so fine-tunes that share no direction keep the base (``t = 0``).
    """
    count = taus.shape[0]
    flat = taus.reshape(count, -1).double()
    norms = flat.norm(dim=1)
    if count < 2 or bool((norms < eps).any()):
        return 1.0
    unit = flat / norms.unsqueeze(1)
    cosines = unit @ unit.T
    pairs = torch.triu_indices(count, count, offset=1)
    cos = float(cosines[pairs[0], pairs[1]].mean())
    if cos <= 0:
        return 0.0
    return count * cos / (1 + (count - 1) * cos)
