"""The task-vector methods as data: each is a row of a sparsifier x sign consensus table with its
papers' defaults, turned into a function with a real signature (what ``params.yaml`` values are
checked against, and what :func:`pipelines.merging.registry.run_merge` calls).

The recipe itself is :func:`pipelines.merging.task_vectors.merge_task_vectors`; a new mergekit-style
method is one more :class:`Recipe` row.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipelines.merging.parameters import (
    Combine, Density, Election, Epsilon, Gamma, Merged, Rescale, Seed, TopkScope, Weights, ZeroSum,
)
from pipelines.merging.state import StateDict
from pipelines.merging.task_vectors import Sparsifier, TaskVectorOptions, merge_task_vectors

PARAMETER_TYPES: dict[str, Any] = {
    "weights": Weights, "scale": float, "density": Density, "topk_scope": TopkScope, "rescale": Rescale,
    "seed": Seed, "gamma": Gamma, "epsilon": Epsilon, "election": Election, "zero_sum": ZeroSum, "combine": Combine,
}
# what each sparsifier, and the sign consensus, adds to a method's parameters (see TaskVectorOptions)
SPARSIFIER_PARAMETERS: dict[str, tuple[str, ...]] = {
    "none": (),
    "magnitude": ("density", "topk_scope"),
    "random": ("density", "rescale", "seed"),
    "della": ("density", "epsilon", "rescale", "seed"),
    "breadcrumbs": ("density", "gamma", "rescale"),
}
CONSENSUS_PARAMETERS = ("election", "zero_sum", "combine")


@dataclass(frozen=True)
class Recipe:
    """One task-vector method: ``base + scale * combine(sparsify(model_i - base))``.

    Attributes:
        defaults: the method's defaults where they differ from :class:`TaskVectorOptions`' (the
            papers'); without consensus the task vectors are summed (task arithmetic).
    """

    name: str
    pretty_name: str
    paper_url: str
    sparsifier: Sparsifier
    consensus: bool
    doc: str
    defaults: Mapping[str, Any] = field(default_factory=dict)

    @property
    def parameters(self) -> tuple[str, ...]:
        return ("weights", "scale", *SPARSIFIER_PARAMETERS[self.sparsifier], *(CONSENSUS_PARAMETERS if self.consensus else ()))

    def function(self) -> Callable[..., Merged]:
        """The method as a function of ``(states, base, **parameters)`` with this row's signature."""
        options = TaskVectorOptions()
        defaults = {"weights": None, "scale": 1.0, **{n: getattr(options, n) for n in PARAMETER_TYPES if hasattr(options, n)},
                    "combine": "mean" if self.consensus else "sum", **self.defaults}
        names = self.parameters

        def merge(states: Sequence[StateDict], base: StateDict, **given: Any) -> Merged:
            unknown = sorted(set(given) - set(names))
            if unknown:
                raise TypeError(f"{self.name}() got unexpected keyword arguments {unknown}")
            values = {n: defaults[n] for n in names} | given
            weights = values.pop("weights")
            chosen = TaskVectorOptions(weights=None if weights is None else tuple(float(w) for w in weights),
                                       combine=values.pop("combine", "sum"), **values)
            return merge_task_vectors(states, base, self.sparsifier, self.consensus, chosen), list(range(len(states)))

        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        signature = [inspect.Parameter("states", kind, annotation=Sequence[StateDict]),
                     inspect.Parameter("base", kind, annotation=StateDict)]
        signature += [inspect.Parameter(n, kind, default=defaults[n], annotation=PARAMETER_TYPES[n]) for n in names]
        merge.__signature__ = inspect.Signature(signature, return_annotation=Merged)
        merge.__annotations__ = {p.name: p.annotation for p in signature} | {"return": Merged}
        merge.__name__ = merge.__qualname__ = self.name
        merge.__doc__ = self.doc
        return merge


_TASK_ARITHMETIC = "https://arxiv.org/abs/2212.04089"
_TIES = "https://arxiv.org/abs/2306.01708"
_DARE = "https://arxiv.org/abs/2311.03099"
_DELLA = "https://arxiv.org/abs/2406.11617"
_BREADCRUMBS = "https://arxiv.org/abs/2312.06795"
_CONSENSUS = {"election": "weighted", "zero_sum": "positive", "combine": "mean"}

RECIPES: tuple[Recipe, ...] = (
    Recipe("task_arithmetic", "Task arithmetic", _TASK_ARITHMETIC, "none", False,
           "``base + scale * sum_i w_i (model_i - base)`` (Ilharco et al., ICLR 2023)."),
    Recipe("ties", "TIES-Merging", _TIES, "magnitude", True,
           "TIES-Merging (Yadav et al., NeurIPS 2023): trim each task vector to its top ``density`` by "
           "magnitude (paper: 0.2, over the whole model; default here per tensor, as mergekit), elect a sign "
           "per entry, average the agreeing entries.",
           {"density": 0.2, "topk_scope": "tensor", **_CONSENSUS}),
    Recipe("dare_linear", "DARE + task arithmetic", _DARE, "random", False,
           "DARE (Yu et al., ICML 2024) then task arithmetic: drop entries at random, keep ``density`` of "
           "them rescaled by ``1 / density`` (the paper; ``rescale='l1'`` as mergekit).",
           {"density": 0.5, "rescale": "inverse_density", "seed": 0}),
    Recipe("dare_ties", "DARE + TIES", _DARE, "random", True,
           "DARE's random drop, then TIES' sign election and disjoint mean.",
           {"density": 0.5, "rescale": "inverse_density", "seed": 0, **_CONSENSUS}),
    Recipe("della_linear", "DELLA + task arithmetic", _DELLA, "della", False,
           "DELLA's MagPrune (Deep et al., 2024), then task arithmetic: entries ranked by magnitude are kept "
           "with probabilities from ``density - epsilon`` to ``density + epsilon`` and rescaled by their own "
           "(:func:`pipelines.merging.sparsify.della`).",
           {"density": 0.5, "epsilon": 0.1, "rescale": "inverse_density", "seed": 0}),
    Recipe("della", "DELLA-Merging", _DELLA, "della", True,
           "DELLA-Merging (Deep et al., 2024): MagPrune, then TIES' sign election and disjoint mean (the "
           "paper's drop, elect, fuse).",
           {"density": 0.5, "epsilon": 0.1, "rescale": "inverse_density", "seed": 0, **_CONSENSUS}),
    Recipe("breadcrumbs", "Model Breadcrumbs", _BREADCRUMBS, "breadcrumbs", False,
           "Model Breadcrumbs (Davari & Belilovsky, ECCV 2024): per tensor, drop the top ``gamma`` outliers "
           "and keep the next ``density`` by magnitude, then task arithmetic.",
           {"density": 0.9, "gamma": 0.01, "rescale": None}),
    Recipe("breadcrumbs_ties", "Model Breadcrumbs + TIES", _BREADCRUMBS, "breadcrumbs", True,
           "Breadcrumbs' outlier-trimmed sparsification, then TIES' sign election and disjoint mean.",
           {"density": 0.9, "gamma": 0.01, "rescale": None, **_CONSENSUS}),
)
FUNCTIONS: dict[str, Callable[..., Merged]] = {recipe.name: recipe.function() for recipe in RECIPES}
