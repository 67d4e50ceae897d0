"""The few numbers a DVC user compares across experiments (``metrics.json``), and the per-model
detail (a second metrics file).

Candidates are picked on the validation split, never on test: the best trial is the one tune
ranks first (score, then loss), the best merge the method with the highest validation score (then
lowest validation loss). Their *test* scores are reported with 95% intervals and the paired
comparison against the base, so a difference smaller than the noise reads as one.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from pipelines.evaluation.uncertainty import interval_column
from pipelines.tasks import get_task

DIGITS = 4


def _number(value: Any) -> float | None:
    value = float(value)
    return round(value, DIGITS + 2) if math.isfinite(value) else None


def _scored(row: pd.Series, score: str, against_base: bool) -> dict[str, Any]:
    out = {"test": _number(row[score]), "lo": _number(row[f"{score}_lo"]), "hi": _number(row[f"{score}_hi"])}
    if against_base:
        out["delta"] = _number(row[f"{score}_vs_base"])
        out["p"] = _number(row[f"{score}_p"])
    return out


def best_by_validation(frame: pd.DataFrame, name_column: str, task: str) -> str | None:
    """The row picked on validation: highest validation score, then lowest validation loss, then name."""
    score = get_task(task).score_column
    if frame.empty:
        return None
    ranked = frame.assign(_score=frame[score].astype(float).fillna(-math.inf), _loss=frame["val_loss"].astype(float))
    return str(ranked.sort_values(["_score", "_loss", name_column], ascending=[False, True, True])[name_column].iloc[0])


def _merge_frame(merges: pd.DataFrame, task: str) -> pd.DataFrame:
    """Merges with a ``val_loss`` column (theirs is named after the task's loss), for ranking."""
    loss = f"val_{get_task(task).loss}"
    return merges.assign(val_loss=merges[loss]) if loss in merges else merges


def pick_best(trials: pd.DataFrame, merges: pd.DataFrame, task: str) -> str | None:
    """The model picked on validation among the best trial and the best merge (a trial wins a tie)."""
    score = get_task(task).score_column
    rows = []
    for frame, name_column in ((trials, "trial"), (_merge_frame(merges, task), "method")):
        name = best_by_validation(frame, name_column, task) if score in frame and "val_loss" in frame else None
        if name is not None:
            row = frame.set_index(name_column).loc[name]
            rows.append((-float(row[score]), float(row["val_loss"]), len(rows), name))
    return min(rows)[3] if rows else None


def summary_metrics(evaluation: pd.DataFrame, trials: pd.DataFrame, merges: pd.DataFrame, task: str) -> dict[str, Any]:
    """``metrics.json``, short enough for ``dvc exp show``: ``score`` names the task's score; ``base``,
    ``trial`` (the best trial) and ``merge`` (the best merge) hold its ``test`` value and 95%
    interval (``lo``, ``hi``); the two picked ones also their ``name``, the difference to the base
    (``delta``) and its paired test's ``p``."""
    score = get_task(task).score
    by_name = evaluation.set_index("model")
    picked = {"trial": best_by_validation(trials, "trial", task),
              "merge": best_by_validation(_merge_frame(merges, task), "method", task)}
    summary: dict[str, Any] = {"score": score, "base": _scored(by_name.loc["base"], score, against_base=False)}
    for key, name in picked.items():
        if name is not None:
            summary[key] = {"name": name, **_scored(by_name.loc[name], score, against_base=True)}
    return summary


def model_metrics(evaluation: pd.DataFrame, task: str) -> dict[str, Any]:
    """The second metrics file: every model's test metrics with intervals, keyed by model."""
    from pipelines.tables import METRICS

    columns = [c for name in METRICS[task] for c in (name, f"{name}_lo", f"{name}_hi", f"{name}_p")]
    return {"test": {str(row["model"]): {c: _number(row[c]) for c in columns} for _, row in evaluation.iterrows()}}


def evaluation_view(evaluation: pd.DataFrame, task: str) -> pd.DataFrame:
    """The evaluation table as people read it: the score with its interval, the difference to the
    base with its interval and p-value, and the next two metrics with their intervals."""
    from pipelines.tables import METRICS

    names = list(METRICS[task])
    score = names[0]
    view = pd.DataFrame({"model": evaluation["model"], "kind": evaluation["kind"],
                         f"{score} [95%]": interval_column(evaluation, score),
                         "vs base [95%]": interval_column(evaluation, f"{score}_vs_base", signed=True),
                         "p": [f"{v:.3g}" for v in evaluation[f"{score}_p"]]})
    for name in names[1:3]:
        view[f"{name} [95%]"] = interval_column(evaluation, name)
    return view
