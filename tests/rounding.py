"""Test tolerances derived from floating-point rounding, so that they hold on any CPU.

A float32 result computed in k rounding steps from values of magnitude at most M lies within
about k * U32 * M of the exact result (U32 = 2**-24, float32's unit roundoff; the order of a
summation, vectorisation or fused multiply-add only moves the result inside that bound). Exact
results are computed in float64, whose own error (U64 = 2**-53) is negligible at that scale.
"""

from __future__ import annotations

import torch

U32 = 2.0**-24
U64 = 2.0**-53


def lerp_bound(a: torch.Tensor, b: torch.Tensor, unit: float = U32) -> torch.Tensor:
    """Elementwise bound on the rounding error of ``lam * a + (1 - lam) * b`` (``lam`` in [0, 1])
    however it is computed: ``b + lam * (b - a)`` (torch's lerp) rounds three times, the expanded
    form four times, each by at most ``unit`` times a value no larger than ``2 * max(|a|, |b|)``;
    8 units of ``max(|a|, |b|)`` covers either."""
    return 8 * unit * torch.maximum(a.abs(), b.abs()).double()


def assert_within(actual: torch.Tensor, exact: torch.Tensor, bound: torch.Tensor | float) -> None:
    """``|actual - exact| <= bound`` elementwise; the message names the worst excess."""
    error = (actual.double() - exact.double()).abs()
    bound = torch.as_tensor(bound, dtype=torch.float64).expand_as(error)
    excess = error - bound
    worst = int(excess.argmax())
    assert bool((excess <= 0).all()), (
        f"error {error.flatten()[worst].item():.3g} exceeds its rounding bound {bound.flatten()[worst].item():.3g}"
    )
