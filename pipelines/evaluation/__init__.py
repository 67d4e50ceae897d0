"""Evaluation: metrics (accuracy, NLL, ECE, Brier) and batched prediction. Never trains or merges."""

from pipelines.evaluation.metrics import (
    Reliability,
    accuracy,
    brier,
    classification_metrics,
    expected_calibration_error,
    nll,
    reliability,
)
from pipelines.evaluation.predict import predict_logits
from pipelines.evaluation.suite import NamedModel, evaluate_models, score_state

__all__ = [
    "NamedModel",
    "Reliability",
    "accuracy",
    "brier",
    "evaluate_models",
    "classification_metrics",
    "expected_calibration_error",
    "nll",
    "predict_logits",
    "reliability",
    "score_state",
]
