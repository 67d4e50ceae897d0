"""Loss along the straight line between two models' weights, and its barrier (linear mode
connectivity; Frankle et al., "Linear Mode Connectivity and the Lottery Ticket Hypothesis", ICML 2020)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from pipelines.evaluation.predict import predict_logits
from pipelines.models import ModelCard, model_from_state
from pipelines.tasks import get_task


def interpolate_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], t: float) -> dict[str, torch.Tensor]:
    """``(1 - t) a + t b`` per tensor (exactly ``a`` at 0 and ``b`` at 1); integer buffers from ``a``."""
    return {
        name: torch.lerp(a[name], b[name], t) if a[name].is_floating_point() else a[name].clone()
        for name in a
    }


def interpolation_curve(
    card: ModelCard, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], splits: dict[str, tuple[np.ndarray, np.ndarray]],
    points: int = 25, batch_size: int = 512,
) -> pd.DataFrame:
    """Loss and score of ``(1 - t) a + t b`` at ``points`` evenly spaced ``t`` in [0, 1].

    Args:
        splits: name -> (x, y), e.g. ``{"val": ..., "test": ...}``.

    Returns:
        A frame with column ``t`` and, per split, ``<split>_loss`` (the task's validation loss: NLL
        or MSE on standardised targets) and ``<split>_<score>`` (accuracy or R²).
    """
    if points < 2:
        raise ValueError(f"an interpolation curve needs at least 2 points, got {points}")
    task = get_task(card.task)
    rows = []
    for t in np.linspace(0.0, 1.0, points):
        model = model_from_state(card, interpolate_states(a, b, float(t)))
        row = {"t": float(t)}
        for split, (x, y) in splits.items():
            loss, score = task.loss_and_score(predict_logits(model, x, batch_size), torch.as_tensor(y))
            row.update({f"{split}_loss": loss, f"{split}_{task.score}": score})
        rows.append(row)
    return pd.DataFrame(rows)


def loss_barrier(t: np.ndarray, loss: np.ndarray) -> float:
    """``max_t [L(t) - ((1 - t) L(0) + t L(1))]``: how far the path's loss rises above the straight
    line between its ends (0 or less: linearly mode-connected)."""
    t, loss = np.asarray(t, dtype=np.float64), np.asarray(loss, dtype=np.float64)
    return float(np.max(loss - ((1 - t) * loss[0] + t * loss[-1])))


def best_two(scores: list[float]) -> list[int]:
    """Positions of the two highest ``scores`` (ties by position), best first: the pair SLERP
    merges and the interpolation curve joins."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:2]
