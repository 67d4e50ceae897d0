"""PCB-Merging's parameter competition balancing (Du et al., "Parameter Competition Balancing for
Model Merging", NeurIPS 2024, https://arxiv.org/abs/2410.02396), on flat task vectors.

Written from the paper's equations and the authors' released code, which this follows where the two
differ: "Norm" is a min-max normalisation per task vector, intra-balancing is
``exp(n * Norm(|tau_i|)^2)`` (the paper's softmax over a task's entries, whose denominator the next
min-max normalisation cancels), inter-balancing a softmax over the tasks of
``tau_i * sum_j tau_j`` (entry by entry), and magnitudes are first clipped to their 0.01% and 99.99%
quantiles per task vector.
"""

from __future__ import annotations

import torch

# the released code's outlier clip: magnitudes below / above these quantiles of each task vector
OUTLIER_QUANTILE = 1e-4


def _min_max(values: torch.Tensor) -> torch.Tensor:
    """Per row: 0 at the row's minimum, 1 at its maximum (a constant row is all 0)."""
    low, high = values.min(1, keepdim=True).values, values.max(1, keepdim=True).values
    span = high - low
    return torch.where(span > 0, (values - low) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(values))


def _clip_quantiles(values: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Per row, values clipped to its sorted entries at positions ``int(d * low)`` and
    ``int(d * (1 - high)) - 1`` (the released code's indexing)."""
    d = values.shape[1]
    ordered = values.sort(1).values
    bottom = ordered[:, min(int(d * low), d - 1)].unsqueeze(1)
    top = ordered[:, max(int(d * (1 - high)) - 1, 0)].unsqueeze(1)
    return torch.minimum(torch.maximum(values, bottom), top)


def balance_scores(taus: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipped task vectors and each entry's weight ``[n, d]`` (float64 in, float64 out).

    Weights are intra x inter balancing; per task, the entries below its ``1 - ratio`` quantile of
    that score get weight 0 (dropped) and the rest the score min-max normalised, so a task keeps
    about ``ratio`` of its entries.
    """
    count = taus.shape[0]
    magnitude = _clip_quantiles(taus.abs(), OUTLIER_QUANTILE, OUTLIER_QUANTILE)
    clipped = torch.sign(taus) * magnitude
    intra = torch.exp(count * _min_max(magnitude) ** 2)
    inter = torch.softmax(taus * taus.sum(0, keepdim=True), dim=0)
    score = intra * inter
    return clipped, _min_max(_clip_quantiles(score, 1 - ratio, 0.0))


def pcb_merge(taus: torch.Tensor, ratio: float) -> torch.Tensor:
    """The merged task vector ``[d]``: per entry, the weighted mean of the clipped task vectors by
    their :func:`balance_scores` weights (0 where every task dropped the entry)."""
    clipped, weights = balance_scores(taus, ratio)
    total = weights.sum(0)
    return (clipped * weights).sum(0) / total.clamp(min=1e-12)
