"""Data-dependent merge statistics, computed from a held-out split: diagonal Fisher information
(for Fisher merging) and Gram matrices of linear-layer inputs (for RegMean). Gradients are taken,
weights are never updated."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.merging.state import StateDict


def diagonal_fisher(
    model: nn.Module, x: torch.Tensor, generator: torch.Generator, batch_size: int = 64, task: str = "classification"
) -> StateDict:
    """The diagonal of the Fisher information, ``E_x E_{y ~ p(y|x)} [(d log p(y|x) / d theta)^2]``,
    per parameter, averaged over the rows of ``x`` with labels sampled from the model's own
    predictive distribution (the true Fisher, as in Matena & Raffel 2022). One sample at a time,
    since the square of a batch gradient is not the mean of squared per-sample gradients.

    For ``task="regression"`` the predictive distribution is a unit-variance Gaussian around the
    output (targets are standardised), so ``log p = -(f - y)²/2 + const`` with ``y ~ N(f, 1)``.
    """
    model.eval()
    fisher = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in model.named_parameters()}
    for start in range(0, len(x), batch_size):
        chunk = x[start : start + batch_size]
        with torch.no_grad():
            outputs = model(chunk).double()
            if task == "regression":
                labels = outputs + torch.randn(outputs.shape, generator=generator, dtype=torch.float64, device=outputs.device)
            else:
                labels = torch.multinomial(F.softmax(outputs, -1), 1, generator=generator).squeeze(1)
        for row, label in zip(chunk, labels, strict=True):
            model.zero_grad(set_to_none=True)
            output = model(row.unsqueeze(0))
            if task == "regression":
                (-0.5 * (output[0].double() - label).pow(2).sum()).backward()
            else:
                F.log_softmax(output, -1)[0, label].backward()
            for name, p in model.named_parameters():
                if p.grad is not None:
                    fisher[name] += p.grad.double() ** 2
    return {name: (value / len(x)).float() for name, value in fisher.items()}


def linear_input_grams(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> StateDict:
    """For every ``nn.Linear``, ``X^T X`` of its inputs over the rows of ``x`` (inputs flattened to
    ``[N, in_features]``), keyed by the layer's weight name (``"3.weight"``), as RegMean needs."""
    grams: StateDict = {}
    names = {module: f"{name}.weight" for name, module in model.named_modules() if isinstance(module, nn.Linear)}

    def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        features = inputs[0].detach().reshape(-1, module.in_features).double()
        key = names[module]
        grams[key] = grams.get(key, 0) + features.T @ features

    handles = [module.register_forward_hook(record) for module in names]
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                model(x[start : start + batch_size])
    finally:
        for handle in handles:
            handle.remove()
    return grams
