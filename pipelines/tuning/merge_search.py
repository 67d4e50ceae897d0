"""Ray Tune over a merge method's coefficients (λ, density, ...), scored on held-out data.

Each Tune trial merges the same models with one point of the grid and reports the objective's
score and loss; the best point (highest score, then lowest loss, then grid order) wins. Merges of
small models take well under a second, so a trial is one merge and one evaluation, no training.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipelines import storage
from pipelines.errors import MixpipeError
from pipelines.merging import run_merge
from pipelines.merging.state import StateDict

# state dict -> (score, loss): higher score is better; the loss breaks ties
Objective = Callable[[StateDict], tuple[float, float]]


@dataclass(frozen=True)
class SearchPoint:
    """One evaluated point: its parameters (searched ones only) and how the merge did."""

    params: dict[str, Any]
    score: float
    loss: float


def grid_points(space: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the listed values, parameters in name order, values in given order."""
    names = sorted(space)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(space[n] for n in names))]


def _merge_trial(
    config: dict[str, Any], method: str, states: list[StateDict], base: StateDict | None, fixed: dict[str, Any],
    objective: Objective,
) -> None:
    from ray import tune

    merged = run_merge(method, states, base, **{**fixed, **config["point"]})
    score, loss = objective(merged.state_dict)
    tune.report({"score": score, "loss": loss})


def search_merge_params(
    method: str,
    states: Sequence[StateDict],
    base: StateDict | None,
    fixed: Mapping[str, Any],
    space: Mapping[str, Sequence[Any]],
    objective: Objective,
    storage_path: str,
    experiment_name: str,
    max_concurrent_trials: int = 0,
) -> list[SearchPoint]:
    """Evaluate ``method`` at every point of the grid ``space`` with Ray Tune (needs a connected Ray).

    Args:
        fixed: the method's other parameters (and data statistics), the same for every point.
        space: parameter -> candidate values, e.g. ``{"density": [0.1, 0.2], "scale": [0.5, 1.0]}``.
        objective: held-out (score, loss) of a merged state dict.
        max_concurrent_trials: 0 lets Ray run as many as the CPUs allow.

    Returns:
        Every point, in grid order; pick with :func:`best_point`.

    Raises:
        MixpipeError: a trial failed (e.g. a parameter value the method rejects).
    """
    from ray import tune

    points = grid_points(space)
    tune_filesystem, tune_storage = storage.arrow_filesystem(storage_path)
    trainable = tune.with_parameters(
        _merge_trial, method=method, states=list(states), base=base, fixed=dict(fixed), objective=objective
    )
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={"point": tune.grid_search(points)},
        tune_config=tune.TuneConfig(metric="score", mode="max", max_concurrent_trials=max_concurrent_trials or None),
        run_config=tune.RunConfig(name=experiment_name, storage_path=tune_storage, storage_filesystem=tune_filesystem,
                                  verbose=0),
    )
    results = tuner.fit()
    found: dict[str, SearchPoint] = {}
    for result in results:
        point = result.config["point"]
        if result.error is not None:
            raise MixpipeError(f"merge.search.{method}: the point {point} failed: {result.error}")
        found[json.dumps(point, sort_keys=True)] = SearchPoint(point, float(result.metrics["score"]), float(result.metrics["loss"]))
    return [found[json.dumps(point, sort_keys=True)] for point in points]


def best_point(points: Sequence[SearchPoint]) -> SearchPoint:
    """Highest score, then lowest loss, then the earliest in grid order."""
    return min(enumerate(points), key=lambda item: (-item[1].score, item[1].loss, item[0]))[1]
