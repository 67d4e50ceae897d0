"""Evaluation: metrics (accuracy, NLL, ECE, Brier; R², MSE, RMSE, MAE), their intervals and paired tests, and
batched prediction. Never trains or merges."""

from pipelines.evaluation.metrics import (
    Reliability,
    accuracy,
    brier,
    classification_metrics,
    expected_calibration_error,
    nll,
    regression_metrics,
    reliability,
)
from pipelines.evaluation.predict import predict_logits
from pipelines.evaluation.interpolation import best_two, interpolation_curve, loss_barrier
from pipelines.evaluation.uncertainty import bootstrap_seed, mcnemar_p, paired_p, wilson_interval
from pipelines.evaluation.suite import HeldOutObjective, NamedModel, evaluate_models, output_metrics, score_state

__all__ = [
    "HeldOutObjective",
    "NamedModel",
    "Reliability",
    "accuracy",
    "bootstrap_seed",
    "brier",
    "evaluate_models",
    "classification_metrics",
    "expected_calibration_error",
    "best_two",
    "interpolation_curve",
    "loss_barrier",
    "mcnemar_p",
    "nll",
    "output_metrics",
    "paired_p",
    "predict_logits",
    "regression_metrics",
    "reliability",
    "score_state",
    "wilson_interval",
]
