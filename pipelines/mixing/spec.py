"""A mixing configuration as plain data: what params.yaml's ``mixing`` section describes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pipelines.config import MixingParams
from pipelines.mixing.base import Mixer
from pipelines.mixing.losses import MixedLoss


def freeze(value: Any) -> Any:
    """YAML lists and mappings as tuples, so a spec stays hashable and options like
    ``scope: [0.1, 0.8]`` arrive as the tuples the mixers declare."""
    if isinstance(value, dict):
        return tuple((key, freeze(value[key])) for key in sorted(value))
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


@dataclass(frozen=True)
class MixingSpec:
    """The method, hyperparameters and loss of one mixing setup (picklable, hashable).

    Attributes:
        options: the method's own parameters as ``(name, value)`` pairs (``decay_power``, ``layers``...).
        loss_options: the loss's parameters as ``(name, value)`` pairs (``eta``, ``margin``...).
    """

    method: str = "none"
    alpha: float = 1.0
    mode: Literal["batch", "elem"] = "elem"
    prob: float = 1.0
    label_smoothing: float = 0.0
    options: tuple[tuple[str, Any], ...] = ()
    loss: str = "soft_ce"
    loss_options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_params(cls, mixing: MixingParams, method: str | None = None, alpha: float | None = None) -> MixingSpec:
        """The spec of ``mixing``, or of another method/alpha (a tune trial, an augment shard set)
        with that method's own entry of ``mixing.options``."""
        method = mixing.method if method is None else method
        return cls(
            method=method,
            alpha=mixing.alpha if alpha is None else alpha,
            mode=mixing.mode,
            prob=mixing.prob,
            label_smoothing=mixing.label_smoothing,
            options=freeze(mixing.options.get(method, {})),
            loss=mixing.loss,
            loss_options=freeze(mixing.loss_options),
        )

    def build(self) -> Mixer:
        from pipelines.mixing import get_mixer

        return get_mixer(self.method, alpha=self.alpha, mode=self.mode, prob=self.prob, **dict(self.options))

    def build_loss(self) -> MixedLoss:
        from pipelines.mixing.losses import get_loss

        return get_loss(self.loss, **dict(self.loss_options))
