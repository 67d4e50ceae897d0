"""Metrics of model outputs: classification (accuracy, NLL, expected calibration error, Brier score)
from logits, regression (R², MSE, RMSE, MAE) from predictions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(-1) == y).double().mean().item()


def nll(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Mean negative log-likelihood (natural log) of the true labels."""
    return F.cross_entropy(logits.double(), y, reduction="mean").item()


def brier(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over samples of ``sum_k (p_k - onehot_k)^2`` (Brier, 1950); in [0, 2]."""
    probs = logits.double().softmax(-1)
    onehot = F.one_hot(y, probs.shape[-1]).double()
    return ((probs - onehot) ** 2).sum(-1).mean().item()


@dataclass(frozen=True)
class Reliability:
    """Per-bin statistics of a reliability diagram (empty bins have count 0 and NaN means)."""

    lower: torch.Tensor
    upper: torch.Tensor
    count: torch.Tensor
    confidence: torch.Tensor
    accuracy: torch.Tensor


def reliability(logits: torch.Tensor, y: torch.Tensor, bins: int = 15) -> Reliability:
    """Bin samples by confidence (max softmax) into ``bins`` equal-width bins ``((b-1)/M, b/M]``."""
    probs = logits.double().softmax(-1)
    confidence, predicted = probs.max(-1)
    correct = (predicted == y).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    which = torch.bucketize(confidence, edges[1:-1], right=False)
    count = torch.bincount(which, minlength=bins).double()
    conf_sum = torch.bincount(which, weights=confidence, minlength=bins)
    acc_sum = torch.bincount(which, weights=correct, minlength=bins)
    safe = count.clamp(min=1)
    nan = torch.full_like(count, float("nan"))
    return Reliability(
        lower=edges[:-1],
        upper=edges[1:],
        count=count,
        confidence=torch.where(count > 0, conf_sum / safe, nan),
        accuracy=torch.where(count > 0, acc_sum / safe, nan),
    )


def expected_calibration_error(logits: torch.Tensor, y: torch.Tensor, bins: int = 15) -> float:
    """ECE (Naeini et al., AAAI 2015; Guo et al., ICML 2017): ``sum_b |B_b|/N * |acc_b - conf_b|``."""
    table = reliability(logits, y, bins)
    filled = table.count > 0
    gaps = (table.accuracy[filled] - table.confidence[filled]).abs()
    return (table.count[filled] * gaps).sum().item() / table.count.sum().item()


def classification_metrics(logits: torch.Tensor, y: torch.Tensor, ece_bins: int = 15) -> dict[str, float]:
    """accuracy, nll, ece and brier of ``logits`` against integer labels ``y``."""
    return {
        "accuracy": accuracy(logits, y),
        "nll": nll(logits, y),
        "ece": expected_calibration_error(logits, y, ece_bins),
        "brier": brier(logits, y),
    }


def regression_metrics(predictions: torch.Tensor, y: torch.Tensor, scale: float = 1.0) -> dict[str, float]:
    """r2, mse, rmse and mae of ``predictions`` against targets ``y`` (same shape).

    Args:
        scale: the targets' standard deviation when ``y`` is standardised; MSE, RMSE and MAE are
            reported in the original units (MSE x scale², the others x scale). R² is unit-free:
            ``1 - SSE / SST`` with SST around the mean of ``y`` itself.
    """
    error = predictions.double() - y.double()
    sse = (error**2).sum().item()
    sst = ((y.double() - y.double().mean()) ** 2).sum().item()
    mse = sse / len(y)
    return {
        "r2": 1.0 - sse / sst if sst > 0 else float("nan"),
        "mse": mse * scale**2,
        "rmse": mse**0.5 * scale,
        "mae": error.abs().mean().item() * scale,
    }
