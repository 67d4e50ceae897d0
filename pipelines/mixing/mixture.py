"""Several mixing methods at once: one is picked per batch or per sample, with given weights."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from pipelines.errors import ConfigError
from pipelines.mixing.base import MIXERS, Mixer, MixOutput
from pipelines.mixing.sampling import permutation


@dataclass(frozen=True)
class MixtureMixer:
    """Pick a mixer per sample (``per="elem"``) or per batch (``per="batch"``) with ``weights``.

    Generalises timm's ``switch_prob`` (MixUp or CutMix) to any set of registered methods. All
    methods share one partner permutation, so a sample's partner does not depend on which method
    it got; each method draws its own λ with its own ``alpha``/``prob``. Every method runs on the
    whole batch (vectorised) and each sample takes the output of its pick.
    """

    mixers: tuple[Mixer, ...]
    weights: tuple[float, ...]
    per: Literal["batch", "elem"] = "elem"

    def __post_init__(self) -> None:
        if len(self.mixers) != len(self.weights) or not self.mixers:
            raise ConfigError(f"mixing: need one weight per method, got {len(self.weights)} for {len(self.mixers)}")
        if min(self.weights) < 0 or sum(self.weights) <= 0:
            raise ConfigError(f"mixing: method weights must be >= 0 with a positive sum, got {list(self.weights)}")
        hidden = [m.name for m in self.mixers if m.mixes_hidden]
        if hidden:
            raise ConfigError(f"mixing: {hidden} mix inside the model and cannot be part of a mixture")
        if self.per not in ("batch", "elem"):
            raise ConfigError(f"mixing.switch must be 'batch' or 'elem', got {self.per!r}")

    def __call__(self, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator) -> MixOutput:
        batch = x.shape[0]
        index = permutation(batch, generator)
        weights = torch.tensor(self.weights, dtype=torch.float64, device=generator.device)
        picks = torch.multinomial(weights, batch if self.per == "elem" else 1, replacement=True, generator=generator)
        picks = picks.expand(batch).to(x.device)
        mixed_x, lam = None, None
        for choice, mixer in enumerate(self.mixers):  # over methods, not samples
            draws = mixer.draw(batch, generator, x.device, index=index, extra=mixer.extra_draws(x.shape))
            out = mixer.combine(x, draws, generator)
            if mixed_x is None:
                mixed_x, lam = out.x, out.lam
                continue
            chosen = picks == choice
            mixed_x = torch.where(chosen.reshape(-1, *([1] * (x.ndim - 1))), out.x, mixed_x)
            lam = torch.where(chosen, out.lam, lam)
        return MixOutput(x=mixed_x, index=index.to(x.device), lam=lam)


def mixture(
    weights: Mapping[str, float], per: Literal["batch", "elem"] = "elem", params: Mapping[str, dict] | None = None
) -> MixtureMixer:
    """A :class:`MixtureMixer` over registered methods, e.g. ``mixture({"mixup": 0.5, "cutmix": 0.5})``.

    Args:
        weights: method name -> relative weight.
        per: pick per sample or per batch.
        params: method name -> its parameters (``alpha``, ``mode``, ``prob``, ...).
    """
    params = params or {}
    unknown = sorted(set(params) - set(weights))
    if unknown:
        raise ConfigError(f"mixing: parameters given for methods not in the mixture: {unknown}")
    mixers = tuple(MIXERS.get(name, key="mixing.method")(**params.get(name, {})) for name in weights)
    return MixtureMixer(mixers, tuple(float(w) for w in weights.values()), per)
