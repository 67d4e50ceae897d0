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
from pipelines.evaluation.uncertainty import NUM_RESAMPLES, SampleTerms, against, intervals, resample_indices, resampled_metrics
from pipelines.models import ModelCard, model_from_state
from pipelines.tasks import get_task

RELIABILITY_COLUMNS = ["model", "bin", "lower", "upper", "count", "confidence", "accuracy"]


@dataclass(frozen=True)
class NamedModel:
    name: str
    kind: str  # base | trial | merged
    module: nn.Module


def output_metrics(
    outputs: torch.Tensor, y: np.ndarray | torch.Tensor, task: str, ece_bins: int = 15, target_scale: float = 1.0,
    interval_seed: int | None = None,
) -> dict[str, float]:
    """Every metric of ``task`` for model ``outputs``, and with ``interval_seed`` each one's 95%
    interval as ``<metric>_lo`` / ``<metric>_hi`` (:mod:`pipelines.evaluation.uncertainty`).

    Args:
        target_scale: regression only: the targets' standard deviation, to report errors in the
            original units (:func:`regression_metrics`).
        interval_seed: seeds the bootstrap resamples; models scored with the same seed on the
            same split share their resamples.
    """
    targets = torch.as_tensor(y)
    if task == "classification":
        metrics = classification_metrics(outputs, targets, ece_bins)
    else:
        metrics = regression_metrics(get_task(task).predictions(outputs, targets), targets, target_scale)
    if interval_seed is None:
        return metrics
    terms = SampleTerms.of(outputs, targets, task, ece_bins, target_scale)
    bounds = intervals(terms, resampled_metrics(terms, resample_indices(len(terms), NUM_RESAMPLES, interval_seed)))
    return {column: value for name in metrics for column, value in
            ((name, metrics[name]), (f"{name}_lo", bounds[f"{name}_lo"]), (f"{name}_hi", bounds[f"{name}_hi"]))}


def evaluate_models(
    models: list[NamedModel], x: np.ndarray, y: np.ndarray, ece_bins: int = 15, batch_size: int = 512,
    task: str = "classification", target_scale: float = 1.0, seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Metrics of every model with their 95% intervals and a paired comparison against the base,
    and the per-bin reliability data behind their ECE.

    Every model is scored on the same bootstrap resamples of the split (drawn from ``seed``), so
    the differences to the base (the model of kind ``base``, else the first) are paired.

    Returns:
        The validated ``evaluation`` table of ``task`` (one row per model) and a reliability frame
        with columns model, bin, lower, upper, count, confidence, accuracy (empty for regression).
    """
    labels = torch.as_tensor(y)
    resamples = resample_indices(len(labels), NUM_RESAMPLES, seed)
    outputs_of = {entry.name: predict_logits(entry.module, x, batch_size) for entry in models}
    terms_of = {name: SampleTerms.of(out, labels, task, ece_bins, target_scale) for name, out in outputs_of.items()}
    resampled_of = {name: resampled_metrics(terms, resamples) for name, terms in terms_of.items()}
    reference = next((m.name for m in models if m.kind == "base"), models[0].name if models else "")
    rows, bins = [], []
    for entry in models:
        outputs = outputs_of[entry.name]
        metrics = output_metrics(outputs, labels, task, ece_bins, target_scale)
        bounds = intervals(terms_of[entry.name], resampled_of[entry.name])
        paired = against(terms_of[entry.name], resampled_of[entry.name], terms_of[reference], resampled_of[reference])
        row = {"model": entry.name, "kind": entry.kind, "num_samples": len(labels)}
        for name, value in metrics.items():
            row.update({name: value, f"{name}_lo": bounds[f"{name}_lo"], f"{name}_hi": bounds[f"{name}_hi"]})
            row.update({key: paired[key] for key in (f"{name}_vs_base", f"{name}_vs_base_lo", f"{name}_vs_base_hi", f"{name}_p")})
        rows.append(row)
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
    ece_bins: int = 15, target_scale: float = 1.0, interval_seed: int | None = None,
) -> dict[str, float]:
    """Every metric of the card's task (:func:`output_metrics`, with intervals given
    ``interval_seed``) for the weights ``state`` on ``(x, y)``."""
    outputs = predict_logits(model_from_state(card, state), x, batch_size)
    return output_metrics(outputs, y, card.task, ece_bins, target_scale, interval_seed)


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
