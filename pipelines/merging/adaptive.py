"""AdaMerging (Yang et al., "AdaMerging: Adaptive Model Merging for Multi-Task Learning", ICLR 2024,
https://arxiv.org/abs/2310.02575): task-vector coefficients learned without labels, by minimising
the entropy of the merged model's predictions on unlabelled inputs.

The merged weights are ``base + sum_k lambda_k tau_k`` (``granularity="task"``: one coefficient
per model) or ``base + sum_k lambda_{k,p} tau_{k,p}`` (``"layer"``: one per model and parameter
tensor, as the paper's layer-wise variant), differentiated through
``torch.func.functional_call`` so that no model copy is built per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call

from pipelines.errors import ConfigError
from pipelines.merging.parameters import Count, Merged, Rate, Seed
from pipelines.merging.state import StateDict, check_compatible
from pipelines.seeding import derive_seed, torch_generator

Granularity = Literal["task", "layer"]


@dataclass(frozen=True)
class LearnedCoefficients:
    """The coefficients (``[K]`` or ``[K, P]`` over the floating tensors, in the base's order) and
    the mean prediction entropy of every step's batch, before its update."""

    coefficients: torch.Tensor
    entropies: list[float]


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy (nats) of the softmax of ``logits`` ``[N, classes]``."""
    log_probabilities = torch.log_softmax(logits, dim=1)
    return -(log_probabilities.exp() * log_probabilities).sum(1).mean()


def learn_coefficients(
    states: Sequence[StateDict], base: StateDict, inputs: torch.Tensor, model: nn.Module,
    granularity: Granularity = "task", steps: int = 100, lr: float = 1e-3, init: float = 0.3,
    batch_size: int = 256, seed: int = 0,
) -> LearnedCoefficients:
    """Adam on the coefficients: each step draws ``batch_size`` rows of the unlabelled ``inputs``
    (from a generator seeded by ``seed``), merges, and lowers the mean prediction entropy.
    ``model`` only lends its architecture (its own weights are never used)."""
    if steps < 1 or lr <= 0 or batch_size < 1:
        raise ConfigError(f"merge: adamerging needs steps >= 1, lr > 0, batch_size >= 1; got {steps}, {lr}, {batch_size}")
    if granularity not in ("task", "layer"):
        raise ConfigError(f"merge: adamerging granularity must be 'task' or 'layer', got {granularity!r}")
    if len(inputs) == 0:
        raise ConfigError("merge: adamerging needs unlabelled inputs, got none")
    check_compatible([base, *states])
    device = next(iter(model.parameters()), torch.empty(0)).device
    names = [n for n, t in base.items() if t.is_floating_point()]
    fixed = {n: t.to(device) for n, t in base.items() if not t.is_floating_point()}
    bases = [base[n].to(device, torch.float32) for n in names]
    taus = [torch.stack([s[n].to(device, torch.float32) - b for s in states]) for n, b in zip(names, bases, strict=True)]
    shape = (len(states),) if granularity == "task" else (len(states), len(names))
    coefficients = torch.full(shape, float(init), device=device, requires_grad=True)
    optimiser = torch.optim.Adam([coefficients], lr=lr)
    generator = torch_generator(derive_seed(seed, "adamerging"))
    model = model.eval()  # batch norm uses the merged running statistics, as at test time
    entropies = []
    for _ in range(steps):
        rows = torch.randint(len(inputs), (min(batch_size, len(inputs)),), generator=generator)
        batch = inputs[rows].to(device)
        merged = _merged(bases, taus, coefficients, granularity)
        logits = functional_call(model, {**dict(zip(names, merged, strict=True)), **fixed}, (batch,))
        if logits.ndim != 2 or logits.shape[1] < 2:
            raise ConfigError(f"merge: adamerging minimises the entropy of class predictions; this model outputs "
                              f"{tuple(logits.shape[1:])} per input (a regression model?)")
        entropy = prediction_entropy(logits)
        optimiser.zero_grad()
        entropy.backward()
        optimiser.step()
        entropies.append(float(entropy.detach()))
    return LearnedCoefficients(coefficients.detach().cpu(), entropies)


def _merged(bases: list[torch.Tensor], taus: list[torch.Tensor], coefficients: torch.Tensor,
            granularity: Granularity) -> list[torch.Tensor]:
    merged = []
    for index, (reference, stacked) in enumerate(zip(bases, taus, strict=True)):
        weights = coefficients if granularity == "task" else coefficients[:, index]
        merged.append(reference + torch.tensordot(weights, stacked, dims=1))
    return merged


def adamerging(
    states: Sequence[StateDict], base: StateDict, unlabelled_inputs: torch.Tensor, model: nn.Module,
    granularity: Granularity = "task", steps: Count = 100, lr: Rate = 1e-3, init: float = 0.3,
    batch_size: Count = 256, seed: Seed = 0,
) -> Merged:
    """AdaMerging: :func:`learn_coefficients` on ``unlabelled_inputs`` (the merge stage hands the
    test split's inputs, never its labels), then ``base + sum lambda tau`` with the learned
    coefficients, in float64 and cast back. Classification models only (entropy of a softmax)."""
    learned = learn_coefficients(states, base, unlabelled_inputs, model, granularity, steps, lr, init, batch_size, seed)
    names = [n for n, t in base.items() if t.is_floating_point()]
    merged: StateDict = {n: t.clone() for n, t in base.items() if not t.is_floating_point()}
    for index, name in enumerate(names):
        weights = learned.coefficients if granularity == "task" else learned.coefficients[:, index]
        tau = torch.stack([s[name].double() - base[name].double() for s in states])
        merged[name] = (base[name].double() + torch.tensordot(weights.double(), tau, dims=1)).to(base[name].dtype)
    return {n: merged[n] for n in base}, list(range(len(states)))
