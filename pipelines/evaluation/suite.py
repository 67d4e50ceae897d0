"""Evaluating a set of named models on one split: the ``evaluation`` table and reliability data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipelines import tables
from pipelines.evaluation.metrics import accuracy, classification_metrics, nll, reliability
from pipelines.evaluation.predict import predict_logits
from pipelines.models import ModelCard, model_from_state


@dataclass(frozen=True)
class NamedModel:
    name: str
    kind: str  # base | trial | merged
    module: nn.Module


def evaluate_models(
    models: list[NamedModel], x: np.ndarray, y: np.ndarray, ece_bins: int = 15, batch_size: int = 512
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Metrics of every model, and the per-bin reliability data behind their ECE.

    Returns:
        The validated ``evaluation`` table (one row per model) and a reliability frame with
        columns model, bin, lower, upper, count, confidence, accuracy.
    """
    labels = torch.as_tensor(y)
    rows, bins = [], []
    for entry in models:
        logits = predict_logits(entry.module, x, batch_size)
        metrics = classification_metrics(logits, labels, ece_bins)
        rows.append({"model": entry.name, "kind": entry.kind, "num_samples": len(labels), **metrics})
        table = reliability(logits, labels, ece_bins)
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
    evaluation = tables.to_frame(tables.to_arrow(pd.DataFrame(rows), tables.EVALUATION))
    return evaluation, pd.DataFrame(bins)


def score_state(
    card: ModelCard, state: dict[str, torch.Tensor], x: np.ndarray, y: np.ndarray, batch_size: int = 512
) -> dict[str, float]:
    """Accuracy and NLL of the weights ``state`` (architecture from ``card``) on ``(x, y)``."""
    logits = predict_logits(model_from_state(card, state), x, batch_size)
    labels = torch.as_tensor(y)
    return {"accuracy": accuracy(logits, labels), "nll": nll(logits, labels)}
