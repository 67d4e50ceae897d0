"""Sign election and the combiners that merge task vectors entry by entry (TIES-Merging:
Yadav et al., NeurIPS 2023, https://arxiv.org/abs/2306.01708)."""

from __future__ import annotations

from typing import Literal

import torch


def elect_sign(
    stacked: torch.Tensor, election: Literal["weighted", "unweighted"] = "weighted", zero_sum: Literal["zero", "positive"] = "positive"
) -> torch.Tensor:
    """Per entry, the sign with the larger total: ``stacked`` is ``[M, ...]`` (one row per model).

    Args:
        election: ``"weighted"`` sums the signed values (the TIES paper's mass; mergekit's
            default ``sum``); ``"unweighted"`` counts signs (mergekit's ``count``).
        zero_sum: what a tie elects: ``"positive"`` (+1, as mergekit's ``sign >= 0``) or
            ``"zero"`` (``torch.sign``; nothing then agrees, so the entry merges to 0).
    """
    total = stacked.sum(0) if election == "weighted" else torch.sign(stacked).sum(0)
    if zero_sum == "positive":
        return torch.where(total >= 0, 1.0, -1.0).to(stacked.dtype)
    return torch.sign(total)


def disjoint_merge(
    stacked: torch.Tensor, sign: torch.Tensor, combine: Literal["mean", "sum"] = "mean", weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Combine, per entry, only the nonzero weighted values ``w_i * stacked_i`` whose sign agrees
    with ``sign``.

    Agreement is judged on the weighted values, the same ones the sign was elected from: a model
    with a negative weight (task negation) contributes ``-tau`` and agrees where ``-tau`` has the
    elected sign, as mergekit and FusionBench do. Judging it on ``tau`` would add ``w * tau``
    against the elected sign.

    Args:
        combine: ``"mean"`` divides the agreeing weighted values by the sum of their weights'
            magnitudes (TIES' disjoint mean; an entry with none gives 0); ``"sum"`` adds them.
        weights: per-model weights ``[M]``; default 1 each.
    """
    w = torch.ones(stacked.shape[0], dtype=stacked.dtype, device=stacked.device) if weights is None else weights.to(stacked)
    w = w.reshape(-1, *([1] * (stacked.ndim - 1)))
    weighted = stacked * w
    agree = (torch.sign(weighted) == sign.unsqueeze(0)) & (weighted != 0)
    values = torch.where(agree, weighted, torch.zeros_like(stacked)).sum(0)
    if combine == "sum":
        return values
    # magnitudes: a negated model must not flip the sign of the mean it takes part in
    mass = torch.where(agree, w.abs().expand_as(stacked), torch.zeros_like(stacked)).sum(0)
    return torch.where(mass > 0, values / mass.clamp(min=torch.finfo(stacked.dtype).tiny), torch.zeros_like(values))
