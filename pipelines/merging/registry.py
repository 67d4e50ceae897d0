"""Named merge methods: ``merge.methods`` in params.yaml picks rows of :data:`MERGE_METHODS`."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipelines.errors import ConfigError
from pipelines.merging import methods, soups
from pipelines.merging.state import ModelSource, StateDict, resolve
from pipelines.registry import Registry


@dataclass(frozen=True)
class MergeMethod:
    """One named method: what to call, how to cite it."""

    name: str
    pretty_name: str
    paper_url: str
    function: Callable[..., tuple[StateDict, list[int]]]
    needs_base: bool = False

    def accepts(self, parameter: str) -> bool:
        """Whether the method takes ``parameter`` (the merge stage passes data-dependent ones only then)."""
        return parameter in inspect.signature(self.function).parameters


@dataclass(frozen=True)
class MergeResult:
    state_dict: StateDict
    members: list[int]
    info: dict[str, Any] = field(default_factory=dict)


MERGE_METHODS: Registry[MergeMethod] = Registry("merge method")

_SOUPS = "https://arxiv.org/abs/2203.05482"
_TASK_ARITHMETIC = "https://arxiv.org/abs/2212.04089"
_TIES = "https://arxiv.org/abs/2306.01708"
_DARE = "https://arxiv.org/abs/2311.03099"
_BREADCRUMBS = "https://arxiv.org/abs/2312.06795"
for _method in (
    MergeMethod("linear", "Linear (weighted average)", _SOUPS, methods.linear),
    MergeMethod("uniform_soup", "Uniform soup", _SOUPS, soups.uniform_soup),
    MergeMethod("greedy_soup", "Greedy soup", _SOUPS, soups.greedy_soup),
    MergeMethod("task_arithmetic", "Task arithmetic", _TASK_ARITHMETIC, methods.task_arithmetic, needs_base=True),
    MergeMethod("ties", "TIES-Merging", _TIES, methods.ties, needs_base=True),
    MergeMethod("dare_linear", "DARE + task arithmetic", _DARE, methods.dare_linear, needs_base=True),
    MergeMethod("dare_ties", "DARE + TIES", _DARE, methods.dare_ties, needs_base=True),
    MergeMethod("breadcrumbs", "Model Breadcrumbs", _BREADCRUMBS, methods.breadcrumbs, needs_base=True),
    MergeMethod("breadcrumbs_ties", "Model Breadcrumbs + TIES", _BREADCRUMBS, methods.breadcrumbs_ties, needs_base=True),
    MergeMethod("slerp", "SLERP", "https://dl.acm.org/doi/10.1145/325165.325242", methods.slerp_merge),
    MergeMethod("model_stock", "Model Stock", "https://arxiv.org/abs/2403.19522", methods.model_stock, needs_base=True),
    MergeMethod("fisher", "Fisher merging", "https://arxiv.org/abs/2111.09832", methods.fisher),
    MergeMethod("regmean", "RegMean", "https://arxiv.org/abs/2212.09849", methods.regmean),
    MergeMethod("weight_matching", "Git Re-Basin weight matching", "https://arxiv.org/abs/2209.04836", methods.weight_matching),
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
