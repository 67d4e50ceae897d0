"""Evaluation: metrics (accuracy, NLL, ECE, Brier; R², MSE, RMSE, MAE) and batched prediction. Never trains or merges."""

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
from pipelines.evaluation.interpolation import interpolation_curve, loss_barrier
from pipelines.evaluation.suite import HeldOutObjective, NamedModel, evaluate_models, output_metrics, score_state

__all__ = [
    "HeldOutObjective",
    "NamedModel",
    "Reliability",
    "accuracy",
    "brier",
    "evaluate_models",
    "classification_metrics",
    "expected_calibration_error",
    "interpolation_curve",
    "loss_barrier",
    "nll",
    "output_metrics",
    "predict_logits",
    "regression_metrics",
    "reliability",
    "score_state",
]
