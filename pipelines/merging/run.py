"""The merge stage's work, method by method: which models a method merges, the inputs it needs
(computed once and shared), its coefficient search, the merge itself with its time and memory,
and its scores. What each method needs is read from its registry row
(:class:`pipelines.merging.registry.MergeMethod`), so a new kind of method is a new row and, at
most, a new entry in :meth:`MergeInputs.supply`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from pipelines import storage
from pipelines.config import MergeParams
from pipelines.data.dataset import ArrayDataset
from pipelines.evaluation import HeldOutObjective, best_two, bootstrap_seed, score_state
from pipelines.merging.placement import IN_PROCESS_CPU, Placement, merge_placed
from pipelines.merging.registry import MERGE_METHODS, MergeMethod
from pipelines.merging.search import best_point, cached_points, search_merge_params
from pipelines.merging.state import StateDict
from pipelines.merging.statistics import diagonal_fisher, linear_input_grams
from pipelines.models import ModelCard, model_from_state
from pipelines.models.checkpoints import state_dict_bytes
from pipelines.models.zoo import layer_depths
from pipelines.seeding import derive_seed, torch_generator
from pipelines.tasks import get_task


@dataclass
class MergeInputs:
    """The models to merge and the held-out data, with what methods need computed on first use.

    Attributes:
        names: one per model in ``states`` (trial names, and ``"base"`` when it takes part).
        seed: the root seed (Fisher merging samples its labels from a generator derived from it).
        target_scale: regression targets' standard deviation (1 for classification).
    """

    card: ModelCard
    names: list[str]
    states: list[StateDict]
    base: StateDict
    val: ArrayDataset
    test: ArrayDataset
    seed: int
    batch_size: int
    ece_bins: int
    target_scale: float
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.objective = HeldOutObjective(self.card, self.val.x, self.val.y, self.batch_size)

    def val_score(self, state: StateDict) -> float:
        return self.objective(state)[0]

    @property
    def own_scores(self) -> list[float]:
        """Each model's validation score, once."""
        if "scores" not in self._cache:
            self._cache["scores"] = [self.val_score(s) for s in self.states]
        return self._cache["scores"]

    def members(self, entry: MergeMethod) -> list[int]:
        return best_two(self.own_scores) if entry.members == "best_two" else list(range(len(self.states)))

    def supply(self, need: str) -> Any:
        """One of :data:`~pipelines.merging.registry.SUPPLIED_INPUTS` beyond the models, computed once."""
        if need == "score":
            return self.val_score
        if need == "scores":
            return self.own_scores
        if need not in self._cache:
            self._cache[need] = self._compute(need)
        return self._cache[need]

    def _compute(self, need: str) -> Any:
        if need == "depths":  # the depth maps read the names in the architecture's own order
            return layer_depths(self.card.model, list(model_from_state(self.card, self.base).state_dict()))
        if need == "unlabelled_inputs":  # the test split's inputs: its labels are never read here
            return torch.as_tensor(self.test.x)
        if need == "model":  # on the CPU: the placement moves it to the device its method runs on
            return model_from_state(self.card, self.base)
        x = torch.tensor(self.val.x)
        models = [model_from_state(self.card, s) for s in self.states]
        if need == "fishers":
            return [diagonal_fisher(m, x, torch_generator(derive_seed(self.seed, "fisher", i)), task=self.card.task)
                    for i, m in enumerate(models)]
        if need == "grams":
            return [linear_input_grams(m, x) for m in models]
        raise ValueError(f"merge: no way to compute {need!r} for a method")


def search_names(params: MergeParams, search_id: str) -> dict[str, str]:
    """The Ray Tune experiment name of each searched method (content-addressed by ``search_id``)."""
    return {method: f"merge-search-{method}-{search_id}" for method in params.search}


def accelerated_methods(params: MergeParams) -> list[str]:
    """The listed methods whose rows are ``accelerated`` (see :mod:`pipelines.merging.placement`)."""
    return [m for m in params.methods if MERGE_METHODS.get(m, key="merge.methods").accelerated]


def needs_ray(params: MergeParams, run_state: str, search_id: str) -> bool:
    """Whether some search has not finished before (a finished one is read back without Ray)."""
    names = search_names(params, search_id)
    return any(cached_points(run_state, names[m], space) is None for m, space in params.search.items())


@dataclass
class MergeOutcome:
    """The stage's tables: one row per method (``merges``) and one per searched point (``merge_search``)."""

    merges: list[dict[str, Any]]
    searched: list[dict[str, Any]]


def merge_all(
    inputs: MergeInputs, params: MergeParams, run_state: str, search_id: str, merged_folder: str,
    report: Callable[[str], None] = print, placement: Placement = IN_PROCESS_CPU,
) -> MergeOutcome:
    """Run every method of ``params.methods`` in order: search its coefficients when
    ``params.search`` lists it (Ray must be connected then, unless :func:`needs_ray` is False),
    merge with its parameters (an accelerated method where ``placement`` puts it), write
    ``<merged_folder>/<method>.safetensors`` and score it on the validation and test splits."""
    task = get_task(inputs.card.task)
    names = search_names(params, search_id)
    outcome = MergeOutcome([], [])
    for method in params.methods:
        entry = MERGE_METHODS.get(method, key="merge.methods")
        chosen = inputs.members(entry)
        members_in = [inputs.states[i] for i in chosen]
        method_base = inputs.base if entry.needs_base else None
        method_params = dict(params.params.get(method, {}))
        supplied = {need: inputs.supply(need) for need in entry.needs}
        if method in params.search:
            points = search_merge_params(method, members_in, method_base, {**method_params, **supplied},
                                         params.search[method], inputs.objective, run_state, names[method])
            best = best_point(points)
            method_params.update(best.params)
            outcome.searched += [{"method": method, "params": json.dumps(pt.params, sort_keys=True), "val_loss": pt.loss,
                                  task.score_column: pt.score, "chosen": pt is best} for pt in points]
        placed = merge_placed(placement, entry.accelerated, method, members_in, method_base, method_params, supplied)
        result = placed.result
        members = [chosen[i] for i in result.members]
        path = storage.join(merged_folder, f"{method}.safetensors")
        storage.write_bytes(path, state_dict_bytes(result.state_dict))
        metrics = _scores(inputs, result.state_dict)
        outcome.merges.append({"method": method, "params": json.dumps(method_params, sort_keys=True),
                               "num_models": len(members), "members": ",".join(inputs.names[i] for i in members),
                               **metrics, "seconds": placed.seconds, "peak_memory_mib": placed.peak_memory_mib,
                               "ran_on": placed.ran_on, "checkpoint": path})
        report(f"merge: {method} done ({len(outcome.merges)}/{len(params.methods)}): val {task.score} "
               f"{metrics[f'val_{task.score}']:.4f}, {placed.seconds:.2f}s ({placed.ran_on})")
    return outcome


def _scores(inputs: MergeInputs, state: StateDict) -> dict[str, float]:
    """Every metric of a merged model on the validation and test splits (``val_*``, ``test_*``)."""
    return {f"{split}_{name}": value for split, data in (("val", inputs.val), ("test", inputs.test))
            for name, value in score_state(inputs.card, state, data.x, data.y, inputs.batch_size, inputs.ece_bins,
                                           inputs.target_scale, bootstrap_seed(inputs.seed, split)).items()}
