"""Soft targets and the soft-target loss for mixed samples."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipelines.mixing.base import MixOutput
from pipelines.precision import at_least_float32


def smoothed_one_hot(y: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """One-hot targets with label smoothing: ``1 - smoothing + smoothing/K`` on the label,
    ``smoothing/K`` elsewhere (as timm's ``mixup_target``)."""
    off = smoothing / num_classes
    target = torch.full((y.shape[0], num_classes), off, dtype=torch.float32, device=y.device)
    return target.scatter_(1, y.long().unsqueeze(1), 1.0 - smoothing + off)


def mixed_targets(
    y: torch.Tensor, out: MixOutput, num_classes: int, smoothing: float = 0.0
) -> torch.Tensor:
    """``lam * onehot(y) + (1 - lam) * onehot(y[index])`` per sample; each row sums to 1."""
    return pair_targets(y, y[out.index], out.lam, num_classes, smoothing)


def pair_targets(
    y: torch.Tensor, y_partner: torch.Tensor, lam: torch.Tensor, num_classes: int, smoothing: float = 0.0
) -> torch.Tensor:
    """As :func:`mixed_targets` from explicit label pairs (e.g. read back from shards)."""
    own = smoothed_one_hot(y, num_classes, smoothing)
    partner = smoothed_one_hot(y_partner, num_classes, smoothing)
    lam = lam.to(own.dtype).unsqueeze(1)
    return lam * own + (1 - lam) * partner


def soft_target_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-sum_k target_k * log softmax(logits)_k``."""
    return torch.sum(-target * F.log_softmax(at_least_float32(logits), dim=-1), dim=-1).mean()
