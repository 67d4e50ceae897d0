"""The CSV files behind the DVC plots: the fields dvc.yaml's plot definitions and the templates in
``.dvc/plots/`` name (``tests/pipelines/test_plot_data.py`` checks them against each other)."""

from __future__ import annotations

import pandas as pd

from pipelines.tables import METRICS


def models_plot(evaluation: pd.DataFrame, task: str) -> pd.DataFrame:
    """``models.csv``: the evaluation table plus the task's score as ``score``, its interval
    (``score_lo``, ``score_hi``) and its paired test against the base (``p_vs_base``)."""
    score = next(iter(METRICS[task]))
    return evaluation.assign(score=evaluation[score], score_lo=evaluation[f"{score}_lo"],
                             score_hi=evaluation[f"{score}_hi"], p_vs_base=evaluation[f"{score}_p"])


def name_endpoints(curve: pd.DataFrame, pair: list[str]) -> pd.DataFrame:
    """``interpolation.csv``: the curve with ``endpoint`` naming the models at t=0 and t=1 (empty elsewhere)."""
    first, second = pair
    labels = [f"t=0: {first}" if t == 0 else f"t=1: {second}" if t == 1 else "" for t in curve["t"]]
    return curve.assign(endpoint=labels)
