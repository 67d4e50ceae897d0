"""Optimisers and a stateless per-epoch learning-rate schedule (nothing to checkpoint)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from pipelines.config import OptimParams


def build_optimizer(parameters: Iterable[torch.nn.Parameter], optim: OptimParams) -> torch.optim.Optimizer:
    if optim.optimizer == "sgd":
        return torch.optim.SGD(
            parameters, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay, nesterov=optim.momentum > 0
        )
    return torch.optim.AdamW(parameters, lr=optim.lr, weight_decay=optim.weight_decay)


def lr_at_epoch(optim: OptimParams, epoch: int, epochs: int) -> float:
    """Learning rate for 0-based ``epoch`` of ``epochs``.

    Linear warm-up over ``warmup_epochs`` (reaching ``lr`` at the first epoch after it), then
    constant, step decay (``step_gamma`` every ``step_epochs``) or cosine decay (Loshchilov &
    Hutter, SGDR, ICLR 2017) without restarts.
    """
    if epoch < optim.warmup_epochs:
        return optim.lr * (epoch + 1) / (optim.warmup_epochs + 1)
    if optim.schedule == "constant":
        return optim.lr
    if optim.schedule == "step":
        return optim.lr * optim.step_gamma ** ((epoch - optim.warmup_epochs) // optim.step_epochs)
    progress = (epoch - optim.warmup_epochs) / max(1, epochs - optim.warmup_epochs)
    return optim.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
