"""Evaluating a set of named models on one split: the ``evaluation`` table and reliability data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipelines import tables
from pipelines.evaluation.metrics import classification_metrics, regression_metrics, reliability
from pipelines.evaluation.predict import predict_logits
from pipelines.models import ModelCard, model_from_state
from pipelines.tasks import get_task

RELIABILITY_COLUMNS = ["model", "bin", "lower", "upper", "count", "confidence", "accuracy"]


@dataclass(frozen=True)
class NamedModel:
    name: str
    kind: str  # base | trial | merged
    module: nn.Module


def output_metrics(
    outputs: torch.Tensor, y: np.ndarray | torch.Tensor, task: str, ece_bins: int = 15, target_scale: float = 1.0
) -> dict[str, float]:
    """Every metric of ``task`` (the columns of its ``evaluation`` table) for model ``outputs``.

    Args:
        target_scale: regression only: the targets' standard deviation, to report errors in the
            original units (:func:`regression_metrics`).
    """
    targets = torch.as_tensor(y)
    if task == "classification":
        return classification_metrics(outputs, targets, ece_bins)
    return regression_metrics(get_task(task).predictions(outputs, targets), targets, target_scale)


def evaluate_models(
    models: list[NamedModel], x: np.ndarray, y: np.ndarray, ece_bins: int = 15, batch_size: int = 512,
    task: str = "classification", target_scale: float = 1.0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Metrics of every model, and the per-bin reliability data behind their ECE.

    Returns:
        The validated ``evaluation`` table of ``task`` (one row per model) and a reliability frame
        with columns model, bin, lower, upper, count, confidence, accuracy (empty for regression).
    """
    labels = torch.as_tensor(y)
    rows, bins = [], []
    for entry in models:
        outputs = predict_logits(entry.module, x, batch_size)
        metrics = output_metrics(outputs, labels, task, ece_bins, target_scale)
        rows.append({"model": entry.name, "kind": entry.kind, "num_samples": len(labels), **metrics})
        if task != "classification":
            continue
        table = reliability(outputs, labels, ece_bins)
        for b in range(ece_bins):
            bins.append(
                {
                    "model": entry.name,
                    "bin": b,
                    "lower": table.lower[b].item(),
                    "upper": table.upper[b].item(),
                    "count": int(table.count[b].item()),
                    "confidence": table.confidence[b].item(),
                    "accuracy": table.accuracy[b].item(),
                }
            )
    evaluation = tables.to_frame(tables.to_arrow(pd.DataFrame(rows), tables.table_for("evaluation", task)))
    return evaluation, pd.DataFrame(bins, columns=RELIABILITY_COLUMNS)


def score_state(
    card: ModelCard, state: dict[str, torch.Tensor], x: np.ndarray, y: np.ndarray, batch_size: int = 512,
    ece_bins: int = 15, target_scale: float = 1.0,
) -> dict[str, float]:
    """Every metric of the card's task (:func:`output_metrics`) for the weights ``state`` on ``(x, y)``."""
    outputs = predict_logits(model_from_state(card, state), x, batch_size)
    return output_metrics(outputs, y, card.task, ece_bins, target_scale)


@dataclass(frozen=True)
class HeldOutObjective:
    """``state -> (score, loss)`` on held-out data (the task's score and loss), picklable for
    Ray Tune trials: what merge-coefficient searches maximise."""

    card: ModelCard
    x: np.ndarray
    y: np.ndarray
    batch_size: int = 512

    def __call__(self, state: dict[str, torch.Tensor]) -> tuple[float, float]:
        task = get_task(self.card.task)
        outputs = predict_logits(model_from_state(self.card, state), self.x, self.batch_size)
        loss, score = task.loss_and_score(outputs, torch.tensor(self.y))
        return score, loss
