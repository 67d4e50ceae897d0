"""Losses for mixed samples beyond soft-target cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipelines.mixing.base import MixOutput
from pipelines.mixing.targets import mixed_targets


def decoupled_mixup_loss(
    logits: torch.Tensor, y: torch.Tensor, out: MixOutput, num_classes: int, eta: float, smoothing: float = 0.0
) -> torch.Tensor:
    """Mixup cross-entropy plus the decoupled regulariser of DecoupleMix (Liu et al., "Harnessing
    Hard Mixed Samples with Decoupled Regularizer", NeurIPS 2023).

    For a sample mixing classes ``a`` (its own) and ``b`` (its partner's), the regulariser is
    ``-log softmax_{-b}(z)_a - log softmax_{-a}(z)_b``: each mixed class must be predicted
    confidently once the other is taken out of the softmax, so hard mixed samples still push both
    classes up. Samples whose partner has the same class, or that are not mixed (``lam`` 0 or 1),
    get no regulariser. ``eta = 0`` is exactly the mixup cross-entropy.

    Returns:
        The batch mean.
    """
    target = mixed_targets(y, out, num_classes, smoothing)
    log_probs = F.log_softmax(logits.float(), dim=-1)
    loss = -(target * log_probs).sum(-1)
    if eta == 0:
        return loss.mean()
    own, partner = y.long(), y[out.index].long()
    decoupled = (own != partner) & (out.lam > 0) & (out.lam < 1)
    z = logits.float()
    rows = torch.arange(len(z), device=z.device)

    def without(column: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(z.index_put((rows, column), torch.tensor(float("-inf"), device=z.device)), dim=-1)

    regulariser = (without(partner) - z[rows, own]) + (without(own) - z[rows, partner])
    return (loss + eta * torch.where(decoupled, regulariser, torch.zeros_like(regulariser))).mean()


def mixup_ranking_loss(mixed_logits: torch.Tensor, clean_logits: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """The mixup ranking loss (MRL) of RankMixup (Noh et al., "RankMixup: Ranking-Based Mixup
    Training for Network Calibration", ICCV 2023).

    A mixed sample should be less confident than the clean sample it came from, by ``margin``:
    ``mean(max(0, conf(mixed) - conf(clean) + margin))`` with ``conf`` the top softmax probability.
    """
    confidence_mixed = F.softmax(mixed_logits.float(), dim=-1).max(-1).values
    confidence_clean = F.softmax(clean_logits.float(), dim=-1).max(-1).values
    return F.relu(confidence_mixed - confidence_clean + margin).mean()
