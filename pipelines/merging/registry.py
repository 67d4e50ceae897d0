"""Named merge methods: ``merge.methods`` in params.yaml picks rows of :data:`MERGE_METHODS`."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pipelines.errors import ConfigError
from pipelines.merging import adaptive, methods, pleas, recipes, soups
from pipelines.merging.state import ModelSource, StateDict, resolve
from pipelines.registry import Registry


@dataclass(frozen=True)
class MergeMethod:
    """One named method: what to call, how to cite it, and what the merge stage must hand it.

    Attributes:
        needs_base: it merges task vectors against the shared initialisation.
        needs: the inputs of :data:`SUPPLIED_INPUTS` it takes, computed by the merge stage
            (:mod:`pipelines.merging.run`) and never set in params.yaml.
        members: which models it merges: ``"all"`` the fine-tunes, ``"best_two"`` the two best on
            validation (SLERP by definition).
        accelerated: it runs many passes over data, so the merge stage gives it a GPU when there is
            one: a Ray task of its own on a cluster's GPU node (:mod:`pipelines.merging.placement`).
        check_params: checks of its parameters beyond their annotations (``(given, key)``, raising
            ConfigError), which config validation runs with the signature's: LiNeS' ``base_params``
            against its ``base_method``.
    """

    name: str
    pretty_name: str
    paper_url: str
    function: Callable[..., tuple[StateDict, list[int]]]
    needs_base: bool = False
    needs: tuple[str, ...] = ()
    members: Literal["all", "best_two"] = "all"
    accelerated: bool = False
    check_params: Callable[[Mapping[str, Any], str], None] | None = None

    def accepts(self, parameter: str) -> bool:
        """Whether the method takes ``parameter`` (the merge stage passes data-dependent ones only then)."""
        return parameter in inspect.signature(self.function).parameters


@dataclass(frozen=True)
class MergeResult:
    state_dict: StateDict
    members: list[int]
    info: dict[str, Any] = field(default_factory=dict)


MERGE_METHODS: Registry[MergeMethod] = Registry("merge method")

# what the merge stage passes a method, never params.yaml: the models and the base, and what a row
# lists in `needs`: a validation scorer and the models' own validation scores, Fisher diagonals and
# Gram matrices on the validation split, each parameter's layer depth (the model's depth map), the
# test split's inputs without their labels, and a module of the architecture (for functional calls)
SUPPLIED_INPUTS = ("states", "base", "score", "scores", "fishers", "grams", "depths", "unlabelled_inputs", "model")

_SOUPS = "https://arxiv.org/abs/2203.05482"
for _method in (
    MergeMethod("linear", "Linear (weighted average)", _SOUPS, methods.linear),
    MergeMethod("uniform_soup", "Uniform soup", _SOUPS, soups.uniform_soup),
    MergeMethod("greedy_soup", "Greedy soup", _SOUPS, soups.greedy_soup, needs=("score", "scores")),
    # the sparsifier x consensus rows (task arithmetic, TIES, DARE, DELLA, breadcrumbs), as data
    *(MergeMethod(r.name, r.pretty_name, r.paper_url, recipes.FUNCTIONS[r.name], needs_base=True) for r in recipes.RECIPES),
    MergeMethod("magmax", "MagMax", "https://arxiv.org/abs/2407.06322", methods.magmax, needs_base=True),
    MergeMethod("pcb", "PCB-Merging", "https://arxiv.org/abs/2410.02396", methods.pcb, needs_base=True),
    MergeMethod("lines", "LiNeS", "https://arxiv.org/abs/2410.17146", methods.lines, needs_base=True, needs=("depths",),
                check_params=methods.check_lines_params),
    MergeMethod("adamerging", "AdaMerging", "https://arxiv.org/abs/2310.02575", adaptive.adamerging, needs_base=True,
                needs=("unlabelled_inputs", "model"), accelerated=True),
    MergeMethod("slerp", "SLERP", "https://dl.acm.org/doi/10.1145/325165.325242", methods.slerp_merge, members="best_two"),
    MergeMethod("karcher", "Karcher mean", "https://doi.org/10.1145/502122.502124", methods.karcher),
    MergeMethod("model_stock", "Model Stock", "https://arxiv.org/abs/2403.19522", methods.model_stock, needs_base=True),
    MergeMethod("fisher", "Fisher merging", "https://arxiv.org/abs/2111.09832", methods.fisher, needs=("fishers",)),
    MergeMethod("regmean", "RegMean", "https://arxiv.org/abs/2212.09849", methods.regmean, needs=("grams",)),
    MergeMethod("weight_matching", "Git Re-Basin weight matching", "https://arxiv.org/abs/2209.04836", methods.weight_matching),
    MergeMethod("pleas", "PLeaS", "https://arxiv.org/abs/2407.02447", pleas.pleas, needs=("unlabelled_inputs", "model")),
):
    MERGE_METHODS.register(_method.name)(_method)


def run_merge(
    method: str, models: Sequence[ModelSource], base: ModelSource | None = None, **params: Any
) -> MergeResult:
    """Merge ``models`` with the registered ``method``.

    Args:
        method: a name in :data:`MERGE_METHODS`.
        models: state dicts, safetensors files or checkpoint directories.
        base: the shared initialisation, for task-vector methods.
        **params: the method's parameters (e.g. ``score`` for ``greedy_soup``).

    Raises:
        UnknownNameError: ``method`` is not registered.
        ConfigError: a parameter is not one the method takes, or ``base`` is missing.
    """
    entry = MERGE_METHODS.get(method, key="merge.methods")
    accepted = set(inspect.signature(entry.function).parameters) - {"states", "base"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ConfigError(f"merge: {method} takes {sorted(accepted)}, not {unknown}")
    states = [resolve(m) for m in models]
    if entry.needs_base:
        if base is None:
            raise ConfigError(f"merge: {method} needs the base model")
        params["base"] = resolve(base)
    state, members = entry.function(states, **params)
    return MergeResult(state_dict=state, members=members, info={"method": method, "paper": entry.paper_url})


def merge(method: str, models: Sequence[ModelSource], base: ModelSource | None = None, **params: Any) -> StateDict:
    """Like :func:`run_merge`, returning only the merged state dict."""
    return run_merge(method, models, base, **params).state_dict
