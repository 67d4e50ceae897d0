"""What a model predicts: class labels (classification) or real-valued targets (regression).

A task fixes how targets are stored, the validation loss and the higher-is-better *score* that
training reports, tuning prunes by and merging selects by, and the metrics the evaluate stage
writes. Tables name their score columns after the task's score (``val_accuracy``, ``val_r2``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.errors import ConfigError
from pipelines.precision import at_least_float32


@dataclass(frozen=True)
class Task:
    """One kind of supervised target.

    Attributes:
        name: ``classification`` or ``regression``.
        score: the validation metric to maximise (``accuracy``, ``r2``).
        loss: what ``val_loss`` is (``nll`` = cross-entropy, ``mse`` on standardised targets).
        target_dtype: numpy dtype of stored targets.
    """

    name: str
    score: str
    loss: str
    target_dtype: type

    @property
    def score_column(self) -> str:
        return f"val_{self.score}"

    def predictions(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Model outputs in the shape of the targets (regression heads are ``(N, 1)``)."""
        return at_least_float32(outputs) if self.name == "classification" else at_least_float32(outputs).reshape(y.shape)

    def validation_sums(self, outputs: torch.Tensor, y: torch.Tensor) -> list[float]:
        """Sums over samples that add up across ranks; :meth:`summarise` turns them into (loss, score)."""
        if self.name == "classification":
            logits = at_least_float32(outputs)
            return [F.cross_entropy(logits, y, reduction="sum").item(), (logits.argmax(-1) == y).sum().item(), float(len(y))]
        pred, target = self.predictions(outputs, y).double(), y.double()
        return [((pred - target) ** 2).sum().item(), target.sum().item(), (target**2).sum().item(), float(len(y))]

    def summarise(self, sums: list[float]) -> tuple[float, float]:
        """``(val_loss, val_score)`` from the rank-summed :meth:`validation_sums`.

        Regression's R² is ``1 - SSE / SST`` with ``SST = Σy² - (Σy)²/n`` of the whole split.
        """
        if self.name == "classification":
            loss_sum, correct, count = sums
            return loss_sum / count, correct / count
        sse, total, squares, count = sums
        spread = squares - total * total / count
        return sse / count, 1.0 - sse / spread if spread > 0 else float("nan")

    def loss_and_score(self, outputs: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """``(val_loss, val_score)`` of ``outputs`` on one whole split (no ranks to sum over)."""
        return self.summarise(self.validation_sums(outputs, y))


CLASSIFICATION = Task("classification", score="accuracy", loss="nll", target_dtype=np.int64)
REGRESSION = Task("regression", score="r2", loss="mse", target_dtype=np.float32)
TASKS = {task.name: task for task in (CLASSIFICATION, REGRESSION)}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}") from None
