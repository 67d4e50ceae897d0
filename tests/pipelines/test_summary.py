"""metrics.json: a short summary of base, best trial and best merge (picked on validation) with
intervals; the per-model detail in a second file."""

import pandas as pd

from pipelines.evaluation.summary import model_metrics, pick_best, summary_metrics
from tests.result_rows import evaluation_frame, merges_frame, trials_frame


def _tables():
    evaluation = evaluation_frame(model=["base", "t00", "t01", "soup", "ties"], kind=["base", "trial", "trial", "merged", "merged"],
                                  num_samples=[100] * 5, accuracy=[0.80, 0.95, 0.82, 0.84, 0.90],
                                  nll=[0.5] * 5, ece=[0.1] * 5, brier=[0.3] * 5)
    trials = trials_frame(trial=["t00", "t01"], method=["mixup", "cutmix"], alpha=[0.2, 0.2], epochs_run=[4, 4],
                          stopped_early=[False, False], val_loss=[0.4, 0.3], val_accuracy=[0.85, 0.85], checkpoint=["a", "b"])
    merges = merges_frame(method=["soup", "ties"], params=["{}", "{}"], num_models=[2, 2], members=["t00,t01"] * 2,
                          **{f"{s}_{m}": [0.5, 0.5] for s in ("val", "test") for m in ("nll", "ece", "brier")},
                          val_accuracy=[0.86, 0.84], test_accuracy=[0.84, 0.90], seconds=[0.1, 0.1],
                          peak_memory_mib=[1.0, 1.0], checkpoint=["x", "y"])
    return evaluation, trials, merges


def test_summary_picks_on_validation_not_on_test():
    evaluation, trials, merges = _tables()
    summary = summary_metrics(evaluation, trials, merges, "classification")
    assert list(summary) == ["score", "base", "trial", "merge"] and summary["score"] == "accuracy"
    assert summary["base"] == {"test": 0.8, "lo": 0.8, "hi": 0.8}
    # trials tie on validation accuracy: the lower validation loss (t01) wins, though t00 tests higher
    assert summary["trial"]["name"] == "t01" and summary["trial"]["test"] == 0.82
    # soup is best on validation (0.86), ties on test (0.90): soup is reported
    assert summary["merge"]["name"] == "soup" and summary["merge"]["delta"] == 0.04
    assert set(summary["merge"]) == {"name", "test", "lo", "hi", "delta", "p"}
    assert pick_best(trials, merges, "classification") == "soup"  # 0.86 on validation beats 0.85


def test_model_metrics_keeps_every_model_with_intervals():
    evaluation, _, _ = _tables()
    detail = model_metrics(evaluation, "classification")["test"]
    assert list(detail) == ["base", "t00", "t01", "soup", "ties"]
    assert detail["ties"]["accuracy"] == 0.9 and detail["ties"]["accuracy_lo"] == 0.9 and "nll_p" in detail["ties"]
    assert pd.isna(pd.Series(detail["base"])).sum() == 0
