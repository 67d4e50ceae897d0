"""Valid result-table rows for tests that only care about a few numbers: the interval and
paired-comparison columns are filled in from the point values (a zero-width interval, the
difference to the first row, p = 1), so a test names only the values it checks."""

from __future__ import annotations

import pandas as pd

from pipelines.tables import METRICS


def with_intervals(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``<c>_lo`` and ``<c>_hi`` equal to ``c`` for every ``c`` in ``columns``."""
    return frame.assign(**{f"{c}{end}": frame[c] for c in columns for end in ("_lo", "_hi")})


def evaluation_frame(task: str = "classification", **columns: list) -> pd.DataFrame:
    """An ``evaluation`` table from model, kind, num_samples and the task's metrics."""
    frame = with_intervals(pd.DataFrame(columns), list(METRICS[task]))
    for name in METRICS[task]:
        difference = frame[name] - frame[name].iloc[0]
        frame = frame.assign(**{f"{name}_vs_base": difference, f"{name}_vs_base_lo": difference,
                                f"{name}_vs_base_hi": difference, f"{name}_p": 1.0})
    return frame


def trials_frame(score: str = "val_accuracy", **columns: list) -> pd.DataFrame:
    """A ``trials`` table from trial, method, alpha, epochs_run, stopped_early, val_loss, the score, checkpoint."""
    frame = with_intervals(pd.DataFrame(columns), ["val_loss", score])
    frame = frame.assign(seed_index=0) if "seed_index" not in frame else frame
    return frame.assign(**{f"point_{score}_mean": frame[score], f"point_{score}_std": None})


def merges_frame(task: str = "classification", **columns: list) -> pd.DataFrame:
    """A ``merges`` table from method, params, num_models, members, val_/test_ metrics, seconds, memory,
    checkpoint (and ``ran_on``, "stage cpu" unless given)."""
    frame = with_intervals(pd.DataFrame(columns), [f"{s}_{m}" for s in ("val", "test") for m in METRICS[task]])
    return frame if "ran_on" in frame else frame.assign(ran_on="stage cpu")
