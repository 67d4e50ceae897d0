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
# a finished search's points, in its run folder: the same search run again (same name) reads them
RESULTS = "mixpipe-search.json"


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


def cached_points(storage_path: str, experiment_name: str, space: Mapping[str, Sequence[Any]]) -> list[SearchPoint] | None:
    """The points a finished search of this name recorded, if they are this grid's; else None.

    The name is a hash of everything the search computes (seed, merge params, the models' bytes,
    the code), so a stage re-run for another reason (``evaluate.ece_bins``) does not search again,
    and needs no Ray.
    """
    url = storage.join(storage_path, experiment_name, RESULTS)
    fs, path = storage.filesystem(url)
    if not fs.exists(path):
        return None
    try:
        found = [SearchPoint(dict(p["params"]), float(p["score"]), float(p["loss"])) for p in storage.read_json(url)["points"]]
    except (KeyError, TypeError, ValueError):  # not ours, or half a file: search again
        return None
    return found if [p.params for p in found] == grid_points(space) else None


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
        Every point, in grid order; pick with :func:`best_point`. A search of the same name that
        finished before is read back (:func:`cached_points`) without Tune.

    Raises:
        MixpipeError: a trial failed (e.g. a parameter value the method rejects).
    """
    from ray import tune

    cached = cached_points(storage_path, experiment_name, space)
    if cached is not None:
        return cached
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
    ordered = [found[json.dumps(point, sort_keys=True)] for point in points]
    storage.write_json(storage.join(storage_path, experiment_name, RESULTS),
                       {"points": [{"params": p.params, "score": p.score, "loss": p.loss} for p in ordered]})
    return ordered


def best_point(points: Sequence[SearchPoint]) -> SearchPoint:
    """Highest score, then lowest loss, then the earliest in grid order."""
    return min(enumerate(points), key=lambda item: (-item[1].score, item[1].loss, item[0]))[1]
