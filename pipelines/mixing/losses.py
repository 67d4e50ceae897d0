"""Losses for mixed samples, registered by name (``mixing.loss`` in params.yaml).

Each loss sees a batch as label pairs: ``y`` (own), ``y_partner`` and ``lam``, so it works the same
for online mixing and for pairs read back from offline shards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from pipelines.errors import ConfigError
from pipelines.mixing.base import MixOutput
from pipelines.mixing.targets import pair_targets, smoothed_one_hot, soft_target_cross_entropy
from pipelines.precision import at_least_float32
from pipelines.registry import Registry


def _decoupled_regulariser(logits: torch.Tensor, own: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """Per sample ``-log softmax_{-b}(z)_a - log softmax_{-a}(z)_b`` for classes a (own), b (partner)."""
    z = at_least_float32(logits)
    rows = torch.arange(len(z), device=z.device)

    def without(column: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(z.index_put((rows, column), torch.tensor(float("-inf"), dtype=z.dtype, device=z.device)), dim=-1)

    return (without(partner) - z[rows, own]) + (without(own) - z[rows, partner])


def decoupled_pair_loss(
    logits: torch.Tensor, y: torch.Tensor, y_partner: torch.Tensor, lam: torch.Tensor, num_classes: int,
    eta: float, smoothing: float = 0.0,
) -> torch.Tensor:
    """:func:`decoupled_mixup_loss` from explicit label pairs."""
    target = pair_targets(y, y_partner, lam, num_classes, smoothing)
    loss = -(target * F.log_softmax(at_least_float32(logits), dim=-1)).sum(-1)
    if eta == 0:
        return loss.mean()
    own, partner = y.long(), y_partner.long()
    decoupled = (own != partner) & (lam > 0) & (lam < 1)
    regulariser = _decoupled_regulariser(logits, own, partner)
    return (loss + eta * torch.where(decoupled, regulariser, torch.zeros_like(regulariser))).mean()


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
    return decoupled_pair_loss(logits, y, y[out.index], out.lam, num_classes, eta, smoothing)


def mixup_ranking_loss(mixed_logits: torch.Tensor, clean_logits: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """The mixup ranking loss (MRL) of RankMixup (Noh et al., "RankMixup: Ranking-Based Mixup
    Training for Network Calibration", ICCV 2023).

    A mixed sample should be less confident than the clean sample it came from, by ``margin``:
    ``mean(max(0, conf(mixed) - conf(clean) + margin))`` with ``conf`` the top softmax probability.
    """
    confidence_mixed = F.softmax(at_least_float32(mixed_logits), dim=-1).max(-1).values
    confidence_clean = F.softmax(at_least_float32(clean_logits), dim=-1).max(-1).values
    return F.relu(confidence_mixed - confidence_clean + margin).mean()


@dataclass(frozen=True)
class MixedLoss:
    """A training loss over a mixed batch. ``needs_clean`` losses also get the logits of the
    unmixed inputs (one more forward pass), so they cannot train from offline shards. ``task`` is
    what the loss's targets are (:mod:`pipelines.tasks`)."""

    name: ClassVar[str] = ""
    needs_clean: ClassVar[bool] = False
    task: ClassVar[str] = "classification"

    def __call__(
        self, logits: torch.Tensor, y: torch.Tensor, y_partner: torch.Tensor, lam: torch.Tensor, *,
        num_classes: int, smoothing: float = 0.0, clean_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError


LOSSES: Registry[type[MixedLoss]] = Registry("mixing loss")


@LOSSES.register_named("soft_ce")
@dataclass(frozen=True)
class SoftTargetLoss(MixedLoss):
    """Cross-entropy against the λ-weighted (optionally smoothed) label pair: the mixup loss."""

    def __call__(self, logits, y, y_partner, lam, *, num_classes, smoothing=0.0, clean_logits=None):
        return soft_target_cross_entropy(logits, pair_targets(y, y_partner, lam, num_classes, smoothing))


@LOSSES.register_named("decoupled")
@dataclass(frozen=True)
class DecoupledLoss(MixedLoss):
    """DecoupleMix: soft-target cross-entropy + ``eta`` x the decoupled regulariser
    (:func:`decoupled_mixup_loss`)."""

    eta: float = 0.1

    def __post_init__(self) -> None:
        if not self.eta >= 0:
            raise ConfigError(f"mixing.loss_options.eta must be >= 0, got {self.eta!r}")

    def __call__(self, logits, y, y_partner, lam, *, num_classes, smoothing=0.0, clean_logits=None):
        return decoupled_pair_loss(logits, y, y_partner, lam, num_classes, self.eta, smoothing)


@LOSSES.register_named("rankmixup")
@dataclass(frozen=True)
class RankMixupLoss(MixedLoss):
    """RankMixup with the MRL: cross-entropy on the clean samples + ``weight`` x
    :func:`mixup_ranking_loss` (the mixed samples enter only through the ranking term, as in the paper)."""

    margin: float = 0.1
    weight: float = 0.1
    needs_clean: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not self.margin >= 0:
            raise ConfigError(f"mixing.loss_options.margin must be >= 0, got {self.margin!r}")
        if not self.weight >= 0:
            raise ConfigError(f"mixing.loss_options.weight must be >= 0, got {self.weight!r}")

    def __call__(self, logits, y, y_partner, lam, *, num_classes, smoothing=0.0, clean_logits=None):
        if clean_logits is None:
            raise ValueError("rankmixup needs the logits of the clean inputs")
        clean = soft_target_cross_entropy(clean_logits, smoothed_one_hot(y, num_classes, smoothing))
        return clean + self.weight * mixup_ranking_loss(logits, clean_logits, self.margin)


@LOSSES.register_named("mse")
@dataclass(frozen=True)
class MixedTargetMSE(MixedLoss):
    """Regression: mean squared error against the λ-interpolated target ``lam y + (1 - lam) y_partner``
    (mixup for regression, Zhang et al. 2018; C-Mixup, Yao et al. 2022). Its gradient equals that of
    ``lam MSE(y) + (1 - lam) MSE(y_partner)``, so the two usual forms train alike."""

    task: ClassVar[str] = "regression"

    def __call__(self, logits, y, y_partner, lam, *, num_classes, smoothing=0.0, clean_logits=None):
        dtype = at_least_float32(logits).dtype
        target = torch.lerp(y_partner.to(dtype), y.to(dtype), lam.to(dtype).reshape(-1, *([1] * (y.dim() - 1))))
        return F.mse_loss(at_least_float32(logits).reshape(target.shape), target)


def get_loss(name: str, **options: object) -> MixedLoss:
    """The loss registered as ``name`` with ``options`` (``mixing.loss`` / ``mixing.loss_options``).

    Raises:
        UnknownNameError: no loss is registered under ``name``.
        ConfigError: an option is unknown to the loss or out of range.
    """
    return LOSSES.build(name, "mixing.loss", "mixing.loss_options", **options)


def check_loss_task(loss: MixedLoss, name: str, task: str, smoothing: float = 0.0) -> None:
    """Raise :class:`ConfigError` unless the loss ``name`` trains ``task`` (label smoothing is a
    classification notion too)."""
    if loss.task != task:
        fitting = sorted(n for n in LOSSES.names() if LOSSES.get(n).task == task)
        raise ConfigError(f"mixing.loss: {name!r} is a {loss.task} loss but the data are a {task} task; use one of {fitting}")
    if task == "regression" and smoothing:
        raise ConfigError(f"mixing.label_smoothing must be 0 for regression, got {smoothing!r}")
