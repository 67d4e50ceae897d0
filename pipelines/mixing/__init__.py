"""Mixed-sample data augmentation: one registry of methods, all called the same way.

    out = mix("cutmix", x, y, generator=g, alpha=1.0, mode="elem", prob=1.0)
    out.x, out.index, out.lam

Methods use only the generator they are given and never loop over the batch in Python.
"""

from __future__ import annotations

import torch

from pipelines.mixing import boxes as _boxes  # noqa: F401  (registers cutmix, resizemix)
from pipelines.mixing import fourier as _fourier  # noqa: F401  (registers fmix)
from pipelines.mixing import interpolation as _interpolation  # noqa: F401  (registers mixup, none)
from pipelines.mixing import manifold as _manifold  # noqa: F401  (registers manifold_mixup)
from pipelines.mixing import regression as _regression  # noqa: F401  (registers cmixup)
from pipelines.mixing import saliency as _saliency  # noqa: F401  (registers saliencymix)
from pipelines.mixing.base import MIXERS, Mixer, MixOutput
from pipelines.mixing.manifold import mixing_hidden
from pipelines.mixing.mixture import MixtureMixer, mixture
from pipelines.mixing.losses import (
    LOSSES,
    MixedLoss,
    check_loss_task,
    decoupled_mixup_loss,
    get_loss,
    mixup_ranking_loss,
)
from pipelines.mixing.spec import MixingSpec
from pipelines.mixing.targets import mixed_targets, pair_targets, smoothed_one_hot, soft_target_cross_entropy


def get_mixer(name: str, **params: object) -> Mixer:
    """The mixer registered as ``name``, configured with ``params`` (alpha, mode, prob, ...).

    Raises:
        UnknownNameError: no method is registered under ``name``.
        ConfigError: a parameter is unknown to the method or out of range.
    """
    return MIXERS.build(name, "mixing.method", f"mixing.options.{name}", **params)


def mix(
    name: str, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator, **params: object
) -> MixOutput:
    """Mix a batch with the method ``name``; see :class:`MixOutput`."""
    return get_mixer(name, **params)(x, y, generator=generator)


__all__ = [
    "LOSSES",
    "MIXERS",
    "MixedLoss",
    "MixOutput",
    "Mixer",
    "MixingSpec",
    "MixtureMixer",
    "decoupled_mixup_loss",
    "check_loss_task",
    "get_loss",
    "get_mixer",
    "mix",
    "mixed_targets",
    "mixing_hidden",
    "mixup_ranking_loss",
    "mixture",
    "pair_targets",
    "smoothed_one_hot",
    "soft_target_cross_entropy",
]
