"""Manifold mixup: the mix happens on hidden features, at a layer drawn per batch."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from pipelines.errors import ConfigError
from pipelines.mixing.base import Mixer, MixOutput, interpolate, partners_of, register

INPUT = "input"  # the mix point before the first layer: plain mixup


@register("manifold_mixup")
@dataclass(frozen=True)
class ManifoldMixup(Mixer):
    """Manifold Mixup (Verma et al., "Manifold Mixup: Better Representations by Interpolating
    Hidden States", ICML 2019).

    Each call draws one mix point from ``layers`` (uniformly, from the generator) and λ and
    partners as mixup does. At ``"input"`` the inputs are mixed here; at a hidden point ``x`` is
    returned as is with ``out.layer`` set, and the forward pass must run inside
    :func:`mixing_hidden`, which mixes that layer's output with the same partners and λ.

    Args:
        layers: mix points to draw from: ``"input"`` and/or names the model exposes
            (:func:`pipelines.models.mix_points`); the paper draws from the input and the first
            blocks.
    """

    layers: tuple[str, ...] = (INPUT,)
    mixes_hidden: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.layers, str) or not self.layers:
            raise ConfigError(f"mixing.layers must be a non-empty list of mix points, got {self.layers!r}")
        object.__setattr__(self, "layers", tuple(self.layers))

    def __call__(self, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator) -> MixOutput:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x must be (B, ...) with B = len(y); got x {tuple(x.shape)}, y {tuple(y.shape)}")
        draws = self.draw(x.shape[0], generator, x.device)
        layer = self.layers[int(torch.randint(len(self.layers), (1,), generator=generator, device=generator.device))]
        if layer == INPUT:
            return MixOutput(x=interpolate(x, partners_of(x, draws.index), draws.lam), index=draws.index, lam=draws.lam)
        return MixOutput(x=x, index=draws.index, lam=draws.lam, layer=layer)

    def combine(self, x, draws, generator):  # pragma: no cover - __call__ is overridden
        raise ConfigError("manifold_mixup mixes inside the model; it cannot be part of a mixture")


@contextmanager
def mixing_hidden(points: dict[str, nn.Module], out: MixOutput) -> Iterator[None]:
    """Within the block, the module at ``out.layer`` returns its output mixed with ``out.index``
    and ``out.lam``: ``lam * h + (1 - lam) * h[index]``. A no-op when ``out.layer`` is None.

    Args:
        points: the model's mix points, name -> module whose output is mixed.

    Raises:
        ConfigError: ``out.layer`` is not one of ``points``.
    """
    if out.layer is None:
        yield
        return
    if out.layer not in points:
        raise ConfigError(f"mixing.layers: the model has no mix point {out.layer!r}; it has {sorted(points)}")

    def mix_output(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return interpolate(output, partners_of(output, out.index), out.lam)

    handle = points[out.layer].register_forward_hook(mix_output)
    try:
        yield
    finally:
        handle.remove()
